#!/usr/bin/env python3
"""Decodes an H.264 clip with a real application and checks every frame against a reference
(issue 5). Runs INSIDE the test guest (tests/test_decode.py), standard library only.

    decode_check.py --clip CLIP.h264 --ref REF.json --out DIR [--app ffmpeg|gst|v4l2ctl ...]
                    [--ffmpeg-decoder h264_v4l2m2m] [--gst-decoder v4l2h264dec] [--keep]
                    [--save SAVEDIR]

REF.json is written by tests/clips.py on the host: {"frames": [[width, height, md5], ...]} in
display order, the md5 of each frame's NV12 bytes (Y then interleaved CbCr, no padding) as
ffmpeg's software decoder produces them. For each app:

  ffmpeg: ffmpeg -c:v DECODER -i CLIP -autoscale 0 -fps_mode passthrough -pix_fmt nv12
                 -f rawvideo DIR/ffmpeg.yuv
          (Debian's ffmpeg 5.1 h264_v4l2m2m finds the M2M decoder node itself by probing
          /dev/video*; -autoscale 0: no rescaling after a resolution change; -fps_mode
          passthrough: every decoded frame is written once: the raw H.264 demuxer gives no
          timestamps, so ffmpeg's default CFR mode could duplicate or drop frames on its own)
  gst:    gst-launch-1.0 -q filesrc location=CLIP ! h264parse ! DECODER !
                 video/x-raw,format=NV12 ! filesink location=DIR/gst.yuv
          with a private plugin directory (symlinks to the 4 plugins needed) and registry in
          DIR, so the plugin scan is short and happens now, when the decoder node exists
          (the v4l2 plugin only registers v4l2h264dec for a decoder node it finds at scan time)
  v4l2ctl: v4l2-ctl -d DEVICE --set-fmt-video-out=pixelformat=H264
                 --set-fmt-video=pixelformat=NV12 --stream-mmap --stream-out-mmap
                 --stream-from-hdr=DIR/clip.hdr --stream-to=DIR/v4l2ctl.yuv
          (v4l2-ctl's stateful-decoder loop; clip.hdr is the clip cut into --chunk-byte
          OUTPUT buffers regardless of NAL or frame boundaries. Not --stream-from: that puts
          a whole clip (< 2 MiB) into ONE buffer, so v4l2-ctl sends DECODER_CMD STOP before
          the CAPTURE queue streams, which dev-decoder.rst says starts no drain (vicodec
          drains anyway): the frames still in the decoder would never come out. Small chunks
          make v4l2-ctl send STOP after the stream started, a real drain. v4l2-ctl writes
          `bytesused` bytes of each CAPTURE buffer; a drain that ends without a LAST buffer
          shows up as missing final frames, as v4l2-ctl then leaves on its select() timeout
          with status 0)

then the output is split into frames by the reference's frame sizes and each frame's md5 is
compared with the reference's. Every frame must be present, in order, and equal, with no bytes
left over. One JSON line per app goes to stdout:

  {"app", "ok", "cmd", "rc", "seconds", "expected_frames", "output_bytes", "expected_bytes",
   "matching_frames", "first_mismatch": {"index", "size", "expected_md5", "got_md5",
   "equals_reference_frame"} | null, "stderr_tail"}

(`equals_reference_frame`: the reference index whose md5 the mismatching output frame has, if
any: a reordering, duplicate or dropped frame shows up as an off-by-k index.) Exit status 0
when every app's output is bit-exact, 1 otherwise, 2 on bad usage. Outputs are deleted after a
successful check unless --keep; with --save, a mismatching output and the app's log are moved
to SAVEDIR. In the guest, DIR should be on the tmpfs (/tmp): the frames GStreamer hands to
filesink may be the device's mmap()ed CAPTURE buffers (PFN mappings of the SHM BAR), which a
9p zero-copy write cannot pin.
"""

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time

APPS = ["ffmpeg", "gst", "v4l2ctl"]
GST_PLUGIN_DIRS = ["/usr/lib/x86_64-linux-gnu/gstreamer-1.0", "/usr/lib/gstreamer-1.0"]
# filesrc/filesink/capsfilter, h264parse, v4l2h264dec; openh264dec and videoconvert for
# host-side sanity runs of this script (--gst-decoder openh264dec --gst-convert).
GST_PLUGINS = ["libgstcoreelements.so", "libgstvideoparsersbad.so", "libgstvideo4linux2.so",
               "libgstopenh264.so", "libgstvideoconvertscale.so"]


def nv12_size(w, h):
    return w * h + 2 * ((w + 1) // 2) * ((h + 1) // 2)


def ffmpeg_cmd(clip, out, decoder):
    return ["ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "warning", "-c:v", decoder,
            "-i", clip, "-autoscale", "0", "-fps_mode", "passthrough", "-pix_fmt", "nv12",
            "-f", "rawvideo", "-y", out]


def gst_cmd(clip, out, decoder, convert=False):
    conv = ["videoconvert", "!"] if convert else []
    return ["gst-launch-1.0", "-q", "filesrc", f"location={clip}", "!", "h264parse", "!",
            decoder, "!", *conv, "video/x-raw,format=NV12", "!", "filesink",
            f"location={out}"]


# v4l2-ctl's --stream-from-hdr file: per OUTPUT buffer the big-endian fourcc 'Vhdr', the
# big-endian payload size of each plane, the payload (v4l2-ctl-streaming.cpp, FILE_HDR_ID).
FILE_HDR_ID = ord("V") | ord("h") << 8 | ord("d") << 16 | ord("r") << 24


def write_chunked(clip, path, chunk):
    """The clip cut into `chunk`-byte OUTPUT buffers, in v4l2-ctl's --stream-from-hdr format."""
    import struct
    with open(clip, "rb") as f, open(path, "wb") as o:
        while True:
            data = f.read(chunk)
            if not data:
                break
            o.write(struct.pack(">II", FILE_HDR_ID, len(data)) + data)


def v4l2ctl_cmd(hdr_file, out, device):
    return ["v4l2-ctl", "-d", device, "--set-fmt-video-out=pixelformat=H264",
            "--set-fmt-video=pixelformat=NV12", "--stream-mmap", "--stream-out-mmap",
            f"--stream-from-hdr={hdr_file}", f"--stream-to={out}"]


def gst_env(workdir):
    """Environment for gst-launch: a private plugin dir and registry under workdir."""
    plugdir = os.path.join(workdir, "gst-plugins")
    os.makedirs(plugdir, exist_ok=True)
    for name in GST_PLUGINS:
        for d in GST_PLUGIN_DIRS:
            src = os.path.join(d, name)
            dst = os.path.join(plugdir, name)
            if os.path.exists(src) and not os.path.lexists(dst):
                os.symlink(src, dst)
    env = dict(os.environ)
    env.update({
        "GST_PLUGIN_SYSTEM_PATH_1_0": plugdir,
        "GST_PLUGIN_PATH_1_0": "",
        "GST_REGISTRY_1_0": os.path.join(workdir, "gst-registry.bin"),
        "GST_REGISTRY_FORK": "no",  # scan in-process: no gst-plugin-scanner exec under TCG
    })
    return env


def run_app(cmd, env=None, timeout=None):
    t = time.monotonic()
    try:
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                           timeout=timeout)
        rc, err = p.returncode, (p.stdout + p.stderr).decode(errors="replace")
    except subprocess.TimeoutExpired as e:
        rc = "timeout"
        err = ((e.stdout or b"") + (e.stderr or b"")).decode(errors="replace")
    return rc, err, time.monotonic() - t


def compare(path, frames):
    """Splits the file at `path` by the reference frame sizes; returns the result fields."""
    by_md5 = {}
    for i, (_, _, m) in enumerate(frames):
        by_md5.setdefault(m, i)
    expected_bytes = sum(nv12_size(w, h) for (w, h, _) in frames)
    size = os.path.getsize(path) if os.path.exists(path) else None
    res = {"expected_frames": len(frames), "output_bytes": size,
           "expected_bytes": expected_bytes, "matching_frames": 0, "first_mismatch": None}
    if size is None:
        res["first_mismatch"] = {"index": 0, "problem": "no output file"}
        return res
    with open(path, "rb") as f:
        for i, (w, h, want) in enumerate(frames):
            n = nv12_size(w, h)
            data = f.read(n)
            if len(data) < n:
                res["first_mismatch"] = {
                    "index": i, "size": f"{w}x{h}",
                    "problem": f"output ends in frame {i}: {len(data)} of its {n} bytes "
                               f"({len(frames) - i} frame(s) missing)"}
                return res
            got = hashlib.md5(data).hexdigest()
            if got != want:
                res["first_mismatch"] = {
                    "index": i, "size": f"{w}x{h}", "expected_md5": want, "got_md5": got,
                    "equals_reference_frame": by_md5.get(got),
                    "problem": "frame differs from the reference"}
                return res
            res["matching_frames"] += 1
        extra = len(f.read())
        if extra:
            res["first_mismatch"] = {
                "index": len(frames),
                "problem": f"{extra} bytes after the {len(frames)} expected frames"}
    return res


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clip", required=True)
    ap.add_argument("--ref", required=True, help="NAME.ref.json from tests/clips.py")
    ap.add_argument("--out", required=True, help="writable directory for the decoded output")
    ap.add_argument("--app", action="append", choices=APPS,
                    help="repeatable; default all three")
    ap.add_argument("--device", default="/dev/video0", help="for v4l2-ctl")
    ap.add_argument("--chunk", type=int, default=4096,
                    help="v4l2-ctl: bytes of the clip per OUTPUT buffer (default 4096)")
    ap.add_argument("--ffmpeg-decoder", default="h264_v4l2m2m")
    ap.add_argument("--gst-decoder", default="v4l2h264dec")
    ap.add_argument("--gst-convert", action="store_true",
                    help="videoconvert after the decoder (for decoders without NV12 output)")
    ap.add_argument("--timeout", type=float, default=600, help="per app, s")
    ap.add_argument("--keep", action="store_true", help="keep the outputs even when they match")
    ap.add_argument("--save", help="copy a mismatching output (and the app's log) here, e.g. "
                                   "the rig's share $VMRS_OUT, for a look from the host")
    a = ap.parse_args(argv)
    with open(a.ref) as f:
        frames = [tuple(fr) for fr in json.load(f)["frames"]]
    if not frames:
        print("decode_check: the reference has no frames", file=sys.stderr)
        return 2
    os.makedirs(a.out, exist_ok=True)
    all_ok = True
    for app in a.app or APPS:
        out = os.path.join(a.out, f"{app}.yuv")
        if os.path.exists(out):
            os.unlink(out)
        if app == "ffmpeg":
            cmd, env = ffmpeg_cmd(a.clip, out, a.ffmpeg_decoder), None
        elif app == "v4l2ctl":
            hdr = os.path.join(a.out, "clip.hdr")
            write_chunked(a.clip, hdr, a.chunk)
            cmd, env = v4l2ctl_cmd(hdr, out, a.device), None
        else:
            cmd, env = gst_cmd(a.clip, out, a.gst_decoder, a.gst_convert), gst_env(a.out)
        rc, err, secs = run_app(cmd, env, a.timeout)
        res = {"app": app, "cmd": " ".join(cmd), "rc": rc, "seconds": round(secs, 2)}
        res.update(compare(out, frames))
        res["ok"] = rc == 0 and res["first_mismatch"] is None
        res["stderr_tail"] = err[-2500:]
        all_ok &= res["ok"]
        if not res["ok"] and a.save:
            os.makedirs(a.save, exist_ok=True)
            if os.path.exists(out):
                shutil.copy(out, a.save)
            with open(os.path.join(a.save, f"{app}.log"), "w") as f:
                f.write(err)
            res["saved"] = a.save
        if (res["ok"] and not a.keep) or (a.save and os.path.exists(out)):
            os.unlink(out)
        print(json.dumps(res), flush=True)
    if os.path.isdir(os.path.join(a.out, "gst-plugins")):
        shutil.rmtree(os.path.join(a.out, "gst-plugins"), ignore_errors=True)
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())

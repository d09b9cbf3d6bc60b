"""H.264 test clips and their reference decodes, generated on the host at test time (issue 5).

Nothing is downloaded: the clips are encoded with Debian's ffmpeg + libx264 from ffmpeg's own
`testsrc2` pattern, as raw Annex-B byte streams (`-f h264`), with libx264's defaults (High
profile, preset medium: B-frames with B-pyramid, so a decoder must reorder). The reference of a
clip is its decode by ffmpeg's SOFTWARE H.264 decoder (libavcodec `h264`) to NV12:

    ffmpeg -c:v h264 -i CLIP -autoscale 0 -fps_mode passthrough -pix_fmt nv12 -f rawvideo REF.yuv

(`-autoscale 0`: ffmpeg would otherwise rescale every frame after a resolution change to the
first frame's size; `-fps_mode passthrough`: one output frame per decoded frame, no CFR
duplication or dropping) and, per frame in display order, (width, height, md5 of the frame's
NV12 bytes: Y plane width*height bytes, then the interleaved CbCr plane width*height/2 bytes,
no padding). Frame sizes come from `ffprobe -show_frames` and are checked against the clip's
known segments; nothing here depends on our driver or device.

Clips (name: segments of (width, height, frames), concatenated Annex-B streams):

    clip_320x240      320x240 x 45
    clip_1280x720     1280x720 x 30
    clip_change       320x240 x 24, then 640x480 x 24 (a mid-stream resolution change: two
                      separately encoded streams, each starting with SPS/PPS/IDR, concatenated)
    clip_1280x720_bench  1280x720 x 120 (benchmark; no reference YUV is kept)

Cache: DIR/KEY/NAME.h264, NAME.ref.yuv, NAME.ref.json, where KEY is a hash of the ffmpeg and
libx264 versions and the generation parameters, and DIR is the caller's directory or
$VMRS_CLIPS or ~/.cache/virtio-media-rs/clips. Each clip is generated once per key; files are
written under temporary names and renamed, so concurrent callers never see half a clip.

    python3 tests/clips.py [--dir DIR] [NAME...]   # generate, print a JSON summary
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Optional

FPS = 25
# (width, height, frames) segments of each clip.
CLIPS = {
    "clip_320x240": [(320, 240, 45)],
    "clip_1280x720": [(1280, 720, 30)],
    "clip_change": [(320, 240, 24), (640, 480, 24)],
    "clip_1280x720_bench": [(1280, 720, 120)],
}
# Clips whose reference YUV is not kept (only the per-frame list): the benchmark's.
NO_REF_YUV = {"clip_1280x720_bench"}
# Bumped when the generation or reference commands below change.
GENERATOR_VERSION = 2

ENCODE = ["-c:v", "libx264", "-pix_fmt", "yuv420p"]  # libx264 defaults: High, B-frames


def nv12_size(w: int, h: int) -> int:
    """Bytes of one NV12 frame without padding (even sizes only)."""
    return w * h + 2 * ((w + 1) // 2) * ((h + 1) // 2)


@dataclasses.dataclass
class Clip:
    name: str
    path: Path                 # NAME.h264, Annex-B byte stream
    ref_yuv: Optional[Path]    # NAME.ref.yuv, reference NV12 frames back to back (or None)
    ref_json: Path             # NAME.ref.json: {"frames": [[w, h, md5], ...], ...}
    segments: list             # [(w, h, n), ...]
    frames: list               # [(w, h, md5), ...] in display order

    @property
    def frame_count(self) -> int:
        return len(self.frames)


def _run(args, **kw) -> subprocess.CompletedProcess:
    p = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, args))} failed ({p.returncode}):\n"
                           f"{p.stderr.decode(errors='replace')[-3000:]}")
    return p


@functools.lru_cache(maxsize=None)
def tool_versions() -> str:
    """ffmpeg's version line and the libx264 build, the inputs of the cache key."""
    v = _run(["ffmpeg", "-hide_banner", "-version"]).stdout.decode().splitlines()[0]
    x = _run(["ffmpeg", "-hide_banner", "-h", "encoder=libx264"]).stdout.decode()
    # libx264's own version is in every stream's SEI; the library file name is stable enough.
    libs = sorted(str(p.name) for d in ("/usr/lib/x86_64-linux-gnu", "/usr/lib")
                  if Path(d).is_dir() for p in Path(d).glob("libx264.so.*"))
    return f"{v} | {hashlib.sha256(x.encode()).hexdigest()[:12]} | {','.join(libs)}"


def cache_root(directory: Optional[os.PathLike] = None) -> Path:
    if directory is not None:
        return Path(directory)
    if os.environ.get("VMRS_CLIPS"):
        return Path(os.environ["VMRS_CLIPS"])
    return Path.home() / ".cache" / "virtio-media-rs" / "clips"


def cache_key(name: str) -> str:
    spec = json.dumps({"v": GENERATOR_VERSION, "tools": tool_versions(), "name": name,
                       "segments": CLIPS[name], "fps": FPS, "encode": ENCODE,
                       "ref_yuv": name not in NO_REF_YUV})
    return hashlib.sha256(spec.encode()).hexdigest()[:16]


def encode_segment(w: int, h: int, n: int, out: Path) -> None:
    _run(["ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "error", "-f", "lavfi",
          "-i", f"testsrc2=size={w}x{h}:rate={FPS}", "-frames:v", str(n), *ENCODE,
          "-f", "h264", "-y", str(out)])


def probe_frames(clip: Path) -> list:
    """(width, height, picture type) of every frame ffmpeg's software decoder outputs, in
    output (display) order."""
    out = _run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_frames",
                "-show_entries", "frame=width,height,pict_type", "-of", "json", str(clip)]).stdout
    return [(f["width"], f["height"], f["pict_type"]) for f in json.loads(out)["frames"]]


def reference_decode(clip: Path, out: Path) -> None:
    _run(["ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "error", "-c:v", "h264",
          "-i", str(clip), "-autoscale", "0", "-fps_mode", "passthrough", "-pix_fmt", "nv12",
          "-f", "rawvideo", "-y", str(out)])


def split_md5(path: Path, sizes: list) -> list:
    """md5 of each frame of a file of NV12 frames of the given (w, h) sizes, back to back.

    Raises ValueError if the file is shorter or longer than the sizes say."""
    md5s = []
    with open(path, "rb") as f:
        for i, (w, h) in enumerate(sizes):
            n = nv12_size(w, h)
            data = f.read(n)
            if len(data) != n:
                raise ValueError(f"{path}: frame {i} ({w}x{h}) truncated: {len(data)} of {n} bytes")
            md5s.append(hashlib.md5(data).hexdigest())
        rest = len(f.read())
        if rest:
            raise ValueError(f"{path}: {rest} bytes after the {len(sizes)} expected frames")
    return md5s


def _generate(name: str, d: Path) -> None:
    segments = CLIPS[name]
    with tempfile.TemporaryDirectory(dir=d, prefix=f".{name}.") as tmp:
        tmp = Path(tmp)
        parts = []
        for i, (w, h, n) in enumerate(segments):
            p = tmp / f"seg{i}.h264"
            encode_segment(w, h, n, p)
            parts.append(p.read_bytes())
        clip = tmp / f"{name}.h264"
        clip.write_bytes(b"".join(parts))

        probed = probe_frames(clip)
        sizes = [(w, h) for (w, h, _) in probed]
        if "B" not in {t for (_, _, t) in probed}:
            raise RuntimeError(f"{name}: no B-frames (the decoder's reordering is not exercised)")
        if len({t for (_, _, t) in probed}) < 2:
            raise RuntimeError(f"{name}: all frames are of one type")
        want = [(w, h) for (w, h, n) in segments for _ in range(n)]
        if sizes != want:
            raise RuntimeError(f"{name}: ffprobe sees frame sizes {summarize(sizes)}, "
                               f"the segments say {summarize(want)}")
        ref = tmp / f"{name}.ref.yuv"
        reference_decode(clip, ref)
        md5s = split_md5(ref, sizes)  # also checks the exact total size
        if len(set(md5s)) != len(md5s):
            raise RuntimeError(f"{name}: two reference frames are equal (order not checkable)")
        meta = {
            "name": name, "segments": segments, "fps": FPS,
            "tools": tool_versions(),
            "reference": "ffmpeg -c:v h264 -i CLIP -autoscale 0 -fps_mode passthrough "
                         "-pix_fmt nv12 -f rawvideo REF.yuv; md5 per frame",
            "frames": [[w, h, m] for (w, h), m in zip(sizes, md5s)],
            "pict_types": "".join(t for (_, _, t) in probed),
        }
        (tmp / f"{name}.ref.json").write_text(json.dumps(meta, indent=1) + "\n")
        if name in NO_REF_YUV:
            ref.unlink()
        # The JSON last: its presence means the clip is complete.
        for suffix in (".h264", ".ref.yuv", ".ref.json"):
            src = tmp / f"{name}{suffix}"
            if src.exists():
                os.replace(src, d / src.name)


def summarize(sizes: list) -> str:
    """[(w, h), ...] as run lengths: '320x240 x24, 640x480 x24'."""
    runs = []
    for s in sizes:
        if runs and runs[-1][0] == s:
            runs[-1][1] += 1
        else:
            runs.append([s, 1])
    return ", ".join(f"{w}x{h} x{n}" for (w, h), n in runs) or "(none)"


def get_clip(name: str, directory: Optional[os.PathLike] = None) -> Clip:
    """The clip `name` (see CLIPS), generated into the cache if it is not there yet."""
    if name not in CLIPS:
        raise KeyError(f"unknown clip {name!r}; known: {', '.join(CLIPS)}")
    d = cache_root(directory) / cache_key(name)
    d.mkdir(parents=True, exist_ok=True)
    ref_json = d / f"{name}.ref.json"
    if not ref_json.exists():
        _generate(name, d)
    meta = json.loads(ref_json.read_text())
    ref_yuv = d / f"{name}.ref.yuv"
    return Clip(name=name, path=d / f"{name}.h264",
                ref_yuv=ref_yuv if ref_yuv.exists() else None, ref_json=ref_json,
                segments=[tuple(s) for s in meta["segments"]],
                frames=[tuple(f) for f in meta["frames"]])


def main(argv=None) -> int:
    import argparse
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dir", help="cache directory (default $VMRS_CLIPS or "
                                  "~/.cache/virtio-media-rs/clips)")
    ap.add_argument("names", nargs="*", default=list(CLIPS))
    a = ap.parse_args(argv)
    out = {}
    for n in a.names:
        c = get_clip(n, a.dir)
        out[n] = {"path": str(c.path), "ref_json": str(c.ref_json),
                  "ref_yuv": str(c.ref_yuv) if c.ref_yuv else None,
                  "frames": c.frame_count, "sizes": summarize([f[:2] for f in c.frames]),
                  "bytes": c.path.stat().st_size}
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Issue 5: H.264 decoding through the driver from our test device's stateful decoder profile
(`vmrs:decoder`: V4L2 M2M_MPLANE; OUTPUT_MPLANE takes an H.264 Annex-B byte stream, CAPTURE_MPLANE
gives NV12; Documentation/test-device.md), with real applications: ffmpeg's h264_v4l2m2m,
GStreamer's v4l2h264dec and v4l2-ctl's stateful-decoder loop (fed the clip in 4 KiB OUTPUT
buffers cut regardless of NAL or frame boundaries: the "any chunking" byte-stream case), and
v4l2-compliance's stateful-decoder tests.

Expected frames come from tests/clips.py: the same clips decoded on the host by ffmpeg's
SOFTWARE H.264 decoder (per frame: size and md5 of the NV12 bytes), never from the device. The
device decodes with libavcodec too, so the output must be bit-exact: every frame, in display
order (the clips have B-frames), with nothing missing (the drain) or extra, across a mid-stream
resolution change (clip_change: 320x240 then 640x480).

All of it shares ONE guest boot (tests/batch.py) with test_decoder_interface.py: device 0 is
the `decoder` profile the applications and decoder_seq.py use (the first decoder node, which
ffmpeg and GStreamer's v4l2h264dec pick), devices 1 and 2 fresh `decoder-yu12` and `decoder`
devices for v4l2-compliance; one job per clip runs the three applications.
"""
import json
import re

import pytest

import clips
from batch import Batch
from guest import REPO
import totals

pytestmark = pytest.mark.guest

TEST_CLIPS = ["clip_320x240", "clip_1280x720", "clip_change"]
APPS = ["ffmpeg", "gst", "v4l2ctl"]
BACKENDS = ["vmrs:decoder", "vmrs:decoder-yu12", "vmrs:decoder"]
SEQ = f"{REPO}/tests/guest_tools/decoder_seq.py"
# v4l2-compliance -s --stream-from on the decoders: (profile, device). 1.22.1 only on
# decoder-yu12: it expects NV12's old description "Y/CbCr 4:2:0" where kernel 6.12 (and so
# the device) says "Y/UV 4:2:0"; a failed ENUM_FMT leaves its format and streaming tests with
# no formats to test. 1.32 knows the new description and tests NV12 (the `decoder` profile).
COMPLIANCE = [("1.22", "decoder-yu12", 1), ("1.32", "decoder-yu12", 1), ("1.32", "decoder", 2)]

_jobs: dict = {}


def jobs():
    """The decode boot, run once per pytest process: {job name: batch.JobResult}. Raises its
    exception (no report, rig error) for every test that asks."""
    if "r" not in _jobs:
        try:
            b = Batch(BACKENDS)
            for name in TEST_CLIPS:
                c = clips.get_clip(name)
                b.add(f"decode-{name}",
                      f"python3 {REPO}/tests/guest_tools/decode_check.py --clip {c.path} "
                      f"--ref {c.ref_json} --out /tmp/decode --save $VMRS_JOB_OUT/{name} "
                      "--device $VMRS_DEV", dev=0, timeout=900)
            small, change = clips.get_clip("clip_320x240"), clips.get_clip("clip_change")
            b.add("seq", f"python3 {SEQ} $VMRS_DEV {small.path} --passes 2 && "
                         f"python3 {SEQ} $VMRS_DEV {change.path} --passes 2", dev=0, timeout=600)
            for tool, profile, dev in COMPLIANCE:
                b.add(f"compliance-{tool}-{profile}",
                      f"{totals.command(tool)} -d $VMRS_DEV -s --stream-from={small.path} 2>&1",
                      dev=dev, timeout=900)
            _jobs["r"] = b.run()
        except Exception as e:  # noqa: BLE001 (re-raised below, for each test)
            _jobs["r"] = e
    r = _jobs["r"]
    if isinstance(r, Exception):
        raise r
    return r


def decode_run(name):
    """(JobResult, {app: decode_check result}) of clip `name`."""
    j = jobs()[f"decode-{name}"]
    j.check()
    results = {}
    for line in j.stdout.splitlines():
        if line.startswith("{"):
            r = json.loads(line)
            results[r["app"]] = r
    return j, results


def describe(res, r):
    keep = {k: v for k, v in r.items() if k != "stderr_tail"}
    return (f"{json.dumps(keep, indent=1)}\n--- {r['app']} output (tail) ---\n{r['stderr_tail']}"
            f"\n--- run dir {res.run_dir} (vdm0.log: the device's log) ---")


@pytest.mark.parametrize("app", APPS)
@pytest.mark.parametrize("name", TEST_CLIPS)
def test_decode_is_bit_exact(name, app):
    res, results = decode_run(name)
    assert app in results, (f"decode_check printed no result for {app} (status {res.status})\n"
                            f"stdout: {res.stdout[-2000:]}\nstderr: {res.stderr[-3000:]}")
    r = results[app]
    c = clips.get_clip(name)
    assert r["expected_frames"] == c.frame_count
    assert r["ok"] and r["matching_frames"] == c.frame_count, describe(res, r)


@pytest.mark.parametrize("tool,profile,dev", COMPLIANCE)
def test_compliance_streaming_from_a_clip_is_clean(tool, profile, dev):
    """v4l2-compliance -s with the clip as the OUTPUT stream: 0 failed, 0 warnings, the
    pinned total (tests/totals.py); the device was seen as a stateful decoder, streaming was
    tested, and it decoded frames."""
    j = jobs()[f"compliance-{tool}-{profile}"]
    j.check()
    totals.assert_clean(j.stdout, tool, f"{profile} -s --stream-from")
    assert "Detected Stateful Decoder" in j.stdout, j.stdout[:3000]
    assert re.search(r"test MMAP \(select[^)]*\): OK$", j.stdout, re.M), j.stdout[-3000:]
    counts = re.findall(r"Video Capture Multiplanar: Captured (\d+) buffers", j.stdout)
    assert counts and all(int(n) > 0 for n in counts), j.stdout[-3000:]

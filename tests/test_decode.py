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

One guest boot per clip runs the three applications (tests/guest_tools/decode_check.py); the
tests of a clip share it.
"""
import json
import re

import pytest

import clips
from guest import REPO, run_guest

pytestmark = pytest.mark.guest

BACKEND = "vmrs:decoder"
TEST_CLIPS = ["clip_320x240", "clip_1280x720", "clip_change"]
APPS = ["ffmpeg", "gst", "v4l2ctl"]
TOTALS = re.compile(r"^Total for virtio_media device /dev/video0: (\d+), Succeeded: (\d+), "
                    r"Failed: (\d+), Warnings: (\d+)$", re.M)

_runs: dict = {}


def decode_run(name):
    """Boots one guest that decodes clip `name` with every app; memoised per session.

    Returns (GuestResult, {app: decode_check result}). An exception of the run (splat, no
    report) is re-raised for every test of the clip."""
    if name not in _runs:
        c = clips.get_clip(name)
        cmd = (f"python3 {REPO}/tests/guest_tools/decode_check.py --clip {c.path} "
               f"--ref {c.ref_json} --out /tmp/decode --save $VMRS_OUT/{name}")
        try:
            res = run_guest(cmd, backend=BACKEND, timeout=900)
            results = {}
            for line in res.stdout.splitlines():
                if line.startswith("{"):
                    j = json.loads(line)
                    results[j["app"]] = j
            print(f"{name}: guest wall {res.wall_time:.1f} s, command {res.cmd_time} s; " +
                  ", ".join(f"{a} {r['seconds']} s" for a, r in results.items()))
            _runs[name] = (res, results)
        except Exception as e:  # noqa: BLE001 (re-raised below, for each test of the clip)
            _runs[name] = e
    r = _runs[name]
    if isinstance(r, Exception):
        raise r
    return r


def describe(res, r):
    keep = {k: v for k, v in r.items() if k != "stderr_tail"}
    return (f"{json.dumps(keep, indent=1)}\n--- {r['app']} output (tail) ---\n{r['stderr_tail']}"
            f"\n--- run dir {res.run_dir} (vdm.log: the device's log) ---")


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


def test_compliance_streaming_from_a_clip_has_no_failures():
    """v4l2-compliance 1.22.1 with the clip as the OUTPUT stream. Profile decoder-yu12 (CAPTURE
    YU12 only): 1.22.1 expects NV12's old description "Y/CbCr 4:2:0" where kernel 6.12 (and
    so the device) says "Y/UV 4:2:0", and a failed ENUM_FMT leaves the format and streaming
    tests with no formats to test (they then pass without streaming anything)."""
    c = clips.get_clip("clip_320x240")
    res = run_guest(f"v4l2-compliance -d0 -s --stream-from={c.path} 2>&1",
                    backend="vmrs:decoder-yu12", timeout=900)
    m = TOTALS.search(res.stdout)
    assert m, res.stdout[-3000:]
    total, ok, failed, warn = map(int, m.groups())
    print(f"v4l2-compliance -s --stream-from (vmrs:decoder-yu12): total {total} succeeded {ok} "
          f"failed {failed} warnings {warn}; guest wall {res.wall_time:.1f} s")
    assert failed == 0, "\n".join(l for l in res.stdout.splitlines() if "fail" in l.lower())
    # The device was seen as a stateful decoder, streaming was tested, and it decoded frames.
    assert "Detected Stateful Decoder" in res.stdout, res.stdout[:3000]
    assert re.search(r"test MMAP \(select[^)]*\): OK$", res.stdout, re.M), res.stdout[-3000:]
    counts = re.findall(r"Video Capture Multiplanar: Captured (\d+) buffers", res.stdout)
    assert counts and all(int(n) > 0 for n in counts), res.stdout[-3000:]

"""Issue 3: streaming capture through the driver against vhost-device-media's simple-capture
device: MMAP buffers mapped through shared memory region 0, DQBUF answered from eventq events.

vhost-device-media's config space claims single-planar capture while its device only accepts
V4L2_BUF_TYPE_VIDEO_CAPTURE_MPLANE (rig.md), so these tests stream with the type the device
really supports through tests/guest_tools/stream.py (raw ioctls), not v4l2-ctl, which follows
the advertised caps.

The expected frame content is computed here from the device's pattern definition (virtio-media
0.0.8, SimpleCaptureDevice::process_queued_buffers): frame with sequence n is 640x480 YU12 whose
Y plane is all n % 256, U plane all (n + 64) % 256 and V plane all (n + 128) % 256.
"""
import hashlib
import json

import pytest

from guest import REPO, run_guest

pytestmark = pytest.mark.guest

STREAM = f"python3 {REPO}/tests/guest_tools/stream.py /dev/video0 9"
W, H = 640, 480


def expected_frame(seq):
    return (bytes([seq % 256]) * (W * H) + bytes([(seq + 64) % 256]) * (W * H // 4)
            + bytes([(seq + 128) % 256]) * (W * H // 4))


def test_expected_pattern_rejects_a_zero_frame():
    assert hashlib.md5(bytes(W * H * 3 // 2)).hexdigest() != \
        hashlib.md5(expected_frame(0)).hexdigest()


def test_stream_mmap_60_frames_match_the_device_pattern():
    res = run_guest(f"{STREAM} 4 60 --mmap", timeout=600)
    assert res.status == 0, (res.stdout, res.stderr)
    r = json.loads(res.stdout)
    assert r["count"] == 4
    assert all(b["planes"] == 1 and b["length"] == W * H * 3 // 2 and b["m_planes_kept"]
               for b in r["buffers"]), r["buffers"]
    frames = r["frames"]
    assert len(frames) == 60
    assert [f["seq"] for f in frames] == list(range(60))
    for f in frames:
        assert f["bytesused"] == W * H * 3 // 2
        assert f["md5"] == hashlib.md5(expected_frame(f["seq"])).hexdigest(), f
    assert r["dqbuf_after_streamoff"] == "EINVAL"


def test_stream_without_mmap_and_nonblocking_dqbuf():
    res = run_guest(f"{STREAM} 2 20 --nonblock", timeout=300)
    assert res.status == 0, (res.stdout, res.stderr)
    r = json.loads(res.stdout)
    assert [f["seq"] for f in r["frames"]] == list(range(20))

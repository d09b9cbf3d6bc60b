"""Issue 4: our own device's honest profiles (tests/device, TestDevice; Documentation/test-device.md)
through the driver: v4l2-compliance, and the data path of each profile checked byte for byte.

Expected values are computed here from the documented definitions, not from the device code:

* capture frames: byte i of plane p of the frame with sequence number n is (n + 3*p + i) % 251;
  sequences start at 0 at every STREAMON; v4l2-ctl writes the planes of a frame one after the
  other (bytesused bytes each).
* output: the device logs `output frame SEQ bytesused N crc32 HEX` (zlib's CRC-32 of the payload)
  for every buffer it consumes; the test streams random data and compares.
* m2m: a loopback, so what v4l2-ctl reads back is what it wrote.
"""
import re
import zlib

import pytest

from guest import REPO, run_guest

pytestmark = pytest.mark.guest

TOTALS = re.compile(r"^Total for virtio_media device /dev/video0: (\d+), Succeeded: (\d+), "
                    r"Failed: (\d+), Warnings: (\d+)$", re.M)


def pattern_plane(seq, plane, size):
    """Plane `plane` of capture frame `seq`: byte i = (seq + 3*plane + i) % 251."""
    start = (seq + 3 * plane) % 251
    period = bytes((start + i) % 251 for i in range(251))
    return (period * (size // 251 + 1))[:size]


def pattern_frame(seq, plane_sizes):
    return b"".join(pattern_plane(seq, p, s) for p, s in enumerate(plane_sizes))


def compliance(profile, flags, timeout=900):
    res = run_guest(f"v4l2-compliance -d0 {flags} 2>&1", backend=f"vmrs:{profile}",
                    timeout=timeout)
    m = TOTALS.search(res.stdout)
    assert m, res.stdout[-3000:]
    total, ok, failed, warn = map(int, m.groups())
    print(f"v4l2-compliance {flags} (vmrs:{profile}): total {total} succeeded {ok} "
          f"failed {failed} warnings {warn}")
    return res, failed


def fail_lines(res):
    return "\n".join(l for l in res.stdout.splitlines() if "fail" in l or "FAIL" in l)


@pytest.mark.parametrize("profile,flags", [
    ("capture", "-s -f"),
    ("capture-mp", "-s -f"),
    ("output", "-s -f"),
    ("m2m", "-s"),
])
def test_compliance_has_no_failures(profile, flags):
    res, failed = compliance(profile, flags)
    assert failed == 0, fail_lines(res)
    for mode in ("MMAP (select)", "MMAP (epoll)", "USERPTR (select)"):
        assert f"test {mode}: OK\n" in res.stdout, fail_lines(res)
    if profile == "m2m":
        # v4l2-compliance's M2M streaming: CAPTURE buffers came back for the OUTPUT ones.
        counts = re.findall(r"Video Capture Multiplanar: Captured (\d+) buffers", res.stdout)
        assert counts and all(int(c) > 0 for c in counts), res.stdout[-3000:]


def test_pattern_helper_is_not_trivial():
    # The expected frames themselves: an all-zero frame can never match.
    f = pattern_frame(0, [1000])
    assert f[:3] == b"\x00\x01\x02" and f[251] == 0 and f[252] == 1
    assert pattern_frame(5, [10, 10])[10:13] == bytes([8, 9, 10])
    assert any(f) and f != bytes(len(f))


@pytest.mark.parametrize("io", ["--stream-mmap", "--stream-user"])
def test_capture_frames_are_the_pattern(io):
    """Single-planar capture, two formats: YUYV 640x480 (default) and RGB3 320x240."""
    n = 4
    cmd = (f"v4l2-ctl -d0 {io} --stream-count={n} --stream-to=/tmp/a.raw && "
           "v4l2-ctl -d0 --set-fmt-video=width=320,height=240,pixelformat=RGB3 "
           f"{io} --stream-count={n} --stream-to=/tmp/b.raw && "
           "cp /tmp/a.raw /tmp/b.raw $VMRS_OUT/ && echo done")
    res = run_guest(cmd, backend="vmrs:capture", timeout=600)
    assert res.status == 0 and "done" in res.stdout, (res.stdout, res.stderr)
    for name, size in (("a.raw", 640 * 480 * 2), ("b.raw", 320 * 240 * 3)):
        data = (res.run_dir / "share" / name).read_bytes()
        assert len(data) == n * size, (name, len(data))
        for k in range(n):
            assert data[k * size:(k + 1) * size] == pattern_frame(k, [size]), (name, k)


@pytest.mark.parametrize("profile,fmt,planes", [
    ("capture-mp", "YM12", [640 * 480, 640 * 480 // 4, 640 * 480 // 4]),
    ("capture-nv", "NM12", [640 * 480, 640 * 480 // 2]),
])
def test_multiplanar_capture_frames_are_the_pattern(profile, fmt, planes):
    """Genuinely multi-planar formats (3 and 2 memory planes), MMAP and USERPTR."""
    n = 3
    cmd = (f"v4l2-ctl -d0 --set-fmt-video=pixelformat={fmt} --stream-mmap --stream-count={n} "
           "--stream-to=/tmp/m.raw && "
           f"v4l2-ctl -d0 --stream-user --stream-count={n} --stream-to=/tmp/u.raw && "
           "cp /tmp/m.raw /tmp/u.raw $VMRS_OUT/ && echo done")
    res = run_guest(cmd, backend=f"vmrs:{profile}", timeout=600)
    assert res.status == 0 and "done" in res.stdout, (res.stdout, res.stderr)
    size = sum(planes)
    for name in ("m.raw", "u.raw"):
        data = (res.run_dir / "share" / name).read_bytes()
        assert len(data) == n * size, (name, len(data))
        for k in range(n):
            assert data[k * size:(k + 1) * size] == pattern_frame(k, planes), (name, k)


def output_log(res):
    log = (res.run_dir / "vdm.log").read_text(errors="replace")
    return [(int(s), int(n), int(h, 16)) for s, n, h in
            re.findall(r"output frame (\d+) bytesused (\d+) crc32 ([0-9a-f]{8})", log)]


@pytest.mark.parametrize("io", ["--stream-out-mmap", "--stream-out-user"])
def test_output_frames_arrive_intact(io):
    """v4l2-ctl streams random YUYV 640x480 frames; the device logs the CRC-32 of each."""
    n, size = 5, 640 * 480 * 2
    cmd = (f"head -c {n * size} /dev/urandom > /tmp/in.raw && "
           f"v4l2-ctl -d0 {io} --stream-from=/tmp/in.raw --stream-count={n} && "
           "cp /tmp/in.raw $VMRS_OUT/ && echo done")
    res = run_guest(cmd, backend="vmrs:output", timeout=600)
    assert res.status == 0 and "done" in res.stdout, (res.stdout, res.stderr)
    data = (res.run_dir / "share" / "in.raw").read_bytes()
    assert len(data) == n * size
    want = [(k, size, zlib.crc32(data[k * size:(k + 1) * size])) for k in range(n)]
    assert output_log(res) == want


@pytest.mark.parametrize("io", ["--stream-mmap --stream-out-mmap",
                                "--stream-user --stream-out-user"])
def test_m2m_loopback_returns_what_was_sent(io):
    """YM12 640x480 (3 planes) on both queues: CAPTURE gets the OUTPUT payload back."""
    n, size = 4, 640 * 480 * 3 // 2
    cmd = (f"head -c {n * size} /dev/urandom > /tmp/in.raw && "
           f"v4l2-ctl -d0 {io} --stream-from=/tmp/in.raw --stream-to=/tmp/out.raw "
           f"--stream-count={n} && cp /tmp/in.raw /tmp/out.raw $VMRS_OUT/ && echo done")
    res = run_guest(cmd, backend="vmrs:m2m", timeout=600)
    assert res.status == 0 and "done" in res.stdout, (res.stdout, res.stderr)
    src = (res.run_dir / "share" / "in.raw").read_bytes()
    out = (res.run_dir / "share" / "out.raw").read_bytes()
    assert len(src) == n * size
    assert out == src


def test_string_control_payload_goes_through_sg_lists():
    """Ext-control `ptr` payloads: the capture-nv profile has a "Label" string control
    (Documentation/test-device.md) whose value the device reads and writes in guest memory
    through the SG lists the driver sends; its initial value is "virtio-media"."""
    res = run_guest(
        f"python3 {REPO}/tests/guest_tools/ext_ctrl_probe.py && "
        "v4l2-ctl -d0 --set-ctrl=label=hello-guest && v4l2-ctl -d0 --get-ctrl=label && "
        "v4l2-ctl -d0 --list-ctrls",
        backend="vmrs:capture-nv")
    assert res.status == 0, res.stdout + res.stderr
    lines = res.stdout.splitlines()
    # QUERY_EXT_CTRL: V4L2_CTRL_TYPE_STRING (7) with V4L2_CTRL_FLAG_HAS_PAYLOAD, 32-byte payload.
    assert "qec 0x981a00 7 0x100 32" in lines, res.stdout
    # Read into a 32-byte user buffer: the device wrote the value into the pinned pages.
    assert "get 32 0 32 'virtio-media'" in lines, res.stdout
    # Too small: ENOSPC (28) and the size needed (12 characters + NUL), nothing written.
    assert "get 4 28 13 ''" in lines, res.stdout
    # An unmapped pointer cannot be pinned: EFAULT (14) before the device sees anything.
    assert "badptr 14" in lines, res.stdout
    # S_EXT_CTRLS sent the new string from user memory; a new session reads it back.
    assert "label: 'hello-guest'" in lines, res.stdout
    assert any("label 0x00981a00 (str)" in l and "value='hello-guest'" in l for l in lines), res.stdout

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

from batch import Batch
from guest import REPO
import totals

pytestmark = pytest.mark.guest


def pattern_plane(seq, plane, size):
    """Plane `plane` of capture frame `seq`: byte i = (seq + 3*plane + i) % 251."""
    start = (seq + 3 * plane) % 251
    period = bytes((start + i) % 251 for i in range(251))
    return (period * (size // 251 + 1))[:size]


def pattern_frame(seq, plane_sizes):
    return b"".join(pattern_plane(seq, p, s) for p, s in enumerate(plane_sizes))


# One device per job: a job that changes a format or reads the device log has its device to
# itself. (job name, profile, command); $VMRS_DEV is the job's node, $VMRS_JOB_OUT its files.
COMPLIANCE = [("capture", "-s -f"), ("capture-mp", "-s -f"), ("capture-nv", "-s -f"),
              ("output", "-s -f"), ("m2m", "-s")]
CAP_N, MP_N, OUT_N, M2M_N = 4, 3, 5, 4
OUT_SIZE, M2M_SIZE = 640 * 480 * 2, 640 * 480 * 3 // 2


def _capture_cmd(io):
    return (f"v4l2-ctl -d $VMRS_DEV {io} --stream-count={CAP_N} --stream-to=/tmp/a.raw && "
            "v4l2-ctl -d $VMRS_DEV --set-fmt-video=width=320,height=240,pixelformat=RGB3 "
            f"{io} --stream-count={CAP_N} --stream-to=/tmp/b.raw && "
            "cp /tmp/a.raw /tmp/b.raw $VMRS_JOB_OUT/ && echo done")


def _mplane_cmd(fmt):
    return (f"v4l2-ctl -d $VMRS_DEV --set-fmt-video=pixelformat={fmt} --stream-mmap "
            f"--stream-count={MP_N} --stream-to=/tmp/m.raw && "
            f"v4l2-ctl -d $VMRS_DEV --stream-user --stream-count={MP_N} --stream-to=/tmp/u.raw && "
            "cp /tmp/m.raw /tmp/u.raw $VMRS_JOB_OUT/ && echo done")


def _output_cmd(io):
    return (f"head -c {OUT_N * OUT_SIZE} /dev/urandom > /tmp/in.raw && "
            f"v4l2-ctl -d $VMRS_DEV {io} --stream-from=/tmp/in.raw --stream-count={OUT_N} && "
            "cp /tmp/in.raw $VMRS_JOB_OUT/ && echo done")


def _m2m_cmd(io):
    return (f"head -c {M2M_N * M2M_SIZE} /dev/urandom > /tmp/in.raw && "
            f"v4l2-ctl -d $VMRS_DEV {io} --stream-from=/tmp/in.raw --stream-to=/tmp/out.raw "
            f"--stream-count={M2M_N} && cp /tmp/in.raw /tmp/out.raw $VMRS_JOB_OUT/ && echo done")


JOBS = []
for _profile, _flags in COMPLIANCE:
    for _tool in totals.TOOLS:
        JOBS.append((f"compliance-{_tool}-{_profile}", _profile,
                     f"{totals.command(_tool)} -d $VMRS_DEV {_flags} 2>&1"))
JOBS += [(f"capture{io}", "capture", _capture_cmd(io)) for io in ("--stream-mmap", "--stream-user")]
JOBS += [("mplane-YM12", "capture-mp", _mplane_cmd("YM12")),
         ("mplane-NM12", "capture-nv", _mplane_cmd("NM12"))]
JOBS += [(f"output{io}", "output", _output_cmd(io))
         for io in ("--stream-out-mmap", "--stream-out-user")]
JOBS += [(f"m2m-{io.split()[0][2:]}", "m2m", _m2m_cmd(io))
         for io in ("--stream-mmap --stream-out-mmap", "--stream-user --stream-out-user")]
JOBS += [("string-ctrl", "capture-nv",
          f"python3 {REPO}/tests/guest_tools/ext_ctrl_probe.py $VMRS_DEV && "
          "v4l2-ctl -d $VMRS_DEV --set-ctrl=label=hello-guest && "
          "v4l2-ctl -d $VMRS_DEV --get-ctrl=label && v4l2-ctl -d $VMRS_DEV --list-ctrls")]


@pytest.fixture(scope="module")
def jobs():
    """Every job of this file in one guest boot, one device each: {name: batch.JobResult}."""
    b = Batch([f"vmrs:{profile}" for _, profile, _ in JOBS])
    for i, (name, _, cmd) in enumerate(JOBS):
        b.add(name, cmd, dev=i, timeout=900)
    return b.run()


def done(job):
    job.check()
    assert job.status == 0 and "done" in job.stdout, (job.status, job.stdout, job.stderr)
    return job


@pytest.mark.parametrize("tool", totals.TOOLS)
@pytest.mark.parametrize("profile,flags", COMPLIANCE)
def test_compliance_is_clean(jobs, tool, profile, flags):
    """0 failed, 0 warnings and the pinned total (tests/totals.py), MMAP and USERPTR
    streaming among the tests that passed."""
    j = jobs[f"compliance-{tool}-{profile}"]
    j.check()
    totals.assert_clean(j.stdout, tool, profile)
    # 1.32 names the MMAP runs "MMAP (select, REQBUFS)", ... (and adds CREATE_BUFS ones).
    for mode in (r"MMAP \(select[^)]*\)", r"MMAP \(epoll[^)]*\)", r"USERPTR \(select\)"):
        assert re.search(rf"test {mode}: OK", j.stdout), j.stdout[-3000:]
    if profile == "m2m":
        # v4l2-compliance's M2M streaming: CAPTURE buffers came back for the OUTPUT ones.
        counts = re.findall(r"Video Capture Multiplanar: Captured (\d+) buffers", j.stdout)
        assert counts and all(int(c) > 0 for c in counts), j.stdout[-3000:]


def test_pattern_helper_is_not_trivial():
    # The expected frames themselves: an all-zero frame can never match.
    f = pattern_frame(0, [1000])
    assert f[:3] == b"\x00\x01\x02" and f[251] == 0 and f[252] == 1
    assert pattern_frame(5, [10, 10])[10:13] == bytes([8, 9, 10])
    assert any(f) and f != bytes(len(f))


@pytest.mark.parametrize("io", ["--stream-mmap", "--stream-user"])
def test_capture_frames_are_the_pattern(jobs, io):
    """Single-planar capture, two formats: YUYV 640x480 (default) and RGB3 320x240."""
    j = done(jobs[f"capture{io}"])
    for name, size in (("a.raw", 640 * 480 * 2), ("b.raw", 320 * 240 * 3)):
        data = (j.dir / name).read_bytes()
        assert len(data) == CAP_N * size, (name, len(data))
        for k in range(CAP_N):
            assert data[k * size:(k + 1) * size] == pattern_frame(k, [size]), (name, k)


@pytest.mark.parametrize("fmt,planes", [
    ("YM12", [640 * 480, 640 * 480 // 4, 640 * 480 // 4]),
    ("NM12", [640 * 480, 640 * 480 // 2]),
])
def test_multiplanar_capture_frames_are_the_pattern(jobs, fmt, planes):
    """Genuinely multi-planar formats (3 and 2 memory planes), MMAP and USERPTR."""
    j = done(jobs[f"mplane-{fmt}"])
    size = sum(planes)
    for name in ("m.raw", "u.raw"):
        data = (j.dir / name).read_bytes()
        assert len(data) == MP_N * size, (name, len(data))
        for k in range(MP_N):
            assert data[k * size:(k + 1) * size] == pattern_frame(k, planes), (name, k)


def output_log(log):
    return [(int(s), int(n), int(h, 16)) for s, n, h in
            re.findall(r"output frame (\d+) bytesused (\d+) crc32 ([0-9a-f]{8})", log)]


@pytest.mark.parametrize("io", ["--stream-out-mmap", "--stream-out-user"])
def test_output_frames_arrive_intact(jobs, io):
    """v4l2-ctl streams random YUYV 640x480 frames; the device logs the CRC-32 of each."""
    j = done(jobs[f"output{io}"])
    data = (j.dir / "in.raw").read_bytes()
    assert len(data) == OUT_N * OUT_SIZE
    want = [(k, OUT_SIZE, zlib.crc32(data[k * OUT_SIZE:(k + 1) * OUT_SIZE]))
            for k in range(OUT_N)]
    assert output_log(j.device_log) == want


@pytest.mark.parametrize("io", ["mmap", "user"])
def test_m2m_loopback_returns_what_was_sent(jobs, io):
    """YM12 640x480 (3 planes) on both queues: CAPTURE gets the OUTPUT payload back."""
    j = done(jobs[f"m2m-stream-{io}"])
    src = (j.dir / "in.raw").read_bytes()
    out = (j.dir / "out.raw").read_bytes()
    assert len(src) == M2M_N * M2M_SIZE
    assert out == src


def test_string_control_payload_goes_through_sg_lists(jobs):
    """Ext-control `ptr` payloads: the capture-nv profile has a "Label" string control
    (Documentation/test-device.md) whose value the device reads and writes in guest memory
    through the SG lists the driver sends; its initial value is "virtio-media"."""
    j = jobs["string-ctrl"]
    j.check()
    assert j.status == 0, j.stdout + j.stderr
    lines = j.stdout.splitlines()
    # QUERY_EXT_CTRL: V4L2_CTRL_TYPE_STRING (7) with V4L2_CTRL_FLAG_HAS_PAYLOAD, 32-byte payload.
    assert "qec 0x981a00 7 0x100 32" in lines, j.stdout
    # Read into a 32-byte user buffer: the device wrote the value into the pinned pages.
    assert "get 32 0 32 'virtio-media'" in lines, j.stdout
    # Too small: ENOSPC (28), nothing written, and `size` set to the control's elem_size (32),
    # as the kernel's control framework does for strings (ptr_to_user) and v4l2-compliance
    # requires, not to the string's length + 1.
    assert "get 4 28 32 ''" in lines, j.stdout
    # An unmapped pointer cannot be pinned: EFAULT (14) before the device sees anything.
    assert "badptr 14" in lines, j.stdout
    # S_EXT_CTRLS sent the new string from user memory; a new session reads it back.
    assert "label: 'hello-guest'" in lines, j.stdout
    assert any("label 0x00981a00 (str)" in l and "value='hello-guest'" in l for l in lines), j.stdout

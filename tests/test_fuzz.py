"""Issue: a bounded ioctl fuzzer run in the guest (tests/guest_tools/fuzz.py, see
Documentation/fuzzing.md): random VIDIOC_* codes and argument bytes, wrong sizes and
directions, hostile pointers, random mmap/munmap/mremap, several processes that open, close,
fork, exit and get killed concurrently. No splat, no leak (kmemleak), no hang, and the node still
works and the module unloads afterwards.

Also the minimized reproducers of what the fuzzer found, as regression tests.
"""
import json
import re

import pytest

import clips
from guest import REPO, run_guest

pytestmark = pytest.mark.guest

FUZZ = f"python3 {REPO}/tests/guest_tools/fuzz.py"
SEED = 20261122
CASES = 6000
FRAME = 640 * 480 * 3 // 2  # YU12 640x480, the capture-mplane device's only format

# After the fuzzer: the node answers, streams 5 frames, and the module unloads (every file,
# mapping and process of the fuzzer is gone, so a leaked reference would make rmmod fail).
AFTER = r"""
echo "fuzz-exit $fz"
pgrep -c python3 | sed 's/^/python-left /'
v4l2-ctl -d0 --all >/tmp/all.txt 2>&1; echo "all-exit $?"
grep -m1 'Card type' /tmp/all.txt
if [ "$stream" = 1 ]; then
v4l2-ctl -d0 --stream-mmap --stream-count=5 --stream-to=/tmp/s.yuv >/dev/null 2>&1
echo "stream-exit $? $(stat -c %s /tmp/s.yuv 2>/dev/null)"
fi
rmmod virtio_media; echo "rmmod-exit $?"
test -e /sys/module/virtio_media; echo "module-present $?"
"""


def markers(stdout):
    return {m.group(1): m.group(2).strip() for m in
            re.finditer(r"^(fuzz-exit|python-left|all-exit|stream-exit|rmmod-exit|"
                        r"module-present) ?(.*)$", stdout, re.M)}


def summary(stdout):
    lines = [l for l in stdout.splitlines() if l.startswith("{")]
    assert lines, stdout
    return json.loads(lines[0])


def check_run(res, cases, stream=True):
    assert res.status == 0, (res.stdout, res.stderr)
    s = summary(res.stdout)
    print(f"fuzz: {s['cases']} cases (seed {s['seed']}) in {s['elapsed_s']} s: "
          f"per kind {s['per_kind']}, errno {s['errno']}, "
          f"alarm-interrupted {s['interrupted_by_alarm']}, child crashes {s['child_crashes']}, "
          f"worker crashes {len(s['worker_crashes'])}")
    assert s["cases_requested"] == cases
    assert s["cases"] == cases, s
    assert s["hangs"] == 0 and s["stalls"] == 0, res.stderr
    assert s["table_mismatches"] == 0 and s["table_codes"] >= 80, s
    assert all(n > 0 for n in s["per_kind"].values()), s["per_kind"]
    # Errors are the V4L2 classes for bad arguments, plus successes; the device never vanished
    # (ETIMEDOUT/ENODEV would say so).
    assert s["errno"].get("ok", 0) > 0 and s["errno"].get("EINVAL", 0) > 0, s["errno"]
    assert s["errno"].get("EFAULT", 0) > 0, s["errno"]
    assert "ETIMEDOUT" not in s["errno"] and "ENODEV" not in s["errno"], s["errno"]
    m = markers(res.stdout)
    assert m["fuzz-exit"] == "0", res.stderr
    assert m["python-left"] == "0", m
    assert m["all-exit"] == "0", res.stdout
    if stream:
        assert m["stream-exit"] == f"0 {5 * FRAME}", m
    assert m["rmmod-exit"] == "0" and m["module-present"] == "1", m
    return s


def test_fuzzer_capture_mplane_no_splat_no_leak_no_hang():
    res = run_guest(f"{FUZZ} --seed {SEED} --cases {CASES} --max-seconds 420; fz=$?\n"
                    f"stream=1\n{AFTER}", backend="vmrs:capture-mplane", kmemleak=True,
                    timeout=560)
    check_run(res, CASES)


def test_fuzzer_decoder_then_decodes_bit_exact():
    """The codec node (media controller, events, DECODER_CMD, two queues per open file) under
    the fuzzer with kmemleak; afterwards the decoder still decodes a clip to the software
    decoder's frames (tests/guest_tools/decoder_seq.py) and the module unloads."""
    clip = clips.get_clip("clip_320x240")
    check = (f"python3 {REPO}/tests/guest_tools/decoder_seq.py /dev/video0 {clip.path} "
             f"--passes 1 > $VMRS_OUT/seq.json; echo seq-exit $?")
    # A decoder given no bitstream never fills CAPTURE buffers, so a blocking DQBUF in a forked
    # child (fork cases) waits until the fuzzer SIGKILLs it at 60 s (then checked to die within
    # 30 s): the stall alarm must not fire before that.
    res = run_guest(f"{FUZZ} --seed {SEED} --cases 3000 --max-seconds 300 --stall-seconds 75; "
                    f"fz=$?\n{check}\n"
                    f"stream=0\n{AFTER}", backend="vmrs:decoder", kmemleak=True, timeout=480)
    check_run(res, 3000, stream=False)
    assert "seq-exit 0" in res.stdout, res.stdout[-2000:]
    out = json.loads((res.run_dir / "share" / "seq.json").read_text())
    assert "error" not in out, out
    got = [f["md5"] for f in out["passes"][0]["frames"]]
    assert got == [md5 for _, _, md5 in clip.frames]


def test_fuzzer_simple_capture_vhost_device_media():
    # vhost-device-media 0.1.1 (the same virtio-media crate code) dies on a SUBSCRIBE_EVENT of
    # a type it does not know (see below), so its run leaves out ioctls 90/91. Its config space
    # claims single-planar capture while it streams only MPLANE (rig.md): no v4l2-ctl stream.
    res = run_guest(f"{FUZZ} --seed {SEED} --cases 3000 --avoid-nr 90,91 --max-seconds 250; "
                    f"fz=$?\nstream=0\n{AFTER}", backend="simple-capture", timeout=320)
    check_run(res, 3000, stream=False)


# Found by the fuzzer (seed 2): VIDIOC_SUBSCRIBE_EVENT with an event type the virtio-media
# crate (0.0.8) does not know panicked the device's vring worker (`unwrap()` on
# UnrecognizedEvent(2863991618)); every later command timed out. vmrs-device now answers EINVAL
# (tests/device/src/quirks.rs) and the node keeps working.
SUBSCRIBE_BOGUS = r"""
import fcntl, os, struct
SUBSCRIBE_EVENT, QUERYCAP = 0x4020565a, 0x80685600
fd = os.open("/dev/video0", os.O_RDWR)
for ty, flags in ((0xaab55342, 0), (7, 0), (2, 0x80)):
    try:
        fcntl.ioctl(fd, SUBSCRIBE_EVENT, struct.pack("<III", ty, 0, flags) + bytes(20))
        print("subscribe", hex(ty), "ok")
    except OSError as e:
        print("subscribe", hex(ty), e.errno)
os.close(fd)
fd = os.open("/dev/video0", os.O_RDWR)
cap = bytearray(104)
fcntl.ioctl(fd, QUERYCAP, cap, True)
print("card", cap[16:48].rstrip(b"\0").decode())
"""


def test_subscribe_unknown_event_type_is_einval_and_device_survives():
    res = run_guest(f"python3 - <<'EOF'\n{SUBSCRIBE_BOGUS}\nEOF", backend="vmrs:capture-mplane",
                    timeout=120)
    assert res.status == 0, (res.stdout, res.stderr)
    assert res.stdout.split("\n")[:4] == [
        "subscribe 0xaab55342 22", "subscribe 0x7 22", "subscribe 0x2 22",
        "card vmrs capture-mplane"], res.stdout


# Found by the fuzzer (seed 2, errno histogram "EIO"): QUERYBUF/QBUF of a multi-planar buffer
# with `length = 0` (no planes array) returned EIO with "device changed the buffer's
# type/memory/planes", and the failed QBUF had queued the buffer on the device anyway (the next
# QBUF of it got EINVAL). V4L2 (vb2's __verify_planes_array) answers EINVAL: a multi-planar
# buffer has at least one plane. After the EINVAL the buffer is not queued: a proper QBUF works.
ZERO_PLANES = r"""
import ctypes, fcntl, os, struct
REQBUFS, QUERYBUF, QBUF, DQBUF, STREAMON = 0xc0145608, 0xc0585609, 0xc058560f, 0xc0585611, 0x40045612
fd = os.open("/dev/video0", os.O_RDWR | os.O_NONBLOCK)
fcntl.ioctl(fd, REQBUFS, bytearray(struct.pack("<III", 2, 9, 1) + bytes(8)), True)
planes = ctypes.create_string_buffer(64 * 8)
def buf(length, index=1):
    b = bytearray(88)
    struct.pack_into("<IIQ", b, 0, index, 9, 0)
    struct.pack_into("<IQI", b, 60, 1, ctypes.addressof(planes) if length else 0, length)
    return b
def call(code, b):
    try:
        fcntl.ioctl(fd, code, b, True)
        return "ok"
    except OSError as e:
        return str(e.errno)
print("querybuf0", call(QUERYBUF, buf(0)), "qbuf0", call(QBUF, buf(0)),
      "qbuf1", call(QBUF, buf(1)), "streamon",
      call(STREAMON, bytearray(struct.pack("<I", 9))))
import select; p = select.poll(); p.register(fd, select.POLLIN); p.poll(2000)
print("dqbuf0", call(DQBUF, buf(0, 0)), "dqbuf1", call(DQBUF, buf(1, 0)))
"""


def test_zero_planes_multiplanar_buffer_is_einval_and_not_queued():
    res = run_guest(f"python3 - <<'EOF'\n{ZERO_PLANES}\nEOF\ndmesg | grep -c 'changed the buffer' "
                    "| sed 's/^/warnings /'", backend="vmrs:capture-mplane", timeout=120)
    assert res.status == 0, (res.stdout, res.stderr)
    lines = res.stdout.split("\n")
    assert lines[0] == "querybuf0 22 qbuf0 22 qbuf1 ok streamon ok", res.stdout
    assert lines[1] == "dqbuf0 22 dqbuf1 ok", res.stdout
    assert lines[2] == "warnings 0", res.stdout


# Found by the fuzzer ("CLOSE of session N failed: Error(4)" in dmesg after its fork/kill
# cases): a process SIGKILLed while it closes the node. release() posts
# VIRTIO_MEDIA_CMD_CLOSE and waits for the device with Request::wait, an interruptible wait; with
# the fatal signal pending it returns EINTR at once, so the driver does not wait for the device to
# take the CLOSE (send_close's "a following open sees the session gone" does not hold) and warns.
# Memory-safe (the request stays alive until the device answers) and, with this device, which
# takes commands in order, the next open's REQBUFS still succeeds. The fix needs a bounded
# uninterruptible wait for the close path (ffi.rs has only interruptible CondVar waits).
CLOSE_KILL = r"""
import fcntl, os, random, signal, struct, time
REQBUFS = 0xc0145608
rng = random.Random(1)
busy = 0
for i in range(60):
    pid = os.fork()
    if pid == 0:
        while True:
            fd = os.open("/dev/video0", os.O_RDWR)
            try:
                fcntl.ioctl(fd, REQBUFS, bytearray(struct.pack("<III", 2, 9, 1) + bytes(8)), True)
            except OSError:
                pass
            os.close(fd)
    time.sleep(rng.random() * 0.05)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    fd = os.open("/dev/video0", os.O_RDWR)
    try:
        fcntl.ioctl(fd, REQBUFS, bytearray(struct.pack("<III", 2, 9, 1) + bytes(8)), True)
    except OSError:
        busy += 1
    os.close(fd)
print("reqbufs-failed", busy)
"""


def test_close_killed_process_waits_for_the_device():
    """A process SIGKILLed in close() still waits for the device to take the CLOSE (the
    release path's wait goes on uninterruptibly after the signal): no 'CLOSE of session N
    failed: Error(4)', and the next open's REQBUFS finds the buffers free."""
    res = run_guest(f"python3 - <<'EOF'\n{CLOSE_KILL}\nEOF\n"
                    "dmesg | grep -c 'CLOSE of session' | sed 's/^/close-warnings /'",
                    backend="vmrs:capture-mplane", timeout=200)
    assert res.status == 0, (res.stdout, res.stderr)
    assert "reqbufs-failed 0" in res.stdout, res.stdout
    assert "close-warnings 0" in res.stdout, res.stdout

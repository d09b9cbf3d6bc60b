"""A hostile device: the driver against vmrs-device's fault profiles (issue 4).

All the fault profiles run in ONE guest boot (kmemleak on): one virtio-media device per fault
(`vmrs:capture-mplane:fault=NAME`, tests/device/src/fault.rs, Documentation/test-device.md),
one job per test (tests/batch.py): the job's splats and driver warnings are the kernel-log
lines printed while it ran, kmemleak's report after the last job counts against every test.
Each test checks that the ioctl the fault hits fails with an errno, the rest of the device keeps
working on the same file and after close + reopen, the driver says why in dmesg, rate-limited,
and that it printed no warning the fault does not explain. The guest side is
tests/guest_tools/faults.py (raw ioctls, JSON out) and stream.py. The hot-unplug test needs its
own boot (it removes a device from QEMU while the guest runs).

Expected values come from the protocol (sizes: response header 8 bytes, v4l2_format 208 bytes,
VIRTIO_MEDIA_MAX_PLANES 8), the fault's definition and the driver's documented errnos
(Documentation/design.md), not from the driver's code.
"""
import json
import re

import pytest

from batch import Batch, ok
from guest import REPO

TOOLS = f"{REPO}/tests/guest_tools"
FAULTS = f"python3 {TOOLS}/faults.py $VMRS_DEV"
STREAM = f"python3 {TOOLS}/stream.py $VMRS_DEV 9 4"

FRAME = 640 * 480 * 3 // 2  # YU12 640x480: one plane of 460800 bytes
FMT_RESP = 8 + 208  # response header + struct v4l2_format
# The driver's warning when a command times out (Documentation/design.md: 10 s).
TIMEOUT_WARN = r"session \d+ ioctl \d+ not answered within 10000 ms"


# Command faults on G_FMT: (fault, the driver's reason in "malformed ioctl response: ...").
MALFORMED = [
    ("short-header", r"Short\(4, 8\)"),  # 4 bytes used, the header needs 8
    ("short-payload", rf"Short\(24, {FMT_RESP}\)"),  # success with 16 of 208 payload bytes
    ("bad-status", r"BadStatus\(4294967274\)"),  # 0xffffffea = -EINVAL: not an errno
    ("long-payload", rf"Overflow\({FMT_RESP + 64}, {FMT_RESP}\)"),  # used > writable part
]

# Event faults that add bogus DQBUF events next to the real ones: (fault, dmesg reasons).
BAD_EVENTS = [
    ("dqbuf-bad-index", [r"bad DQBUF event dropped: BadIndex\(1000, 4\)"]),
    # Type 10 (OUTPUT_MPLANE): a queue with no buffers; type 3 (VIDEO_OVERLAY): not streaming.
    ("dqbuf-bad-type", [r"bad DQBUF event dropped: BadIndex\(\d+, 0\)",
                        r"DQBUF event with buffer type 3 dropped"]),
    ("dqbuf-too-many-planes", [r"dropping malformed event: TooManyPlanes\(9\)"]),
    ("dqbuf-bad-length", [rf"bad DQBUF event dropped: BadLength\(0, {FRAME + 1}, {FRAME}\)"]),
    # length = bytesused = 1 GiB: consistent in itself, but not the buffer QUERYBUF described
    # (user space mapped 460800 bytes and would read past its mapping).
    ("dqbuf-oversize", [rf"bad DQBUF event dropped: LengthChanged\(0, {1 << 30}, {FRAME}\)"]),
    ("closed-session", [r"event for unknown session 3735928559",
                        r"event for unknown session (\d+)"]),
]

HANG_BG = (f"{FAULTS} hang > /tmp/h.out 2>&1 & H=$!; "
           "while ! grep -q calling /tmp/h.out; do sleep 0.2; done; sleep 0.5; ")

# One job per test: (name, fault, command, the driver warnings the fault explains).
JOBS = [(f"malformed-{f}", f, f"{FAULTS} gfmt 50", [rf"malformed ioctl response: {r}"])
        for f, r in MALFORMED]
JOBS += [
    ("reuse", "reuse-open-id", f"{FAULTS} reuse", [r"device reused open session id \d+"]),
    ("hang", "hang", f"{FAULTS} gfmt", [TIMEOUT_WARN]),
    ("late", "late", f"{FAULTS} gfmt 3", [TIMEOUT_WARN]),
    ("error", "error-event", f"{FAULTS} error 10", [r"device reported error 71 on session \d+"]),
]
# A session opened and closed first, so closed-session has an old id to send events for.
BOGUS_CMD = (f"{FAULTS} cap && {STREAM} 30 --mmap --dump /tmp/f.yuv && python3 -c \""
             "d=open('/tmp/f.yuv','rb').read(); "
             f"print('pattern', all(d[i*{FRAME}]==i%256 for i in range(30)), len(d))\"")
JOBS += [(f"events-{f}", f, BOGUS_CMD, reasons) for f, reasons in BAD_EVENTS]
JOBS += [
    ("flood", "flood",
     f"(for i in $(seq 10); do {FAULTS} cap >/dev/null || echo CAPFAIL; done; "
     "echo capdone) & C=$!; "
     f"S=$(date +%s.%N); {STREAM} 20 --mmap; E=$(date +%s.%N); wait $C; "
     "awk \"BEGIN {print \\\"secs\\\", $E - $S}\"",
     [r"event for unknown session 3735928559"]),
    # The device refuses the MUNMAPs of the addresses it made up; the driver logs that.
    ("mmap-outside", "mmap-outside", f"{FAULTS} mmap",
     [r"MMAP answer 0xfffff000\+0x71000 outside SHM region 0",
      r"MUNMAP of 0xfffff000 failed: Error\(22\)"]),
    ("mmap-overlap", "mmap-overlap", f"{FAULTS} mmap", [r"MUNMAP of 0x0 failed: Error\(22\)"]),
    # Driver unbind (sysfs) while a G_FMT is held, then bind again: the node comes back.
    ("unbind", "hang",
     "D=$VMRS_VIRTIO; echo dev=$D; " + HANG_BG +
     "echo $D > /sys/bus/virtio/drivers/virtio_media/unbind; echo unbind=$?; "
     "wait $H; cat /tmp/h.out; "
     "echo $D > /sys/bus/virtio/drivers/virtio_media/bind; echo bind=$?; "
     f"for i in $(seq 60); do V=$({TOOLS}/node $VMRS_INDEX) && break; sleep 1; done; "
     f"python3 {TOOLS}/faults.py $V cap",
     [TIMEOUT_WARN]),
]


@pytest.fixture(scope="module")
def jobs():
    """The whole batch, run once for this file: {job name: batch.JobResult}."""
    b = Batch([f"vmrs:capture-mplane:fault={fault}" for _, fault, _, _ in JOBS], kmemleak=True)
    for i, (name, _, cmd, warn) in enumerate(JOBS):
        b.add(name, f"export VMRS_INDEX={i}; {cmd}", dev=i, timeout=400, expect_warnings=warn)
    return b.run()



def last_json(stdout):
    lines = [l for l in stdout.splitlines() if l.startswith("{")]
    assert lines, stdout
    return json.loads(lines[-1])


def count(text, pattern):
    return len(re.findall(pattern, text))


def assert_rate_limited(dmesg, faults):
    """The driver's warnings are rate-limited (the kernel's default: bursts of at most 10
    lines per 5 s interval; two bursts can be adjacent, so any 5-second window holds at most
    20), and the device committed more faults than the driver printed lines."""
    times = [float(m.group(1)) for m in
             re.finditer(r"^\[\s*([\d.]+)\] virtio_media virtio\d+: (?!'vmrs)", dmesg, re.M)]
    assert times, dmesg
    worst = max(sum(1 for u in times if t <= u < t + 5) for t in times)
    assert worst <= 20, (worst, dmesg)
    assert faults > len(times), (faults, len(times))


@pytest.mark.parametrize("fault,reason", MALFORMED, ids=[f for f, _ in MALFORMED])
def test_malformed_response(jobs, fault, reason):
    """A malformed G_FMT answer: G_FMT fails with EIO every time (no partial copy), the other
    ioctls on the same file and after reopen work, and the warning is rate-limited (52 bad
    answers, far fewer lines)."""
    j = ok(jobs[f"malformed-{fault}"])
    r = last_json(j.stdout)
    assert r["gfmt"] == "EIO" and r["reopen_gfmt"] == "EIO", r
    assert r["more_gfmt"] == {"EIO": 50}, r
    assert r["enum_fmt"] == r["querycap"] == "OK", r
    assert r["reopen_querycap"] == r["reopen_enum_fmt"] == "OK", r
    assert re.search(rf"malformed ioctl response: {reason}", j.dmesg), j.dmesg
    assert count(j.device_log, r"fault: session \d+ G_FMT") == 52
    assert_rate_limited(j.dmesg, 52)


def test_reused_open_id(jobs):
    """OPEN answering the id of a session still open: that open() fails with EBUSY, the
    session that owns the id is untouched, and a later open gets a session again."""
    j = ok(jobs["reuse"])
    r = last_json(j.stdout)
    assert r == {"a_gfmt": "OK", "open_b": "EBUSY", "a_gfmt_after": "OK", "c_gfmt": "OK"}, r
    assert re.search(r"device reused open session id \d+", j.dmesg), j.dmesg
    log = j.device_log
    m = re.search(r"fault: OPEN of session (\d+) answered with open session (\d+)", log)
    assert m, log
    # The driver must not close the id it was wrongly given (it belongs to session A): A is
    # closed exactly once, when A's file is closed.
    assert count(log, rf"fault: CLOSE session {m.group(2)}\b") == 1, log


def test_unanswered_command_times_out(jobs):
    """A G_FMT the device never answers: ETIMEDOUT (110), not before the driver's 10 s
    timeout (no upper bound: how late the waiter runs depends on the machine); the rest of
    the device works meanwhile and after reopen."""
    j = ok(jobs["hang"])
    r = last_json(j.stdout)
    assert r["gfmt"] == "ETIMEDOUT" and r["gfmt_s"] >= 9.9, r
    assert r["reopen_gfmt"] == "ETIMEDOUT", r
    assert r["enum_fmt"] == r["querycap"] == "OK", r
    assert r["reopen_querycap"] == r["reopen_enum_fmt"] == "OK", r
    assert count(j.device_log, r"G_FMT held, never answered") == 2
    # The driver says which command timed out (one line per timed-out command: two, far
    # below the rate limit's burst), not only the caller.
    assert len(re.findall(r"session \d+ ioctl 4 not answered within 10000 ms", j.dmesg)) == 2, \
        j.dmesg[-2000:]


def test_late_answer_after_timeout(jobs):
    """The first G_FMT answered only after the driver gave up on it (when the next command
    arrives, and after that command's own answer): ETIMEDOUT, then the late answer lands in the
    request the driver kept alive (KASAN would report a use-after-free, kmemleak a leak; a
    driver that put the timed-out request back in its pool and reused it for the next command
    would see that command's answer overwritten by the late G_FMT answer), and everything
    works after."""
    j = ok(jobs["late"])
    r = last_json(j.stdout)
    assert r["gfmt"] == "ETIMEDOUT" and r["gfmt_s"] >= 9.9, r
    assert r["enum_fmt"] == r["querycap"] == "OK", r
    # The answer to the command after the timed-out one is that command's own: the same
    # description as on a fresh session (the late answer did not land in its buffers).
    assert r["enum_fmt_desc"] == r["reopen_enum_fmt_desc"] and r["enum_fmt_desc"][0] == 9, r
    assert r["reopen_gfmt"] == "OK" and r["more_gfmt"] == {"OK": 3}, r
    assert "answering held chain" in j.device_log


def test_error_event_mid_stream(jobs):
    """An ERROR event (EPROTO, 71) after 3 frames: the session fails: DQBUF, QBUF and G_FMT
    return EPROTO, poll() reports POLLERR, close works and sends CLOSE once; a new open
    streams again."""
    j = ok(jobs["error"])
    r = last_json(j.stdout)
    assert r["stream"] in ("DQBUF EPROTO", "QBUF EPROTO") and r["frames"] <= 3, r
    assert r["poll"] and all(m & 0x008 for m in r["poll"]), r  # POLLERR
    assert r["dqbuf"] == r["qbuf"] == r["gfmt"] == r["streamoff"] == "EPROTO", r
    assert r["reopen_gfmt"] == "OK", r
    assert r["reopen_stream"] == "OK" and r["reopen_frames"] == 10, r
    m = re.search(r"device reported error 71 on session (\d+)", j.dmesg)
    assert m, j.dmesg
    assert count(j.device_log, rf"fault: CLOSE session {m.group(1)}\b") == 1, j.device_log


@pytest.mark.parametrize("fault,reasons", BAD_EVENTS, ids=[f for f, _ in BAD_EVENTS])
def test_bogus_dqbuf_events(jobs, fault, reasons):
    """Bogus DQBUF events around every real one: each is dropped with a (rate-limited)
    warning and the stream goes on: 30 frames, each a real buffer of 460800 bytes with the
    device's pattern (frame n: Y = n)."""
    j = ok(jobs[f"events-{fault}"])
    r = last_json(j.stdout)
    assert len(r["frames"]) == 30, r
    assert all(f["bytesused"] == FRAME and 0 <= f["index"] < 4 for f in r["frames"]), r
    assert f"pattern True {30 * FRAME}" in j.stdout, j.stdout
    for reason in reasons:
        assert re.search(reason, j.dmesg), (reason, j.dmesg)
    bogus = sum(int(n) for n in re.findall(r"fault: (\d+) bogus event", j.device_log))
    assert bogus >= 30, bogus
    assert_rate_limited(j.dmesg, bogus)
    if fault == "closed-session":
        closed = re.findall(r"fault: CLOSE session (\d+)", j.device_log)
        assert closed and re.search(rf"event for unknown session {closed[0]}\b", j.dmesg)


def test_event_flood(jobs):
    """1000 bogus events before every real DQBUF event (20000 for 20 frames): the guest stays
    responsive (the stream finishes, a QUERYCAP loop in parallel keeps answering), the
    warnings are rate-limited, and nothing accumulates (kmemleak; per-queue done ring)."""
    j = ok(jobs["flood"])
    r = last_json(j.stdout)
    assert len(r["frames"]) == 20, r
    assert "CAPFAIL" not in j.stdout and "capdone" in j.stdout, j.stdout
    assert "fault: flood, 20000 bogus events queued so far" in j.device_log, j.device_log[-2000:]
    n = count(j.dmesg, r"event for unknown session 3735928559")
    assert n >= 1, j.dmesg
    assert_rate_limited(j.dmesg, 20000)
    secs = float(re.search(r"secs ([\d.]+)", j.stdout).group(1))
    print(f"flood: 20000 bogus events + 20 frames in {secs:.1f} s "
          f"({20000 / secs:.0f} events/s), {n} warning lines")


@pytest.mark.parametrize("fault", ["mmap-outside", "mmap-overlap"])
def test_mmap_answers(jobs, fault):
    """mmap-outside: every MMAP answer ends beyond SHM region 0, so every mmap() fails with
    EIO and a warning; the device's MUNMAP error for the bogus address is only logged.
    mmap-overlap: every buffer is said to live at the first buffer's address; the driver
    cannot tell this from the spec's "same address for the same buffer" (it is
    inside the region), so mmap() succeeds and reading is safe (it is the device's memory).
    In both, the device refuses the MUNMAPs of the addresses it made up (EINVAL), and the
    driver logs each refusal: the only warnings besides the MMAP one."""
    j = ok(jobs[fault])
    r = last_json(j.stdout)
    assert r["reqbufs"] == "OK", r
    if fault == "mmap-outside":
        assert r["mmap"] == ["EIO"] * 4, r
        assert count(j.dmesg, r"MMAP answer 0xfffff000\+0x71000 outside SHM region 0") >= 1
    else:
        assert r["mmap"] == ["OK"] * 4 and r["read"] == [4096] * 4, r
        assert count(j.device_log, r"fault: MMAP answered at") == 3
    assert r["stream"] == "OK" and r["frames"] == 3, r
    assert r["reopen_querycap"] == "OK", r


def test_unbind_with_command_in_flight(jobs):
    """Driver unbind (sysfs) while a G_FMT is held by the device: the waiter gets ENODEV
    (the G_FMT is repeated after each 10 s timeout, and every one reached the device, so the
    last was in flight), no hang or splat; bind again: the node is back and works."""
    j = ok(jobs["unbind"])
    assert "unbind=0" in j.stdout and "bind=0" in j.stdout, j.stdout
    h = [json.loads(l) for l in j.stdout.splitlines() if l.startswith('{"close"')]
    assert h and h[0]["gfmt"] == "ENODEV", j.stdout
    # Every G_FMT reached the device, the last one too: it was in flight at the unbind.
    assert count(j.device_log, "G_FMT held") == h[0]["timeouts"] + 1, j.device_log
    assert last_json(j.stdout) == {"querycap": "OK", "enum_fmt": "OK"}, j.stdout


def test_unplug_with_command_in_flight_while_streaming():
    """device_del while the device holds a G_FMT unanswered and another process streams:
    both get ENODEV, the node goes away, the module unloads; no splat, no leak."""
    from guest import Guest
    cmd = ("VMRS_DEV=/dev/video0; "
           f"{STREAM} 100000 --mmap --ready /tmp/sready > /tmp/s.out 2>&1 & P=$!; "
           "while ! test -e /tmp/sready; do sleep 0.2; done; " + HANG_BG +
           "touch $VMRS_OUT/ready; wait $P; echo streamer=$?; tail -c 300 /tmp/s.out; echo; "
           "wait $H; cat /tmp/h.out; "
           "for i in $(seq 30); do test -e /dev/video0 || break; sleep 1; done; "
           "ls /dev/video0 2>&1; rmmod virtio_media && echo rmmod-ok")
    with Guest(cmd, backend="vmrs:capture-mplane:fault=hang", kmemleak=True, timeout=400,
               expect_warnings=[TIMEOUT_WARN]) as g:
        g.wait_for_file("ready", timeout=300)
        g.hmp("device_del vmedia")
        res = g.wait()
    assert res.status == 0, (res.stdout, res.stderr)
    assert "streamer=1" in res.stdout and '"errno": "ENODEV"' in res.stdout, res.stdout
    h = [json.loads(l) for l in res.stdout.splitlines() if l.startswith('{"close"')]
    assert h and h[0]["gfmt"] == "ENODEV", res.stdout
    assert count(res.device_log(), "G_FMT held") == h[0]["timeouts"] + 1, res.device_log()
    assert "No such file" in res.stdout and "rmmod-ok" in res.stdout, res.stdout

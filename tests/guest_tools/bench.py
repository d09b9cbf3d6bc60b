#!/usr/bin/env python3
"""Guest side of bench/run: measures the driver under a real device and prints JSON.

- capture: frames per second over N MMAP frames (type 9, 4 buffers), first DQBUF to last;
  the device's advertised frame interval (G_PARM) for comparison;
- g_fmt: median and p99 round-trip latency of VIDIOC_G_FMT over M calls, in microseconds;
- ioctl_rate: aggregate G_FMT calls per second with 1, 2 and 4 processes, each with its own
  open file (device session), for a fixed duration.
"""
import json
import mmap
import os
import struct
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from v4l2probe import IOWR, IOW, ioctl  # noqa: E402

DEV = "/dev/video0"
GFMT = IOWR(4, 208)
GFMT_ARG = struct.pack("<I", 9) + bytes(204)


def capture(n):
    import ctypes
    fd = os.open(DEV, os.O_RDWR)
    err, r = ioctl(fd, IOWR(8, 20), struct.pack("<III", 4, 9, 1) + bytes(8))
    assert err == 0, err
    count, = struct.unpack_from("<I", r, 0)
    planes = ctypes.create_string_buffer(64 * 8)
    paddr = ctypes.addressof(planes)

    def vb(i, np):
        b = bytearray(88)
        struct.pack_into("<II", b, 0, i, 9)
        struct.pack_into("<I", b, 60, 1)
        struct.pack_into("<QI", b, 64, paddr, np)
        return b
    maps = []
    for i in range(count):
        err, b = ioctl(fd, IOWR(9, 88), vb(i, 8))
        assert err == 0, err
        length, off = struct.unpack_from("<IQ", planes.raw, 4)
        maps.append(mmap.mmap(fd, length, mmap.MAP_SHARED, mmap.PROT_READ, offset=off))
    for i in range(count):
        assert ioctl(fd, IOWR(15, 88), vb(i, 1))[0] == 0
    assert ioctl(fd, IOW(18, 4), struct.pack("<I", 9))[0] == 0
    t0 = None
    for k in range(n):
        err, b = ioctl(fd, IOWR(17, 88), vb(0, 1))
        assert err == 0, err
        if t0 is None:
            t0 = time.monotonic()
        index, = struct.unpack_from("<I", b, 0)
        maps[index][0]  # touch the frame
        assert ioctl(fd, IOWR(15, 88), vb(index, 1))[0] == 0
    t1 = time.monotonic()
    ioctl(fd, IOW(19, 4), struct.pack("<I", 9))
    err, p = ioctl(fd, IOWR(21, 204), struct.pack("<I", 9) + bytes(200))
    num, den = struct.unpack_from("<II", p, 12)  # parm.capture.timeperframe
    for m in maps:
        m.close()
    os.close(fd)
    return {"frames": n, "fps": (n - 1) / (t1 - t0),
            "device_advertised_fps": den / num if num else None}


def g_fmt_latency(m):
    fd = os.open(DEV, os.O_RDWR)
    lat = []
    for _ in range(m):
        t = time.perf_counter_ns()
        err, _ = ioctl(fd, GFMT, GFMT_ARG)
        lat.append(time.perf_counter_ns() - t)
        assert err == 0, err
    os.close(fd)
    lat.sort()
    return {"calls": m, "median_us": lat[m // 2] / 1000, "p99_us": lat[int(m * 0.99)] / 1000}


def _g_fmt_worker(seconds, cpu=None, go=None):
    """Forks a process that opens its own session and counts G_FMT calls for `seconds`
    (after `go` is readable, if given). Returns (pid, read end of its result pipe)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        if cpu is not None:
            os.sched_setaffinity(0, {cpu})
        fd = os.open(DEV, os.O_RDWR)
        if go is not None:
            for _ in range(50):  # warm up, then start together
                ioctl(fd, GFMT, GFMT_ARG)
            os.read(go, 1)
        end = time.monotonic() + seconds
        n = 0
        while time.monotonic() < end:
            assert ioctl(fd, GFMT, GFMT_ARG)[0] == 0
            n += 1
        os.write(w, str(n).encode())
        os._exit(0)
    os.close(w)
    return pid, r


def _collect(pid, r):
    n = int(os.read(r, 64) or b"0")
    os.waitpid(pid, 0)
    return n


def rate(procs, seconds):
    go_r, go_w = os.pipe()
    workers = [_g_fmt_worker(seconds, go=go_r) for _ in range(procs)]
    time.sleep(1 + procs)
    os.write(go_w, b"x" * procs)
    total = sum(_collect(pid, r) for pid, r in workers)
    return {"processes": procs, "seconds": seconds, "calls": total, "calls_per_s": total / seconds}


def rate_pinned(seconds):
    """G_FMT calls/s of one process pinned to each CPU in turn. Under TCG, a waiter on the
    vCPU that does not take the commandq interrupt pays a cross-vCPU wake-up per command."""
    return {f"cpu{cpu}": _collect(*_g_fmt_worker(seconds, cpu=cpu)) / seconds
            for cpu in sorted(os.sched_getaffinity(0))}


def main():
    frames = int(sys.argv[1]) if len(sys.argv) > 1 else 300
    calls = int(sys.argv[2]) if len(sys.argv) > 2 else 10000
    secs = float(sys.argv[3]) if len(sys.argv) > 3 else 5
    out = {"capture": capture(frames), "g_fmt": g_fmt_latency(calls),
           "ioctl_rate": [rate(p, secs) for p in (1, 2, 4)],
           "g_fmt_calls_per_s_pinned": rate_pinned(secs)}
    print(json.dumps(out))


if __name__ == "__main__":
    main()

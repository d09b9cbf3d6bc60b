#!/usr/bin/env python3
"""Guest side of bench/run: measures one V4L2 node and prints one JSON object.

usage: bench.py DEV [--calls N] [--seconds S] [--sessions 1,2,4,8] [--idle 1,16,256]
                    [--capture FOURCC:WxH,...] [--frames N] [--memory] [--ctrl ID:ERRNO]
                    [--cpus 0,1]

- `latency`: round trip of single ioctls over N calls each (after WARMUP calls), one open file:
  VIDIOC_G_FMT (the device answers), VIDIOC_QUERYCAP (answered by the driver) and
  VIDIOC_S_CTRL of control ID (`--ctrl`; ERRNO is the errno the node is expected to answer,
  0 for success): median, p99 and mean in microseconds;
- `latency_by_cpu`: the same with the process pinned to each CPU of `--cpus` in turn: where
  the caller runs relative to the CPU that takes the device's interrupt (a wake-up across
  vCPUs costs an IPI) changes the figure more than most driver changes, and the scheduler's
  choice differs from boot to boot: compare drivers CPU by CPU;
- `rate`: aggregate G_FMT calls per second of P processes, each with its own open file
  (session), for S seconds;
- `idle`: G_FMT latency and one-process rate with K other sessions open but idle;
- `capture`: frames per second of MMAP and USERPTR streaming (single-planar capture, 4
  buffers) for each FOURCC:WxH, with the guest's CPU time per frame (all CPUs, /proc/stat);
- `memory`: kernel slab growth (`Slab:` of /proc/meminfo) per open session (256 sessions) and
  per queued MMAP buffer.

All figures come from this process's own clock (time.perf_counter_ns / monotonic): compare
them only with figures of the same run (the guest runs under TCG).
"""
import argparse
import errno
import json
import mmap
import os
import struct
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from v4l2probe import IOR, IOW, IOWR, ioctl  # noqa: E402

WARMUP = 20
CAPTURE = 1  # V4L2_BUF_TYPE_VIDEO_CAPTURE
MEM_MMAP, MEM_USERPTR = 1, 2
QUERYCAP = IOR(0, 104)
G_FMT, S_FMT = IOWR(4, 208), IOWR(5, 208)
REQBUFS = IOWR(8, 20)
QUERYBUF, QBUF, DQBUF = IOWR(9, 88), IOWR(15, 88), IOWR(17, 88)
STREAMON, STREAMOFF = IOW(18, 4), IOW(19, 4)
S_CTRL = IOWR(28, 8)
GFMT_ARG = struct.pack("<I", CAPTURE) + bytes(204)


def percentiles(lat_ns):
    lat = sorted(lat_ns)
    n = len(lat)
    return {"calls": n, "median_us": lat[n // 2] / 1000, "p99_us": lat[n * 99 // 100] / 1000,
            "mean_us": sum(lat) / n / 1000}


def latency(dev, code, arg, n, want=0):
    """Round trip of `n` calls of ioctl `code` on a new open file; every call must end in
    errno `want` (0: success)."""
    fd = os.open(dev, os.O_RDWR)
    try:
        for _ in range(WARMUP):
            err, _ = ioctl(fd, code, arg)
            assert err == want, (code, err)
        lat = []
        for _ in range(n):
            t = time.perf_counter_ns()
            err, _ = ioctl(fd, code, arg)
            lat.append(time.perf_counter_ns() - t)
            assert err == want, (code, err)
    finally:
        os.close(fd)
    return percentiles(lat)


def _g_fmt_worker(dev, seconds, go):
    """Forks a process that opens its own session and counts G_FMT calls for `seconds` once
    `go` is readable. Returns (pid, read end of its result pipe)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            fd = os.open(dev, os.O_RDWR)
            for _ in range(WARMUP):
                ioctl(fd, G_FMT, GFMT_ARG)
            os.read(go, 1)
            end = time.monotonic() + seconds
            n = 0
            while time.monotonic() < end:
                assert ioctl(fd, G_FMT, GFMT_ARG)[0] == 0
                n += 1
            os.write(w, str(n).encode())
        finally:
            os._exit(0)
    os.close(w)
    return pid, r


def rate(dev, procs, seconds):
    go_r, go_w = os.pipe()
    workers = [_g_fmt_worker(dev, seconds, go_r) for _ in range(procs)]
    time.sleep(1 + 0.2 * procs)  # every worker opened its session and warmed up
    os.write(go_w, b"x" * procs)
    total = 0
    for pid, r in workers:
        out = os.read(r, 64)
        os.waitpid(pid, 0)
        if not out:
            raise SystemExit(f"rate worker {pid} failed")
        total += int(out)
    os.close(go_r)
    os.close(go_w)
    return {"sessions": procs, "seconds": seconds, "calls": total, "calls_per_s": total / seconds}


def idle(dev, k, calls, seconds):
    fds = [os.open(dev, os.O_RDWR) for _ in range(k)]
    try:
        out = {"idle_sessions": k, "g_fmt": latency(dev, G_FMT, GFMT_ARG, calls),
               "calls_per_s": rate(dev, 1, seconds)["calls_per_s"]}
    finally:
        for fd in fds:
            os.close(fd)
    return out


def cpu_busy_s():
    """Busy time of all CPUs so far (user, nice, system, irq, softirq, steal), seconds."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    hz = os.sysconf("SC_CLK_TCK")
    return (v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / hz


def vbuf(index, memory, userptr=0, length=0):
    b = bytearray(88)
    struct.pack_into("<II", b, 0, index, CAPTURE)
    struct.pack_into("<I", b, 60, memory)
    if memory == MEM_USERPTR:
        struct.pack_into("<QI", b, 64, userptr, length)
    return b


def set_format(fd, fourcc, w, h):
    arg = bytearray(208)
    struct.pack_into("<I", arg, 0, CAPTURE)
    struct.pack_into("<III", arg, 8, w, h, struct.unpack("<I", fourcc.encode())[0])
    err, out = ioctl(fd, S_FMT, arg)
    if err:
        raise SystemExit(f"S_FMT {fourcc} {w}x{h}: {errno.errorcode.get(err, err)}")
    got_w, got_h, pix = struct.unpack_from("<III", out, 8)
    sizeimage, = struct.unpack_from("<I", out, 28)
    if (got_w, got_h, pix) != (w, h, struct.unpack("<I", fourcc.encode())[0]):
        raise SystemExit(f"S_FMT {fourcc} {w}x{h}: the device chose {got_w}x{got_h}")
    return sizeimage


def capture(dev, fourcc, w, h, memory, frames):
    fd = os.open(dev, os.O_RDWR)
    maps = []
    try:
        size = set_format(fd, fourcc, w, h)
        err, r = ioctl(fd, REQBUFS, struct.pack("<III", 4, CAPTURE, memory) + bytes(8))
        assert err == 0, err
        count, = struct.unpack_from("<I", r, 0)
        for i in range(count):
            if memory == MEM_MMAP:
                err, b = ioctl(fd, QUERYBUF, vbuf(i, memory))
                assert err == 0, err
                off, length = struct.unpack_from("<QI", b, 64)
                maps.append(mmap.mmap(fd, length, mmap.MAP_SHARED, mmap.PROT_READ,
                                      offset=off & 0xFFFFFFFF))
            else:
                maps.append(mmap.mmap(-1, size, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS))
        addrs = []
        if memory == MEM_USERPTR:
            import ctypes
            addrs = [ctypes.addressof(ctypes.c_char.from_buffer(m)) for m in maps]

        def q(i):
            a = addrs[i] if addrs else 0
            e, _ = ioctl(fd, QBUF, vbuf(i, memory, a, size))
            assert e == 0, e
        for i in range(count):
            q(i)
        assert ioctl(fd, STREAMON, struct.pack("<I", CAPTURE))[0] == 0
        t0 = c0 = None
        for k in range(frames):
            err, b = ioctl(fd, DQBUF, vbuf(0, memory))
            assert err == 0, err
            if t0 is None:  # the clock starts at the first frame
                t0, c0 = time.monotonic(), cpu_busy_s()
            index, = struct.unpack_from("<I", b, 0)
            maps[index][0]  # touch the frame
            q(index)
        t1, c1 = time.monotonic(), cpu_busy_s()
        ioctl(fd, STREAMOFF, struct.pack("<I", CAPTURE))
        ioctl(fd, REQBUFS, struct.pack("<III", 0, CAPTURE, memory) + bytes(8))
    finally:
        os.close(fd)
        for m in maps:
            m.close()
    return {"format": fourcc, "width": w, "height": h,
            "memory": "MMAP" if memory == MEM_MMAP else "USERPTR", "frames": frames,
            "bytes_per_frame": size, "fps": (frames - 1) / (t1 - t0),
            "guest_cpu_ms_per_frame": (c1 - c0) * 1000 / (frames - 1)}


def slab_kb():
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("Slab:"):
                return int(line.split()[1])
    raise SystemExit("no Slab: line in /proc/meminfo")


def memory(dev, sessions=256, buffers=32):
    before = slab_kb()
    fds = [os.open(dev, os.O_RDWR) for _ in range(sessions)]
    per_session = (slab_kb() - before) * 1024 / sessions
    for fd in fds:
        os.close(fd)
    fd = os.open(dev, os.O_RDWR)
    try:
        err, r = ioctl(fd, REQBUFS, struct.pack("<III", buffers, CAPTURE, MEM_MMAP) + bytes(8))
        assert err == 0, err
        count, = struct.unpack_from("<I", r, 0)
        before = slab_kb()
        for i in range(count):
            assert ioctl(fd, QBUF, vbuf(i, MEM_MMAP))[0] == 0
        per_buffer = (slab_kb() - before) * 1024 / count
        ioctl(fd, REQBUFS, struct.pack("<III", 0, CAPTURE, MEM_MMAP) + bytes(8))
    finally:
        os.close(fd)
    return {"bytes_per_session": per_session, "sessions": sessions,
            "bytes_per_queued_buffer": per_buffer, "buffers": count,
            "how": "growth of Slab: in /proc/meminfo"}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dev")
    ap.add_argument("--calls", type=int, default=3000)
    ap.add_argument("--seconds", type=float, default=4)
    ap.add_argument("--sessions", default="1,2,4,8")
    ap.add_argument("--idle", default="")
    ap.add_argument("--capture", default="")
    ap.add_argument("--frames", type=int, default=200)
    ap.add_argument("--memory", action="store_true")
    ap.add_argument("--ctrl", default="", help="ID:ERRNO for S_CTRL (hex or decimal id)")
    ap.add_argument("--cpus", default="", help="also measure G_FMT latency pinned to each CPU")
    a = ap.parse_args()
    out = {"dev": a.dev, "latency": {
        "G_FMT": latency(a.dev, G_FMT, GFMT_ARG, a.calls),
        "QUERYCAP": latency(a.dev, QUERYCAP, bytes(104), a.calls)}}
    if a.cpus:
        everywhere = os.sched_getaffinity(0)
        out["latency_by_cpu"] = {}
        for c in a.cpus.split(","):
            os.sched_setaffinity(0, {int(c)})
            out["latency_by_cpu"][c] = {"G_FMT": latency(a.dev, G_FMT, GFMT_ARG, a.calls)}
        os.sched_setaffinity(0, everywhere)
    if a.ctrl:
        cid, want = a.ctrl.split(":")
        out["latency"]["S_CTRL"] = latency(a.dev, S_CTRL, struct.pack("<Ii", int(cid, 0), 0),
                                           a.calls, int(want))
        out["latency"]["S_CTRL"]["errno"] = int(want)
    if a.sessions:
        out["rate"] = [rate(a.dev, int(p), a.seconds) for p in a.sessions.split(",")]
    if a.idle:
        out["idle"] = [idle(a.dev, int(k), a.calls, a.seconds) for k in a.idle.split(",")]
    if a.capture:
        out["capture"] = []
        for spec in a.capture.split(","):
            fourcc, size = spec.split(":")
            w, h = map(int, size.split("x"))
            for mem in (MEM_MMAP, MEM_USERPTR):
                out["capture"].append(capture(a.dev, fourcc, w, h, mem, a.frames))
    if a.memory:
        out["memory"] = memory(a.dev)
    print(json.dumps(out))


if __name__ == "__main__":
    main()

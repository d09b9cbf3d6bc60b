#!/usr/bin/env python3
"""Guest side of the fault-profile tests (tests/test_faults.py): raw V4L2 ioctls against a
hostile vmrs-device (`--fault NAME`), printing one JSON object with every errno seen.

usage: faults.py DEV SCENARIO [ARGS]

Scenarios:
  gfmt [N]       G_FMT (the ioctl command faults hit), ENUM_FMT and QUERYCAP on the same
                 file, close, reopen, QUERYCAP and G_FMT again; G_FMT timed; then N more
                 G_FMTs (errno counts; to see the driver's warning rate-limited).
  cap            QUERYCAP and ENUM_FMT.
  reuse          open A, open B while A is open, use A, close A, open C.
  error FRAMES   stream until an error; then DQBUF/QBUF/G_FMT/poll on the failed file,
                 close, reopen and stream FRAMES frames.
  mmap           REQBUFS 4, QUERYBUF + mmap() of every buffer (errno each), then stream
                 3 frames without mappings, close, reopen, QUERYCAP.
  hang           G_FMT, repeated while it times out (at most 10 times), for the unplug and
                 unbind tests: prints {"calling": ...} first, then the last errno, its
                 duration and the number of timeouts.
"""
import errno
import json
import mmap
import os
import select
import struct
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from v4l2probe import IOR, IOW, IOWR, ioctl  # noqa: E402

MPLANE = 9
MMAP = 1
QUERYCAP = IOR(0, 104)
G_FMT = IOWR(4, 208)
ENUM_FMT = IOWR(2, 64)
REQBUFS, QUERYBUF, QBUF, DQBUF = IOWR(8, 20), IOWR(9, 88), IOWR(15, 88), IOWR(17, 88)
STREAMON, STREAMOFF = IOW(18, 4), IOW(19, 4)

planes = bytearray(64 * 8)
import ctypes  # noqa: E402
PADDR = ctypes.addressof((ctypes.c_char * len(planes)).from_buffer(planes))


def name(err):
    return errno.errorcode.get(err, str(err)) if err else "OK"


def buf(index, nplanes=8):
    b = bytearray(88)
    struct.pack_into("<II", b, 0, index, MPLANE)
    struct.pack_into("<I", b, 60, MMAP)
    struct.pack_into("<QI", b, 64, PADDR, nplanes)
    return b


def gfmt(fd):
    return name(ioctl(fd, G_FMT, struct.pack("<I", MPLANE) + bytes(204))[0])


def enum_fmt(fd):
    return enum_fmt_desc(fd)[0]


def enum_fmt_desc(fd):
    """ENUM_FMT index 0: (errno name, the answer's type, description and pixelformat)."""
    err, b = ioctl(fd, ENUM_FMT, struct.pack("<II", 0, MPLANE) + bytes(56))
    if err:
        return name(err), None
    typ, = struct.unpack_from("<I", b, 4)
    desc = bytes(b[12:44]).split(b"\0")[0].decode("latin-1")
    fourcc, = struct.unpack_from("<I", b, 44)
    return "OK", [typ, desc, fourcc]


def querycap(fd):
    return name(ioctl(fd, QUERYCAP, bytes(104))[0])


def timed(f, *a):
    t = time.monotonic()
    r = f(*a)
    return r, round(time.monotonic() - t, 1)


def start_stream(fd, count=4):
    err, r = ioctl(fd, REQBUFS, struct.pack("<III", count, MPLANE, MMAP) + bytes(8))
    if err:
        return name(err), 0
    got, = struct.unpack_from("<I", r, 0)
    for i in range(got):
        err, _ = ioctl(fd, QBUF, buf(i, 1))
        if err:
            return "QBUF " + name(err), got
    return name(ioctl(fd, STREAMON, struct.pack("<I", MPLANE))[0]), got


def stream(fd, frames):
    """Streams `frames` frames; returns (errno name of the first failure or OK, frames done)."""
    st, _ = start_stream(fd)
    if st != "OK":
        return "start " + st, 0
    for n in range(frames):
        err, b = ioctl(fd, DQBUF, buf(0))
        if err:
            return "DQBUF " + name(err), n
        index, = struct.unpack_from("<I", b, 0)
        err, _ = ioctl(fd, QBUF, buf(index, 1))
        if err:
            return "QBUF " + name(err), n + 1
    ioctl(fd, STREAMOFF, struct.pack("<I", MPLANE))
    ioctl(fd, REQBUFS, struct.pack("<III", 0, MPLANE, MMAP) + bytes(8))
    return "OK", frames


def main():
    dev, what = sys.argv[1], sys.argv[2]
    out = {}
    if what == "gfmt":
        fd = os.open(dev, os.O_RDWR)
        out["gfmt"], out["gfmt_s"] = timed(gfmt, fd)
        out["enum_fmt"], out["enum_fmt_desc"] = enum_fmt_desc(fd)
        out["querycap"] = querycap(fd)
        os.close(fd)
        fd = os.open(dev, os.O_RDWR)
        out["reopen_querycap"] = querycap(fd)
        out["reopen_enum_fmt"], out["reopen_enum_fmt_desc"] = enum_fmt_desc(fd)
        out["reopen_gfmt"], out["reopen_gfmt_s"] = timed(gfmt, fd)
        more = {}
        for _ in range(int(sys.argv[3]) if len(sys.argv) > 3 else 0):
            r = gfmt(fd)
            more[r] = more.get(r, 0) + 1
        out["more_gfmt"] = more
        os.close(fd)
    elif what == "cap":
        fd = os.open(dev, os.O_RDWR)
        out["querycap"] = querycap(fd)
        out["enum_fmt"] = enum_fmt(fd)
        os.close(fd)
    elif what == "reuse":
        a = os.open(dev, os.O_RDWR)
        out["a_gfmt"] = gfmt(a)
        try:
            b = os.open(dev, os.O_RDWR)
            out["open_b"] = "OK"
            os.close(b)
        except OSError as e:
            out["open_b"] = name(e.errno)
        out["a_gfmt_after"] = gfmt(a)
        os.close(a)
        c = os.open(dev, os.O_RDWR)
        out["c_gfmt"] = gfmt(c)
        os.close(c)
    elif what == "error":
        frames = int(sys.argv[3])
        fd = os.open(dev, os.O_RDWR)
        out["stream"], out["frames"] = stream(fd, 1000)
        p = select.poll()
        p.register(fd, select.POLLIN | select.POLLPRI)
        out["poll"] = [m for _, m in p.poll(1000)]
        out["dqbuf"] = name(ioctl(fd, DQBUF, buf(0))[0])
        out["qbuf"] = name(ioctl(fd, QBUF, buf(0, 1))[0])
        out["gfmt"] = gfmt(fd)
        out["streamoff"] = name(ioctl(fd, STREAMOFF, struct.pack("<I", MPLANE))[0])
        os.close(fd)
        fd = os.open(dev, os.O_RDWR)
        out["reopen_gfmt"] = gfmt(fd)
        out["reopen_stream"], out["reopen_frames"] = stream(fd, frames)
        os.close(fd)
    elif what == "mmap":
        fd = os.open(dev, os.O_RDWR)
        err, r = ioctl(fd, REQBUFS, struct.pack("<III", 4, MPLANE, MMAP) + bytes(8))
        out["reqbufs"] = name(err)
        got, = struct.unpack_from("<I", r, 0)
        out["mmap"] = []
        maps = []
        for i in range(got):
            ioctl(fd, QUERYBUF, buf(i))
            length, off = struct.unpack_from("<IQ", planes, 4)
            try:
                maps.append(mmap.mmap(fd, length, mmap.MAP_SHARED, mmap.PROT_READ, offset=off))
                out["mmap"].append("OK")
            except OSError as e:
                out["mmap"].append(name(e.errno))
        # Reading every mapping must not fault (the driver maps only what it checked).
        out["read"] = [len(m[:4096]) for m in maps]
        for m in maps:
            m.close()
        ioctl(fd, REQBUFS, struct.pack("<III", 0, MPLANE, MMAP) + bytes(8))
        out["stream"], out["frames"] = stream(fd, 3)
        os.close(fd)
        fd = os.open(dev, os.O_RDWR)
        out["reopen_querycap"] = querycap(fd)
        os.close(fd)
    elif what == "hang":
        fd = os.open(dev, os.O_RDWR)
        print(json.dumps({"calling": "G_FMT"}), flush=True)
        # Again after each timeout, so one is in flight whenever the test pulls the device.
        out["timeouts"] = 0
        while True:
            out["gfmt"], out["gfmt_s"] = timed(gfmt, fd)
            if out["gfmt"] != "ETIMEDOUT" or out["timeouts"] == 10:
                break
            out["timeouts"] += 1
        try:
            os.close(fd)
            out["close"] = "OK"
        except OSError as e:
            out["close"] = name(e.errno)
    else:
        raise SystemExit(f"unknown scenario {what}")
    print(json.dumps(out, sort_keys=True), flush=True)


if __name__ == "__main__":
    main()

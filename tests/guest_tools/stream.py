#!/usr/bin/env python3
"""Streams N frames from an MMAP capture queue with raw ioctls and prints a JSON summary.

Guest-side helper for the tests (Debian's python3 from the shared host root). Unlike v4l2-ctl
it lets the test choose the buffer type, skip mmap() (to test queueing without SHM), and see
each dequeued buffer's fields and errnos.

usage: stream.py DEV TYPE COUNT FRAMES [--mmap] [--nonblock] [--dump FILE] [--ready FILE]
(--ready: touch FILE once the first frame is dequeued)
"""
import errno
import fcntl
import hashlib
import json
import mmap
import os
import select
import struct
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from v4l2probe import IOWR, IOW, ioctl  # noqa: E402

REQBUFS, QUERYBUF, QBUF, DQBUF = IOWR(8, 20), IOWR(9, 88), IOWR(15, 88), IOWR(17, 88)
STREAMON, STREAMOFF = IOW(18, 4), IOW(19, 4)
MMAP = 1


def check(what, err):
    if err:
        raise SystemExit(json.dumps({"error": what, "errno": errno.errorcode.get(err, err)}))


def v4l2_buffer(index, typ, planes_addr=0, nplanes=0):
    # index type bytesused flags field | timestamp(16) timecode(16) sequence memory m(8) length
    b = bytearray(88)
    struct.pack_into("<II", b, 0, index, typ)
    struct.pack_into("<I", b, 60, MMAP)
    struct.pack_into("<QI", b, 64, planes_addr, nplanes)
    return b


def main():
    dev, typ, count, frames = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    use_mmap = "--mmap" in sys.argv
    nonblock = "--nonblock" in sys.argv
    dump = sys.argv[sys.argv.index("--dump") + 1] if "--dump" in sys.argv else None
    ready = sys.argv[sys.argv.index("--ready") + 1] if "--ready" in sys.argv else None
    mplane = typ in (9, 10)
    fd = os.open(dev, os.O_RDWR | (os.O_NONBLOCK if nonblock else 0))
    err, r = ioctl(fd, REQBUFS, struct.pack("<III", count, typ, MMAP) + bytes(8))
    check("REQBUFS", err)
    got, = struct.unpack_from("<I", r, 0)
    planes_buf = bytearray(64 * 8)
    import ctypes
    pbuf = (ctypes.c_char * len(planes_buf)).from_buffer(planes_buf)
    paddr = ctypes.addressof(pbuf)
    maps = []
    out = {"count": got, "buffers": [], "frames": []}
    for i in range(got):
        err, b = ioctl(fd, QUERYBUF, v4l2_buffer(i, typ, paddr if mplane else 0, 8 if mplane else 0))
        check("QUERYBUF", err)
        if mplane:
            n, = struct.unpack_from("<I", b, 72)
            length, off = struct.unpack_from("<IQ", planes_buf, 4)
            m_back, = struct.unpack_from("<Q", b, 64)
            out["buffers"].append({"planes": n, "length": length, "offset": off,
                                   "m_planes_kept": m_back == paddr})
        else:
            off, length = struct.unpack_from("<QI", b, 64)
            n = 1
            out["buffers"].append({"length": length, "offset": off})
        if use_mmap:
            maps.append(mmap.mmap(fd, length, mmap.MAP_SHARED, mmap.PROT_READ, offset=off))
    # Queue with the plane count QUERYBUF reported (v4l2r, under vhost-device-media, refuses
    # length == VIDEO_MAX_PLANES in QBUF).
    np = out["buffers"][0]["planes"] if mplane else 0
    for i in range(got):
        err, _ = ioctl(fd, QBUF, v4l2_buffer(i, typ, paddr if mplane else 0, np))
        check("QBUF", err)
    check("STREAMON", ioctl(fd, STREAMON, struct.pack("<I", typ))[0])
    f = open(dump, "wb") if dump else None
    for _ in range(frames):
        if nonblock:
            select.select([fd], [], [], 10)
        err, b = ioctl(fd, DQBUF, v4l2_buffer(0, typ, paddr if mplane else 0, 8 if mplane else 0))
        check("DQBUF", err)
        index, _, bytesused, flags = struct.unpack_from("<IIII", b, 0)
        seq, = struct.unpack_from("<I", b, 56)
        if mplane:
            bytesused, = struct.unpack_from("<I", planes_buf, 0)
        fr = {"index": index, "seq": seq, "bytesused": bytesused, "flags": flags}
        if use_mmap:
            data = maps[index][:bytesused]
            fr["md5"] = hashlib.md5(data).hexdigest()
            if f:
                f.write(data)
        out["frames"].append(fr)
        if ready and len(out["frames"]) == 1:
            open(ready, "w").close()
            print(json.dumps({"streaming": True}), flush=True)
        err, _ = ioctl(fd, QBUF, v4l2_buffer(index, typ, paddr if mplane else 0, np))
        check("QBUF", err)
    check("STREAMOFF", ioctl(fd, STREAMOFF, struct.pack("<I", typ))[0])
    # After STREAMOFF, DQBUF must fail with EINVAL (not streaming) rather than block.
    out["dqbuf_after_streamoff"] = errno.errorcode.get(
        ioctl(fd, DQBUF, v4l2_buffer(0, typ, paddr if mplane else 0, 8 if mplane else 0))[0], "OK")
    for m in maps:
        m.close()
    check("REQBUFS0", ioctl(fd, REQBUFS, struct.pack("<III", 0, typ, MMAP) + bytes(8))[0])
    os.close(fd)
    print(json.dumps(out))


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Guest side of tests/test_review.py's stalled-device MMAP test: maps N MMAP buffers of a
single-planar capture node whose device never answers MUNMAP (fault `munmap-hang`), unmaps
them one by one, then tries one more mmap(); prints one JSON object with the seconds each
munmap() took and the errno and seconds of the last mmap().

v4l2_requestbuffers 20 bytes; v4l2_buffer 88 (m.offset @64, length @72).
"""
import fcntl
import json
import mmap
import os
import struct
import sys
import time

REQBUFS = (3 << 30) | (20 << 16) | (ord("V") << 8) | 8
QUERYBUF = (3 << 30) | (88 << 16) | (ord("V") << 8) | 9
CAPTURE, MMAP = 1, 1

n = int(sys.argv[2]) if len(sys.argv) > 2 else 4
fd = os.open(sys.argv[1] if len(sys.argv) > 1 else "/dev/video0", os.O_RDWR)
rb = bytearray(struct.pack("<IIII4x", n, CAPTURE, MMAP, 0))
fcntl.ioctl(fd, REQBUFS, rb, True)
maps = []
for i in range(n):
    b = bytearray(88)
    struct.pack_into("<II", b, 0, i, CAPTURE)
    struct.pack_into("<I", b, 60, MMAP)
    fcntl.ioctl(fd, QUERYBUF, b, True)
    offset, = struct.unpack_from("<I", b, 64)
    length, = struct.unpack_from("<I", b, 72)
    maps.append((mmap.mmap(fd, length, mmap.MAP_SHARED, mmap.PROT_READ, offset=offset),
                 offset, length))
out = {"mapped": len(maps), "munmap_s": []}
for m, _, _ in maps:
    t = time.monotonic()
    m.close()
    out["munmap_s"].append(round(time.monotonic() - t, 3))
t = time.monotonic()
try:
    mmap.mmap(fd, maps[0][2], mmap.MAP_SHARED, mmap.PROT_READ, offset=maps[0][1]).close()
    out["mmap_again"] = 0
except OSError as e:
    out["mmap_again"] = e.errno
out["mmap_again_s"] = round(time.monotonic() - t, 3)
os.close(fd)
print(json.dumps(out))

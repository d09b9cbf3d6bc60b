#!/usr/bin/env python3
"""Bounded, seeded ioctl/mmap/process fuzzer for a V4L2 node (runs inside the test guest).

usage: fuzz.py [--dev /dev/video0] [--seed S] [--cases N] [--procs P] [--max-seconds T]
               [--kinds k1,k2,...]

Every ioctl argument a driver sees from user space is hostile: this throws at the node
- every VIDIOC_* code of videodev2.h with random argument bytes, the same ioctl numbers with
  wrong sizes and wrong directions, random numbers 0..255 of type 'V', and raw hostile pointers
  (NULL, below mmap_min_addr, unmapped, read-only, kernel, non-canonical, ending just before a
  guard page);
- structured-but-hostile arguments: v4l2_buffer with random type/memory/index/length and
  m.planes (or USERPTR addresses) pointing to hostile memory or to a too-small array,
  v4l2_ext_controls with huge/odd counts and bad control pointers, v4l2_format with every
  type value, REQBUFS/CREATE_BUFS with huge counts and every memory type, DQBUF with O_NONBLOCK;
- mmap of the node with random offsets/lengths/prot/flags, partial munmap, mremap, mprotect;
- real streaming sequences (REQBUFS, QUERYBUF, mmap, QBUF, STREAMON, DQBUF) interrupted at
  random by STREAMOFF, REQBUFS(0), close and exit;
- P worker processes at once, each forking children that inherit the fds and mappings, touch
  the mappings, and exit or are SIGKILLed at a random moment; children that close an fd while
  another thread of theirs is blocked in DQBUF or poll() on it and then exit.

The kernel side of a failure is a splat in dmesg (the rig checks), a leak (kmemleak), a
process that does not die (reported here as a hang, with its /proc/PID/stack), or a module
that cannot be unloaded afterwards. A user-space crash of a forked child (e.g. SIGBUS touching
a mapping) is allowed and counted. Pointers given to the kernel never point into the fuzzer's
own heap: writable targets are a dedicated scratch area.

Seeded: worker w uses random.Random(f"{seed}/{w}/{generation}"), so a seed replays the same
case sequence per worker (timing between workers is not replayed). The case count is exact:
workers that die are replaced and continue the remaining count.

Prints one JSON object: seed, cases requested/run, per kind, errno histogram, child crashes,
worker crashes, hangs, elapsed seconds. Exit status 0 unless a hang was seen, the count is
short, or a worker failed to start.

The VIDIOC_* table below is generated from /usr/include/linux/videodev2.h with gcc
(printf of each macro's value); at run time the header is parsed again and every name's
number and direction are checked against it (summary "table_mismatches" must be 0).
"""
import argparse
import ctypes
import errno
import fcntl
import json
import mmap
import os
import random
import re
import select
import signal
import struct
import sys
import threading
import time

TABLE = """
VIDIOC_QUERYCAP 0x80685600
VIDIOC_ENUM_FMT 0xc0405602
VIDIOC_G_FMT 0xc0d05604
VIDIOC_S_FMT 0xc0d05605
VIDIOC_REQBUFS 0xc0145608
VIDIOC_QUERYBUF 0xc0585609
VIDIOC_G_FBUF 0x8030560a
VIDIOC_S_FBUF 0x4030560b
VIDIOC_OVERLAY 0x4004560e
VIDIOC_QBUF 0xc058560f
VIDIOC_EXPBUF 0xc0405610
VIDIOC_DQBUF 0xc0585611
VIDIOC_STREAMON 0x40045612
VIDIOC_STREAMOFF 0x40045613
VIDIOC_G_PARM 0xc0cc5615
VIDIOC_S_PARM 0xc0cc5616
VIDIOC_G_STD 0x80085617
VIDIOC_S_STD 0x40085618
VIDIOC_ENUMSTD 0xc0485619
VIDIOC_ENUMINPUT 0xc050561a
VIDIOC_G_CTRL 0xc008561b
VIDIOC_S_CTRL 0xc008561c
VIDIOC_G_TUNER 0xc054561d
VIDIOC_S_TUNER 0x4054561e
VIDIOC_G_AUDIO 0x80345621
VIDIOC_S_AUDIO 0x40345622
VIDIOC_QUERYCTRL 0xc0445624
VIDIOC_QUERYMENU 0xc02c5625
VIDIOC_G_INPUT 0x80045626
VIDIOC_S_INPUT 0xc0045627
VIDIOC_G_EDID 0xc0285628
VIDIOC_S_EDID 0xc0285629
VIDIOC_G_OUTPUT 0x8004562e
VIDIOC_S_OUTPUT 0xc004562f
VIDIOC_ENUMOUTPUT 0xc0485630
VIDIOC_G_AUDOUT 0x80345631
VIDIOC_S_AUDOUT 0x40345632
VIDIOC_G_MODULATOR 0xc0445636
VIDIOC_S_MODULATOR 0x40445637
VIDIOC_G_FREQUENCY 0xc02c5638
VIDIOC_S_FREQUENCY 0x402c5639
VIDIOC_CROPCAP 0xc02c563a
VIDIOC_G_CROP 0xc014563b
VIDIOC_S_CROP 0x4014563c
VIDIOC_G_JPEGCOMP 0x808c563d
VIDIOC_S_JPEGCOMP 0x408c563e
VIDIOC_QUERYSTD 0x8008563f
VIDIOC_TRY_FMT 0xc0d05640
VIDIOC_ENUMAUDIO 0xc0345641
VIDIOC_ENUMAUDOUT 0xc0345642
VIDIOC_G_PRIORITY 0x80045643
VIDIOC_S_PRIORITY 0x40045644
VIDIOC_G_SLICED_VBI_CAP 0xc0745645
VIDIOC_LOG_STATUS 0x00005646
VIDIOC_G_EXT_CTRLS 0xc0205647
VIDIOC_S_EXT_CTRLS 0xc0205648
VIDIOC_TRY_EXT_CTRLS 0xc0205649
VIDIOC_ENUM_FRAMESIZES 0xc02c564a
VIDIOC_ENUM_FRAMEINTERVALS 0xc034564b
VIDIOC_G_ENC_INDEX 0x8818564c
VIDIOC_ENCODER_CMD 0xc028564d
VIDIOC_TRY_ENCODER_CMD 0xc028564e
VIDIOC_DBG_S_REGISTER 0x4038564f
VIDIOC_DBG_G_REGISTER 0xc0385650
VIDIOC_S_HW_FREQ_SEEK 0x40305652
VIDIOC_S_DV_TIMINGS 0xc0845657
VIDIOC_G_DV_TIMINGS 0xc0845658
VIDIOC_DQEVENT 0x80885659
VIDIOC_SUBSCRIBE_EVENT 0x4020565a
VIDIOC_UNSUBSCRIBE_EVENT 0x4020565b
VIDIOC_CREATE_BUFS 0xc100565c
VIDIOC_PREPARE_BUF 0xc058565d
VIDIOC_G_SELECTION 0xc040565e
VIDIOC_S_SELECTION 0xc040565f
VIDIOC_DECODER_CMD 0xc0485660
VIDIOC_TRY_DECODER_CMD 0xc0485661
VIDIOC_ENUM_DV_TIMINGS 0xc0945662
VIDIOC_QUERY_DV_TIMINGS 0x80845663
VIDIOC_DV_TIMINGS_CAP 0xc0905664
VIDIOC_ENUM_FREQ_BANDS 0xc0405665
VIDIOC_DBG_G_CHIP_INFO 0xc0c85666
VIDIOC_QUERY_EXT_CTRL 0xc0e85667
"""
CODES = [(n, int(c, 16)) for n, c in (l.split() for l in TABLE.strip().splitlines())]
NAMES = {c: n for n, c in CODES}
_IOC_WRITE, _IOC_READ = 1, 2


def ioc(d, nr, size):
    return ((d & 3) << 30) | ((size & 0x3FFF) << 16) | (ord("V") << 8) | (nr & 0xFF)


def ioc_dir(c):
    return (c >> 30) & 3


def ioc_size(c):
    return (c >> 16) & 0x3FFF


def ioc_nr(c):
    return c & 0xFF


def code(name):
    for n, c in CODES:
        if n == name:
            return c
    raise KeyError(name)


QUERYCAP, REQBUFS, QUERYBUF = code("VIDIOC_QUERYCAP"), code("VIDIOC_REQBUFS"), code("VIDIOC_QUERYBUF")
G_FMT, S_FMT, TRY_FMT = code("VIDIOC_G_FMT"), code("VIDIOC_S_FMT"), code("VIDIOC_TRY_FMT")
QBUF, DQBUF, PREPARE_BUF = code("VIDIOC_QBUF"), code("VIDIOC_DQBUF"), code("VIDIOC_PREPARE_BUF")
STREAMON, STREAMOFF = code("VIDIOC_STREAMON"), code("VIDIOC_STREAMOFF")
CREATE_BUFS, EXPBUF = code("VIDIOC_CREATE_BUFS"), code("VIDIOC_EXPBUF")
EXT_CTRLS = [code("VIDIOC_G_EXT_CTRLS"), code("VIDIOC_S_EXT_CTRLS"), code("VIDIOC_TRY_EXT_CTRLS")]
BUF_CODES = [QUERYBUF, QBUF, DQBUF, PREPARE_BUF]
FMT_CODES = [G_FMT, S_FMT, TRY_FMT]

MPLANE_CAPTURE = 9
MMAP_MEM, USERPTR_MEM, OVERLAY_MEM, DMABUF_MEM = 1, 2, 3, 4
PAGE = mmap.PAGESIZE
INTERESTING32 = [0, 1, 2, 3, 4, 8, 9, 10, 15, 16, 31, 32, 33, 64, 255, 256, 4096, 460800,
                 0x7FFF, 0xFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFE, 0xFFFFFFFF]

libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                      ctypes.c_int, ctypes.c_long]
libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
libc.mremap.restype = ctypes.c_void_p
libc.mremap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t, ctypes.c_int,
                        ctypes.c_void_p]
libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
libc.ioctl.restype = ctypes.c_int
libc.ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p]
MAP_FAILED = ctypes.c_void_p(-1).value
PROT_READ, PROT_WRITE, PROT_EXEC = 1, 2, 4
MAP_SHARED, MAP_PRIVATE, MAP_FIXED, MAP_ANON = 1, 2, 0x10, 0x20
MREMAP_MAYMOVE = 1

KINDS = ["ioctl_table", "ioctl_wrong_size_dir", "ioctl_random_nr", "ioctl_raw_pointer",
         "buffer", "ext_ctrls", "format", "reqbufs", "dqbuf_nonblock", "stream", "mmap",
         "openclose", "fork", "thread_close"]
WEIGHTS = {"ioctl_table": 14, "ioctl_wrong_size_dir": 8, "ioctl_random_nr": 6,
           "ioctl_raw_pointer": 8, "buffer": 12, "ext_ctrls": 6, "format": 6, "reqbufs": 6,
           "dqbuf_nonblock": 4, "stream": 6, "mmap": 8, "openclose": 4, "fork": 2,
           "thread_close": 1}
NERRNO = 256
# Shared statistics (one row per worker slot): cases, per kind, errno histogram, child crashes.
ROW = 1 + len(KINDS) + NERRNO + 2
C_CASES, C_KIND, C_ERRNO, C_CHILD_CRASH = 0, 1, 1 + len(KINDS), 1 + len(KINDS) + NERRNO
C_ALARM = C_CHILD_CRASH + 1


def check_table():
    """Re-reads videodev2.h: each VIDIOC_* name's nr and direction must match TABLE."""
    try:
        text = open("/usr/include/linux/videodev2.h").read()
    except OSError:
        return -1
    dirs = {"_IO": 0, "_IOW": _IOC_WRITE, "_IOR": _IOC_READ, "_IOWR": _IOC_READ | _IOC_WRITE}
    bad = 0
    seen = 0
    for m in re.finditer(r"#define\s+(VIDIOC_\w+)\s+(_IO[WR]*)\s*\(\s*'V'\s*,\s*(\d+)", text):
        name, d, nr = m.group(1), dirs[m.group(2)], int(m.group(3))
        seen += 1
        c = dict(CODES).get(name)
        if c is None or ioc_nr(c) != nr or ioc_dir(c) != d:
            bad += 1
    return bad + abs(seen - len(CODES))


class Ctx:
    """One worker's state: its fds, its live mappings, the scratch memory, the statistics."""

    def __init__(self, args, rng, stats, slot):
        self.args, self.rng, self.stats, self.slot = args, rng, stats, slot
        self.base = slot * ROW
        self.fds = []
        self.maps = []  # (addr, length)
        # Scratch: 16 RW pages, then a PROT_NONE guard page; one read-only page before.
        self.scratch_len = 16 * PAGE
        area = libc.mmap(None, 18 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANON, -1, 0)
        if area == MAP_FAILED:
            raise OSError(ctypes.get_errno(), "mmap scratch")
        self.ro = area
        self.scratch = area + PAGE
        self.guard = self.scratch + self.scratch_len
        libc.mprotect(self.ro, PAGE, PROT_READ)
        libc.mprotect(self.guard, PAGE, 0)
        hole = libc.mmap(None, 4 * PAGE, PROT_READ, MAP_PRIVATE | MAP_ANON, -1, 0)
        libc.munmap(hole, 4 * PAGE)
        self.hole = hole  # unmapped (nothing else is mapped there by us afterwards)

    # ---- statistics
    def bump(self, idx, n=1):
        self.stats[self.base + idx] += n

    def err(self, e):
        self.bump(C_ERRNO + (e if 0 <= e < NERRNO else NERRNO - 1))

    # ---- random helpers
    def u32(self):
        r = self.rng
        return r.choice(INTERESTING32) if r.random() < 0.6 else r.getrandbits(32)

    def buf_type(self):
        r = self.rng.random()
        if r < 0.4:
            return MPLANE_CAPTURE
        if r < 0.85:
            return self.rng.randrange(0, 16)
        return self.u32()

    def memory(self):
        r = self.rng.random()
        if r < 0.4:
            return MMAP_MEM
        if r < 0.9:
            return self.rng.randrange(0, 6)
        return self.u32()

    def randbytes(self, n):
        r = self.rng.random()
        if r < 0.15:
            return bytearray(n)
        if r < 0.55:
            return bytearray(self.rng.randbytes(n))
        b = bytearray(n)
        for off in range(0, n - 3, 4):
            struct.pack_into("<I", b, off, self.u32())
        return b

    def fill_scratch(self, nbytes=None):
        n = self.scratch_len if nbytes is None else min(nbytes, self.scratch_len)
        ctypes.memmove(self.scratch, self.rng.randbytes(n), n)

    def hostile_ptr(self, need=64):
        """A user pointer that is never into the fuzzer's own heap (only into scratch)."""
        r = self.rng.randrange(12)
        if r == 0:
            return 0
        if r == 1:
            return self.rng.randrange(1, 0x10000)  # below mmap_min_addr
        if r == 2:
            return self.hole + self.rng.randrange(0, 4 * PAGE)  # unmapped
        if r == 3:
            return self.ro + self.rng.randrange(0, PAGE)  # read-only
        if r == 4:
            return 0xFFFF888000000000 + self.rng.randrange(0, 1 << 30)  # kernel direct map
        if r == 5:
            return self.rng.choice([0xFFFFFFFF81000000, 0xFFFFFFFFFFFFF000, 0xFFFFFFFFFFFFFFFF])
        if r == 6:
            return self.rng.choice([0x0000800000000000, 0x8000000000000000,
                                    0x00007FFFFFFFF000]) + self.rng.randrange(0, PAGE)
        if r in (7, 8):
            # runs into the guard page before `need` bytes
            return self.guard - self.rng.randrange(1, max(2, need))
        if r == 9:
            return self.guard + self.rng.randrange(0, PAGE)  # guard page itself
        # inside scratch, room for `need`
        return self.scratch + self.rng.randrange(0, max(1, self.scratch_len - need))

    def fd(self):
        if not self.fds or self.rng.random() < 0.02:
            self.open_one()
        return self.rng.choice(self.fds)

    def open_one(self):
        flags = os.O_RDWR | (os.O_NONBLOCK if self.rng.random() < 0.5 else 0)
        try:
            f = os.open(self.args.dev, flags)
        except OSError as e:
            self.err(e.errno)
            f = os.open(self.args.dev, os.O_RDWR | os.O_NONBLOCK)
        self.fds.append(f)
        if len(self.fds) > 4:
            self.close_one()
        return f

    def close_one(self):
        if self.fds:
            f = self.fds.pop(self.rng.randrange(len(self.fds)))
            try:
                os.close(f)
            except OSError as e:
                self.err(e.errno)

    # ---- ioctl helpers (record the errno of every call)
    def ioctl_buf(self, fd, cmd, buf):
        try:
            fcntl.ioctl(fd, cmd, buf, True)
            self.err(0)
            return 0
        except OSError as e:
            self.err(e.errno)
            self.trace(e.errno, cmd, bytes(buf[:96]).hex())
            return e.errno

    def ioctl_ptr(self, fd, cmd, addr):
        ret = libc.ioctl(fd, cmd, addr)
        e = 0 if ret >= 0 else ctypes.get_errno()
        self.err(e)
        self.trace(e, cmd, f"ptr {addr:#x}")
        return e

    def trace(self, e, cmd, what):
        """--trace ERRNO: prints every ioctl that failed with it (to find where it comes from)."""
        if e and errno.errorcode.get(e) in self.args.trace:
            print(f"trace {errno.errorcode[e]} {cmd:#010x} {NAMES.get(cmd, '?')} {what}",
                  file=sys.stderr, flush=True)

    def arg_for(self, cmd):
        n = ioc_size(cmd)
        return self.randbytes(max(n, 1))

    def nonblock_fd(self):
        for f in self.fds:
            if fcntl.fcntl(f, fcntl.F_GETFL) & os.O_NONBLOCK:
                return f
        f = os.open(self.args.dev, os.O_RDWR | os.O_NONBLOCK)
        self.fds.append(f)
        return f


# ---------------------------------------------------------------------------- case kinds


def table_code(c):
    """A random table code, not one of --avoid-nr (QUERYCAP instead)."""
    _, cmd = c.rng.choice(CODES)
    return QUERYCAP if ioc_nr(cmd) in c.args.avoid_nr else cmd


def k_ioctl_table(c):
    cmd = table_code(c)
    c.ioctl_buf(c.fd(), cmd, c.arg_for(cmd))


def k_ioctl_wrong_size_dir(c):
    cmd = table_code(c)
    nr, d, size = ioc_nr(cmd), ioc_dir(cmd), ioc_size(cmd)
    r = c.rng.randrange(4)
    if r == 0:
        size = max(0, size + c.rng.choice([-8, -4, -1, 1, 4, 8]))
    elif r == 1:
        size = c.rng.randrange(0, 1 << 14)
    elif r == 2:
        d = c.rng.choice([x for x in range(4) if x != d])
    else:
        d = c.rng.randrange(4)
        size = c.rng.choice([0, 1, 4, 8, 64, 88, 208, 1024, 4096, 16383])
    new = ioc(d, nr, size)
    if c.rng.random() < 0.3:
        c.ioctl_ptr(c.fd(), new, c.hostile_ptr(size))
    else:
        c.ioctl_buf(c.fd(), new, c.randbytes(max(size, 1)))


def k_ioctl_random_nr(c):
    size = c.rng.choice([0, 4, 8, 16, 20, 32, 64, 88, 128, 208, 256, c.rng.randrange(1 << 14)])
    cmd = ioc(c.rng.randrange(4), c.rng.randrange(256), size)
    if ioc_nr(cmd) in c.args.avoid_nr:
        cmd = QUERYCAP
    c.ioctl_buf(c.fd(), cmd, c.randbytes(max(size, 1)))


def k_ioctl_raw_pointer(c):
    cmd = table_code(c)
    c.fill_scratch(PAGE)
    c.ioctl_ptr(c.fd(), cmd, c.hostile_ptr(ioc_size(cmd)))


def v4l2_buffer(c, typ, mem, index, length, m):
    b = c.randbytes(88) if c.rng.random() < 0.3 else bytearray(88)
    struct.pack_into("<II", b, 0, index, typ)
    struct.pack_into("<I", b, 60, mem)
    struct.pack_into("<Q", b, 64, m)
    struct.pack_into("<I", b, 72, length)
    return b


def k_buffer(c):
    typ, mem = c.buf_type(), c.memory()
    index = c.rng.choice([0, 1, 2, 3, 31, 32, 33, c.u32()])
    length = c.rng.choice([0, 1, 2, 3, 8, 9, 64, 0xFFFFFFFF, c.u32()])
    r = c.rng.randrange(4)
    if r == 0:
        m = c.hostile_ptr(64 * min(length, 64))
    elif r == 1:
        # a planes array in scratch, holding fewer planes than `length` or hostile userptrs
        c.fill_scratch(PAGE)
        n = c.rng.randrange(1, 4)
        m = c.guard - 64 * n
        for i in range(n):
            a = m + 64 * i - c.scratch
            if 0 <= a and a + 64 <= c.scratch_len:
                p = bytearray(64)
                struct.pack_into("<IIQ", p, 0, c.u32(), c.u32(), c.hostile_ptr(460800))
                ctypes.memmove(m + 64 * i, bytes(p), 64)
    elif r == 2:
        m = c.scratch + c.rng.randrange(0, 8) * 64
        c.fill_scratch(PAGE)
    else:
        # random 64-bit values in the upper half (kernel or non-canonical, never our heap)
        m = (c.u32() | (c.u32() << 32) | (1 << 63)) if c.rng.random() < 0.5 \
            else c.hostile_ptr(460800)
    cmd = c.rng.choice(BUF_CODES)
    b = v4l2_buffer(c, typ, mem, index, length, m)
    if c.rng.random() < 0.1:
        # the v4l2_buffer itself ends at the guard page
        addr = c.guard - c.rng.randrange(1, 88)
        ctypes.memmove(addr, bytes(b[:c.guard - addr]), c.guard - addr)
        c.ioctl_ptr(c.fd(), cmd, addr)
    else:
        c.ioctl_buf(c.nonblock_fd() if cmd == DQBUF else c.fd(), cmd, b)


def k_ext_ctrls(c):
    cmd = c.rng.choice(EXT_CTRLS)
    count = c.rng.choice([0, 1, 2, 3, 7, 64, 1023, 1024, 1025, 0x10000, 0x7FFFFFFF,
                          0xFFFFFFFF, c.u32()])
    which = c.rng.choice([0, 0x00980000, 0x009A0000, 0x0F010000, 0x0F000000, c.u32()])
    b = bytearray(32)
    struct.pack_into("<IIIi", b, 0, which, count, c.u32(), c.rng.choice([0, -1, 3, 1000]))
    r = c.rng.randrange(3)
    if r == 0:
        ptr = c.hostile_ptr(20 * min(count, 4096))
    else:
        # controls in scratch: real-looking ids, random sizes (ptr payloads) and pointers
        n = min(count, c.scratch_len // 20)
        arr = bytearray(20 * n)
        for i in range(n):
            cid = c.rng.choice([0x00980900, 0x00980901, 0x00980902, 0x009909C8, 0x00A40901,
                                c.u32()])
            size = c.rng.choice([0, 0, 0, 1, 4, 20, 4096, c.u32()])
            struct.pack_into("<IIIQ", arr, 20 * i, cid, size, 0,
                             c.hostile_ptr(size) if size else c.u32())
        ptr = c.scratch + (c.scratch_len - len(arr) if r == 1 else 0)
        ctypes.memmove(ptr, bytes(arr), len(arr))
    struct.pack_into("<Q", b, 24, ptr)
    c.ioctl_buf(c.fd(), cmd, b)


def k_format(c):
    cmd = c.rng.choice(FMT_CODES)
    b = c.randbytes(208)
    typ = c.rng.randrange(0, 16) if c.rng.random() < 0.8 else c.u32()
    struct.pack_into("<I", b, 0, typ)
    if c.rng.random() < 0.5:
        # plausible pix_mp with hostile sizes and plane counts
        struct.pack_into("<III", b, 8, c.rng.choice([0, 1, 640, 641, 65535, c.u32()]),
                         c.rng.choice([0, 1, 480, 65535, c.u32()]),
                         c.rng.choice([0x32315559, 0x3231564E, c.u32()]))
        b[8 + 172] = c.rng.choice([0, 1, 3, 8, 9, 255])  # num_planes
    c.ioctl_buf(c.fd(), cmd, b)


def k_reqbufs(c):
    if c.rng.random() < 0.7:
        b = bytearray(20)
        count = c.rng.choice([0, 1, 2, 4, 32, 33, 64, 1000, 0x10000, 0xFFFFFFFF, c.u32()])
        struct.pack_into("<III", b, 0, count, c.buf_type(), c.memory())
        if c.rng.random() < 0.3:
            b[16:20] = c.rng.randbytes(4)
        c.ioctl_buf(c.fd(), REQBUFS, b)
    else:
        b = c.randbytes(248)
        struct.pack_into("<III", b, 0, c.u32(), c.rng.choice([0, 1, 8, 0xFFFFFFFF, c.u32()]),
                         c.memory())
        struct.pack_into("<I", b, 16, c.buf_type())
        c.ioctl_buf(c.fd(), CREATE_BUFS, b)


def planes_arg(c, n):
    arr = (ctypes.c_char * (64 * max(n, 1)))()
    return arr, ctypes.addressof(arr)


def k_dqbuf_nonblock(c):
    f = c.nonblock_fd()
    arr, addr = planes_arg(c, 8)
    b = v4l2_buffer(c, c.rng.choice([MPLANE_CAPTURE, MPLANE_CAPTURE, c.buf_type()]),
                    c.rng.choice([MMAP_MEM, c.memory()]), 0, c.rng.choice([1, 8]), addr)
    c.ioctl_buf(f, DQBUF, b)
    del arr


def k_stream(c):
    """A real streaming sequence on a fresh fd, interrupted at random."""
    f = os.open(c.args.dev, os.O_RDWR | os.O_NONBLOCK)
    arr, addr = planes_arg(c, 8)
    maps = []
    try:
        count = c.rng.randrange(1, 6)
        b = bytearray(20)
        struct.pack_into("<III", b, 0, count, MPLANE_CAPTURE, MMAP_MEM)
        if c.ioctl_buf(f, REQBUFS, b):
            return
        got = struct.unpack_from("<I", b, 0)[0]
        for i in range(got):
            qb = v4l2_buffer(c, MPLANE_CAPTURE, MMAP_MEM, i, 1, addr)
            qb[:] = bytes(88)
            struct.pack_into("<II", qb, 0, i, MPLANE_CAPTURE)
            struct.pack_into("<I", qb, 60, MMAP_MEM)
            struct.pack_into("<QI", qb, 64, addr, 1)
            if c.ioctl_buf(f, QUERYBUF, qb):
                continue
            length, off = struct.unpack_from("<IQ", bytes(arr), 4)
            if c.rng.random() < 0.7:
                a = libc.mmap(None, length, PROT_READ | (PROT_WRITE if c.rng.random() < 0.3
                                                         else 0), MAP_SHARED, f, off)
                if a != MAP_FAILED:
                    maps.append((a, length))
                    c.err(0)
                else:
                    c.err(ctypes.get_errno())
            if c.rng.random() < 0.8:
                c.ioctl_buf(f, QBUF, qb)
        t = struct.pack("<I", MPLANE_CAPTURE)
        c.ioctl_buf(f, STREAMON, bytearray(t))
        for _ in range(c.rng.randrange(0, 8)):
            act = c.rng.randrange(6)
            if act <= 2:
                pl = select.poll()
                pl.register(f, select.POLLIN | select.POLLERR)
                pl.poll(c.rng.choice([0, 10, 100]))
                db = bytearray(88)
                struct.pack_into("<II", db, 0, 0, MPLANE_CAPTURE)
                struct.pack_into("<I", db, 60, MMAP_MEM)
                struct.pack_into("<QI", db, 64, addr, 1)
                if c.ioctl_buf(f, DQBUF, db) == 0 and c.rng.random() < 0.7:
                    struct.pack_into("<QI", db, 64, addr, 1)
                    c.ioctl_buf(f, QBUF, db)
            elif act == 3:
                c.ioctl_buf(f, STREAMOFF, bytearray(t))
            elif act == 4:
                z = bytearray(20)
                struct.pack_into("<III", z, 0, 0, MPLANE_CAPTURE, MMAP_MEM)
                c.ioctl_buf(f, REQBUFS, z)  # EBUSY while mapped, or frees
            else:
                c.ioctl_buf(f, STREAMON, bytearray(t))
        if maps and c.rng.random() < 0.3:
            # keep one mapping alive past the close (the worker unmaps it later)
            c.maps.append(maps.pop())
    finally:
        for a, ln in maps:
            libc.munmap(a, ln)
        if c.rng.random() < 0.5:
            c.fds.append(f)  # leave it open, streaming or not
            if len(c.fds) > 4:
                c.close_one()
        else:
            os.close(f)
        del arr


def k_mmap(c):
    r = c.rng.randrange(10)
    if r < 3 and c.maps:
        a, ln = c.maps.pop(c.rng.randrange(len(c.maps)))
        op = c.rng.randrange(4)
        if op == 0:
            libc.munmap(a, ln)
        elif op == 1 and ln >= 2 * PAGE:
            cut = c.rng.randrange(1, ln // PAGE) * PAGE
            libc.munmap(a, cut)
            c.maps.append((a + cut, ln - cut))
        elif op == 2:
            newlen = c.rng.choice([PAGE, ln * 2, ln + PAGE, max(PAGE, ln // 2)])
            na = libc.mremap(a, ln, newlen, MREMAP_MAYMOVE, None)
            if na == MAP_FAILED:
                c.err(ctypes.get_errno())
                libc.munmap(a, ln)
            else:
                c.err(0)
                c.maps.append((na, newlen))
        else:
            e = libc.mprotect(a, ln, c.rng.randrange(8))
            c.err(0 if e == 0 else ctypes.get_errno())
            c.maps.append((a, ln))
        return
    off = c.rng.choice([0, PAGE, 460800 & ~(PAGE - 1), 0x70000, 1 << 20, 1 << 30, 1 << 40,
                        c.rng.randrange(0, 64) * PAGE, c.rng.getrandbits(40) & ~(PAGE - 1),
                        c.rng.randrange(1, PAGE)])
    length = c.rng.choice([0, 1, PAGE, 460800, 462848, 2 * 462848, 1 << 30,
                           c.rng.randrange(1, 1 << 22)])
    prot = c.rng.randrange(8)
    flags = c.rng.choice([MAP_SHARED, MAP_SHARED, MAP_PRIVATE])
    a = libc.mmap(None, length, prot, flags, c.fd(), off)
    if a == MAP_FAILED:
        c.err(ctypes.get_errno())
    else:
        c.err(0)
        c.maps.append((a, length))
        if len(c.maps) > 16:
            a, ln = c.maps.pop(0)
            libc.munmap(a, ln)


def k_openclose(c):
    r = c.rng.randrange(4)
    if r == 0:
        c.open_one()
    elif r == 1:
        c.close_one()
    elif r == 2 and c.fds:
        d = os.dup(c.rng.choice(c.fds))
        c.ioctl_buf(d, QUERYCAP, bytearray(104))
        os.close(d)
    else:
        f = os.open(c.args.dev, os.O_RDWR)
        c.ioctl_buf(f, QUERYCAP, bytearray(104))
        os.close(f)


def child_wait(c, pid, limit):
    """Reaps pid within limit s (SIGKILL at limit); a child that then does not die is a hang."""
    t0 = time.monotonic()
    killed = False
    while True:
        p, st = os.waitpid(pid, os.WNOHANG)
        if p == pid:
            if os.WIFSIGNALED(st) and os.WTERMSIG(st) != signal.SIGKILL:
                c.bump(C_CHILD_CRASH)
            return
        el = time.monotonic() - t0
        if el > limit and not killed:
            os.kill(pid, signal.SIGKILL)
            killed = True
        if el > limit + 30:
            report_hang(pid, "child not dead 30 s after SIGKILL")
            os.waitpid(pid, 0)
            return
        time.sleep(0.005)


def report_hang(pid, why):
    info = {"hang": why, "pid": pid}
    for name in ("stack", "wchan"):
        try:
            info[name] = open(f"/proc/{pid}/{name}").read()[-2000:]
        except OSError as e:
            info[name] = str(e)
    for t in os.listdir(f"/proc/{pid}/task") if os.path.isdir(f"/proc/{pid}/task") else []:
        try:
            info[f"task{t}"] = open(f"/proc/{pid}/task/{t}/stack").read()[-2000:]
        except OSError:
            pass
    print(json.dumps(info), file=sys.stderr, flush=True)
    if STATS_HANG is not None:
        STATS_HANG[0] += 1


def dump_stall(pid, slot, n):
    """Prints the kernel stacks of a worker (and its children) that made no progress."""
    info = {"stall": f"worker {slot} stuck after {n} cases", "pid": pid}
    pids = [pid]
    try:
        for line in open(f"/proc/{pid}/task/{pid}/children").read().split():
            pids.append(int(line))
    except OSError:
        pass
    for q in pids:
        try:
            for t in os.listdir(f"/proc/{q}/task"):
                info[f"{q}/{t}"] = (open(f"/proc/{q}/task/{t}/wchan").read() + " | " +
                                    open(f"/proc/{q}/task/{t}/stack").read().replace("\n", " "))
        except OSError:
            pass
    print(json.dumps(info), file=sys.stderr, flush=True)


def k_fork(c):
    """A child inherits fds and mappings, acts, touches mappings, exits or is killed."""
    seed = c.rng.getrandbits(64)
    mode = c.rng.randrange(4)  # 0 exit, 1 killed soon, 2 killed later, 3 grandchild too
    pid = os.fork()
    if pid == 0:
        try:
            signal.signal(signal.SIGALRM, signal.SIG_DFL)
            c.rng = random.Random(seed)
            for _ in range(c.rng.randrange(1, 6)):
                kind = c.rng.choice(["ioctl_table", "buffer", "stream", "mmap", "reqbufs",
                                     "dqbuf_nonblock"])
                CASES[kind](c)
            # touch the mappings (may SIGBUS if revoked/beyond the buffer: counted)
            for a, ln in list(c.maps)[:3]:
                if ln and c.rng.random() < 0.5:
                    ctypes.string_at(a, 1)
            if mode == 3:
                g = os.fork()
                if g == 0:
                    CASES["stream"](c)
                    os._exit(0)
                if c.rng.random() < 0.5:
                    os.kill(g, signal.SIGKILL)
                os.waitpid(g, 0)
        finally:
            os._exit(0)
    if mode in (1, 2):
        time.sleep(c.rng.choice([0, 0.001, 0.01]) if mode == 1 else c.rng.random() * 0.3)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    child_wait(c, pid, 60)


def k_thread_close(c):
    """A child closes an fd while another of its threads is blocked in DQBUF or poll on it,
    then exits with that thread still inside the driver (or after it returned)."""
    seed = c.rng.getrandbits(64)
    pid = os.fork()
    if pid == 0:
        try:
            rng = random.Random(seed)
            f = os.open(c.args.dev, os.O_RDWR)
            arr, addr = planes_arg(c, 8)
            stream = rng.random() < 0.7
            queued = 0
            if stream:
                b = bytearray(20)
                struct.pack_into("<III", b, 0, rng.randrange(1, 4), MPLANE_CAPTURE, MMAP_MEM)
                try:
                    fcntl.ioctl(f, REQBUFS, b, True)
                    n = struct.unpack_from("<I", b, 0)[0]
                    for i in range(n):
                        if rng.random() < 0.3:
                            continue  # leave some unqueued: DQBUF may block
                        qb = bytearray(88)
                        struct.pack_into("<II", qb, 0, i, MPLANE_CAPTURE)
                        struct.pack_into("<I", qb, 60, MMAP_MEM)
                        struct.pack_into("<QI", qb, 64, addr, 1)
                        fcntl.ioctl(f, QBUF, qb, True)
                        queued += 1
                    if rng.random() < 0.8:
                        fcntl.ioctl(f, STREAMON, bytearray(struct.pack("<I", MPLANE_CAPTURE)),
                                    True)
                except OSError:
                    pass

            def blocker(how):
                try:
                    if how == 0:
                        for _ in range(3):
                            db = bytearray(88)
                            struct.pack_into("<II", db, 0, 0, MPLANE_CAPTURE)
                            struct.pack_into("<I", db, 60, MMAP_MEM)
                            struct.pack_into("<QI", db, 64, addr, 1)
                            fcntl.ioctl(f, DQBUF, db, True)
                    else:
                        pl = select.poll()
                        pl.register(f, select.POLLIN | select.POLLPRI)
                        pl.poll(rng.choice([200, 2000, -1]))
                except OSError:
                    pass

            ths = [threading.Thread(target=blocker, args=(rng.randrange(2),), daemon=True)
                   for _ in range(rng.randrange(1, 3))]
            for t in ths:
                t.start()
            time.sleep(rng.choice([0, 0.005, 0.05]))
            os.close(f)
            if rng.random() < 0.3:
                for t in ths:
                    t.join(0.5)
        finally:
            os._exit(0)
    child_wait(c, pid, 60)


CASES = {"ioctl_table": k_ioctl_table, "ioctl_wrong_size_dir": k_ioctl_wrong_size_dir,
         "ioctl_random_nr": k_ioctl_random_nr, "ioctl_raw_pointer": k_ioctl_raw_pointer,
         "buffer": k_buffer, "ext_ctrls": k_ext_ctrls, "format": k_format,
         "reqbufs": k_reqbufs, "dqbuf_nonblock": k_dqbuf_nonblock, "stream": k_stream,
         "mmap": k_mmap, "openclose": k_openclose, "fork": k_fork,
         "thread_close": k_thread_close}
STATS_HANG = None  # shared counter of hangs, set in main()


class CaseAlarm(Exception):
    """Raised by SIGALRM: the case blocked longer than --case-seconds (interrupted)."""


def on_alarm(signum, frame):
    raise CaseAlarm()


def worker(args, slot, gen, todo, stats):
    rng = random.Random(f"{args.seed}/{slot}/{gen}")
    c = Ctx(args, rng, stats, slot)
    kinds = [k for k in KINDS if k in args.kinds]
    weights = [WEIGHTS[k] for k in kinds]
    signal.signal(signal.SIGALRM, on_alarm)
    for _ in range(todo):
        kind = rng.choices(kinds, weights)[0]
        # A blocking DQBUF/DQEVENT/poll on a streaming queue may legitimately wait forever: the
        # alarm interrupts it (the driver's wait must return EINTR/ERESTARTSYS on a signal).
        # fork/thread_close bound their children themselves.
        if kind not in ("fork", "thread_close") and args.case_seconds > 0:
            signal.setitimer(signal.ITIMER_REAL, args.case_seconds)
        try:
            CASES[kind](c)
        except CaseAlarm:
            c.bump(C_ALARM)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        c.bump(C_KIND + KINDS.index(kind))
        c.bump(C_CASES)
    for a, ln in c.maps:
        libc.munmap(a, ln)
    for f in c.fds:
        os.close(f)


def main():
    global STATS_HANG
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dev", default="/dev/video0")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--cases", type=int, default=2000)
    ap.add_argument("--procs", type=int, default=4)
    ap.add_argument("--max-seconds", type=float, default=900)
    ap.add_argument("--kinds", default=",".join(KINDS))
    ap.add_argument("--trace", default="", help="errno names (comma-separated) whose "
                    "failing ioctls are printed on stderr with their argument")
    ap.add_argument("--avoid-nr", default="", help="ioctl numbers (comma-separated, decimal) "
                    "never sent, e.g. 90,91 against a device known to die on bad subscriptions")
    ap.add_argument("--case-seconds", type=float, default=3.0,
                    help="SIGALRM interrupts a case blocked this long (0: never)")
    ap.add_argument("--stall-seconds", type=float, default=30.0,
                    help="dump the kernel stacks of a worker whose count has not moved for "
                         "this long")
    args = ap.parse_args()
    if args.seed is None:
        args.seed = int.from_bytes(os.urandom(4), "little")
    args.kinds = [k for k in args.kinds.split(",") if k]
    args.trace = set(args.trace.split(","))
    args.avoid_nr = {int(x) for x in args.avoid_nr.split(",") if x}
    unknown = [k for k in args.kinds if k not in CASES]
    if unknown:
        ap.error(f"unknown kinds {unknown}; known: {KINDS}")
    print(f"fuzz: seed {args.seed} cases {args.cases} procs {args.procs}", file=sys.stderr,
          flush=True)
    shm = mmap.mmap(-1, 8 * (ROW * args.procs + 1))
    stats = (ctypes.c_int64 * (ROW * args.procs + 1)).from_buffer(shm)
    STATS_HANG = (ctypes.c_int64 * 1).from_buffer(shm, 8 * ROW * args.procs)
    t0 = time.monotonic()
    share = [args.cases // args.procs + (1 if i < args.cases % args.procs else 0)
             for i in range(args.procs)]
    running = {}
    gens = [0] * args.procs
    worker_crashes = []

    def spawn(slot):
        done = stats[slot * ROW + C_CASES]
        todo = share[slot] - done
        if todo <= 0:
            return
        pid = os.fork()
        if pid == 0:
            st = 0
            try:
                worker(args, slot, gens[slot], todo, stats)
            except BaseException as e:  # noqa: B902 - reported, then a nonzero exit
                print(f"fuzz: worker {slot} gen {gens[slot]}: {e!r}", file=sys.stderr,
                      flush=True)
                st = 3
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(st)
        running[pid] = slot

    for s in range(args.procs):
        spawn(s)
    timed_out = False
    last = {}  # slot -> (count, since)
    stalls = []
    while running:
        pid, st = os.waitpid(-1, os.WNOHANG)
        if pid == 0:
            now = time.monotonic()
            for p, slot in running.items():
                n = stats[slot * ROW + C_CASES]
                if last.get(slot, (None,))[0] != n:
                    last[slot] = (n, now, False)
                elif now - last[slot][1] > args.stall_seconds and not last[slot][2]:
                    last[slot] = (n, last[slot][1], True)
                    stalls.append(slot)
                    dump_stall(p, slot, n)
            if time.monotonic() - t0 > args.max_seconds and not timed_out:
                timed_out = True
                for p in list(running):
                    report_hang(p, f"worker still running after {args.max_seconds} s")
                    os.kill(p, signal.SIGKILL)
            time.sleep(0.05)
            continue
        slot = running.pop(pid, None)
        if slot is None:
            continue
        if st != 0:
            worker_crashes.append({"slot": slot, "gen": gens[slot],
                                   "signal": os.WTERMSIG(st) if os.WIFSIGNALED(st) else None,
                                   "exit": os.WEXITSTATUS(st) if os.WIFEXITED(st) else None})
            if not timed_out and len(worker_crashes) < 50:
                gens[slot] += 1
                spawn(slot)
    elapsed = time.monotonic() - t0
    per_kind = {k: sum(stats[s * ROW + C_KIND + i] for s in range(args.procs))
                for i, k in enumerate(KINDS)}
    hist = {}
    for e in range(NERRNO):
        n = sum(stats[s * ROW + C_ERRNO + e] for s in range(args.procs))
        if n:
            hist["ok" if e == 0 else errno.errorcode.get(e, str(e))] = n
    total = sum(stats[s * ROW + C_CASES] for s in range(args.procs))
    out = {"seed": args.seed, "cases_requested": args.cases, "cases": total,
           "procs": args.procs, "per_kind": per_kind, "errno": hist,
           "interrupted_by_alarm": sum(stats[s * ROW + C_ALARM] for s in range(args.procs)),
           "stalls": len(stalls),
           "child_crashes": sum(stats[s * ROW + C_CHILD_CRASH] for s in range(args.procs)),
           "worker_crashes": worker_crashes, "hangs": int(STATS_HANG[0]),
           "table_codes": len(CODES), "table_mismatches": check_table(),
           "elapsed_s": round(elapsed, 1)}
    print(json.dumps(out), flush=True)
    ok = total == args.cases and out["hangs"] == 0 and not timed_out
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()

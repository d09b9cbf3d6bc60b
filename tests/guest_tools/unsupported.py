#!/usr/bin/env python3
"""Guest side of tests/test_review.py (issue 9, section 2): what the driver does not implement
(DMABUF, the Request API, cache hints, REMOVE_BUFS) is neither reported to user space nor
passed on to the device.

Run against a multi-planar capture node whose device claims all of it (test device profile
`capture-nv` with the fault `claims-unsupported`, Documentation/test-device.md): raw ioctls,
one JSON object on stdout with each call's errno and the fields the test checks.

Layouts are videodev2.h's 64-bit ones: v4l2_requestbuffers 20 bytes (memory @8, capabilities
@12, flags u8 @16), v4l2_create_buffers 256 (memory @8, format @16, capabilities @224, flags
@228), v4l2_buffer 88 (flags @12, memory @60, m @64, length @72, request_fd @80),
v4l2_ext_controls 32 (which @0, request_fd @12, controls @24), v4l2_ext_control 20 (packed),
v4l2_framebuffer 48 (base @8).
"""
import ctypes
import fcntl
import json
import os
import struct
import sys


def ioc(d, nr, size):
    return (d << 30) | (size << 16) | (ord("V") << 8) | nr


RW, W = 3, 1
G_FMT, REQBUFS, QUERYBUF, S_FBUF = ioc(RW, 4, 208), ioc(RW, 8, 20), ioc(RW, 9, 88), ioc(W, 11, 48)
QBUF, DQBUF, STREAMON, STREAMOFF = ioc(RW, 15, 88), ioc(RW, 17, 88), ioc(W, 18, 4), ioc(W, 19, 4)
G_EXT_CTRLS, CREATE_BUFS, PREPARE_BUF = ioc(RW, 71, 32), ioc(RW, 92, 256), ioc(RW, 93, 88)
CAPTURE_MPLANE, MMAP, DMABUF = 9, 1, 4
FLAG_REQUEST_FD, FLAG_IN_REQUEST = 0x00800000, 0x80
REQUEST_BITS = FLAG_REQUEST_FD | FLAG_IN_REQUEST
WHICH_CUR_VAL, WHICH_REQUEST_VAL = 0, 0x0F010000
LABEL = 0x00980900 + 0x1100  # capture-nv's string control

fd = os.open(sys.argv[1] if len(sys.argv) > 1 else "/dev/video0", os.O_RDWR)
out = {}


def call(code, b):
    try:
        fcntl.ioctl(fd, code, b, True)
        return 0
    except OSError as e:
        return e.errno


fmt = bytearray(struct.pack("<I", CAPTURE_MPLANE) + bytes(204))
out["g_fmt"] = call(G_FMT, fmt)
nplanes = fmt[8 + 180]  # v4l2_pix_format_mplane.num_planes

# Buffer capabilities, and the cache-hint flag asked for (V4L2_MEMORY_FLAG_NON_COHERENT).
rb = bytearray(struct.pack("<IIIIB3x", 2, CAPTURE_MPLANE, MMAP, 0, 1))
out["reqbufs"] = call(REQBUFS, rb)
out["reqbufs_caps"], = struct.unpack_from("<I", rb, 12)
out["reqbufs_flags"] = rb[16]
rb0 = bytearray(struct.pack("<IIIIB3x", 0, CAPTURE_MPLANE, DMABUF, 0, 0))
out["reqbufs_dmabuf"] = call(REQBUFS, rb0)
cb = bytearray(256)
struct.pack_into("<III", cb, 0, 0, 1, MMAP)
cb[16:16 + 208] = fmt
struct.pack_into("<I", cb, 228, 1)
out["create_bufs"] = call(CREATE_BUFS, cb)
out["create_bufs_caps"], out["create_bufs_flags"] = struct.unpack_from("<II", cb, 224)
out["create_bufs_index"], out["create_bufs_count"] = struct.unpack_from("<II", cb, 0)

planes = [ctypes.create_string_buffer(64 * 8) for _ in range(3)]


def buf(index, flags=0, request_fd=0):
    b = bytearray(88)
    struct.pack_into("<IIII", b, 0, index, CAPTURE_MPLANE, 0, flags)
    struct.pack_into("<I", b, 60, MMAP)
    struct.pack_into("<QI", b, 64, ctypes.addressof(planes[index]), nplanes)
    struct.pack_into("<i", b, 80, request_fd)
    return b


def request_of(b):
    """(request flag bits, request_fd) of a v4l2_buffer answer."""
    flags, = struct.unpack_from("<I", b, 12)
    fdr, = struct.unpack_from("<i", b, 80)
    return [flags & REQUEST_BITS, fdr]


b = buf(0)
out["querybuf"] = call(QUERYBUF, b)
out["querybuf_request"] = request_of(b)
# Buffers of a request: vb2 on a queue without requests answers EBADR (QBUF), EINVAL
# (PREPARE_BUF).
out["qbuf_request"] = call(QBUF, buf(0, FLAG_REQUEST_FD, 5))
out["prepare_request"] = call(PREPARE_BUF, buf(1, FLAG_REQUEST_FD, 5))
# A stray request_fd without the flag: queued, but the device is not told the number.
b = buf(0, 0, 9)
out["qbuf"] = call(QBUF, b)
out["qbuf_answer_request"] = request_of(b)
out["qbuf_more"] = [call(QBUF, buf(i)) for i in (1, 2)]
out["streamon"] = call(STREAMON, bytearray(struct.pack("<I", CAPTURE_MPLANE)))
b = buf(0)
out["dqbuf"] = call(DQBUF, b)  # blocking: the device streams
out["dqbuf_request"] = request_of(b)
out["streamoff"] = call(STREAMOFF, bytearray(struct.pack("<I", CAPTURE_MPLANE)))


def g_ext_ctrls(which, request_fd):
    value = ctypes.create_string_buffer(32)
    ctrl = ctypes.create_string_buffer(struct.pack("<III", LABEL, 32, 0)
                                       + struct.pack("<Q", ctypes.addressof(value)), 20)
    ec = bytearray(struct.pack("<IIIiI4xQ", which, 1, 0, request_fd, 0, ctypes.addressof(ctrl)))
    err = call(G_EXT_CTRLS, ec)
    return err, value.value.decode(errors="replace"), struct.unpack_from("<i", ec, 12)[0]


out["g_ext_ctrls"] = g_ext_ctrls(WHICH_CUR_VAL, 4)
out["g_ext_ctrls_request"] = g_ext_ctrls(WHICH_REQUEST_VAL, 4)[0]
fb = bytearray(48)
struct.pack_into("<Q", fb, 8, 0x1000)
out["s_fbuf_base"] = call(S_FBUF, fb)
os.close(fd)
print(json.dumps(out))

#!/usr/bin/env python3
"""Issues single V4L2 ioctls with explicit buffer types and prints the results as JSON.

Runs inside the test guest (the host root is the guest's root, so this is Debian's python3).
v4l2-ctl picks the buffer type from the node's capabilities; the tests need to ask with a type
of their choosing (e.g. the MPLANE type vhost-device-media really supports while its config
space claims single-planar capture), and need raw errnos, so they use this instead.

Layouts are videodev2.h's 64-bit ones (struct sizes checked by the ioctl numbers themselves:
a wrong size is a different ioctl code and the kernel answers ENOTTY).
"""
import errno
import fcntl
import json
import os
import struct
import sys

_IOC_WRITE, _IOC_READ = 1, 2


def _ioc(d, nr, size):
    return (d << 30) | (size << 16) | (ord("V") << 8) | nr


def IOWR(nr, size):
    return _ioc(_IOC_READ | _IOC_WRITE, nr, size)


def IOR(nr, size):
    return _ioc(_IOC_READ, nr, size)


def IOW(nr, size):
    return _ioc(_IOC_WRITE, nr, size)


def ioctl(fd, code, buf):
    b = bytearray(buf)
    try:
        fcntl.ioctl(fd, code, b, True)
        return 0, bytes(b)
    except OSError as e:
        return e.errno, bytes(b)


def fourcc(v):
    return struct.pack("<I", v).decode("ascii", "replace")


def enum_fmt(fd, buf_type):
    out = []
    for index in range(64):
        err, b = ioctl(fd, IOWR(2, 64), struct.pack("<II", index, buf_type) + bytes(56))
        if err:
            return out, errno.errorcode.get(err, str(err))
        flags, = struct.unpack_from("<I", b, 8)
        desc = b[12:44].split(b"\0")[0].decode("utf-8", "replace")
        pix, = struct.unpack_from("<I", b, 44)
        sizes = enum_framesizes(fd, pix)
        out.append({"fourcc": fourcc(pix), "description": desc, "flags": flags, "sizes": sizes})
    return out, None


def enum_framesizes(fd, pix):
    sizes = []
    for index in range(64):
        err, b = ioctl(fd, IOWR(74, 44), struct.pack("<III", index, pix, 0) + bytes(32))
        if err:
            break
        typ, w, h = struct.unpack_from("<III", b, 8)
        sizes.append({"type": typ, "width": w, "height": h})
    return sizes


def g_fmt(fd, buf_type):
    err, b = ioctl(fd, IOWR(4, 208), struct.pack("<I", buf_type) + bytes(204))
    if err:
        return {"error": errno.errorcode.get(err, str(err))}
    w, h, pix = struct.unpack_from("<III", b, 8)
    res = {"width": w, "height": h, "fourcc": fourcc(pix)}
    if buf_type in (9, 10):  # v4l2_pix_format_mplane: 8 plane_fmt of 20 bytes at 20, then num_planes
        res["num_planes"] = b[8 + 20 + 8 * 20]
    else:
        res["sizeimage"], = struct.unpack_from("<I", b, 8 + 20)
    return res


# Forwarded ioctls with a payload any device can be asked about; (name, code, payload).
SIMPLE = {
    "QUERYCTRL": (IOWR(36, 68), struct.pack("<I", 0x00980900) + bytes(64)),
    "QUERY_EXT_CTRL": (IOWR(103, 232), struct.pack("<I", 0x00980900) + bytes(228)),
    "G_CTRL": (IOWR(27, 8), struct.pack("<I", 0x00980900) + bytes(4)),
    "QUERYMENU": (IOWR(37, 44), struct.pack("<II", 0x00980900, 0) + bytes(36)),
    "G_SELECTION": (IOWR(94, 64), struct.pack("<III", 1, 0, 0) + bytes(52)),
    "ENUMOUTPUT": (IOWR(48, 72), bytes(72)),
    "G_OUTPUT": (IOR(46, 4), bytes(4)),
    "ENUMAUDIO": (IOWR(65, 52), bytes(52)),
    "G_AUDIO": (IOR(33, 52), bytes(52)),
    "G_TUNER": (IOWR(29, 84), bytes(84)),
    "G_FREQUENCY": (IOWR(56, 44), bytes(44)),
    "G_STD": (IOR(23, 8), bytes(8)),
    "ENUMSTD": (IOWR(25, 72), bytes(72)),
    "QUERYSTD": (IOR(63, 8), bytes(8)),
    "S_STD": (IOW(24, 8), struct.pack("<Q", 0xFF)),
    "G_DV_TIMINGS": (IOWR(88, 132), bytes(132)),
    "DV_TIMINGS_CAP": (IOWR(100, 144), bytes(144)),
    "G_ENC_INDEX": (IOR(76, 2072), bytes(2072)),
    "DECODER_CMD": (IOWR(96, 72), bytes(72)),
    "ENCODER_CMD": (IOWR(77, 40), bytes(40)),
    "G_EXT_CTRLS": (IOWR(71, 32), bytes(32)),
    "ENUMINPUT": (IOWR(26, 80), bytes(80)),
    "G_INPUT": (IOR(38, 4), bytes(4)),
    "G_PARM9": (IOWR(21, 204), struct.pack("<I", 9) + bytes(200)),
}


def simple(fd, names):
    res = {}
    for n in names:
        code, payload = SIMPLE[n]
        err, b = ioctl(fd, code, payload)
        res[n] = errno.errorcode.get(err, str(err)) if err else "OK"
    return res


def main():
    dev = sys.argv[1]
    what = sys.argv[2]
    fd = os.open(dev, os.O_RDWR)
    if what == "formats":
        res = {}
        for t in map(int, sys.argv[3:]):
            fmts, err = enum_fmt(fd, t)
            res[str(t)] = {"formats": fmts, "end": err, "g_fmt": g_fmt(fd, t)}
    elif what == "framesizes":
        res = {cc: enum_framesizes(fd, struct.unpack("<I", cc.encode())[0]) for cc in sys.argv[3:]}
    elif what == "ioctls":
        res = simple(fd, sys.argv[3:] or list(SIMPLE))
    else:
        raise SystemExit(f"unknown request {what}")
    os.close(fd)
    print(json.dumps(res, sort_keys=True))


if __name__ == "__main__":
    main()

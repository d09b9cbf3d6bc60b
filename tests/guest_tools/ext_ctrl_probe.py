"""Guest side of test_string_control_payload_goes_through_sg_lists (tests/test_profiles.py).

Raw VIDIOC_QUERY_EXT_CTRL / G_EXT_CTRLS on the device's "Label" string control (id 0x00981a00,
Documentation/test-device.md), printing one line per case:
  qec ID TYPE FLAGS ELEM_SIZE         QUERY_EXT_CTRL with NEXT_CTRL from 0
  get SIZE ERRNO OUT_SIZE VALUE       G_EXT_CTRLS with a SIZE-byte user buffer
  badptr ERRNO                        G_EXT_CTRLS with size 32 and an unmapped pointer
Layouts from videodev2.h (64-bit): v4l2_query_ext_ctrl 232 bytes, v4l2_ext_controls 32,
v4l2_ext_control 20 (packed: id, size, reserved2, union @12).
"""
import ctypes
import fcntl
import os
import struct
import sys

LABEL = 0x00980900 + 0x1100


def ioc(d, nr, size):
    return (d << 30) | (size << 16) | (ord("V") << 8) | nr


QUERY_EXT_CTRL, G_EXT_CTRLS = ioc(3, 103, 232), ioc(3, 71, 32)
fd = os.open(sys.argv[1] if len(sys.argv) > 1 else "/dev/video0", os.O_RDWR)

q = bytearray(232)
struct.pack_into("<I", q, 0, 0x80000000)  # V4L2_CTRL_FLAG_NEXT_CTRL from id 0
fcntl.ioctl(fd, QUERY_EXT_CTRL, q)
qid, qtype = struct.unpack_from("<II", q, 0)
qflags, elem_size = struct.unpack_from("<II", q, 72)
print(f"qec {qid:#x} {qtype} {qflags:#x} {elem_size}")


def get(size, ptr=None):
    buf = ctypes.create_string_buffer(64)
    p = ctypes.addressof(buf) if ptr is None else ptr
    ctrl = ctypes.create_string_buffer(struct.pack("<III", LABEL, size, 0) + struct.pack("<Q", p), 20)
    ec = bytearray(struct.pack("<IIII", 0, 1, 0, 0) + bytes(8) + struct.pack("<Q", ctypes.addressof(ctrl)))
    try:
        fcntl.ioctl(fd, G_EXT_CTRLS, ec)
        err = 0
    except OSError as e:
        err = e.errno
    return err, struct.unpack_from("<I", ctrl.raw, 4)[0], buf.value.decode()


for size in (32, 4):
    err, out_size, value = get(size)
    print(f"get {size} {err} {out_size} {value!r}")
print(f"badptr {get(32, 0x1000)[0]}")

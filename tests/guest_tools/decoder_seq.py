#!/usr/bin/env python3
"""The V4L2 stateful decoder interface (kernel doc userspace-api/media/v4l/dev-decoder.rst) step
by step with raw ioctls, checking what the driver gives user space at each step; prints JSON.

Runs inside the test guest (Debian's python3 from the shared host root) against a decoder node
(/dev/video0 of the test device's `decoder` profile). Unlike ffmpeg and GStreamer it asserts
the interface's rules itself:

* Initialization: after the first OUTPUT buffers a V4L2_EVENT_SOURCE_CHANGE (RESOLUTION) is
  dequeued (poll() reports POLLPRI) and G_FMT(CAPTURE) gives the stream's size.
* Decoding: each CAPTURE buffer's md5 is recorded (the test compares them with the software
  decode); timestamps are those of OUTPUT buffers.
* Dynamic resolution change: a SOURCE_CHANGE mid-stream, then a CAPTURE buffer flagged LAST;
  DQBUF after it answers EPIPE, and poll() says POLLIN (not a hang); STREAMOFF/REQBUFS/STREAMON
  of CAPTURE alone (OUTPUT keeps streaming) resumes at the new size.
* Drain: V4L2_DEC_CMD_STOP after the last OUTPUT buffer: frames up to a LAST-flagged buffer
  (V4L2_EVENT_EOS already pending when it is dequeued), then EPIPE; V4L2_DEC_CMD_START restarts (no more EPIPE) and the same
  clip decodes again.

usage: decoder_seq.py DEV CLIP [--passes N]
"""
import errno
import hashlib
import json
import mmap
import os
import select
import struct
import sys
import ctypes

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from v4l2probe import IOR, IOW, IOWR, ioctl  # noqa: E402

G_FMT, S_FMT = IOWR(4, 208), IOWR(5, 208)
REQBUFS, QUERYBUF, QBUF, DQBUF = IOWR(8, 20), IOWR(9, 88), IOWR(15, 88), IOWR(17, 88)
STREAMON, STREAMOFF = IOW(18, 4), IOW(19, 4)
DQEVENT, SUBSCRIBE = IOR(89, 136), IOW(90, 32)
DECODER_CMD, TRY_DECODER_CMD = IOWR(96, 72), IOWR(97, 72)
CAP, OUT = 9, 10  # V4L2_BUF_TYPE_VIDEO_{CAPTURE,OUTPUT}_MPLANE
MMAP = 1
FLAG_ERROR, FLAG_LAST = 0x40, 0x100000
EVENT_EOS, EVENT_SOURCE_CHANGE = 2, 5
CMD_START, CMD_STOP = 0, 1
H264 = struct.unpack("<I", b"H264")[0]


class Fail(Exception):
    pass


def must(what, err, data=b""):
    if err:
        raise Fail(f"{what}: {errno.errorcode.get(err, err)}")
    return data


class Queue:
    """An MMAP multi-planar queue (one plane per buffer, which is what this decoder uses)."""

    def __init__(self, fd, typ):
        self.fd, self.typ = fd, typ
        self.planes = bytearray(64)
        self._pbuf = (ctypes.c_char * 64).from_buffer(self.planes)
        self.paddr = ctypes.addressof(self._pbuf)
        self.maps = []
        self.free = []

    def buf(self, index, bytesused=0, ts=0):
        b = bytearray(88)
        struct.pack_into("<II", b, 0, index, self.typ)
        struct.pack_into("<qq", b, 24, ts // 1000000, ts % 1000000)
        struct.pack_into("<I", b, 60, MMAP)
        struct.pack_into("<QI", b, 64, self.paddr, 1)
        self.planes[:] = bytes(64)
        struct.pack_into("<I", self.planes, 0, bytesused)
        return b

    def setup(self, count):
        for m in self.maps:
            m.close()
        self.maps, self.free = [], []
        err, r = ioctl(self.fd, REQBUFS, struct.pack("<III", count, self.typ, MMAP) + bytes(8))
        must(f"REQBUFS({self.typ}, {count})", err)
        n, = struct.unpack_from("<I", r, 0)
        for i in range(n):
            must("QUERYBUF", ioctl(self.fd, QUERYBUF, self.buf(i))[0])
            length, off = struct.unpack_from("<IQ", self.planes, 4)
            self.maps.append(mmap.mmap(self.fd, length, mmap.MAP_SHARED,
                                       mmap.PROT_READ | mmap.PROT_WRITE, offset=off))
            self.free.append(i)
        return n

    def qbuf(self, index, data=b"", ts=0):
        if data:
            self.maps[index][:len(data)] = data
        must(f"QBUF({self.typ}, {index})", ioctl(self.fd, QBUF, self.buf(index, len(data), ts))[0])

    def dqbuf(self):
        """(index, flags, bytesused, timestamp) or an errno (int)."""
        err, b = ioctl(self.fd, DQBUF, self.buf(0))
        if err:
            return err
        index, _, _, flags = struct.unpack_from("<IIII", b, 0)
        sec, usec = struct.unpack_from("<qq", b, 24)
        bytesused, = struct.unpack_from("<I", self.planes, 0)
        return index, flags, bytesused, sec * 1000000 + usec

    def stream(self, on):
        must(f"STREAM{'ON' if on else 'OFF'}({self.typ})",
             ioctl(self.fd, STREAMON if on else STREAMOFF, struct.pack("<I", self.typ))[0])


def g_fmt(fd, typ):
    b = bytearray(208)
    struct.pack_into("<I", b, 0, typ)
    r = must("G_FMT", *ioctl(fd, G_FMT, b))
    w, h, pix = struct.unpack_from("<III", r, 8)
    sizeimage, bpl = struct.unpack_from("<II", r, 28)
    return {"width": w, "height": h, "fourcc": struct.pack("<I", pix).decode(),
            "sizeimage": sizeimage, "bytesperline": bpl}


def dqevent(fd):
    err, e = ioctl(fd, DQEVENT, bytes(136))
    if err:
        return None
    typ, = struct.unpack_from("<I", e, 0)
    changes, = struct.unpack_from("<I", e, 8)  # the union `u` is 8-aligned
    return {"type": typ, "changes": changes if typ == EVENT_SOURCE_CHANGE else 0}


def dec_cmd(fd, cmd, code=DECODER_CMD):
    err, r = ioctl(fd, code, struct.pack("<II", cmd, 0) + bytes(64))
    return err


def poll(fd, timeout_ms):
    p = select.poll()
    p.register(fd, select.POLLIN | select.POLLOUT | select.POLLPRI)
    ev = p.poll(timeout_ms)
    return ev[0][1] if ev else 0


class Session:
    def __init__(self, dev, clip):
        self.fd = os.open(dev, os.O_RDWR | os.O_NONBLOCK)
        self.data = open(clip, "rb").read()
        self.out, self.cap = Queue(self.fd, OUT), Queue(self.fd, CAP)
        self.frames, self.events, self.log = [], [], []
        self.out_ts = set()

    def init(self):
        b = bytearray(208)
        struct.pack_into("<IIII", b, 0, OUT, 0, 0, H264)
        must("S_FMT(OUTPUT)", ioctl(self.fd, S_FMT, b)[0])
        for t in (EVENT_SOURCE_CHANGE, EVENT_EOS):
            must("SUBSCRIBE_EVENT", ioctl(self.fd, SUBSCRIBE, struct.pack("<III", t, 0, 0) +
                                          bytes(20))[0])
        self.chunk = g_fmt(self.fd, OUT)["sizeimage"]
        self.out.setup(4)
        self.out.stream(True)

    def setup_capture(self):
        fmt = g_fmt(self.fd, CAP)
        self.cap.stream(False)
        self.cap.setup(0)
        n = self.cap.setup(6)
        for i in range(n):
            self.cap.qbuf(i)
        self.cap.stream(True)
        self.log.append(f"capture {fmt['width']}x{fmt['height']} {fmt['fourcc']} x{n}")
        return fmt

    def feed(self, pos, ts):
        """Queues the next chunk if an OUTPUT buffer is free; returns the new position."""
        if pos >= len(self.data):
            return pos
        r = self.out.dqbuf()
        if isinstance(r, tuple):
            self.out.free.append(r[0])
        if not self.out.free:
            return pos
        chunk = self.data[pos:pos + self.chunk]
        self.out.qbuf(self.out.free.pop(0), chunk, ts)
        self.out_ts.add(ts)
        return pos + len(chunk)

    def decode(self):
        """Feeds the whole clip, drains with DEC_CMD_STOP, returns after the LAST buffer."""
        pos, ts, stopped, last_seen, idle = 0, 1000000, False, False, 0
        waiting_restart = False
        while not last_seen:
            before = pos
            pos = self.feed(pos, ts)
            if pos != before:
                ts += 33333
                idle = 0
            if pos >= len(self.data) and not stopped and self.cap_streaming():
                must("DECODER_CMD(STOP)", dec_cmd(self.fd, CMD_STOP))
                stopped = True
                self.log.append("stop")
            mask = poll(self.fd, 1000)
            if mask & select.POLLPRI:
                ev = dqevent(self.fd)
                if ev:
                    self.events.append(ev)
                    if ev["type"] == EVENT_SOURCE_CHANGE:
                        if not self.cap_streaming():
                            self.setup_capture()
                        else:
                            waiting_restart = True
            r = self.cap.dqbuf() if self.cap_streaming() else errno.EINVAL
            if isinstance(r, tuple):
                index, flags, used, t = r
                if used:
                    m = self.cap.maps[index]
                    self.frames.append({"md5": hashlib.md5(m[:used]).hexdigest(), "size": used,
                                        "ts_known": t in self.out_ts,
                                        "error": bool(flags & FLAG_ERROR)})
                if flags & FLAG_LAST:
                    self.log.append(f"LAST bytesused {used}")
                    after = self.cap.dqbuf()
                    self.log.append("after LAST: " + errno.errorcode.get(after, str(after))
                                    if isinstance(after, int) else "after LAST: a buffer")
                    pm = poll(self.fd, 0)
                    self.log.append(f"poll after LAST: {'POLLIN' if pm & select.POLLIN else mask}")
                    # The decoder queues SOURCE_CHANGE before the LAST buffer that ends the
                    # old resolution: with one pending, LAST marks a dynamic resolution
                    # change, and CAPTURE alone restarts at the size G_FMT now gives;
                    # otherwise it ends the drain.
                    ev = dqevent(self.fd)
                    while ev:
                        self.events.append(ev)
                        waiting_restart |= ev["type"] == EVENT_SOURCE_CHANGE
                        ev = dqevent(self.fd)
                    if waiting_restart:
                        waiting_restart = False
                        fmt = self.setup_capture()
                        self.log.append(f"restarted at {fmt['width']}x{fmt['height']}")
                        continue
                    self.last_index = index
                    last_seen = True
                    continue
                self.cap.qbuf(index)
                idle = 0
            elif pos == before:
                idle += 1
                if idle > 30:
                    raise Fail(f"no progress: pos {pos}/{len(self.data)}, {len(self.frames)} "
                               f"frames, events {self.events}, log {self.log}")
        # The device queues V4L2_EVENT_EOS before it returns the LAST buffer (so it is pending
        # once LAST can be dequeued, as dev-decoder.rst wants): collect it.
        for _ in range(10):
            ev = dqevent(self.fd)
            if ev:
                self.events.append(ev)
                if ev["type"] == EVENT_EOS:
                    break
            poll(self.fd, 200)

    def cap_streaming(self):
        return bool(self.cap.maps)


def main():
    dev, clip = sys.argv[1], sys.argv[2]
    passes = int(sys.argv[sys.argv.index("--passes") + 1]) if "--passes" in sys.argv else 2
    s = Session(dev, clip)
    out = {"passes": []}
    try:
        s.init()
        out["try_stop"] = errno.errorcode.get(dec_cmd(s.fd, CMD_STOP, TRY_DECODER_CMD), "OK")
        out["try_pause"] = errno.errorcode.get(dec_cmd(s.fd, 2, TRY_DECODER_CMD), "OK")
        for p in range(passes):
            if p:
                out["dqbuf_before_start"] = errno.errorcode.get(s.cap.dqbuf(), "?")
                out["start"] = errno.errorcode.get(dec_cmd(s.fd, CMD_START), "OK")
                r = s.cap.dqbuf()
                out["dqbuf_after_start"] = errno.errorcode.get(r, "?") \
                    if isinstance(r, int) else "a buffer"
                s.cap.qbuf(s.last_index)
            s.frames, s.events, s.log = [], [], []
            s.decode()
            out["passes"].append({"frames": s.frames, "events": s.events, "log": s.log})
    except Fail as e:
        out["error"] = str(e)
        out["passes"].append({"frames": s.frames, "events": s.events, "log": s.log})
    print(json.dumps(out))


if __name__ == "__main__":
    main()

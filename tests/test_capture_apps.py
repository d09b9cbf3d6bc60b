"""Issue 3: v4l2-ctl, GStreamer and ffmpeg capture through the driver from our own test device
(tests/device, profile capture-mplane: the virtio-media crate's SimpleCaptureDevice behind a
config space that truthfully says VIDEO_CAPTURE_MPLANE | STREAMING).

Expected frame content comes from the device's pattern definition (virtio-media 0.0.8,
SimpleCaptureDevice): frame with sequence n is 640x480 YU12 with Y = n % 256, U = (n + 64) % 256,
V = (n + 128) % 256 everywhere; sequences start at 0 on a fresh device.
"""
import re

import pytest

from guest import run_guest
from test_streaming import expected_frame

pytestmark = pytest.mark.guest

BACKEND = "vmrs:capture-mplane"
FRAME = 640 * 480 * 3 // 2


def frames_of(path_bytes):
    return [path_bytes[i:i + FRAME] for i in range(0, len(path_bytes), FRAME)]


def test_v4l2_ctl_streams_60_frames_of_the_device_pattern():
    # Captured to the guest's tmpfs, then copied to the share: MMAP buffers are PFN mappings
    # of the SHM BAR, which 9p's zero-copy writes cannot pin (EFAULT); see design.md.
    res = run_guest("v4l2-ctl -d0 --stream-mmap --stream-count=60 "
                    "--stream-to=/tmp/v4l2ctl.yuv && cp /tmp/v4l2ctl.yuv $VMRS_OUT/ && echo done",
                    backend=BACKEND, timeout=600)
    assert res.status == 0 and "done" in res.stdout, (res.stdout, res.stderr)
    data = (res.run_dir / "share" / "v4l2ctl.yuv").read_bytes()
    assert len(data) == 60 * FRAME, len(data)
    for n, f in enumerate(frames_of(data)):
        assert f == expected_frame(n), f"frame {n} differs from the pattern"


def test_gstreamer_v4l2src_captures_30_frames():
    res = run_guest("gst-launch-1.0 -q v4l2src device=/dev/video0 num-buffers=30 ! "
                    "video/x-raw,format=I420,width=640,height=480 ! "
                    "filesink location=/tmp/gst.yuv && cp /tmp/gst.yuv $VMRS_OUT/ && echo done",
                    backend=BACKEND, timeout=600)
    assert res.status == 0 and "done" in res.stdout, (res.stdout, res.stderr)
    data = (res.run_dir / "share" / "gst.yuv").read_bytes()
    assert len(data) == 30 * FRAME, len(data)
    # Every frame is one of the device's pattern frames (GStreamer may skip none here, but only
    # content, not order, is asserted).
    valid = {expected_frame(n) for n in range(64)}
    assert all(f in valid for f in frames_of(data))


def test_ffmpeg_captures_30_frames_through_libv4l2():
    """Debian's ffmpeg 5.1 v4l2 input opens single-planar capture devices only ("Not a video
    capture device" on an MPLANE node: ffmpeg's limit, not the driver's); libv4l2's plugin
    (LD_PRELOAD v4l2convert.so) presents the MPLANE node to it as single-planar."""
    pre = "LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libv4l/v4l2convert.so"
    res = run_guest(f"{pre} ffmpeg -hide_banner -loglevel error -f v4l2 -video_size 640x480 "
                    "-i /dev/video0 -frames:v 30 -f rawvideo -pix_fmt yuv420p -y "
                    "/tmp/ffmpeg.yuv && cp /tmp/ffmpeg.yuv $VMRS_OUT/ && echo done",
                    backend=BACKEND, timeout=600)
    assert res.status == 0 and "done" in res.stdout, (res.stdout, res.stderr)
    data = (res.run_dir / "share" / "ffmpeg.yuv").read_bytes()
    assert len(data) == 30 * FRAME, len(data)


def test_v4l2_compliance_streaming_has_no_failures():
    res = run_guest("v4l2-compliance -d0 -s 2>&1", backend=BACKEND, timeout=900)
    m = re.search(r"^Total for virtio_media device /dev/video0: (\d+), Succeeded: (\d+), "
                  r"Failed: (\d+), Warnings: (\d+)$", res.stdout, re.M)
    assert m, res.stdout[-3000:]
    total, ok, failed, warn = map(int, m.groups())
    print(f"v4l2-compliance -s (vmrs capture-mplane): total {total} succeeded {ok} "
          f"failed {failed} warnings {warn}")
    assert failed == 0, "\n".join(l for l in res.stdout.splitlines() if "fail" in l)
    assert "test MMAP (select): OK\n" in res.stdout and "test MMAP (epoll): OK\n" in res.stdout


def test_mmap_without_shm_region_fails_cleanly():
    """A device without shared memory region 0 (our device with the SHMEM vhost-user feature
    withheld): buffers can be allocated and queried, mmap() fails with ENODEV and a message,
    nothing else breaks."""
    from guest import REPO
    script = f"""
import mmap, os, struct, sys, ctypes
sys.path.insert(0, "{REPO}/tests/guest_tools")
from v4l2probe import IOWR, ioctl
fd = os.open("/dev/video0", os.O_RDWR)
print("reqbufs", ioctl(fd, IOWR(8, 20), struct.pack("<III", 2, 9, 1) + bytes(8))[0])
planes = ctypes.create_string_buffer(64 * 8)
b = bytearray(88); struct.pack_into("<II", b, 0, 0, 9); struct.pack_into("<I", b, 60, 1)
struct.pack_into("<QI", b, 64, ctypes.addressof(planes), 8)
print("querybuf", ioctl(fd, IOWR(9, 88), b)[0])
length, off = struct.unpack_from("<IQ", planes.raw, 4)
try:
    mmap.mmap(fd, length, mmap.MAP_SHARED, mmap.PROT_READ, offset=off)
    print("mmap ok")
except OSError as e:
    print("mmap", e.errno)
print("g_fmt", ioctl(fd, IOWR(4, 208), struct.pack("<I", 9) + bytes(204))[0])
"""
    res = run_guest(f"python3 - <<'EOF'\n{script}\nEOF", backend="vmrs:capture-mplane-noshm",
                    timeout=300)
    assert res.status == 0, (res.stdout, res.stderr)
    assert res.stdout.split("\n")[:4] == ["reqbufs 0", "querybuf 0", "mmap 19", "g_fmt 0"], \
        res.stdout
    assert "shm None" in res.dmesg
    assert re.search(r"virtio_media virtio\d+: mmap: the device has no shared memory region 0",
                     res.dmesg), res.dmesg[-1500:]

"""Host-only tests of tests/compliance.py (no guest): the parser against outputs in the exact
formats of v4l2-compliance 1.22.1 (Debian bookworm) and 1.32.0 (Debian sid), written from their
sources (utils/v4l2-compliance/v4l2-compliance.cpp testNode(), v4l2-compliance.h fail()/warn(),
v4l2-test-buffers.cpp's progress lines) for our single-planar capture profile with -s: 1.22.1
runs 54 tests there, 1.32.0 runs 59 (CREATE_BUFS maximum buffers, VIDIOC_REMOVE_BUFS, and MMAP
streaming with CREATE_BUFS as well as REQBUFS). File names and line numbers in the fail:/warn:
lines are the real ones of each version's source.
"""
import re

import pytest

import compliance

# v4l2-compliance 1.22.1 -d0 -s on the `capture` profile: the whole output (streaming progress
# included: "\r\tVideo Capture: Frame #NNN" while it streams, blanked before the test's line).
PROGRESS_122 = "".join(f"\r\tVideo Capture: Frame #{i:03d}{{mode}}" for i in range(3)) + \
    "\r\t" + " " * 50 + "\r"
OUT_122_CAPTURE = f"""\
v4l2-compliance 1.22.1, 64 bits, 64-bit time_t

Compliance test for virtio_media device /dev/video0:

Driver Info:
\tDriver name      : virtio_media
\tCard type        : vmrs test device (capture)
\tBus info         : platform:virtio0
\tDriver version   : 6.12.38
\tCapabilities     : 0x84200001
\t\tVideo Capture
\t\tStreaming
\t\tExtended Pix Format
\t\tDevice Capabilities
\tDevice Caps      : 0x04200001
\t\tVideo Capture
\t\tStreaming
\t\tExtended Pix Format

Required ioctls:
\ttest VIDIOC_QUERYCAP: OK
\ttest invalid ioctls: OK

Allow for multiple opens:
\ttest second /dev/video0 open: OK
\ttest VIDIOC_QUERYCAP: OK
\ttest VIDIOC_G/S_PRIORITY: OK
\ttest for unlimited opens: OK

Debug ioctls:
\ttest VIDIOC_DBG_G/S_REGISTER: OK (Not Supported)
\ttest VIDIOC_LOG_STATUS: OK (Not Supported)

Input ioctls:
\ttest VIDIOC_G/S_TUNER/ENUM_FREQ_BANDS: OK (Not Supported)
\ttest VIDIOC_G/S_FREQUENCY: OK (Not Supported)
\ttest VIDIOC_S_HW_FREQ_SEEK: OK (Not Supported)
\ttest VIDIOC_ENUMAUDIO: OK (Not Supported)
\ttest VIDIOC_G/S/ENUMINPUT: OK
\ttest VIDIOC_G/S_AUDIO: OK (Not Supported)
\tInputs: 1 Audio Inputs: 0 Tuners: 0

Output ioctls:
\ttest VIDIOC_G/S_MODULATOR: OK (Not Supported)
\ttest VIDIOC_G/S_FREQUENCY: OK (Not Supported)
\ttest VIDIOC_ENUMAUDOUT: OK (Not Supported)
\ttest VIDIOC_G/S/ENUMOUTPUT: OK (Not Supported)
\ttest VIDIOC_G/S_AUDOUT: OK (Not Supported)
\tOutputs: 0 Audio Outputs: 0 Modulators: 0

Input/Output configuration ioctls:
\ttest VIDIOC_ENUM/G/S/QUERY_STD: OK (Not Supported)
\ttest VIDIOC_ENUM/G/S/QUERY_DV_TIMINGS: OK (Not Supported)
\ttest VIDIOC_DV_TIMINGS_CAP: OK (Not Supported)
\ttest VIDIOC_G/S_EDID: OK (Not Supported)

Control ioctls (Input 0):
\ttest VIDIOC_QUERY_EXT_CTRL/QUERYMENU: OK
\ttest VIDIOC_QUERYCTRL: OK
\ttest VIDIOC_G/S_CTRL: OK
\ttest VIDIOC_G/S/TRY_EXT_CTRLS: OK
\ttest VIDIOC_(UN)SUBSCRIBE_EVENT/DQEVENT: OK
\ttest VIDIOC_G/S_JPEGCOMP: OK (Not Supported)
\tStandard Controls: 3 Private Controls: 0

Format ioctls (Input 0):
\ttest VIDIOC_ENUM_FMT/FRAMESIZES/FRAMEINTERVALS: OK
\ttest VIDIOC_G/S_PARM: OK
\ttest VIDIOC_G_FBUF: OK (Not Supported)
\ttest VIDIOC_G_FMT: OK
\ttest VIDIOC_TRY_FMT: OK
\ttest VIDIOC_S_FMT: OK
\ttest VIDIOC_G_SLICED_VBI_CAP: OK (Not Supported)
\ttest Cropping: OK (Not Supported)
\ttest Composing: OK (Not Supported)
\ttest Scaling: OK (Not Supported)

Codec ioctls (Input 0):
\ttest VIDIOC_(TRY_)ENCODER_CMD: OK (Not Supported)
\ttest VIDIOC_G_ENC_INDEX: OK (Not Supported)
\ttest VIDIOC_(TRY_)DECODER_CMD: OK (Not Supported)

Buffer ioctls (Input 0):
\ttest VIDIOC_REQBUFS/CREATE_BUFS/QUERYBUF: OK
\ttest VIDIOC_EXPBUF: OK (Not Supported)
\ttest Requests: OK (Not Supported)

Test input 0:

Streaming ioctls:
\ttest read/write: OK (Not Supported)
\ttest blocking wait: OK
{PROGRESS_122.format(mode="")}\ttest MMAP (no poll): OK
{PROGRESS_122.format(mode=" (select)")}\ttest MMAP (select): OK
{PROGRESS_122.format(mode=" (epoll)")}\ttest MMAP (epoll): OK
{PROGRESS_122.format(mode="")}\ttest USERPTR (no poll): OK
{PROGRESS_122.format(mode=" (select)")}\ttest USERPTR (select): OK
\ttest DMABUF (no poll): OK (Not Supported)
\ttest DMABUF (select): OK (Not Supported)

Total for virtio_media device /dev/video0: 54, Succeeded: 54, Failed: 0, Warnings: 0
"""

# v4l2-compliance 1.32.0 -d0 -s on the same profile.
PROGRESS_132 = PROGRESS_122
OUT_132_CAPTURE = f"""\
v4l2-compliance 1.32.0, 64 bits, 64-bit time_t

Compliance test for virtio_media device /dev/video0:

Driver Info:
\tDriver name      : virtio_media
\tCard type        : vmrs test device (capture)
\tBus info         : platform:virtio0
\tDriver version   : 6.12.38
\tCapabilities     : 0x84200001
\t\tVideo Capture
\t\tStreaming
\t\tExtended Pix Format
\t\tDevice Capabilities
\tDevice Caps      : 0x04200001
\t\tVideo Capture
\t\tStreaming
\t\tExtended Pix Format

Required ioctls:
\ttest VIDIOC_QUERYCAP: OK
\ttest invalid ioctls: OK

Allow for multiple opens:
\ttest second /dev/video0 open: OK
\ttest VIDIOC_QUERYCAP: OK
\ttest VIDIOC_G/S_PRIORITY: OK
\ttest for unlimited opens: OK

Debug ioctls:
\ttest VIDIOC_DBG_G/S_REGISTER: OK (Not Supported)
\ttest VIDIOC_LOG_STATUS: OK (Not Supported)

Input ioctls:
\ttest VIDIOC_G/S_TUNER/ENUM_FREQ_BANDS: OK (Not Supported)
\ttest VIDIOC_G/S_FREQUENCY: OK (Not Supported)
\ttest VIDIOC_S_HW_FREQ_SEEK: OK (Not Supported)
\ttest VIDIOC_ENUMAUDIO: OK (Not Supported)
\ttest VIDIOC_G/S/ENUMINPUT: OK
\ttest VIDIOC_G/S_AUDIO: OK (Not Supported)
\tInputs: 1 Audio Inputs: 0 Tuners: 0

Output ioctls:
\ttest VIDIOC_G/S_MODULATOR: OK (Not Supported)
\ttest VIDIOC_G/S_FREQUENCY: OK (Not Supported)
\ttest VIDIOC_ENUMAUDOUT: OK (Not Supported)
\ttest VIDIOC_G/S/ENUMOUTPUT: OK (Not Supported)
\ttest VIDIOC_G/S_AUDOUT: OK (Not Supported)
\tOutputs: 0 Audio Outputs: 0 Modulators: 0

Input/Output configuration ioctls:
\ttest VIDIOC_ENUM/G/S/QUERY_STD: OK (Not Supported)
\ttest VIDIOC_ENUM/G/S/QUERY_DV_TIMINGS: OK (Not Supported)
\ttest VIDIOC_DV_TIMINGS_CAP: OK (Not Supported)
\ttest VIDIOC_G/S_EDID: OK (Not Supported)

Control ioctls (Input 0):
\ttest VIDIOC_QUERY_EXT_CTRL/QUERYMENU: OK
\ttest VIDIOC_QUERYCTRL: OK
\ttest VIDIOC_G/S_CTRL: OK
\ttest VIDIOC_G/S/TRY_EXT_CTRLS: OK
\ttest VIDIOC_(UN)SUBSCRIBE_EVENT/DQEVENT: OK
\ttest VIDIOC_G/S_JPEGCOMP: OK (Not Supported)
\tStandard Controls: 3 Private Controls: 0

Format ioctls (Input 0):
\ttest VIDIOC_ENUM_FMT/FRAMESIZES/FRAMEINTERVALS: OK
\ttest VIDIOC_G/S_PARM: OK
\ttest VIDIOC_G_FBUF: OK (Not Supported)
\ttest VIDIOC_G_FMT: OK
\ttest VIDIOC_TRY_FMT: OK
\ttest VIDIOC_S_FMT: OK
\ttest VIDIOC_G_SLICED_VBI_CAP: OK (Not Supported)
\ttest Cropping: OK (Not Supported)
\ttest Composing: OK (Not Supported)
\ttest Scaling: OK (Not Supported)

Codec ioctls (Input 0):
\ttest VIDIOC_(TRY_)ENCODER_CMD: OK (Not Supported)
\ttest VIDIOC_G_ENC_INDEX: OK (Not Supported)
\ttest VIDIOC_(TRY_)DECODER_CMD: OK (Not Supported)

Buffer ioctls (Input 0):
\ttest VIDIOC_REQBUFS/CREATE_BUFS/QUERYBUF: OK
\ttest CREATE_BUFS maximum buffers: OK
\ttest VIDIOC_REMOVE_BUFS: OK (Not Supported)
\ttest VIDIOC_EXPBUF: OK (Not Supported)
\ttest Requests: OK (Not Supported)
\ttest blocking wait: OK

Test input 0:

Streaming ioctls:
\ttest read/write: OK (Not Supported)
{PROGRESS_132.format(mode="")}\ttest MMAP (no poll, REQBUFS): OK
{PROGRESS_132.format(mode=" (select)")}\ttest MMAP (select, REQBUFS): OK
{PROGRESS_132.format(mode=" (epoll)")}\ttest MMAP (epoll, REQBUFS): OK
{PROGRESS_132.format(mode="")}\ttest MMAP (no poll, CREATE_BUFS): OK
{PROGRESS_132.format(mode=" (select)")}\ttest MMAP (select, CREATE_BUFS): OK
{PROGRESS_132.format(mode=" (epoll)")}\ttest MMAP (epoll, CREATE_BUFS): OK
{PROGRESS_132.format(mode="")}\ttest USERPTR (no poll): OK
{PROGRESS_132.format(mode=" (select)")}\ttest USERPTR (select): OK
\ttest DMABUF (no poll): OK (Not Supported)
\ttest DMABUF (select): OK (Not Supported)

Total for virtio_media device /dev/video0: 59, Succeeded: 59, Failed: 0, Warnings: 0
"""

# 1.22.1 on NV12 (kernel 6.12 describes it "Y/UV 4:2:0", 1.22.1 expects "Y/CbCr 4:2:0"):
# v4l2-test-formats.cpp(263) of 1.22.1 fails ENUM_FMT.
OUT_122_NV12_FAIL = OUT_122_CAPTURE.replace(
    "\ttest VIDIOC_ENUM_FMT/FRAMESIZES/FRAMEINTERVALS: OK\n",
    "\t\tfail: v4l2-test-formats.cpp(263): fmtdesc.description mismatch: was 'Y/UV 4:2:0', "
    "expected 'Y/CbCr 4:2:0'\n"
    "\ttest VIDIOC_ENUM_FMT/FRAMESIZES/FRAMEINTERVALS: FAIL\n").replace(
    "Total for virtio_media device /dev/video0: 54, Succeeded: 54, Failed: 0, Warnings: 0",
    "Total for virtio_media device /dev/video0: 54, Succeeded: 53, Failed: 1, Warnings: 0")

# 1.32.0: a warning in the format tests (v4l2-test-formats.cpp(1498) of 1.32.0) and a failure
# in the middle of streaming, printed after the progress text on the same line
# (v4l2-test-buffers.cpp(1280): buf.check() in the capture loop).
OUT_132_WARN_AND_STREAM_FAIL = OUT_132_CAPTURE.replace(
    "\ttest VIDIOC_G/S_PARM: OK\n",
    "\t\twarn: v4l2-test-formats.cpp(1498): S_PARM is supported but doesn't report "
    "V4L2_CAP_TIMEPERFRAME\n"
    "\ttest VIDIOC_G/S_PARM: OK\n").replace(
    PROGRESS_132.format(mode=" (select)") + "\ttest MMAP (select, REQBUFS): OK\n",
    "\r\tVideo Capture: Frame #000 (select)\r\tVideo Capture: Frame #001 (select)"
    "\t\tfail: v4l2-test-buffers.cpp(1280): buf.check(q, last_seq)\n"
    "\r\t" + " " * 50 + "\r\ttest MMAP (select, REQBUFS): FAIL\n").replace(
    "Total for virtio_media device /dev/video0: 59, Succeeded: 59, Failed: 0, Warnings: 0",
    "Total for virtio_media device /dev/video0: 59, Succeeded: 58, Failed: 1, Warnings: 1")

# 1.32.0 -m /dev/media0 -s on the decoder profile (abridged to the media node and one video
# node: walkTopology() prints a line of dashes, then the node's own run): a `Total for` line per
# node, then `Grand Total` for the media device, their sum.
OUT_132_MEDIA = """\
v4l2-compliance 1.32.0, 64 bits, 64-bit time_t

Compliance test for virtio_media device /dev/media0:

Media Driver Info:
\tDriver name      : virtio_media
\tModel            : vmrs test device (decoder)
\tSerial           : 
\tBus info         : 
\tMedia version    : 6.12.38
\tHardware revision: 0x00000000 (0)
\tDriver version   : 6.12.38

Required ioctls:
\t\twarn: v4l2-test-media.cpp(43): empty bus_info
\ttest MEDIA_IOC_DEVICE_INFO: OK
\ttest invalid ioctls: OK

Allow for multiple opens:
\ttest second /dev/media0 open: OK
\t\twarn: v4l2-test-media.cpp(43): empty bus_info
\ttest MEDIA_IOC_DEVICE_INFO: OK
\ttest for unlimited opens: OK

Media Controller ioctls:
\ttest MEDIA_IOC_G_TOPOLOGY: OK
\tEntities: 3 Interfaces: 1 Pads: 4 Links: 4
\ttest MEDIA_IOC_ENUM_ENTITIES/LINKS: OK
\ttest MEDIA_IOC_SETUP_LINK: OK

Total for virtio_media device /dev/media0: 8, Succeeded: 8, Failed: 0, Warnings: 2
--------------------------------------------------------------------------------
Compliance test for virtio_media device /dev/video0:

Driver Info:
\tDriver name      : virtio_media
\tDetected Stateful Decoder

Required ioctls:
\ttest MC information (see 'Media Driver Info' above): OK
\ttest VIDIOC_QUERYCAP: OK
\ttest invalid ioctls: OK

Codec ioctls:
\ttest VIDIOC_(TRY_)ENCODER_CMD: OK (Not Supported)
\ttest VIDIOC_G_ENC_INDEX: OK (Not Supported)
\ttest VIDIOC_(TRY_)DECODER_CMD: OK

Total for virtio_media device /dev/video0: 6, Succeeded: 6, Failed: 0, Warnings: 0

Grand Total for virtio_media device /dev/media0: 14, Succeeded: 14, Failed: 0, Warnings: 2
"""

RESULT_LINE = re.compile(r"test [^\n\r]*: (OK|FAIL)")


def result_lines(out):
    return RESULT_LINE.findall(out)


def test_samples_are_self_consistent():
    """Each sample's Total equals its number of test results (what v4l2-compliance's ok()
    counts), and its Failed the number of FAILs."""
    for out in (OUT_122_CAPTURE, OUT_132_CAPTURE, OUT_122_NV12_FAIL,
                OUT_132_WARN_AND_STREAM_FAIL):
        r = compliance.parse(out)
        res = result_lines(out)
        assert r["total"] == len(res)
        assert r["failed"] == res.count("FAIL")


def test_parse_1_22_1_capture():
    r = compliance.parse(OUT_122_CAPTURE)
    assert {k: r[k] for k in ("total", "succeeded", "failed", "warnings", "version")} == \
        {"total": 54, "succeeded": 54, "failed": 0, "warnings": 0, "version": "1.22.1"}
    assert r["nodes"] == [{"driver": "virtio_media", "device": "/dev/video0", "libv4l2": False,
                           "total": 54, "succeeded": 54, "failed": 0, "warnings": 0}]
    assert not r["grand"] and r["fails"] == r["warns"] == r["failed_tests"] == []
    assert compliance.assert_clean(OUT_122_CAPTURE, 54, version="1.22")["total"] == 54


def test_parse_1_32_0_capture():
    r = compliance.parse(OUT_132_CAPTURE)
    assert (r["total"], r["succeeded"], r["failed"], r["warnings"], r["version"]) == \
        (59, 59, 0, 0, "1.32.0")
    compliance.assert_clean(OUT_132_CAPTURE, 59, version="1.32")


def test_fail_line_and_failed_test_are_reported():
    r = compliance.parse(OUT_122_NV12_FAIL)
    assert (r["total"], r["succeeded"], r["failed"], r["warnings"]) == (54, 53, 1, 0)
    assert r["fails"] == ["fail: v4l2-test-formats.cpp(263): fmtdesc.description mismatch: "
                          "was 'Y/UV 4:2:0', expected 'Y/CbCr 4:2:0'"]
    assert r["failed_tests"] == ["test VIDIOC_ENUM_FMT/FRAMESIZES/FRAMEINTERVALS: FAIL"]
    with pytest.raises(AssertionError) as e:
        compliance.assert_clean(OUT_122_NV12_FAIL, 54)
    msg = str(e.value)
    assert "1 failed" in msg and "v4l2-compliance 1.22.1" in msg
    assert "fail: v4l2-test-formats.cpp(263): fmtdesc.description mismatch" in msg
    assert "test VIDIOC_ENUM_FMT/FRAMESIZES/FRAMEINTERVALS: FAIL" in msg


def test_warning_and_fail_after_progress_text():
    r = compliance.parse(OUT_132_WARN_AND_STREAM_FAIL)
    assert (r["total"], r["succeeded"], r["failed"], r["warnings"]) == (59, 58, 1, 1)
    assert r["warns"] == ["warn: v4l2-test-formats.cpp(1498): S_PARM is supported but doesn't "
                          "report V4L2_CAP_TIMEPERFRAME"]
    assert r["fails"] == ["fail: v4l2-test-buffers.cpp(1280): buf.check(q, last_seq)"]
    assert r["failed_tests"] == ["test MMAP (select, REQBUFS): FAIL"]
    with pytest.raises(AssertionError) as e:
        compliance.assert_clean(OUT_132_WARN_AND_STREAM_FAIL, 59)
    msg = str(e.value)
    assert "1 failed, 1 warnings" in msg
    assert "warn: v4l2-test-formats.cpp(1498)" in msg
    assert "fail: v4l2-test-buffers.cpp(1280)" in msg
    assert "\r" not in msg


def test_a_warning_alone_is_not_clean():
    out = OUT_132_CAPTURE.replace(
        "\ttest VIDIOC_G/S_PARM: OK\n",
        "\t\twarn: v4l2-test-formats.cpp(1498): S_PARM is supported but doesn't report "
        "V4L2_CAP_TIMEPERFRAME\n\ttest VIDIOC_G/S_PARM: OK\n").replace(
        "Succeeded: 59, Failed: 0, Warnings: 0", "Succeeded: 59, Failed: 0, Warnings: 1")
    with pytest.raises(AssertionError, match=r"(?s)1 warnings.*warn: v4l2-test-formats"):
        compliance.assert_clean(out, 59)


def test_a_warning_hidden_by_no_warnings_is_still_counted():
    out = OUT_132_CAPTURE.replace("Succeeded: 59, Failed: 0, Warnings: 0",
                                  "Succeeded: 59, Failed: 0, Warnings: 2")
    with pytest.raises(AssertionError, match="counted but not printed"):
        compliance.assert_clean(out, 59)


def test_the_exact_total_is_asserted():
    with pytest.raises(AssertionError, match="total 54, expected 59"):
        compliance.assert_clean(OUT_122_CAPTURE, 59)
    with pytest.raises(AssertionError, match="total 59, expected 54"):
        compliance.assert_clean(OUT_132_CAPTURE, 54)


def test_the_version_is_asserted():
    with pytest.raises(AssertionError, match="v4l2-compliance 1.22.1 ran, expected 1.32"):
        compliance.assert_clean(OUT_122_CAPTURE, 54, version="1.32")


def test_grand_total_of_a_media_device():
    r = compliance.parse(OUT_132_MEDIA)
    assert r["grand"]
    assert (r["total"], r["succeeded"], r["failed"], r["warnings"]) == (14, 14, 0, 2)
    assert [(n["device"], n["total"]) for n in r["nodes"]] == [("/dev/media0", 8),
                                                               ("/dev/video0", 6)]
    assert sum(n["total"] for n in r["nodes"]) == r["total"]
    assert r["warns"] == ["warn: v4l2-test-media.cpp(43): empty bus_info"] * 2
    with pytest.raises(AssertionError, match="2 warnings"):
        compliance.assert_clean(OUT_132_MEDIA, 14)


def test_several_runs_in_one_output_add_up():
    """Two runs' outputs in one (e.g. `v4l2-compliance -d0; v4l2-compliance -d1`)."""
    r = compliance.parse(OUT_122_CAPTURE + OUT_132_CAPTURE.replace("/dev/video0", "/dev/video1"))
    assert (r["total"], r["succeeded"], r["failed"]) == (54 + 59, 54 + 59, 0)
    assert [n["device"] for n in r["nodes"]] == ["/dev/video0", "/dev/video1"]


def test_no_driver_name_libv4l2_and_colours():
    """`Total for device ...` (no driver name), ` (using libv4l2)` (-w), and -C always."""
    out = ("v4l2-compliance 1.32.0, 64 bits, 64-bit time_t\n"
           "\ttest VIDIOC_QUERYCAP: \x1b[32mOK\x1b[0m\n"
           "\t\t\x1b[1;31mfail\x1b[0m: v4l2-compliance.cpp(643): doioctl(node, VIDIOC_QUERYCAP,"
           " &vcap)\n"
           "\ttest VIDIOC_QUERYCAP: \x1b[1;31mFAIL\x1b[0m\n"
           "\t\t\x1b[1mwarn\x1b[0m: v4l2-test-formats.cpp(1498): S_PARM is supported but "
           "doesn't report V4L2_CAP_TIMEPERFRAME\n"
           "Total for device /dev/video0 (using libv4l2): 2, Succeeded: 1, Failed: 1, "
           "Warnings: 1\n")
    r = compliance.parse(out)
    assert r["nodes"] == [{"driver": None, "device": "/dev/video0", "libv4l2": True,
                           "total": 2, "succeeded": 1, "failed": 1, "warnings": 1}]
    assert r["fails"] == ["fail: v4l2-compliance.cpp(643): doioctl(node, VIDIOC_QUERYCAP, "
                          "&vcap)"]
    assert r["warns"][0].startswith("warn: v4l2-test-formats.cpp(1498)")
    assert r["failed_tests"] == ["test VIDIOC_QUERYCAP: FAIL"]


@pytest.mark.parametrize("out", [
    "v4l2-compliance 1.22.1, 64 bits, 64-bit time_t\n"
    "Failed to open /dev/video0: No such file or directory\n",
    "",
    # -E (exit on the first fail): no summary
    OUT_122_NV12_FAIL.split("\ttest VIDIOC_ENUM_FMT")[0],
])
def test_no_summary(out):
    with pytest.raises(compliance.NoSummary, match="no v4l2-compliance summary line"):
        compliance.parse(out)
    with pytest.raises(AssertionError):
        compliance.assert_clean(out, 54)


def test_version_of_a_git_build_and_no_mmu():
    out = ("v4l2-compliance 1.33.0-5291, 64 bits, 64-bit time_t, has no MMU\n"
           "v4l2-compliance SHA: 0123456789ab 2026-11-30 10:00:00\n"
           "Total for vim2m device /dev/video0: 1, Succeeded: 1, Failed: 0, Warnings: 0\n")
    r = compliance.parse(out)
    assert r["version"] == "1.33.0-5291" and r["nodes"][0]["driver"] == "vim2m"


def test_wrapper_path_runs_v4l2_compliance_1_32():
    """The rig step (scripts/build-compliance.sh; cached, a few seconds cold): the wrapper
    exists, is a shell script under the cache (not /tmp: the guest mounts a tmpfs there), and
    starts v4l2-compliance 1.32 on the host too."""
    import subprocess
    p = compliance.wrapper_path()
    assert p.is_file() and p.name == "v4l2-compliance"
    assert not str(p).startswith("/tmp/")
    assert p.read_text().startswith("#!/bin/sh")
    assert (p.parent / "versions").read_text().startswith("libc6 ")
    out = subprocess.run([str(p), "--version"], capture_output=True, text=True, check=True)
    assert re.match(r"v4l2-compliance 1\.32\.\d+, 64 bits, 64-bit time_t", out.stdout), out
    assert compliance.wrapper_path() is p   # cached

"""v4l2-compliance in the tests: the two versions, and the one table of expected totals.

Every v4l2-compliance run of the suite asserts 0 failed, 0 warnings and the exact total pinned
here for its (tool version, profile, flags). Two versions run: Debian bookworm's 1.22.1
(`v4l2-compliance` on the host root) and v4l-utils 1.32 from Debian sid, unpacked into a private
prefix by scripts/build-compliance.sh (tests/compliance.py finds its wrapper). The reason for
each difference between rows is given next to it.
"""
from __future__ import annotations

import compliance

TOOLS = ("1.22", "1.32")

# (tool, profile) -> expected total. Profiles are vmrs-device's (Documentation/test-device.md)
# with the flags the test uses (test_profiles.COMPLIANCE and the others named here).
# Every difference has one of three reasons:
#  * 1.32 runs 5 tests more than 1.22.1 on a streaming node (-s): VIDIOC_CREATE_BUFS maximum
#    buffers, VIDIOC_REMOVE_BUFS, and three more MMAP streaming variants;
#  * -f streams every format x frame size x interval, one test each, on top of -s: 6 on the
#    capture, capture-mp and output profiles, 2 on capture-nv; M2M nodes run -s only;
#  * without -s, the 9 streaming tests are not run.
TOTALS = {
    ("1.22", "capture"): 60, ("1.32", "capture"): 65,          # -s -f
    ("1.22", "capture-mp"): 60, ("1.32", "capture-mp"): 65,    # -s -f
    ("1.32", "capture-nv"): 61,                                # -s -f (1.22.1: EXACT below)
    ("1.22", "output"): 60, ("1.32", "output"): 65,            # -s -f
    ("1.22", "m2m"): 54, ("1.32", "m2m"): 59,                  # -s
    # Stateful decoder with the H.264 clip as OUTPUT (test_decode.py): 1.22.1 only on
    # decoder-yu12 (NV12's description, as capture-nv below).
    ("1.22", "decoder-yu12 -s --stream-from"): 52,
    # 1.32 on a stateful codec runs 4 more, not 5: it skips the "no poll" MMAP variants of
    # codecs, so the MMAP variants it adds are CREATE_BUFS (select, epoll) only, with CREATE_BUFS
    # maximum buffers and REMOVE_BUFS. Clean since the decoder has
    # V4L2_CID_MIN_BUFFERS_FOR_CAPTURE (1.32 requires it: testEvents, and setupM2M's G_CTRL).
    ("1.32", "decoder-yu12 -s --stream-from"): 56,
    ("1.32", "decoder -s --stream-from"): 56,
}


def command(tool: str) -> str:
    """The shell command that starts v4l2-compliance `tool` in the guest."""
    if tool == "1.22":
        return "v4l2-compliance"
    if tool == "1.32":
        return str(compliance.wrapper_path())
    raise ValueError(tool)


def assert_clean(output: str, tool: str, profile: str) -> None:
    """0 failed, 0 warnings, and the total of TOTALS[(tool, profile)]; a profile with an EXACT
    entry instead is held to that."""
    key = (tool, profile)
    if key in EXACT:
        assert_exact(output, tool, profile)
        return
    got = compliance.parse(output)
    assert key in TOTALS, f"no pinned total for {key}: this run says {got}"
    compliance.assert_clean(output, TOTALS[key])


# Devices that cannot pass, with every failure and warning named: (tool, profile) ->
# (total, failed, warnings, the "fail:"/"warn:" lines' test names). Pinned so that a change
# on our side shows; the reason is the device's, given with each entry.
SIMPLE_CAPTURE_FAILS = ["VIDIOC_ENUM_FMT/FRAMESIZES/FRAMEINTERVALS", "VIDIOC_G_FMT", "Scaling"]
EXACT = {
    # vhost-device-media 0.1.1 simple-capture: its config space says VIDEO_CAPTURE (single
    # planar) while its device answers only V4L2_BUF_TYPE_VIDEO_CAPTURE_MPLANE: "Video Capture
    # cap set, but no Video Capture formats defined" (ENUM_FMT, Scaling) and G_FMT(type 1)
    # EINVAL; warning "S_PARM is supported for buftype 9, but not for ENUM_FRAMEINTERVALS"
    # (it answers G_PARM but has no frame intervals).
    ("1.22", "simple-capture"): (45, 3, 1, SIMPLE_CAPTURE_FAILS),
    ("1.32", "simple-capture"): (48, 3, 1, SIMPLE_CAPTURE_FAILS),
    ("1.22", "simple-capture -s"): (54, 3, 1, SIMPLE_CAPTURE_FAILS),
    ("1.32", "simple-capture -s"): (59, 3, 1, SIMPLE_CAPTURE_FAILS),
    # vmrs capture-mplane: the virtio-media crate's SimpleCaptureDevice (0.0.8), which has no
    # VIDIOC_CREATE_BUFS: 0 failures, 1 warning "VIDIOC_CREATE_BUFS not supported".
    ("1.22", "capture-mplane -s"): (54, 0, 1, []),
    ("1.32", "capture-mplane -s"): (59, 0, 1, []),
    # 1.22.1 expects NV12M's description of kernels before 6.8 ("Y/CbCr 4:2:0 (N-C)"); 6.12
    # and the device say "Y/UV 4:2:0 (N-C)": ENUM_FMT fails, and G/TRY/S_FMT with it
    # ("pixelformat NM12 not reported by ENUM_FMT"); the warning "S_PARM is supported for
    # buftype 9, but not for ENUM_FRAMEINTERVALS" follows from the same aborted ENUM_FMT test
    # (1.32, which accepts the description, has neither).
    ("1.22", "capture-nv"): (56, 4, 1, ["VIDIOC_ENUM_FMT/FRAMESIZES/FRAMEINTERVALS",
                                        "VIDIOC_G_FMT", "VIDIOC_TRY_FMT", "VIDIOC_S_FMT"]),
}


def assert_exact(output: str, tool: str, profile: str) -> None:
    """The total, failure and warning counts of EXACT[(tool, profile)]."""
    key = (tool, profile)
    got = compliance.parse(output)
    assert key in EXACT, f"no pinned result for {key}: this run says {got}"
    total, failed, warnings, names = EXACT[key]
    assert (got["total"], got["failed"], got["warnings"]) == (total, failed, warnings), got
    if names is not None:
        assert sorted(t.removeprefix("test ").removesuffix(": FAIL")
                      for t in got["failed_tests"]) == sorted(names), got

"""Issue 5: the V4L2 stateful decoder interface (dev-decoder.rst) through the driver, at the
ioctl level (tests/guest_tools/decoder_seq.py), against the test device's `decoder` profile.

What the applications in test_decode.py do not show on their own, asserted here:

* the initial SOURCE_CHANGE event (changes = V4L2_EVENT_SRC_CH_RESOLUTION) reaches user space
  through the eventq and the V4L2 event core, and G_FMT(CAPTURE) then gives the stream's size;
* every decoded frame equals the host's software decode (md5 per frame, display order), with
  the timestamp of one of the OUTPUT buffers;
* DECODER_CMD STOP drains: the last frame comes flagged LAST, then DQBUF answers EPIPE (not a
  hang), poll() says POLLIN, and V4L2_EVENT_EOS is delivered;
* DECODER_CMD START restarts: DQBUF stops answering EPIPE, and the same clip decodes again to
  the same frames (second pass);
* dynamic resolution change (clip_change, 320x240 -> 640x480): a SOURCE_CHANGE mid-stream, a
  LAST buffer, EPIPE, then CAPTURE alone is stopped, reallocated at the new G_FMT size and
  restarted while OUTPUT keeps streaming, and decoding goes on with nothing lost;
* TRY_DECODER_CMD: STOP accepted, PAUSE refused (EINVAL).
"""
import json

import pytest

import clips
import test_decode

pytestmark = pytest.mark.guest

_run = {}


def run():
    """Both clips, two passes each (drain, START, decode again): the `seq` job of
    test_decode.py's boot (one guest for every decoder test)."""
    if "res" not in _run:
        j = test_decode.jobs()["seq"]
        j.check()
        assert j.status == 0, j.stdout[-2000:] + j.stderr[-2000:]
        lines = [json.loads(l) for l in j.stdout.splitlines() if l.startswith("{")]
        assert len(lines) == 2, j.stdout[-2000:] + j.stderr[-2000:]
        small, change = clips.get_clip("clip_320x240"), clips.get_clip("clip_change")
        _run["res"] = {"small": (small, lines[0]), "change": (change, lines[1])}
    return _run["res"]


@pytest.mark.parametrize("clip", ["small", "change"])
def test_frames_equal_software_decode_in_both_passes(clip):
    ref, out = run()[clip]
    assert "error" not in out, out.get("error")
    want = [md5 for _, _, md5 in ref.frames]
    for n, p in enumerate(out["passes"]):
        got = [f["md5"] for f in p["frames"]]
        assert len(got) == len(want), f"pass {n}: {len(got)} frames, want {len(want)}"
        bad = [i for i, (a, b) in enumerate(zip(got, want)) if a != b]
        assert not bad, f"pass {n}: frames {bad[:5]} differ from the software decode"
        assert all(f["ts_known"] for f in p["frames"]), "a frame's timestamp is no OUTPUT one"
        assert not any(f["error"] for f in p["frames"])


@pytest.mark.parametrize("clip", ["small", "change"])
def test_drain_last_epipe_pollin_eos(clip):
    _, out = run()[clip]
    for n, p in enumerate(out["passes"]):
        log = p["log"]
        assert "stop" in log, log
        after_stop = log[log.index("stop"):]
        # The drain's LAST buffer carries the last frame (these clips end on a frame).
        assert any(l.startswith("LAST bytesused") and l != "LAST bytesused 0"
                   for l in after_stop), log
        assert log[-2:] == ["after LAST: EPIPE", "poll after LAST: POLLIN"], log
        assert p["events"][-1] == {"type": 2, "changes": 0}, p["events"]  # V4L2_EVENT_EOS


def test_initial_source_change_and_capture_setup():
    _, out = run()["small"]
    first = out["passes"][0]
    assert first["events"][0] == {"type": 5, "changes": 1}, first["events"]
    assert first["log"][0] == "capture 320x240 NV12 x6", first["log"]
    # Second pass, same stream size: no new announcement, only the EOS.
    assert [e["type"] for e in out["passes"][1]["events"]] == [2]


def test_start_after_drain_restarts():
    for clip in ("small", "change"):
        _, out = run()[clip]
        assert out["dqbuf_before_start"] == "EPIPE", out
        assert out["start"] == "OK", out
        assert out["dqbuf_after_start"] == "EAGAIN", out


def test_dynamic_resolution_change():
    _, out = run()["change"]
    for n, p in enumerate(out["passes"]):
        log = p["log"]
        # An empty LAST buffer ends the old resolution, EPIPE after it, then CAPTURE alone is
        # set up again at the size G_FMT gives after the event.
        i = log.index("restarted at 640x480")
        assert log[i - 1] == "capture 640x480 NV12 x6"
        assert "LAST bytesused 0" in log[:i] and "after LAST: EPIPE" in log[:i], log
        changes = [e for e in p["events"] if e["type"] == 5]
        assert changes and all(e["changes"] == 1 for e in changes), p["events"]
    # Pass 2 starts with 640x480 buffers and the clip's 320x240 start: a change back first.
    assert "restarted at 320x240" in out["passes"][1]["log"]


def test_try_decoder_cmd():
    for clip in ("small", "change"):
        _, out = run()[clip]
        assert out["try_stop"] == "OK" and out["try_pause"] == "EINVAL", out

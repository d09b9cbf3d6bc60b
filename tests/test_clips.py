"""Host-only checks of the decoder tests' own tools (issue 5): the generated H.264 clips and
their references (tests/clips.py), and the frame checker that runs in the guest
(tests/guest_tools/decode_check.py), driven here with ffmpeg's SOFTWARE decoder so that a
wrong split, a wrong reference or a checker that cannot fail shows up without any guest.
"""
import json
import subprocess
import sys

import pytest

import clips
from guest import REPO

sys.path.insert(0, str(REPO / "tests" / "guest_tools"))
import decode_check  # noqa: E402

TEST_CLIPS = ["clip_320x240", "clip_1280x720", "clip_change"]


@pytest.fixture(scope="module")
def clipset(tmp_path_factory):
    return {n: clips.get_clip(n) for n in TEST_CLIPS}


def test_clips_have_the_specified_frames(clipset):
    assert clips.summarize([f[:2] for f in clipset["clip_320x240"].frames]) == "320x240 x45"
    assert clips.summarize([f[:2] for f in clipset["clip_1280x720"].frames]) == "1280x720 x30"
    assert clips.summarize([f[:2] for f in clipset["clip_change"].frames]) == \
        "320x240 x24, 640x480 x24"
    for c in clipset.values():
        meta = json.loads(c.ref_json.read_text())
        assert "B" in meta["pict_types"], c.name  # reordering is exercised
        assert len({m for (_, _, m) in c.frames}) == c.frame_count  # all frames distinct
        assert c.path.read_bytes()[:4] == b"\0\0\0\1"  # Annex-B start code
        # The Annex-B stream really is High profile (ffprobe, the first SPS).
        prof = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "stream=profile",
                               "-of", "csv=p=0", str(c.path)], stdout=subprocess.PIPE,
                              text=True, check=True).stdout.strip()
        assert prof == "High", (c.name, prof)


def test_change_clip_has_two_idr_sps(clipset):
    """clip_change is two complete streams: two SPS NAL units (type 7) with different sizes."""
    data = clipset["clip_change"].path.read_bytes()
    nal_types = [data[i + 4] & 0x1f for i in range(len(data) - 4)
                 if data[i:i + 4] == b"\0\0\0\1"]
    assert nal_types.count(7) == 2, nal_types[:20]


def test_reference_md5s_match_ffmpeg_framemd5(clipset):
    """The reference md5s, recomputed by ffmpeg's own framemd5 muxer (a second path: ffmpeg
    hashes each frame itself, nothing of ours splits the file)."""
    for c in clipset.values():
        out = subprocess.run(["ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "error",
                              "-c:v", "h264", "-i", str(c.path), "-autoscale", "0",
                              "-fps_mode", "passthrough", "-pix_fmt", "nv12", "-f", "framemd5",
                              "-"], stdout=subprocess.PIPE, text=True, check=True).stdout
        rows = [l.split(",") for l in out.splitlines() if l and not l.startswith("#")]
        assert [r[-1].strip() for r in rows] == [m for (_, _, m) in c.frames], c.name
        assert [int(r[4]) for r in rows] == [clips.nv12_size(w, h) for (w, h, _) in c.frames]


def test_reference_yuv_is_the_md5_list(clipset):
    for c in clipset.values():
        assert clips.split_md5(c.ref_yuv, [f[:2] for f in c.frames]) == [f[2] for f in c.frames]


def _write_frames(path, clip, order):
    """The reference frames of `clip` in the given order of indices, back to back."""
    sizes = [clips.nv12_size(w, h) for (w, h, _) in clip.frames]
    offs = [sum(sizes[:i]) for i in range(len(sizes))]
    ref = clip.ref_yuv.read_bytes()
    path.write_bytes(b"".join(ref[offs[i]:offs[i] + sizes[i]] for i in order))


def test_checker_accepts_exact_and_locates_each_fault(clipset, tmp_path):
    c = clipset["clip_change"]
    n = c.frame_count
    out = tmp_path / "o.yuv"

    _write_frames(out, c, range(n))
    r = decode_check.compare(str(out), c.frames)
    assert r["first_mismatch"] is None and r["matching_frames"] == n

    # Two frames swapped (a reordering bug): located, and the frame is recognised.
    order = list(range(n))
    order[5], order[6] = order[6], order[5]
    _write_frames(out, c, order)
    r = decode_check.compare(str(out), c.frames)
    assert r["matching_frames"] == 5
    assert r["first_mismatch"]["index"] == 5 and r["first_mismatch"]["equals_reference_frame"] == 6

    # One frame dropped at the resolution change: everything after differs or is missing.
    _write_frames(out, c, [i for i in range(n) if i != 24])
    r = decode_check.compare(str(out), c.frames)
    assert r["first_mismatch"]["index"] == 24 and r["matching_frames"] == 24

    # The last frame missing (a lost drain) and an extra frame.
    _write_frames(out, c, range(n - 1))
    r = decode_check.compare(str(out), c.frames)
    assert r["first_mismatch"]["index"] == n - 1 and "missing" in r["first_mismatch"]["problem"]
    _write_frames(out, c, list(range(n)) + [n - 1])
    r = decode_check.compare(str(out), c.frames)
    assert r["matching_frames"] == n and "bytes after" in r["first_mismatch"]["problem"]

    # One flipped bit.
    _write_frames(out, c, range(n))
    b = bytearray(out.read_bytes())
    b[-1] ^= 1
    out.write_bytes(bytes(b))
    r = decode_check.compare(str(out), c.frames)
    assert r["first_mismatch"]["index"] == n - 1
    assert r["first_mismatch"]["got_md5"] != r["first_mismatch"]["expected_md5"]

    assert decode_check.compare(str(tmp_path / "none.yuv"), c.frames)["first_mismatch"]


@pytest.mark.parametrize("name", TEST_CLIPS)
def test_checker_end_to_end_with_the_software_decoder(clipset, tmp_path, name):
    """decode_check.py as the guest runs it, with ffmpeg's software decoder in place of
    h264_v4l2m2m: every frame bit-exact."""
    c = clipset[name]
    p = subprocess.run([sys.executable, str(REPO / "tests/guest_tools/decode_check.py"),
                        "--clip", str(c.path), "--ref", str(c.ref_json), "--out", str(tmp_path),
                        "--app", "ffmpeg", "--ffmpeg-decoder", "h264"],
                       stdout=subprocess.PIPE, text=True)
    res = json.loads(p.stdout.splitlines()[-1])
    assert p.returncode == 0 and res["ok"], res
    assert res["matching_frames"] == c.frame_count
    assert not (tmp_path / "ffmpeg.yuv").exists()  # deleted after a match


def test_nv12_size():
    assert clips.nv12_size(320, 240) == 115200 and clips.nv12_size(1280, 720) == 1382400


def test_chunked_hdr_file_is_the_clip_in_vhdr_packets(clipset, tmp_path):
    """v4l2-ctl --stream-from-hdr input: 'Vhdr' (read with ntohl), big-endian size, payload."""
    import struct
    c = clipset["clip_change"]
    hdr = tmp_path / "c.hdr"
    decode_check.write_chunked(str(c.path), str(hdr), 4096)
    b, off, payload, sizes = hdr.read_bytes(), 0, b"", []
    while off < len(b):
        magic, size = struct.unpack_from(">II", b, off)
        assert struct.pack(">I", magic) == b"rdhV"  # ntohl(v) == v4l2_fourcc('V','h','d','r')
        payload += b[off + 8:off + 8 + size]
        sizes.append(size)
        off += 8 + size
    assert payload == c.path.read_bytes()
    assert set(sizes[:-1]) == {4096} and 0 < sizes[-1] <= 4096

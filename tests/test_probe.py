"""probe(): the verdict (status + reason) for every kind of bad input, and true metadata for good ones."""

from __future__ import annotations

import hashlib
import shutil

import pytest

import media
from curate.probe import PROBE_KEYS, ProbeLimits, probe
from curate.store import sha256_file


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """Every test input, rendered once per module."""
    d = tmp_path_factory.mktemp("probe_media")
    vfr, _ = media.make_vfr(d)
    return {
        "good": media.make_good(d),
        "tiny": media.make_tiny(d),
        "one_frame": media.make_one_frame(d),
        "vfr": vfr,
        "rot90": media.make_rotated(d, 90),
        "odd": media.make_odd_size(d),
        "two_streams": media.make_two_video_streams(d),
        "with_audio": media.make_with_audio(d),
        "ffv1": media.make_unsupported_codec(d),
        "empty": media.make_empty(d),
        "text": media.make_text_as_mp4(d),
        "png": media.make_png_as_mp4(d),
        "audio_m4a": media.make_audio_only(d),
        "audio_mp4": media.make_audio_only(d, name="audio_only.mp4"),
        "truncated": media.make_truncated(d),
        "truncated_faststart": media.make_truncated(d, faststart=True),
        "corrupt_middle": media.make_corrupt_middle(d),
        "huge": media.make_huge_dimensions(d),
        "huge_past_ffmpeg": media.make_huge_dimensions(d, 20000, 20000, name="huge20k.avi"),
    }


VERDICTS = [
    ("good", "ok", None),
    ("odd", "ok", None),
    ("two_streams", "ok", None),
    ("with_audio", "ok", None),
    ("vfr", "ok", None),
    ("rot90", "ok", None),
    ("tiny", "rejected", "too-small"),
    ("one_frame", "rejected", "too-short"),
    ("ffv1", "rejected", "codec-not-allowed"),
    ("png", "rejected", "still-image"),
    ("audio_m4a", "rejected", "no-video-stream"),
    ("audio_mp4", "rejected", "no-video-stream"),
    ("huge", "rejected", "too-large"),
    ("huge_past_ffmpeg", "failed", "unknown-size"),
    ("empty", "failed", "empty-file"),
    ("text", "failed", "not-a-video"),
    ("truncated", "failed", "unreadable"),  # index (moov) at the end was cut off: the MP4 will not open
    ("truncated_faststart", "failed", "truncated"),  # index survives, points past the end of the file
    ("corrupt_middle", "failed", "corrupt-middle"),
]


@pytest.mark.parametrize("name,status,reason", VERDICTS, ids=[v[0] for v in VERDICTS])
def test_verdict(videos, name, status, reason):
    row = probe(videos[name])
    assert set(row) == set(PROBE_KEYS)
    assert (row["status"], row["reason"]) == (status, reason), row["message"]
    if status != "ok":
        assert row["message"], "a non-ok row says why"
    if name not in ("empty",):
        assert row["content_id"] == hashlib.sha256(videos[name].read_bytes()).hexdigest()


def test_good_metadata(videos):
    row = probe(videos["good"], uri="s3://bucket/good.mp4")
    assert row["source_uri"] == "s3://bucket/good.mp4"
    assert (row["codec"], row["width"], row["height"], row["rotation"]) == ("h264", 96, 64, 0)
    assert (row["display_width"], row["display_height"], row["sample_aspect"]) == (96, 64, 1.0)
    assert row["num_frames"] == 30 and row["num_frames_source"] == "header"
    assert row["fps_avg"] == pytest.approx(15.0) and row["fps_real"] == pytest.approx(15.0)
    assert row["duration_s"] == pytest.approx(2.0, abs=0.07)
    assert row["pix_fmt"] == "yuv420p" and row["has_audio"] is False and row["is_vfr"] is False
    assert row["num_video_streams"] == 1 and row["container"].startswith("mov,mp4")


def test_rotation_and_streams(videos):
    rot = probe(videos["rot90"])
    assert (rot["width"], rot["height"], rot["rotation"]) == (96, 64, 90)
    assert (rot["display_width"], rot["display_height"]) == (64, 96)
    two = probe(videos["two_streams"])
    assert two["num_video_streams"] == 2 and (two["width"], two["height"]) == (96, 64)
    assert two["num_frames_source"] == "estimate" and two["num_frames"] == 20  # MKV has no frame count
    assert probe(videos["with_audio"])["has_audio"] is True
    odd = probe(videos["odd"])
    assert (odd["width"], odd["height"], odd["pix_fmt"]) == (321, 241, "yuv444p")


def test_vfr_flag(videos):
    assert probe(videos["vfr"])["is_vfr"] is True
    assert probe(videos["good"])["is_vfr"] is False


def test_limits_are_configurable(videos):
    no_h264 = ProbeLimits(allowed_codecs=("vp9",))
    assert probe(videos["good"], no_h264)["reason"] == "codec-not-allowed"
    assert probe(videos["good"], ProbeLimits(max_pixels=96 * 64 - 1))["reason"] == "too-large"
    assert probe(videos["good"], ProbeLimits(max_duration_s=1.0))["reason"] == "too-long"
    assert probe(videos["good"], ProbeLimits(max_frames=29))["reason"] == "too-many-frames"
    assert probe(videos["good"], ProbeLimits(min_duration_s=5.0))["reason"] == "too-short"
    assert probe(videos["good"], ProbeLimits(max_file_bytes=100))["reason"] == "too-large"
    assert probe(videos["tiny"], ProbeLimits(min_side=16))["status"] == "ok"


def test_size_limits_use_display_orientation(videos):
    """rot90 is coded 96x64 and displayed 64x96: width/height limits apply to the displayed frame."""
    assert probe(videos["rot90"], ProbeLimits(max_width=64, max_height=96, min_side=16))["status"] == "ok"
    assert probe(videos["rot90"], ProbeLimits(max_width=96, max_height=64, min_side=16))["reason"] == "too-large"
    assert probe(videos["good"], ProbeLimits(max_width=96, max_height=64, min_side=16))["status"] == "ok"


def test_missing_and_directory(tmp_path):
    assert probe(tmp_path / "nope.mp4")["reason"] == "not-found"
    assert probe(tmp_path)["reason"] == "not-a-file"


def test_content_id_same_bytes_two_paths(videos, tmp_path):
    copy = tmp_path / "elsewhere" / "renamed.mkv"
    copy.parent.mkdir()
    shutil.copyfile(videos["good"], copy)
    assert sha256_file(copy) == sha256_file(videos["good"]) == probe(copy)["content_id"]
    assert sha256_file(copy, chunk=7) == sha256_file(copy)  # chunking does not change the hash
    assert sha256_file(videos["odd"]) != sha256_file(videos["good"])


def test_hostile_names(tmp_path):
    paths = media.make_hostile_names(tmp_path)
    assert len(paths) == len(media.HOSTILE_NAMES)
    for p in paths:
        row = probe(p)
        assert row["status"] == "ok", (p.name, row["reason"], row["message"])
        assert row["source_uri"] == str(p) and row["num_frames"] == 15
    assert not (tmp_path / "pwned").exists()


def test_real_files_match_ground_truth(shared_data, ground_truth):
    for rel, entry in ground_truth.items():
        if rel.startswith("_"):
            continue
        truth = entry["file"]
        row = probe(shared_data / rel)
        assert row["status"] == "ok", (rel, row["reason"], row["message"])
        assert row["content_id"] == truth["sha256"], rel
        assert (row["codec"], row["width"], row["height"]) == (truth["codec"], truth["width"], truth["height"]), rel
        assert row["has_audio"] == truth["has_audio"], rel
        assert row["fps_avg"] == pytest.approx(truth["avg_fps"], abs=0.01), rel
        assert row["duration_s"] == pytest.approx(truth["duration_s"], abs=0.05), rel
        # header counts are exact; MKV estimates (duration * fps) may be off by one
        tol = 0 if row["num_frames_source"] == "header" else 1
        assert abs(row["num_frames"] - truth["decoded_frames"]) <= tol, rel


def test_real_rotation_vfr_and_aspect(shared_data):
    rot = probe(shared_data / "pyscenedetect/issue-134-rotate.mp4")
    assert (rot["rotation"], rot["display_width"], rot["display_height"]) == (90, 544, 1280)
    assert probe(shared_data / "pyscenedetect/goldeneye-vfr-drop3.mp4")["is_vfr"] is True
    assert probe(shared_data / "pyscenedetect/testvideo.mp4")["is_vfr"] is False
    pal = probe(shared_data / "pyscenedetect/issue-195-aspect-ratio.mp4")
    assert pal["sample_aspect"] == pytest.approx(16 / 11) and pal["display_width"] == 1024
    late = probe(shared_data / "pyscenedetect/delayed_start.mp4")
    assert late["start_time_s"] == pytest.approx(1.075)


def test_known_content_is_rejected_before_any_decode(videos, tmp_path):
    """The claim is asked right after hashing: a file that would fail to open is still a duplicate, so the
    container was never opened."""
    not_video = tmp_path / "text.mp4"
    not_video.write_text("not a video at all")
    assert probe(not_video)["reason"] == "not-a-video"
    asked = []

    def claim(cid):
        asked.append(cid)
        return "/videos/first.mp4"

    row = probe(not_video, claim=claim)
    assert (row["status"], row["reason"]) == ("rejected", "duplicate-content")
    assert "/videos/first.mp4" in row["message"] and asked == [sha256_file(not_video)] == [row["content_id"]]
    good = probe(videos["good"], claim=lambda cid: None)  # this input holds the claim: probed as usual
    assert good["status"] == "ok"

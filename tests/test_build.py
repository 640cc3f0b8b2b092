"""End-to-end builds on a local Ray: the bad-input matrix, lineage, determinism, resume after a kill, config
changes, and re-filtering without re-scoring."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import av
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

import media
from curate.inputs import resolve_inputs
from curate.schema import CLIP_SCHEMA, FAILURE_SCHEMA, validate
from curate.store import ConfigChanged
from curate.synth import Shot, Transition, render_video

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray")
    ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=400_000_000, log_to_driver=False,
             ignore_reinit_error=True)
    yield ray
    ray.shutdown()


def _program_video(path: Path, seed: int) -> dict:
    shots = [Shot("circle", "red", "right", "checker", "blue", 60),
             Shot("square", "yellow", "up", "noise", "purple", 60),
             Shot("triangle", "green", "left", "gradient", "orange", 60)]
    gt = render_video(path, shots, [Transition("cut", 0), Transition("dissolve", 12)], fps=24, size=(192, 108),
                      seed=seed)
    return json.loads(gt.to_json())


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict:
    """Good videos, every kind of bad input, hostile names, a duplicate, and an escaping symlink."""
    root = tmp_path_factory.mktemp("corpus")
    videos = root / "videos"
    videos.mkdir()
    good = [videos / "a_good.mp4", videos / "b_good.mp4"]
    for i, p in enumerate(good):
        _program_video(p, seed=i)
    shutil.copy(good[0], videos / "c_same_bytes_as_a.mp4")
    bad = {
        "empty": media.make_empty(videos),
        "truncated": media.make_truncated(videos),
        "corrupt_middle": media.make_corrupt_middle(videos),
        "text": media.make_text_as_mp4(videos),
        "audio_only": media.make_audio_only(videos, name="audio_only.mp4"),
        "unsupported": media.make_unsupported_codec(videos),
        "huge": media.make_huge_dimensions(videos),
        "tiny": media.make_tiny(videos),
        "one_frame": media.make_one_frame(videos),
        "vfr": media.make_vfr(videos)[0],
        "two_streams": media.make_two_video_streams(videos),
    }
    # long enough (> 2 s) to yield a clip: odd sizes must come out even, rotation upright
    media.write_video(videos / "odd_long.mp4", media.pattern_frames(45, 321, 241), 15.0, pix_fmt="yuv444p")
    media.write_video(videos / "rot90_long.mp4", media.pattern_frames(45, 96, 64), 15.0, rotation=90)
    hostile_dir = videos / "hostile"
    hostile_dir.mkdir()
    hostile = media.make_hostile_names(hostile_dir)
    outside = root / "outside.mp4"
    shutil.copy(good[1], outside)
    os.symlink(outside, videos / "link_out.mp4")
    return {"root": root, "videos": videos, "good": good, "bad": bad, "hostile": hostile}


def _build(inputs, out: Path, **kw):
    from pipelines.build import BuildConfig, build

    return build(BuildConfig(input=str(inputs), output=str(out), progress=False, **kw))


def _clip_table(out: Path):
    manifest = json.loads((out / "_manifest.json").read_text())
    tables = [pq.read_table(out / s["path"]) for s in manifest["shards"]]
    import pyarrow as pa

    return pa.concat_tables(tables) if tables else CLIP_SCHEMA.empty_table(), manifest


@pytest.fixture(scope="module")
def built(ray_local, corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("ds") / "dataset"
    summary = _build(corpus["videos"], out)
    return out, summary


def test_every_input_accounted_for(built, corpus):
    out, summary = built
    items = resolve_inputs(corpus["videos"])
    inputs = summary["inputs"]
    assert inputs["total"] == len(items)
    assert inputs["adds_up"] and inputs["incomplete"] == 0
    failures = pq.read_table(out / "failures.parquet")
    validate(failures, FAILURE_SCHEMA)
    whole_input_failures = failures.filter(pc.is_null(failures.column("clip_id")))
    accepted_uris = set(_clip_table(out)[0].column("source_uri").to_pylist())
    failed_uris = set(whole_input_failures.column("source_uri").to_pylist())
    # every input is either in the clip table or in the failures table, never both, never neither
    assert accepted_uris.isdisjoint(failed_uris)
    assert accepted_uris | failed_uris == {it.uri for it in items}
    assert inputs["accepted"] == len(accepted_uris)
    stages = summary["stages"]
    assert stages["probe"]["in"] == stages["probe"]["ok"] + stages["probe"]["rejected"] + stages["probe"]["failed"]
    assert stages["publish"]["clips"] == summary["clips"]["published"]


def test_bad_inputs_get_their_reason(built, corpus):
    out, _ = built
    failures = pq.read_table(out / "failures.parquet").to_pylist()
    reason = {r["source_uri"]: (r["outcome"], r["reason"]) for r in failures if r["clip_id"] is None}
    bad = corpus["bad"]
    # policy says no: rejected; could not be read: failed (probe's docstring lists which is which)
    expect = {"empty": "empty-file", "text": "not-a-video", "audio_only": "no-video-stream",
              "unsupported": "codec-not-allowed", "huge": "too-large", "tiny": "too-small"}
    got = {name: reason.get(str(bad[name]), (None, None)) for name in expect}
    assert {k: v[1] for k, v in got.items()} == expect
    assert all(v[0] in ("rejected", "failed") for v in got.values())
    assert all(got[k][0] == "rejected" for k in ("unsupported", "huge", "tiny", "audio_only"))
    for name in ("truncated", "corrupt_middle"):  # readable enough to probe, or not: never silently accepted
        assert str(bad[name]) in reason, name
    assert reason[str(bad["one_frame"])][0] == "rejected"
    dup = reason[str(corpus["videos"] / "c_same_bytes_as_a.mp4")]
    assert dup == ("rejected", "duplicate-content")
    assert reason[str(corpus["videos"] / "link_out.mp4")] == ("rejected", "outside-input-root")
    for path in corpus["hostile"]:
        assert str(path) in reason or str(path) in set(_clip_table(out)[0].column("source_uri").to_pylist())


def test_odd_and_rotated_sources_make_valid_clips(built, corpus):
    out, _ = built
    rows = {r["source_uri"]: r for r in _clip_table(out)[0].to_pylist()}
    odd = rows[str(corpus["videos"] / "odd_long.mp4")]
    assert (odd["width"] % 2, odd["height"] % 2) == (0, 0) and abs(odd["width"] - 321) <= 1
    rot = rows[str(corpus["videos"] / "rot90_long.mp4")]
    assert (rot["width"], rot["height"]) == (64, 96) and rot["source_rotation"] in (90, -90, 270)


def test_clip_table_lineage_and_media(built, corpus):
    out, summary = built
    table, manifest = _clip_table(out)
    validate(table, CLIP_SCHEMA)
    assert table.num_rows == manifest["rows"] == summary["clips"]["published"] > 0
    ids = table.column("clip_id").to_pylist()
    assert len(ids) == len(set(ids)), "duplicate clip ids"
    for row in table.slice(0, 3).to_pylist():
        assert row["end_frame"] > row["start_frame"]
        assert row["num_frames"] == row["end_frame"] - row["start_frame"]
        assert row["clip_status"] == "no-model" and row["clip_embedding"] is None
        assert row["sharpness"] is not None and row["phash"]
        with av.open(__import__("io").BytesIO(row["clip_mp4"])) as c:
            n = sum(1 for _ in c.decode(video=0))
        assert n == row["num_frames"]
    assert "no-model" in summary["models"]["clip"]["status"] and summary["models"]["clip"]["note"]
    # nothing outside the output root, no temp files visible
    for p in out.rglob("*"):
        assert p.resolve().is_relative_to(out.resolve())
        assert not p.name.endswith(".tmp")


def test_rebuild_is_deterministic_and_resume_is_a_noop(built, corpus, tmp_path):
    out, summary = built
    table, manifest = _clip_table(out)
    again = _build(corpus["videos"], out)  # every input done: nothing is processed again
    assert again["inputs"]["resumed_skipped"] == again["inputs"]["total"]
    table2, manifest2 = _clip_table(out)
    assert [s["path"] for s in manifest2["shards"]] == [s["path"] for s in manifest["shards"]]
    assert table2.column("clip_id").to_pylist() == table.column("clip_id").to_pylist()


def test_changed_config_is_refused(built, corpus):
    import dataclasses

    from curate.clips import ClipConfig

    out, _ = built
    with pytest.raises(ConfigChanged, match="clips"):
        _build(corpus["videos"], out, clips=dataclasses.replace(ClipConfig(), min_s=3.0))


def test_filter_changes_without_rescoring(built):
    from pipelines.cli import main

    out, _ = built
    before = (out / "clips").stat().st_mtime_ns, sorted(p.stat().st_mtime_ns for p in (out / "clips").iterdir())
    assert main(["filter", str(out), "--no-defaults", "--where", "sharpness >= 1e9"]) == 0
    sel = pq.read_table(out / "selection.parquet")
    assert sel.num_rows > 0 and not any(sel.column("keep").to_pylist())
    assert main(["filter", str(out), "--no-defaults", "--where", "sharpness >= 0"]) == 0
    assert all(pq.read_table(out / "selection.parquet").column("keep").to_pylist())
    after = (out / "clips").stat().st_mtime_ns, sorted(p.stat().st_mtime_ns for p in (out / "clips").iterdir())
    assert before == after  # shards untouched


def test_resume_after_kill_equals_uninterrupted(ray_local, corpus, tmp_path, built):
    """Kill a build (SIGKILL, in a child process) once some inputs are done; the re-run completes and the
    published clip set equals the uninterrupted run's."""
    reference, _ = built
    env = dict(os.environ, TESSERA_OBJECT_STORE_BYTES="300000000")
    for attempt in range(3):  # done markers can land in bursts: a build may finish before it could be killed
        out = tmp_path / f"killed-{attempt}"
        code = ("import sys; sys.path.insert(0, %r); from pipelines.cli import main; "
                "sys.exit(main(['build', '--input', %r, '--output', %r, '--quiet']))"
                % (str(REPO), str(corpus["videos"]), str(out)))
        proc = subprocess.Popen([sys.executable, "-c", code], env=env, start_new_session=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        done = out / "_state" / "done"
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None:
            if done.exists() and len(list(done.glob("*.json"))) >= 3:
                break
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        killed = not (out / "_manifest.json").exists()  # published means it finished (it may still have been
        if killed:                                        # shutting Ray down when the kill came)
            break
    assert killed, "the build finished before it could be killed, three times; make the corpus larger"
    summary = _build(corpus["videos"], out)
    assert summary["inputs"]["resumed_skipped"] >= 3
    ref_table, _ = _clip_table(reference)
    table, _ = _clip_table(out)
    ids = table.column("clip_id").to_pylist()
    assert len(ids) == len(set(ids))
    assert sorted(ids) == sorted(ref_table.column("clip_id").to_pylist())


def test_build_with_inline_captions(ray_local, corpus, tmp_path, ray_data_log):
    """`tessera build --caption source`: each clip gets the caption of the shot it shows (timed sidecar), the
    caption columns are in the published clip table, and the run records how they were made."""
    from caption.expand import OpenAIEndpoint
    from caption.sources import SourceConfig
    from caption.vlm import VLMConfig

    secret = "sk-test-never-saved-0123456789"
    listing = tmp_path / "inputs.txt"
    listing.write_text("".join(f"{p}\n" for p in corpus["good"]))
    out = tmp_path / "captioned"
    summary = _build(listing, out, caption=VLMConfig(backend="source", source=SourceConfig(use="caption"),
                                                     endpoint=OpenAIEndpoint(api_key=secret)))
    assert summary["inputs"]["accepted"] == 2
    table, _ = _clip_table(out)
    validate(table, CLIP_SCHEMA)
    shots = {str(p): json.loads(p.with_suffix(".json").read_text())["shots"] for p in corpus["good"]}
    for row in table.to_pylist():
        assert row["caption_backend"] == "source" and row["caption_status"] == "ok"
        best = max(shots[row["source_uri"]],
                   key=lambda s: min(s["end"], row["end_frame"]) - max(s["start"], row["start_frame"]))
        assert row["caption_short"] == best["caption"], row["clip_id"]
    assert summary["time_per_stage_s"]["t_caption"] >= 0
    for f in out.rglob("*.json"):  # config.json, summary.json, the manifest, the state's fingerprint
        assert secret not in f.read_text(), f
    assert not ray_data_log.deprecations()  # every stage of the graph uses Ray Data's current API
    assert not [r for r in ray_data_log if "Progress bars disabled" in r.getMessage()]  # we show our own

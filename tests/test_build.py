"""End-to-end builds on a local Ray: the bad-input matrix, lineage, determinism, resume after a kill, config
changes, and re-filtering without re-scoring."""

from __future__ import annotations

import json
import os
import re
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
    # names and file kinds that once broke every build (or vanished): each must cost one input, with a reason
    not_utf8 = os.path.join(os.fsencode(videos), b"x\xff.mp4")
    shutil.copy(good[1], not_utf8)
    (videos / "folder.mp4").mkdir()
    os.mkfifo(videos / "pipe.mp4")
    special = {"not_utf8": str(videos / "x\\xff.mp4"), "folder": str(videos / "folder.mp4"),
               "fifo": str(videos / "pipe.mp4")}
    return {"root": root, "videos": videos, "good": good, "bad": bad, "hostile": hostile, "special": special}


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


def test_dedup_pairs_are_compared_while_the_stream_runs(ray_local, corpus, tmp_path):
    """A re-encoded copy of a video (other bytes, same shots) is a near-duplicate at every clip. The driver
    compares each finished input's clips with the earlier ones while later inputs are still cut: publish, which
    runs when the cluster has nothing else to do, finds every pair decided, and the groups are the same."""
    import av

    videos = tmp_path / "videos"
    videos.mkdir()
    shutil.copy(corpus["good"][0], videos / "a.mp4")
    with av.open(str(corpus["good"][0])) as src:
        frames = [f.to_ndarray(format="rgb24") for f in src.decode(video=0)]
    media.write_video(videos / "a_reencoded.mp4", frames, 24.0, codec_options={"crf": "32"})
    summary = _build(videos, tmp_path / "out")
    clips = summary["clips"]
    assert summary["inputs"]["accepted"] == 2 and clips["published"] >= 4
    assert clips["duplicates"] == clips["published"] // 2  # each clip of one copy points at the other's
    assert clips["dedup_pairs_compared"]["while_streaming"] > 0
    assert clips["dedup_pairs_compared"]["at_publish"] == 0


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
    (dup_row,) = [r for r in failures if r["source_uri"] == str(corpus["videos"] / "c_same_bytes_as_a.mp4")]
    assert dup_row["stage"] == "probe"  # known at probe (its hash), so never decoded, cut or scored
    assert str(corpus["videos"] / "a_good.mp4") in dup_row["message"]
    assert reason[str(corpus["videos"] / "link_out.mp4")] == ("rejected", "outside-input-root")
    special = corpus["special"]
    assert reason[special["not_utf8"]] == ("rejected", "name-not-utf8")
    assert reason[special["folder"]] == ("rejected", "not-a-file")
    assert reason[special["fifo"]] == ("rejected", "not-a-file")
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


def _start_build(inputs, out: Path) -> subprocess.Popen:
    """``tessera build`` in a child process (its own session, so a kill reaches its whole group), with SIGINT's
    default action as in a terminal: a test run started in the background (``cmd &`` in a script) inherits SIGINT
    ignored, and Python then never turns it into KeyboardInterrupt, so the build would run on to the end."""
    env = dict(os.environ, TESSERA_OBJECT_STORE_BYTES="300000000")
    return subprocess.Popen([sys.executable, "-m", "pipelines.cli", "build", "--input", str(inputs), "--output",
                             str(out), "--quiet"], cwd=REPO, env=env, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _wait_done(proc: subprocess.Popen, out: Path, n: int) -> None:
    done = out / "_state" / "done"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if done.exists() and len(list(done.glob("*.json"))) >= n:
            return
        time.sleep(0.05)


def test_resume_after_kill_equals_uninterrupted(ray_local, corpus, tmp_path, built):
    """Kill a build (SIGKILL, in a child process) once some inputs are done; the re-run completes and the
    published clip set equals the uninterrupted run's. Done markers land one input at a time (no stage holds an
    input's rows back for later inputs), so the kill comes while most inputs are still to do."""
    reference, _ = built
    out = tmp_path / "killed"
    proc = _start_build(corpus["videos"], out)
    _wait_done(proc, out, 3)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "_manifest.json").exists(), "the build finished before it could be killed"
    summary = _build(corpus["videos"], out)  # the dead build's lease (same host, dead pid) is taken over
    assert summary["inputs"]["resumed_skipped"] >= 3
    ref_table, _ = _clip_table(reference)
    table, _ = _clip_table(out)
    ids = table.column("clip_id").to_pylist()
    assert len(ids) == len(set(ids))
    assert sorted(ids) == sorted(ref_table.column("clip_id").to_pylist())


def test_a_locked_output_is_refused_in_one_line(corpus, tmp_path):
    """A live build's lease (this test process stands for it) makes a second build refuse, naming the holder."""
    import socket

    from curate.store import LEASE, atomic_write_json

    out = tmp_path / "locked"
    atomic_write_json(out / LEASE, {"host": socket.gethostname(), "pid": os.getpid(), "token": "t",
                                    "started": time.time(), "heartbeat": time.time()})
    run = subprocess.run([sys.executable, "-m", "pipelines.cli", "build", "--input", str(corpus["videos"]),
                          "--output", str(out), "--quiet"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode == 3, run.stderr[-2000:]
    (line,) = run.stderr.strip().splitlines()
    assert re.fullmatch(rf"error: {re.escape(str(out))} is being built by pid {os.getpid()} on "
                        rf"{re.escape(socket.gethostname())} \(heartbeat \d+ s ago\); wait for it to finish or stop "
                        rf"it \(a lease without a heartbeat for 120 s is taken over\)", line), line
    assert not (out / "_state").exists()  # refused before touching anything


def test_sigint_says_what_was_kept(ray_local, corpus, tmp_path):
    from curate.store import LEASE

    out = tmp_path / "interrupted"
    proc = _start_build(corpus["videos"], out)
    _wait_done(proc, out, 2)
    proc.send_signal(signal.SIGINT)  # at once: most inputs are still to do
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: interrupted: ") and "run the same command again to resume" in last, last
    assert "Traceback" not in err
    assert "core_worker.cc" not in err  # Ray's false alarm about actor restarts is absorbed (pipelines/build.py)
    kept = int(last.split("interrupted: ")[1].split()[0])
    assert kept == len(list((out / "_state" / "done").glob("*.json"))) >= 2
    assert not (out / LEASE).exists()  # released on the way out
    assert not (out / "_manifest.json").exists()


def _mount_tmpfs(path: Path, options: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                          capture_output=True).returncode == 0


def test_full_and_read_only_outputs_end_in_one_line(ray_local, corpus, tmp_path):
    full, ro = tmp_path / "full", tmp_path / "ro"
    if not _mount_tmpfs(full, "size=160k"):
        pytest.skip("cannot mount a small tmpfs here (needs root): no way to fill a disk safely")
    try:
        assert _mount_tmpfs(ro, "size=64k,ro")
        listing = tmp_path / "good.txt"
        listing.write_text("".join(f"{p}\n" for p in corpus["good"]))
        for out, words in ((full / "ds", "the disk is full"), (ro / "ds", "read-only")):
            run = subprocess.run([sys.executable, "-m", "pipelines.cli", "build", "--input", str(listing),
                                  "--output", str(out), "--quiet"], cwd=REPO, capture_output=True, text=True,
                                 timeout=300, env=dict(os.environ, TESSERA_OBJECT_STORE_BYTES="300000000"))
            assert run.returncode == 1, run.stderr[-2000:]
            last = run.stderr.strip().splitlines()[-1]
            assert last.startswith("error: cannot write ") and words in last, last
            assert "Traceback" not in run.stderr
    finally:
        for path in (full, ro):
            subprocess.run(["umount", str(path)], capture_output=True)


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


class _Crash(Exception):
    pass


def _republish(out: Path, items, crash_at: int | None = None) -> list[str]:
    """Publish ``out`` again over ``items``; with ``crash_at``, die at that publish step (counting from 0)."""
    from curate.store import BuildState
    from pipelines import publish
    from pipelines.build import BuildConfig

    steps: list[str] = []

    def hook(name):
        steps.append(name)
        if crash_at is not None and len(steps) - 1 == crash_at:
            raise _Crash(name)

    cfg = BuildConfig(input="unused", output=str(out), progress=False, rows_per_file=3)
    fp = json.loads((out / "config.json").read_text())["fingerprint"]
    publish.CRASH_HOOK = hook
    try:
        summary = publish.finalize(BuildState(out), cfg, fp, items=items, skipped=0, graph_wall_s=0.0)
        summary["wall_s"] = 0.0
        publish.write_summary_and_manifest(BuildState(out), summary, cfg, fp)
    finally:
        publish.CRASH_HOOK = None
    return steps


def _published_ids(out: Path) -> list[str]:
    from curate.store import open_dataset

    table = open_dataset(out, verify_sha256=True).read(["clip_id"])
    return sorted(table.column("clip_id").to_pylist()) if table is not None else []


def test_publish_crash_at_every_step_leaves_old_or_new(built, corpus, tmp_path):
    """A re-publish (one input fewer, other shard sizes) killed after each of its steps: a reader sees the old
    dataset or the new one, whole and verified, never a mix; the next publish finishes and leaves no orphans."""
    reference, _ = built
    items = [it for it in resolve_inputs(corpus["videos"]) if Path(it.uri).name != "b_good.mp4"]
    old = _published_ids(reference)
    dry = tmp_path / "dry"
    shutil.copytree(reference, dry)
    steps = _republish(dry, items)
    new = _published_ids(dry)
    assert new and set(new) < set(old)  # the new publish really differs
    assert {"shard", "failures", "selection", "summary", "manifest", "collect"} <= set(steps)
    old_manifest = json.loads((reference / "_manifest.json").read_text())
    for i, step in enumerate(steps):
        out = tmp_path / f"crash-{i}"
        shutil.copytree(reference, out)
        with pytest.raises(_Crash):
            _republish(out, items, crash_at=i)
        seen = _published_ids(out)
        assert seen in (old, new), f"crash after step {i} ({step}): a mix"
        manifest = json.loads((out / "_manifest.json").read_text())
        assert manifest["generation"] == old_manifest["generation"] + (seen == new)
        _republish(out, items)  # the re-run completes the publish
        assert _published_ids(out) == new
        listed = {Path(s["path"]).name for s in json.loads((out / "_manifest.json").read_text())["shards"]}
        assert {p.name for p in (out / "clips").iterdir()} == listed, "old shards not collected"


def test_scorers_share_one_stage_with_the_columns_of_three():
    """On CPUs the three scorers run in one actor stage: the columns (and values) it adds equal those of the
    scorers run one stage each, the sampled frames are gone after it, and a status row passes through; a scorer
    with a GPU share gets its own stage."""
    import dataclasses

    import numpy as np
    import pyarrow as pa

    from curate.framepack import pack_frames
    from pipelines.build import BuildConfig, Resources, _score_groups
    from pipelines.stages import ScoreStage

    frames = np.stack(media.pattern_frames(16, 96, 64))  # 8 pairs of (frame, next frame), as the split samples
    table = pa.table({"key": ["k", "k"], "row_kind": ["clip", "status"],
                      "frames": pa.array([pack_frames(frames), None], pa.binary()),
                      "frames_pts": [[i / 24 for i in range(16)], None], "fps": [24.0, None]})
    scorers = [("basic", {}), ("ocr", {}), ("clip", {"checkpoint": None})]
    fused = ScoreStage(scorers, drop=("frames", "frames_pts"))(table)
    chained = table
    for s in scorers:
        chained = ScoreStage([s])(chained)
    assert "frames" not in fused.column_names and "frames_pts" not in fused.column_names
    assert {"t_score_basic", "t_score_ocr", "t_score_clip", "sharpness", "text_coverage", "clip_status"} <= set(
        fused.column_names)
    for name in fused.column_names:
        if not name.startswith("t_"):
            assert fused.column(name).to_pylist() == chained.column(name).to_pylist(), name
    assert fused.column("scores_status").to_pylist() == ["ok", "skipped"]
    assert fused.column("clip_status").to_pylist() == ["no-model", "skipped"]

    cfg = BuildConfig(input="x", output="y")
    assert [[n for n, _ in g] for _, g in _score_groups(cfg)] == [["basic", "ocr", "clip"]]
    gpu = dataclasses.replace(cfg, resources=Resources(clip_gpus=0.5))
    assert [(gpus, [n for n, _ in g]) for gpus, g in _score_groups(gpu)] == [(0.0, ["basic", "ocr"]), (0.5, ["clip"])]
    cuda = dataclasses.replace(cfg, device="cuda", ocr=False)
    assert [[n for n, _ in g] for _, g in _score_groups(cuda)] == [["basic"], ["clip"]]


def test_no_model_clip_writes_what_the_clip_scorer_writes():
    """Without a checkpoint the build's CLIP stand-in (no torch import) adds exactly the columns, types and
    values ``ClipScorer(checkpoint=None)`` adds: ``no-model`` with frames, ``skipped`` without (null or empty)."""
    import numpy as np
    import pyarrow as pa

    from curate.clip_model import ClipScorer
    from curate.framepack import pack_frames
    from pipelines.stages import NoModelClip, ScoreStage, _make_scorer, _score

    assert isinstance(_make_scorer("clip", {"checkpoint": None, "model_name": "ViT-B-32"}), NoModelClip)
    blob = pack_frames(np.stack(media.pattern_frames(4, 32, 32)))
    table = pa.table({"key": ["a", "b", "c", "d"], "frames": pa.array([blob, None, b"", blob], pa.binary())})
    ours = ScoreStage([("clip", {"checkpoint": None})])(table)
    theirs = _score("clip", ClipScorer(checkpoint=None), table)
    assert ours.column("clip_status").to_pylist() == ["no-model", "skipped", "skipped", "no-model"]
    assert ours.column_names == theirs.column_names
    for name in ours.column_names:
        if not name.startswith("t_"):
            assert ours.column(name).equals(theirs.column(name)), name


def _status_rows(keys: list[str]):
    """Split-stage status rows (no clip), one per key, with every column the staging writer reads."""
    import pyarrow as pa

    n = len(keys)
    return pa.table({"key": keys, "row_kind": ["status"] * n, "outcome": ["failed"] * n, "expected_rows": [1] * n,
                     "source_uri": [f"file:///{k}.mp4" for k in keys], "content_id": [f"c{k}" for k in keys],
                     "source_duration_s": [2.0] * n, "source_frames": [48] * n, "stage": ["split"] * n,
                     "reason": ["decode-error"] * n, "error_class": ["ValueError"] * n, "message": ["bad"] * n,
                     "clip_id": pa.nulls(n, pa.string()), "frames": pa.nulls(n, pa.binary()),
                     "frames_pts": pa.nulls(n, pa.list_(pa.float64())), "fps": [24.0] * n})


def test_writer_shares_the_last_cpu_scorer_actor(tmp_path):
    """On CPUs without captions the staging writer runs in the scorers' actor (one actor pool less): the rows it
    returns and the files it stages equal those of the scorers followed by a writer of their own. With a caption
    stage between them, or a GPU scorer last, the writer keeps its own stage."""
    import dataclasses
    from types import SimpleNamespace

    import pyarrow.parquet as pq

    from pipelines.build import BuildConfig, Resources, stages
    from pipelines.stages import ScoreStage, StageWriter

    table = _status_rows(["k1", "k2"])
    scorers = [("basic", {}), ("ocr", {}), ("clip", {"checkpoint": None})]
    write = {"fingerprint": "fp", "store_media": "bytes"}
    fused = ScoreStage(scorers, drop=("frames", "frames_pts"), write=dict(write, root=str(tmp_path / "a")))(table)
    apart = StageWriter(root=str(tmp_path / "b"), **write)(ScoreStage(scorers, drop=("frames", "frames_pts"))(table))
    assert fused.column_names == apart.column_names and fused.num_rows == 2
    for name in fused.column_names:
        if not name.startswith("t_"):
            assert fused.column(name).to_pylist() == apart.column(name).to_pylist(), name
    staged = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.parquet"))
    assert staged and staged == sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*.parquet"))
    for rel in staged:
        assert pq.read_table(tmp_path / "a" / rel).equals(pq.read_table(tmp_path / "b" / rel))
    assert set(fused.column("file").to_pylist()) == {str(r) for r in staged}

    fake = SimpleNamespace(cluster_resources=lambda: {"CPU": 2.0},
                           data=SimpleNamespace(ActorPoolStrategy=lambda **kw: kw))
    names = lambda cfg, **kw: [n for n, _ in stages(fake, cfg, claims_dir=None, stage_root="r", fp="f", **kw)]
    cfg = BuildConfig(input="x", output="y", resources=Resources(score_in_split=False))
    assert names(cfg) == ["probe", "split", "score:basic+ocr+clip+write"]
    assert names(cfg, caption=lambda ds: ds) == ["probe", "split", "score:basic+ocr+clip", "caption", "write"]
    gpu = dataclasses.replace(cfg, resources=Resources(clip_gpus=0.5))
    assert names(gpu) == ["probe", "split", "score:basic+ocr", "score:clip", "write"]
    # the default on CPUs: scorers and writer in the split actors, unless a caption stage or a GPU scorer follows
    assert names(BuildConfig(input="x", output="y")) == ["probe", "split+score:basic+ocr+clip+write"]
    assert names(BuildConfig(input="x", output="y"), caption=lambda ds: ds)[1] == "split"
    assert names(gpu)[1] == "split"
    assert names(BuildConfig(input="x", output="y", clip_checkpoint="ckpt.safetensors"))[1:] == [
        "split", "score:basic+ocr+clip+write"]  # a CLIP model is not loaded once per split actor


def test_scorers_in_the_split_actor_stage_what_separate_stages_stage(tmp_path):
    """``SplitFlatMap(score=...)`` (the default build on CPUs) returns the rows, and stages the files, that the
    split stage followed by the scorer-and-writer stage does: for a video that gives clips and for one that fails
    (a status row). A write error still raises (the build stops on it) instead of becoming a split failure."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from curate.probe import ProbeLimits
    from curate.schema import TRANSIENT_COLUMNS
    from pipelines.build import BuildConfig
    from pipelines.stages import ProbeStage, ScoreStage, SplitFlatMap

    videos = tmp_path / "in"
    videos.mkdir()
    good = media.write_video(videos / "two.mp4", media.pattern_frames(60, 96, 64)
                             + [255 - f for f in media.pattern_frames(60, 96, 64)], 24.0)
    bad = media.make_corrupt_middle(videos)
    cfg = BuildConfig(input=str(videos), output=str(tmp_path / "out"))
    scorers = [("basic", {}), ("ocr", {}), ("clip", {"checkpoint": None})]
    write = {"fingerprint": "fp", "store_media": "bytes"}
    probe = ProbeStage(ProbeLimits())
    plain = SplitFlatMap(cfg.split_config())
    fused = SplitFlatMap(cfg.split_config(), score={"scorers": scorers, "drop": TRANSIENT_COLUMNS,
                                                    "write": dict(write, root=str(tmp_path / "a"))})
    apart = ScoreStage(scorers, drop=TRANSIENT_COLUMNS, write=dict(write, root=str(tmp_path / "b")))
    kinds = []
    for video in (good, bad):
        item = probe({"key": video.stem, "uri": video.as_uri(), "path": str(video), "reject_reason": None,
                      "reject_message": None})
        ours, theirs = fused(item), apart(pa.Table.from_pylist(plain(item))).to_pylist()
        kinds.append([r["row_kind"] for r in ours])
        assert len(ours) == len(theirs)
        for a, b in zip(ours, theirs):
            assert {k: v for k, v in a.items() if not k.startswith("t_")} == {
                k: v for k, v in b.items() if not k.startswith("t_")}
    assert kinds[0].count("clip") >= 2 and kinds[1] and "clip" not in kinds[1], kinds
    staged = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.parquet"))
    apart_staged = sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*.parquet"))
    assert len(staged) >= 2 and staged == apart_staged
    for rel in staged:
        a, b = pq.read_table(tmp_path / "a" / rel), pq.read_table(tmp_path / "b" / rel)
        assert a.drop_columns([c for c in a.column_names if c.startswith("t_")]).equals(
            b.drop_columns([c for c in b.column_names if c.startswith("t_")])), rel

    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the staging folder should be")
    broken = SplitFlatMap(cfg.split_config(), score={"scorers": scorers, "drop": TRANSIENT_COLUMNS,
                                                     "write": dict(write, root=str(blocked))})
    item = probe({"key": good.stem, "uri": good.as_uri(), "path": str(good), "reject_reason": None,
                  "reject_message": None})
    with pytest.raises(OSError):
        broken(item)


_RESTART_ACTOR = """
import ray
ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False)
if {absorb}:
    from pipelines.build import _init_ray
    _init_ray(None)
@ray.remote(num_cpus=0, max_restarts=1)
class A:
    def __init__(self, arg):
        pass
    def ping(self):
        return 1
print(ray.get(A.remote(ray.put(b"x" * 200_000)).ping.remote()))
"""


def test_no_restart_false_alarm_when_the_caller_started_ray():
    """The ``core_worker.cc ... E`` line Ray prints for an actor with restarts and a constructor argument in the
    object store (Ray Data's pool actors) is spent out of sight by the build also when the caller started Ray
    (the benchmark, a script), not only when the build does."""
    ray = pytest.importorskip("ray")  # noqa: F841
    env = dict(os.environ, PYTHONPATH=str(REPO))
    procs = {absorb: subprocess.Popen([sys.executable, "-c", _RESTART_ACTOR.format(absorb=absorb)], cwd=REPO, env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for absorb in (False, True)}  # side by side: each starts its own Ray
    runs = {absorb: p.communicate(timeout=120) for absorb, p in procs.items()}  # (stdout, stderr)
    for absorb, p in procs.items():
        assert p.returncode == 0 and runs[absorb][0].strip().endswith("1"), runs[absorb][1][-2000:]
    if "core_worker.cc" not in runs[False][1]:
        pytest.skip("this Ray version no longer prints the restart warning")
    assert "core_worker.cc" not in runs[True][1], runs[True][1][-2000:]

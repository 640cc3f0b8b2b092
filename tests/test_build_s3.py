"""Datasets on a real S3-compatible server (SeaweedFS, started here on loopback): inputs read from it, the whole
dataset (staging, done markers, lease, shards, manifest) written to it, and every reader opening it by URI.

The build gets the credentials the way any S3 client does (``AWS_*`` variables) and must never write them into a
file, an object or a log line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pytest

import s3server
from curate.synth import render_samples

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    yield from s3server.start(tmp_path_factory.mktemp("seaweed"), buckets=("videos", "datasets"))


@pytest.fixture
def s3_env(s3, monkeypatch):
    """The server's credentials in this process's environment, as a user would export them."""
    for k, v in s3["env"].items():
        monkeypatch.setenv(k, v)
    return s3


def _build(inputs: str, out: str, env: dict, ray_tmp: str | None = None, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "TESSERA_OBJECT_STORE_BYTES": "300000000", **env}
    if ray_tmp:
        env["RAY_TMPDIR"] = ray_tmp  # Ray's session folder (its logs included) where the test can read it all
    return subprocess.run([sys.executable, "-m", "pipelines.cli", "build", "--input", inputs, "--output", out,
                           "--quiet", *extra], cwd=REPO, capture_output=True, text=True, timeout=600, env=env)


def _clips(root) -> dict[str, str]:
    from curate.store import open_dataset

    table = open_dataset(root, verify_sha256=True).read(["clip_id", "source_uri"])
    return dict(zip(table.column("clip_id").to_pylist(), table.column("source_uri").to_pylist()))


@pytest.mark.slow
def test_build_from_s3_to_s3(s3, tmp_path, monkeypatch):
    videos = tmp_path / "videos"
    render_samples(videos, n_videos=2, seed=11)
    for p in sorted(videos.glob("*.mp4")):
        with s3["fs"].open_output_stream(f"videos/in/{p.name}") as f:
            f.write(p.read_bytes())
    with s3["fs"].open_output_stream("videos/in/notes.txt") as f:  # not a video: not an input
        f.write(b"x")

    ray_tmp = tempfile.mkdtemp(prefix="tr-", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    out = "s3://datasets/run1/"
    run = _build("s3://videos/in", out, s3["env"], ray_tmp)
    assert run.returncode == 0, run.stderr[-3000:]
    stored = s3server.objects(s3["fs"], "datasets")
    keys = set(stored)
    assert "datasets/run1/_manifest.json" in keys and "datasets/run1/_lease.json" not in keys  # released
    assert any(k.startswith("datasets/run1/_state/done/") for k in keys)  # resume state lives there too
    assert not any(Path(k).name.endswith(".tmp") for k in keys)

    for k, v in s3["env"].items():  # the readers open the URI with the same standard variables
        monkeypatch.setenv(k, v)
    summary = json.loads(stored["datasets/run1/summary.json"])
    assert summary["inputs"]["total"] == 2 and summary["inputs"]["accepted"] == 2
    assert summary["dataset"] == "s3://datasets/run1"
    remote = _clips(out)
    assert set(remote.values()) == {f"s3://videos/in/{p.name}" for p in videos.glob("*.mp4")}

    local = tmp_path / "local"
    assert _build(str(videos), str(local), {}).returncode == 0
    assert sorted(_clips(local)) == sorted(remote)  # the same clips, whichever storage held inputs and output

    again = _build("s3://videos/in", out, s3["env"], ray_tmp)  # a re-run resumes from the done markers there
    assert again.returncode == 0, again.stderr[-3000:]
    manifest = json.loads(s3server.objects(s3["fs"], "datasets")["datasets/run1/_manifest.json"])
    assert manifest["generation"] == 2 and sorted(_clips(out)) == sorted(remote)
    assert json.loads(s3server.objects(s3["fs"], "datasets")["datasets/run1/summary.json"])["inputs"][
        "resumed_skipped"] == 2

    # the credentials reach no object, no file of the build or of Ray's session (its logs), and no output line
    secret = s3server.SECRET.encode()
    assert not [k for k, v in s3server.objects(s3["fs"], "datasets").items() if secret in v]
    assert not s3server.files_containing(tmp_path, secret)
    assert Path(ray_tmp, "ray").is_dir() and not s3server.files_containing(Path(ray_tmp), secret)
    for r in (run, again):
        assert s3server.SECRET not in r.stdout + r.stderr


@pytest.mark.slow
def test_readers_open_a_dataset_uri(s3_env, tmp_path):
    """filter, report and the training data read a dataset by its URI, verified through its manifest."""
    from curate.store import DataRoot, open_dataset
    from pipelines.publish import read_light, run_filters
    from curate.filter import FilterSpec

    videos = tmp_path / "videos"
    render_samples(videos, n_videos=1, seed=3)
    out = "s3://datasets/readers"
    run = _build(str(videos), out, s3_env["env"])
    assert run.returncode == 0, run.stderr[-3000:]

    ds = open_dataset(out)
    assert ds.rows > 0 and all(s.startswith(out + "/clips/part-") for s in ds.shards)
    table = read_light(out, ds.manifest["shards"])
    kept = run_filters(out, table, FilterSpec(expressions=("sharpness >= 0",)))
    assert kept["kept"] <= table.num_rows
    assert ds.read_side_table("selection", ["clip_id"]).num_rows == table.num_rows

    cli = subprocess.run([sys.executable, "-m", "pipelines.cli", "filter", out, "--no-defaults"], cwd=REPO,
                         capture_output=True, text=True, timeout=300, env=os.environ)
    assert cli.returncode == 0 and json.loads(cli.stdout)["clips"] == table.num_rows, cli.stderr[-2000:]

    from pipelines.report import ReportConfig, main as report_main

    report = report_main(ReportConfig(dataset=out, output=str(tmp_path / "report"), sample_clips=2, frames_per_clip=2))
    assert (tmp_path / "report" / "index.html").is_file() and report

    from train.data import ClipDataConfig, scan_clips

    units, clips = scan_clips(ClipDataConfig(root=out, split="all", holdout_pct=0.0))
    assert len(clips) == ds.rows and all(str(u[0]).startswith(out) for u in units)

    # a shard changed after publishing is refused, on object storage as on a disk
    root = DataRoot(out)
    rel = ds.manifest["shards"][0]["path"]
    root.write_bytes(rel, root.read_bytes(rel) + b"x")
    with pytest.raises(Exception, match="bytes"):
        open_dataset(out)


def test_lease_and_claims_on_object_storage(s3_env):
    """The output's lease and the content claims work on S3 too: a live holder refuses a second build, a stale
    lease is taken over, one input wins a content id."""
    from curate.store import LEASE, DataRoot, Lease, OutputLocked, claim_content

    out = "s3://datasets/leased"
    root = DataRoot(out)
    with Lease(out, settle_s=0.05):
        held = root.read_json(LEASE)
        assert held["pid"] == os.getpid()
        with pytest.raises(OutputLocked, match=f"pid {os.getpid()}"):
            Lease(out, settle_s=0.05).acquire()
    assert not root.is_file(LEASE)
    root.write_json(LEASE, {"host": "node-17", "pid": 1, "token": "old", "heartbeat": time.time() - 600})
    with Lease(out, stale_after_s=60, settle_s=0.05):
        assert root.read_json(LEASE)["host"] != "node-17"

    claims = f"{out}/_state/content"
    assert claim_content(claims, "k1", "s3://v/a.mp4", "ab" * 32) is None
    assert claim_content(claims, "k2", "s3://v/c.mp4", "ab" * 32) == "s3://v/a.mp4"
    assert claim_content(claims, "k1", "s3://v/a.mp4", "ab" * 32) is None

    table = pa.table({"a": [1, 2]})  # and a table written there reads back whole
    root.write_table("t/x.parquet", table)
    assert root.read_table("t/x.parquet").equals(table) and root.list("t") == ["t/x.parquet"]
    root.delete_tree("t")
    assert root.list("t") == []


def test_an_unusable_output_uri_ends_in_one_line(s3_env, tmp_path):
    """A bucket that does not exist (or refuses us) stops the build before any work, in one line, naming it."""
    from pipelines.build import BuildConfig, BuildStopped, build

    with pytest.raises(BuildStopped, match=r"cannot use --output s3://no-such-bucket/d: ") as stopped:
        build(BuildConfig(input=str(tmp_path), output="s3://no-such-bucket/d", progress=False))
    assert stopped.value.exit_code == 1 and "\n" not in str(stopped.value)
    assert s3server.SECRET not in str(stopped.value)

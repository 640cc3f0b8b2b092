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
import time
from pathlib import Path

import pyarrow as pa
import pytest

import s3server
from s3server import ray_tmp, s3  # noqa: F401 (fixtures: one loopback S3 server per module)
from curate.inputs import resolve_inputs
from curate.synth import render_samples

REPO = Path(__file__).resolve().parents[1]


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


class _Crash(Exception):
    pass


def _republish(out: str, items, crash_at: int | None = None) -> list[str]:
    """Publish ``out`` again over ``items`` (3 rows a shard: other shards); with ``crash_at``, die at that step."""
    from curate.store import BuildState, DataRoot
    from pipelines import publish
    from pipelines.build import BuildConfig

    steps: list[str] = []

    def hook(name):
        steps.append(name)
        if crash_at is not None and len(steps) - 1 == crash_at:
            raise _Crash(name)

    cfg = BuildConfig(input="unused", output=out, progress=False, rows_per_file=3)
    fp = DataRoot(out).read_json("config.json")["fingerprint"]
    publish.CRASH_HOOK = hook
    try:
        summary = publish.finalize(BuildState(out), cfg, fp, items=items, skipped=0, graph_wall_s=0.0)
        summary["wall_s"] = 0.0
        publish.write_summary_and_manifest(BuildState(out), summary, cfg, fp)
    finally:
        publish.CRASH_HOOK = None
    return steps


def _copy(fs, src: str, dst: str) -> None:
    for key, data in s3server.objects(fs, src.split("/")[0]).items():
        if key.startswith(src + "/"):
            with fs.open_output_stream(dst + key[len(src):]) as f:
                f.write(data)


def _crash_every_publish_step(fs, out: str, items) -> None:
    """A re-publish on object storage killed after each of its steps: readers see the old dataset or the new
    one, whole and verified, never a mix; the next publish finishes and collects the old shards."""
    from curate.store import DataRoot

    old = sorted(_clips(out))
    dry = out.rstrip("/") + "-dry"
    _copy(fs, out[5:].rstrip("/"), dry[5:])
    steps = _republish(dry, items)
    new = sorted(_clips(dry))
    assert new and set(new) < set(old)
    assert {"shard", "failures", "selection", "summary", "manifest", "collect"} <= set(steps)
    for i, step in enumerate(steps):
        crashed = f"{out.rstrip('/')}-crash-{i}"
        _copy(fs, out[5:].rstrip("/"), crashed[5:])
        with pytest.raises(_Crash):
            _republish(crashed, items, crash_at=i)
        assert sorted(_clips(crashed)) in (old, new), f"crash after step {i} ({step}): a mix"
        _republish(crashed, items)
        assert sorted(_clips(crashed)) == new
        root = DataRoot(crashed)
        listed = {s["path"] for s in root.read_json("_manifest.json")["shards"]}
        assert set(root.list("clips")) == listed, "old shards not collected"


def _clips(root) -> dict[str, str]:
    from curate.store import open_dataset

    table = open_dataset(root, verify_sha256=True).read(["clip_id", "source_uri"])
    return dict(zip(table.column("clip_id").to_pylist(), table.column("source_uri").to_pylist()))


@pytest.mark.slow
def test_build_from_s3_to_s3(s3, tmp_path, monkeypatch, ray_tmp):
    videos = tmp_path / "videos"
    render_samples(videos, n_videos=2, seed=11)
    for p in sorted(videos.glob("*.mp4")):
        with s3["fs"].open_output_stream(f"videos/in/{p.name}") as f:
            f.write(p.read_bytes())
    with s3["fs"].open_output_stream("videos/in/notes.txt") as f:  # not a video: not an input
        f.write(b"x")

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

    _crash_every_publish_step(s3["fs"], out, [i for i in resolve_inputs("s3://videos/in")][1:])

    # the credentials reach no object, no file of the build or of Ray's session (its logs), and no output line
    secret = s3server.SECRET.encode()
    assert not [k for k, v in s3server.objects(s3["fs"], "datasets").items() if secret in v]
    assert not s3server.files_containing(tmp_path, secret)
    assert Path(ray_tmp, "ray").is_dir() and not s3server.files_containing(Path(ray_tmp), secret)
    for r in (run, again):
        assert s3server.SECRET not in r.stdout + r.stderr


def _profile_env(tmp_path: Path, s3: dict, secret: str) -> dict:
    """An environment whose only S3 credentials are a named profile in temp AWS files (the endpoint and region
    stay variables, as a user of an S3-compatible server sets them)."""
    aws = tmp_path / "aws"
    aws.mkdir(exist_ok=True)
    (aws / "credentials").write_text(f"[tessera-ci]\naws_access_key_id = {s3server.KEY}\n"
                                     f"aws_secret_access_key = {secret}\n")
    (aws / "config").write_text("[profile tessera-ci]\nregion = us-east-1\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_PROFILE="tessera-ci", AWS_SHARED_CREDENTIALS_FILE=str(aws / "credentials"),
               AWS_CONFIG_FILE=str(aws / "config"), AWS_ENDPOINT_URL=s3["env"]["AWS_ENDPOINT_URL"],
               AWS_DEFAULT_REGION="us-east-1", TESSERA_OBJECT_STORE_BYTES="300000000")
    return env


@pytest.mark.slow
def test_credentials_from_a_profile(s3, tmp_path, ray_tmp):
    """``AWS_PROFILE`` with a temp credentials/config file and no key variables: the build writes the dataset
    with the profile's keys, and the secret appears in no output line, object, or file of the build or of Ray's
    session; the same profile with a wrong secret is refused in one line (so the profile is what was read)."""
    videos = tmp_path / "videos"
    render_samples(videos, n_videos=1, seed=5)
    for p in sorted(videos.glob("*.mp4")):
        with s3["fs"].open_output_stream(f"videos/profile/{p.name}") as f:
            f.write(p.read_bytes())

    def build(out: str, env: dict) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "pipelines.cli", "build", "--input", "s3://videos/profile",
                               "--output", out, "--quiet"], cwd=REPO, capture_output=True, text=True, timeout=600,
                              env=dict(env, RAY_TMPDIR=ray_tmp))

    run = build("s3://datasets/profile", _profile_env(tmp_path, s3, s3server.SECRET))
    assert run.returncode == 0, run.stderr[-3000:]
    stored = s3server.objects(s3["fs"], "datasets")
    summary = json.loads(stored["datasets/profile/summary.json"])
    assert summary["inputs"]["accepted"] == 1 and summary["clips"]["published"] > 0

    wrong = "wrong-" + s3server.SECRET[::-1]
    refused = build("s3://datasets/profile-wrong", _profile_env(tmp_path, s3, wrong))
    assert refused.returncode != 0
    assert "cannot use --output s3://datasets/profile-wrong" in refused.stderr + refused.stdout
    assert "Traceback" not in refused.stderr

    secret = s3server.SECRET.encode()
    for r in (run, refused):
        assert s3server.SECRET not in r.stdout + r.stderr and wrong not in r.stdout + r.stderr
    assert not [k for k, v in s3server.objects(s3["fs"], "datasets").items() if secret in v]
    assert not s3server.files_containing(tmp_path, secret)  # the profile file now holds the wrong secret
    assert Path(ray_tmp, "ray").is_dir() and not s3server.files_containing(Path(ray_tmp), secret)


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


def test_an_unusable_output_uri_ends_in_one_line(s3_env, tmp_path, monkeypatch):
    """Credentials the store refuses stop the build before any work, in one line that names the output and not
    the secret."""
    from pipelines.build import BuildConfig, BuildStopped, build

    wrong = "wrong-secret-never-logged-987654"
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", wrong)
    with pytest.raises(BuildStopped, match=r"cannot use --output s3://datasets/refused: ") as stopped:
        build(BuildConfig(input=str(tmp_path), output="s3://datasets/refused", progress=False))
    assert stopped.value.exit_code == 1 and "\n" not in str(stopped.value)
    assert wrong not in str(stopped.value) and s3server.SECRET not in str(stopped.value)


def test_credentials_in_a_uri_are_refused_without_repeating_them(tmp_path):
    from curate.remote import refuse_credentials
    from pipelines.build import BuildConfig, BuildStopped, build

    for uri in ("s3://AKIAX:sekrit-123@bucket/d", "s3://bucket/d?secret_key=sekrit-123&region=x",
                "gs://user@bucket/d"):
        with pytest.raises(ValueError, match="credentials in it is refused") as refused:
            refuse_credentials(uri)
        assert "sekrit-123" not in str(refused.value)
    refuse_credentials("s3://bucket/d?region=us-east-1")  # other parameters are fine
    with pytest.raises(BuildStopped, match="credentials") as stopped:
        build(BuildConfig(input=str(tmp_path), output="s3://AKIAX:sekrit-123@bucket/d", progress=False))
    assert stopped.value.exit_code == 2 and "sekrit-123" not in str(stopped.value)
    with pytest.raises(BuildStopped, match="credentials"):
        build(BuildConfig(input="s3://AKIAX:sekrit-123@bucket/in", output=str(tmp_path / "o"), progress=False))
    assert not (tmp_path / "o").exists()

"""The same build on a real two-node Ray cluster on this machine, with no shared disk between driver and nodes.

A head node with no CPUs (so no work can run there) and a second node with its own CPUs and a custom resource,
both started with ``ray start``; the build connects with ``--address`` exactly as it would to a remote cluster.
Inputs and the dataset (staging shards, done markers, lease, published shards, manifest) live on an S3 server
(SeaweedFS on loopback), so nothing depends on the nodes seeing the driver's files. Every clip is made on the
second node, and the result must equal a local build of the same inputs. Each node has the S3 credentials in
its own environment, as a real node has its profile or variables; they must appear in no log of the cluster.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import s3server
from s3server import ray_tmp, s3  # noqa: F401 (fixtures: one loopback S3 server per module)
from curate.synth import render_samples

REPO = Path(__file__).resolve().parents[1]
RAY = Path(sys.executable).with_name("ray")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((NODE_IP, 0))
        return s.getsockname()[1]


# Ray rewrites 127.0.0.1/localhost to the machine's network address; another loopback address keeps every
# process of this test on loopback. Token auth is off for this throwaway loopback cluster.
NODE_IP = "127.0.0.2"


def _env(extra: dict | None = None) -> dict:
    env = dict(os.environ, RAY_AUTH_MODE="disabled", **(extra or {}))
    env.pop("RAY_ADDRESS", None)
    return env


def _start(args: list[str], tmp: Path, name: str, extra: dict) -> subprocess.Popen:
    log = open(tmp / f"{name}.log", "wb")
    env = _env(extra)
    return subprocess.Popen([str(RAY), "start", "--block", "--disable-usage-stats", *args], stdout=log,
                            stderr=subprocess.STDOUT, env=env, start_new_session=True)


def _published(root, column: str) -> list[str]:
    from curate.store import open_dataset

    return sorted(open_dataset(root, verify_sha256=True).read([column]).column(column).to_pylist())


@pytest.mark.slow
def test_build_on_two_node_cluster(tmp_path, s3, monkeypatch, ray_tmp):
    if not RAY.exists():
        pytest.skip(f"ray CLI not found next to {sys.executable}")
    videos = tmp_path / "videos"
    render_samples(videos, n_videos=2, seed=7)
    for p in sorted(videos.glob("*.mp4")):
        with s3["fs"].open_output_stream(f"videos/cluster/{p.name}") as f:
            f.write(p.read_bytes())
    extra = dict(s3["env"], RAY_TMPDIR=ray_tmp)  # every node's own credentials; every session file in ray_tmp
    port = _free_port()
    address = f"{NODE_IP}:{port}"
    head = _start(["--head", f"--port={port}", f"--node-ip-address={NODE_IP}", "--num-cpus=0",
                   "--include-dashboard=false", "--object-store-memory=200000000"], tmp_path, "head", extra)
    worker = None
    try:
        deadline = time.time() + 90
        while time.time() < deadline:  # wait for the head's GCS to accept connections
            with socket.socket() as s:
                if s.connect_ex((NODE_IP, port)) == 0:
                    break
            time.sleep(0.5)
        worker = _start([f"--address={address}", f"--node-ip-address={NODE_IP}", "--num-cpus=2",
                         '--resources={"second_node": 1}', "--object-store-memory=300000000"], tmp_path, "worker",
                        extra)
        probe = ("import ray, time, sys\n"
                 f"ray.init(address={address!r}, log_to_driver=False)\n"
                 "for _ in range(120):\n"
                 "    alive = [n for n in ray.nodes() if n['Alive']]\n"
                 "    if len(alive) == 2: break\n"
                 "    time.sleep(0.5)\n"
                 "print(len(alive), ray.cluster_resources().get('second_node', 0))\n")
        res = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120,
                             env=_env(extra))
        assert res.stdout.split() == ["2", "1.0"], res.stdout + res.stderr[-2000:]

        out = "s3://datasets/cluster"
        run = subprocess.run([sys.executable, "-m", "pipelines.cli", "build", "--input", "s3://videos/cluster",
                              "--output", out, "--address", address, "--quiet"], cwd=tmp_path,
                             env=dict(_env(extra), PYTHONPATH=str(REPO)), capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, run.stderr[-3000:]
        stored = s3server.objects(s3["fs"], "datasets")
        summary = json.loads(stored["datasets/cluster/summary.json"])
        assert summary["inputs"]["accepted"] == 2 and summary["inputs"]["adds_up"]
        assert summary["clips"]["published"] > 0
        assert any(k.startswith("datasets/cluster/_state/staging/") for k in stored)  # staged by the node, there
        assert not list(tmp_path.glob("**/_manifest.json"))  # nothing of the dataset on the driver's disk
        for k, v in s3["env"].items():
            monkeypatch.setenv(k, v)
        assert set(_published(out, "source_uri")) == {f"s3://videos/cluster/{p.name}" for p in videos.glob("*.mp4")}
        assert not [k for k, v in stored.items() if s3server.SECRET.encode() in v]
    finally:
        for proc in (worker, head):
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in (worker, head):
            if proc is not None:
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)

    # the credentials reached no log of either node, no session file, no output line
    assert not s3server.files_containing(Path(ray_tmp), s3server.SECRET.encode())
    assert not s3server.files_containing(tmp_path, s3server.SECRET.encode())
    assert s3server.SECRET not in run.stdout + run.stderr

    local = tmp_path / "local"
    run = subprocess.run([sys.executable, "-m", "pipelines.cli", "build", "--input", str(videos), "--output",
                          str(local), "--quiet"], cwd=REPO, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "TESSERA_OBJECT_STORE_BYTES": "300000000"})
    assert run.returncode == 0, run.stderr[-3000:]
    assert _published(out, "clip_id") == _published(local, "clip_id")


def test_fixed_pools_fit_the_cluster():
    """Every stage's actors fit the cluster's CPUs at once (a pool that cannot place its actors would stall the
    stream), the heavy split stage takes what the others leave, and the caption stages are left room."""
    from pipelines.build import Resources, pool_sizes

    res = Resources()
    assert pool_sizes(2, res) == pool_sizes(2.0, res)
    assert (pool_sizes(2, res).probe, pool_sizes(2, res).split, pool_sizes(2, res).score) == (1, 2, 1)
    for cpus in (1, 2, 3, 4, 8, 16, 64, 320):
        for other in (0.0, 0.5):
            n = pool_sizes(cpus, res, other)
            used = (n.probe * res.probe_cpus + n.split * res.split_cpus + 3 * n.score * res.score_cpus
                    + n.write * res.write_cpus + other)
            assert used <= max(cpus, 1.95 + other) + 1e-9, (cpus, n)  # 1 CPU: one actor each, Ray queues them
            assert n.split >= n.score and n.split * res.split_cpus >= 0.5 * (cpus - other) - 1, (cpus, n)
    assert pool_sizes(2, res, other_cpus=0.5).split == 1  # captions on 2 CPUs: room kept for them
    assert pool_sizes(2, Resources(split_concurrency=5)).split == 5  # an explicit hint wins
    one = pool_sizes(64, res, inputs=1)  # one video: one actor per stage, never an idle one
    assert (one.probe, one.split, one.score, one.write) == (1, 1, 1, 1)
    assert pool_sizes(64, res, inputs=3).split == 3 and pool_sizes(2, res, inputs=500) == pool_sizes(2, res)

"""The same build on a real two-node Ray cluster on this machine.

A head node with no CPUs (so no work can run there) and a second node with its own CPUs and a custom resource,
both started with ``ray start``; the build connects with ``--address`` exactly as it would to a remote cluster.
Every clip is therefore made on the second node, and the result must equal a local build of the same inputs.
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

import pyarrow.parquet as pq
import pytest

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


def _env() -> dict:
    env = dict(os.environ, RAY_AUTH_MODE="disabled")
    env.pop("RAY_ADDRESS", None)
    return env


def _start(args: list[str], tmp: Path, name: str) -> subprocess.Popen:
    log = open(tmp / f"{name}.log", "wb")
    env = _env()
    return subprocess.Popen([str(RAY), "start", "--block", "--disable-usage-stats", *args], stdout=log,
                            stderr=subprocess.STDOUT, env=env, start_new_session=True)


def _clip_ids(out: Path) -> list[str]:
    manifest = json.loads((out / "_manifest.json").read_text())
    return sorted(i for s in manifest["shards"] for i in pq.read_table(out / s["path"], columns=["clip_id"])
                  .column("clip_id").to_pylist())


@pytest.mark.slow
def test_build_on_two_node_cluster(tmp_path):
    if not RAY.exists():
        pytest.skip(f"ray CLI not found next to {sys.executable}")
    videos = tmp_path / "videos"
    render_samples(videos, n_videos=2, seed=7)
    port = _free_port()
    address = f"{NODE_IP}:{port}"
    head = _start(["--head", f"--port={port}", f"--node-ip-address={NODE_IP}", "--num-cpus=0",
                   "--include-dashboard=false", "--object-store-memory=200000000"], tmp_path, "head")
    worker = None
    try:
        deadline = time.time() + 90
        while time.time() < deadline:  # wait for the head's GCS to accept connections
            with socket.socket() as s:
                if s.connect_ex((NODE_IP, port)) == 0:
                    break
            time.sleep(0.5)
        worker = _start([f"--address={address}", f"--node-ip-address={NODE_IP}", "--num-cpus=2",
                         '--resources={"second_node": 1}', "--object-store-memory=300000000"], tmp_path, "worker")
        probe = ("import ray, time, sys\n"
                 f"ray.init(address={address!r}, log_to_driver=False)\n"
                 "for _ in range(120):\n"
                 "    alive = [n for n in ray.nodes() if n['Alive']]\n"
                 "    if len(alive) == 2: break\n"
                 "    time.sleep(0.5)\n"
                 "print(len(alive), ray.cluster_resources().get('second_node', 0))\n")
        res = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, env=_env())
        assert res.stdout.split() == ["2", "1.0"], res.stdout + res.stderr[-2000:]

        out = tmp_path / "dataset"
        # relative --input and --output, from a folder other than the one `ray start` ran in: the driver makes
        # them absolute before any worker sees them
        run = subprocess.run([sys.executable, "-m", "pipelines.cli", "build", "--input", "videos", "--output",
                              "dataset", "--address", address, "--quiet"], cwd=tmp_path,
                             env=dict(_env(), PYTHONPATH=str(REPO)), capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, run.stderr[-3000:]
        summary = json.loads((out / "summary.json").read_text())
        assert summary["inputs"]["accepted"] == 2 and summary["inputs"]["adds_up"]
        sources = {u for s in json.loads((out / "_manifest.json").read_text())["shards"]
                   for u in pq.read_table(out / s["path"], columns=["source_uri"]).column("source_uri").to_pylist()}
        assert sources == {str(p) for p in videos.glob("*.mp4")}  # absolute: a caption step later finds them
        assert summary["clips"]["published"] > 0
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

    local = tmp_path / "local"
    run = subprocess.run([sys.executable, "-m", "pipelines.cli", "build", "--input", str(videos), "--output",
                          str(local), "--quiet"], cwd=REPO, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "TESSERA_OBJECT_STORE_BYTES": "300000000"})
    assert run.returncode == 0, run.stderr[-3000:]
    assert _clip_ids(out) == _clip_ids(local)

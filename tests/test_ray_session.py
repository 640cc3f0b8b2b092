"""Starting or joining Ray (``pipelines.ray_session``): no address and no ``$RAY_ADDRESS`` is a private local Ray
even when ``ray start`` left a dead cluster named in Ray's temp folder; a named cluster is joined as it is."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

import pipelines.ray_session as ray_session
from helpers import RayInitStopped

REPO = Path(__file__).resolve().parents[1]


def test_no_address_starts_a_private_ray_sized_as_asked(init_calls):
    with pytest.raises(RayInitStopped):
        ray_session.start_ray(None, num_cpus=3, object_store_bytes=123_000_000)
    assert init_calls == [{"address": "local", "num_cpus": 3, "object_store_memory": 123_000_000,
                           "include_dashboard": False, "log_to_driver": False}]


@pytest.mark.parametrize("address, env", [("10.1.2.3:6379", None), (None, "10.1.2.3:6379"), ("auto", "9.9.9.9:1")])
def test_a_named_cluster_is_joined_without_local_sizes(init_calls, monkeypatch, capsys, address, env):
    if env:
        monkeypatch.setenv("RAY_ADDRESS", env)
    with pytest.raises(RayInitStopped):
        ray_session.start_ray(address, num_cpus=2, object_store_bytes=10**9)
    assert init_calls == [{"address": address or env, "log_to_driver": False}]  # ray.init refuses num_cpus here
    assert "num_cpus=2 is not used" in capsys.readouterr().err


def test_ray_address_local_means_a_private_ray(init_calls, monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "local")
    with pytest.raises(RayInitStopped):
        ray_session.start_ray(None)
    assert init_calls[0]["address"] == "local"


def test_a_running_session_is_used_as_it_is(monkeypatch):
    ray = pytest.importorskip("ray")
    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    monkeypatch.setattr(ray, "init", lambda **kw: pytest.fail(f"ray.init called again: {kw}"))
    absorbed = []
    monkeypatch.setattr(ray_session, "_absorb_restart_warning", absorbed.append)
    assert ray_session.start_ray("10.1.2.3:6379", num_cpus=2) is ray and absorbed == [ray]


_START = """
from pipelines.ray_session import start_ray
ray = start_ray(None, num_cpus=1)
print("ADDRESS", ray.get_runtime_context().gcs_address, "CPU", ray.cluster_resources()["CPU"])
"""


def test_a_dead_cluster_left_by_ray_start_does_not_hang_the_start():
    """``ray start`` wrote its address to ``$RAY_TMPDIR/ray/ray_current_cluster`` and died: a plain ``ray.init``
    waits on that address forever (or refuses ``num_cpus``); ``start_ray`` starts its own Ray at once."""
    pytest.importorskip("ray")
    tmp = tempfile.mkdtemp(prefix="trs", dir="/tmp")  # short: Ray's socket paths live under it
    try:
        (Path(tmp) / "ray").mkdir()
        (Path(tmp) / "ray" / "ray_current_cluster").write_text("127.0.0.1:9\n")  # nothing listens there
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        env.update(RAY_TMPDIR=tmp, PYTHONPATH=str(REPO))
        proc = subprocess.Popen([sys.executable, "-c", _START], cwd=REPO, env=env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        try:
            out, err = proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            pytest.fail("the start waited on the dead cluster named in ray_current_cluster")
        assert proc.returncode == 0, err[-2000:]
        words = out.split()
        assert words[0] == "ADDRESS" and not words[1].endswith(":9") and float(words[3]) == 1.0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def test_the_auth_enabled_notice_is_dropped_and_the_disabled_warning_kept(caplog):
    """A private local Ray uses token authentication by default and Ray says so on every start, with how to turn
    it off: dropped. Its warning that authentication is off (anyone on the network can run code) still shows."""
    import logging

    from ray._private.authentication import authentication_token_setup as setup

    from pipelines.ray_session import quiet_auth_notice

    quiet_auth_notice()
    quiet_auth_notice()  # once is enough; twice adds nothing
    log = logging.getLogger(setup.__name__)
    assert sum(type(f).__name__ == "_DropAuthEnabledNotice" for f in log.filters) == 1
    with caplog.at_level(logging.WARNING, logger=setup.__name__):
        setup._warn_token_auth_enabled()
        setup._warn_token_auth_disabled()
    messages = [r.getMessage() for r in caplog.records if r.name == setup.__name__]
    assert len(messages) == 1 and messages[0].startswith("Token authentication is disabled")

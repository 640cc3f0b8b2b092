"""run_isolated / Sandbox: hangs, crashes and exceptions cost one call; the worker is reused and replaced."""

from __future__ import annotations

import os
import re
import signal
import threading
import time

import numpy as np
import pytest

import media
from curate.frames import DecodeConfig, iter_frames
from curate.sandbox import Sandbox, SandboxCrashed, SandboxError, SandboxTimeout, run_isolated

pytestmark = pytest.mark.timeout(120)


# Functions the worker runs: module level, so they travel by reference.
def _pid() -> int:
    return os.getpid()


def _sleep(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def _spin_holding_gil() -> None:
    """Catastrophic regex backtracking: runs in C for ages without releasing the GIL or checking signals."""
    re.match(r"(a+)+$", "a" * 60 + "b")


def _segfault() -> None:
    os.kill(os.getpid(), signal.SIGSEGV)


def _exit_hard(code: int) -> None:
    os._exit(code)


def _raise(message: str) -> None:
    raise KeyError(message)


def _arrays(n: int) -> dict:
    rng = np.random.default_rng(n)
    return {"frames": rng.integers(0, 256, (n, 120, 160, 3), dtype=np.uint8), "pts": np.arange(n) / 25.0}


def _echo(x):
    return x


def _decode(path: str) -> tuple[np.ndarray, np.ndarray]:
    frames = list(iter_frames(path, DecodeConfig(short_side=32)))
    return np.stack([f.rgb for f in frames]), np.array([f.pts_s for f in frames])


@pytest.fixture()
def sandbox():
    with Sandbox() as sb:
        yield sb


def test_result_and_worker_reuse(sandbox):
    first = sandbox.run(_pid, timeout_s=30)
    assert first != os.getpid()
    assert sandbox.run(_pid, timeout_s=30) == first and sandbox.started == 1
    assert sandbox.run(_echo, {"a": [1, 2.5, "x"]}, timeout_s=30) == {"a": [1, 2.5, "x"]}


def test_timeout_kills_worker_and_next_call_works(sandbox):
    old = sandbox.run(_pid, timeout_s=30)
    with pytest.raises(SandboxTimeout):
        sandbox.run(_sleep, 600, timeout_s=0.5)
    with pytest.raises(ProcessLookupError):
        os.kill(old, 0)  # the hung worker is gone (killed and reaped)
    assert sandbox.run(_sleep, 0.0, timeout_s=30) == 0.0
    assert sandbox.run(_pid, timeout_s=30) != old and sandbox.started == 2


def test_timeout_while_native_code_holds_the_gil(sandbox):
    with pytest.raises(SandboxTimeout):
        sandbox.run(_spin_holding_gil, timeout_s=0.5)
    assert sandbox.run(_echo, 7, timeout_s=30) == 7


def test_segfault_is_a_crash_and_next_call_works(sandbox):
    with pytest.raises(SandboxCrashed) as info:
        sandbox.run(_segfault, timeout_s=30)
    assert info.value.signal == signal.SIGSEGV and info.value.exitcode == -signal.SIGSEGV
    assert sandbox.run(_echo, "alive", timeout_s=30) == "alive"


def test_hard_exit_is_a_crash_with_exit_code(sandbox):
    with pytest.raises(SandboxCrashed) as info:
        sandbox.run(_exit_hard, 3, timeout_s=30)
    assert info.value.exitcode == 3 and info.value.signal is None
    assert sandbox.run(_echo, 1, timeout_s=30) == 1


def test_exception_carries_class_name_and_message(sandbox):
    pid = sandbox.run(_pid, timeout_s=30)
    with pytest.raises(SandboxError) as info:
        sandbox.run(_raise, "no such key", timeout_s=30)
    assert info.value.class_name == "KeyError" and "no such key" in info.value.message
    assert "_raise" in info.value.traceback
    assert sandbox.run(_pid, timeout_s=30) == pid  # an exception does not cost the worker


def test_unpicklable_call_fails_in_parent_and_worker_survives(sandbox):
    pid = sandbox.run(_pid, timeout_s=30)
    with pytest.raises((AttributeError, TypeError)):  # a programmer error: raised here, nothing was sent
        sandbox.run(lambda: 1, timeout_s=30)
    assert sandbox.run(_pid, timeout_s=30) == pid


def test_large_numpy_result_round_trips(sandbox):
    out = sandbox.run(_arrays, 300, timeout_s=60)  # 300 x 120 x 160 x 3 = 17 MB
    want = _arrays(300)
    assert np.array_equal(out["frames"], want["frames"]) and np.array_equal(out["pts"], want["pts"])
    assert out["frames"].flags.writeable
    big = np.arange(50_000_000, dtype=np.uint8)
    assert np.array_equal(sandbox.run(_echo, big, timeout_s=60), big)  # 50 MB each way


def test_decode_in_sandbox(tmp_path, sandbox):
    path = media.make_good(tmp_path, n=12)
    frames, pts = sandbox.run(_decode, str(path), timeout_s=60)
    assert frames.shape == (12, 32, 48, 3) and pts[0] == 0.0 and np.all(np.diff(pts) > 0)


def test_parent_with_busy_threads_and_concurrent_callers():
    """Threads holding locks in the parent cannot deadlock the worker (it is exec'd, not forked), and
    concurrent callers are serialised onto the one worker."""
    stop = threading.Event()
    held = threading.Lock()

    def hog():
        with held:
            while not stop.is_set():
                time.sleep(0.001)

    hogs = [threading.Thread(target=hog, daemon=True) for _ in range(3)]
    for t in hogs:
        t.start()
    results, errors = [], []
    with Sandbox() as sb:

        def call(i):
            try:
                results.append(sb.run(_echo, i, timeout_s=60))
            except Exception as e:  # noqa: BLE001 - collected and asserted below
                errors.append(e)

        callers = [threading.Thread(target=call, args=(i,)) for i in range(8)]
        for t in callers:
            t.start()
        for t in callers:
            t.join(60)
        assert sb.started == 1
    stop.set()
    assert not errors and sorted(results) == list(range(8))


def test_run_isolated_default_sandbox():
    assert run_isolated(_echo, 5, timeout_s=30) == 5
    with pytest.raises(SandboxTimeout):
        run_isolated(_sleep, 600, timeout_s=0.3)
    assert run_isolated(_echo, 6, timeout_s=30) == 6


def _in_ray_worker() -> dict:
    """Runs as a Ray task: uses the sandbox from inside a Ray worker process (threads, no usable __main__)."""
    import sys as _sys

    from curate.sandbox import SandboxCrashed as Crashed
    from curate.sandbox import SandboxTimeout as Timeout
    from curate.sandbox import run_isolated as isolated

    out = {"worker_main": getattr(_sys.modules.get("__main__"), "__file__", None), "ray_pid": os.getpid()}
    out["child_pid"] = isolated(os.getpid, timeout_s=60)
    try:
        isolated(os.abort, timeout_s=60)
    except Crashed as e:
        out["crash_signal"] = e.signal
    try:
        isolated(time.sleep, 600, timeout_s=0.5)
    except Timeout:
        out["timed_out"] = True
    out["after"] = isolated(os.getpid, timeout_s=60)
    return out


def test_inside_a_ray_worker():
    ray = pytest.importorskip("ray")
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = os.pathsep.join([repo, os.path.join(repo, "tests")])
    # address="local": start our own small cluster even when another one on this machine is running
    ray.init(address="local", num_cpus=1, include_dashboard=False, object_store_memory=100 * 2**20,
             log_to_driver=False, runtime_env={"env_vars": {"PYTHONPATH": path}}, _node_ip_address="127.0.0.1")
    try:
        out = ray.get(ray.remote(_in_ray_worker).remote(), timeout=120)
    finally:
        ray.shutdown()
    assert out["ray_pid"] != os.getpid() and out["child_pid"] not in (out["ray_pid"], os.getpid())
    assert out["crash_signal"] == signal.SIGABRT and out["timed_out"] is True
    assert out["after"] not in (out["child_pid"], out["ray_pid"])  # replaced after the crash/timeout


def _allocate(nbytes: int) -> int:
    return int(np.ones(nbytes, dtype=np.uint8)[-1])


def test_memory_limit_turns_a_huge_allocation_into_an_error():
    with Sandbox(memory_limit_bytes=3 * 2**30) as sb:
        assert sb.run(_allocate, 10 * 2**20, timeout_s=30) == 1
        with pytest.raises(SandboxError) as info:
            sb.run(_allocate, 8 * 2**30, timeout_s=30)
        assert info.value.class_name == "MemoryError"
        assert sb.run(_allocate, 10 * 2**20, timeout_s=30) == 1


def _unpicklable_result():
    return threading.Lock()


def test_unpicklable_result_is_an_error_not_a_hang(sandbox):
    with pytest.raises(SandboxError) as info:
        sandbox.run(_unpicklable_result, timeout_s=30)
    assert info.value.class_name == "TypeError" and "pickled" in info.value.message
    assert sandbox.run(_echo, 2, timeout_s=30) == 2 and sandbox.started == 1

"""The output's lease on a real S3-compatible server (SeaweedFS on loopback): builds that start in the same instant
elect exactly one holder, and a holder taken over as stale stops writing."""

from __future__ import annotations

import threading
import time

import pytest



from s3server import s3  # noqa: F401,E402 (fixture: one loopback S3 server per module)


@pytest.fixture
def s3_env(s3, monkeypatch):  # noqa: F811
    for k, v in s3["env"].items():
        monkeypatch.setenv(k, v)
    return s3


@pytest.mark.parametrize("round_", range(3))
def test_builds_started_together_elect_one_holder(s3_env, round_):
    """Six builds take the lease of one output at the same instant (a barrier). Exactly one holds it; every other
    one is refused, naming the holder; the winner's candidate is the only one left, mirrored in ``_lease.json``.
    (The old look-PUT-read-back lease let two racers that looked before either wrote both win.)"""
    from curate.store import CANDIDATES, LEASE, DataRoot, Lease, OutputLocked

    out = f"s3://datasets/race-{round_}"
    n, barrier, done = 6, threading.Barrier(6), threading.Event()
    won, refused, errors = [], [], []

    def build(i: int) -> None:
        lease = Lease(out, settle_s=0.2)
        barrier.wait()
        try:
            lease.acquire()
        except OutputLocked as e:
            refused.append(str(e))
            return
        except Exception as e:  # noqa: BLE001 - the test reports it below
            errors.append(repr(e))
            return
        won.append(lease.me["token"])
        done.wait(30)  # hold it until every other build has tried
        lease.release()

    threads = [threading.Thread(target=build, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    deadline = time.time() + 60
    while len(won) + len(refused) + len(errors) < n and time.time() < deadline:
        time.sleep(0.05)
    root = DataRoot(out)
    try:
        assert not errors, errors
        assert len(won) == 1, f"{len(won)} builds hold the lease at once"
        assert len(refused) == n - 1 and all("is being built by pid" in r for r in refused), refused
        assert root.list(CANDIDATES) == [f"{CANDIDATES}/{won[0]}.json"]
        assert root.read_json(LEASE)["token"] == won[0]
    finally:
        done.set()
        for t in threads:
            t.join(30)
    assert root.list(CANDIDATES) == [] and not root.is_file(LEASE)  # released


def test_a_holder_taken_over_as_stale_stops_writing(s3_env):
    """A holder whose heartbeat went quiet past the limit (a frozen host) is taken over; when it wakes, its
    heartbeat finds its candidate gone and never writes over the new holder's lease."""
    from curate.store import LEASE, DataRoot, Lease

    out = "s3://datasets/stale"
    root = DataRoot(out)
    old = Lease(out, stale_after_s=0.8, settle_s=0.1)
    old.acquire()
    old._stop.set()  # frozen: no heartbeat from here
    old._thread.join()
    held = root.read_json(LEASE)
    held["heartbeat"] -= 10  # and its last one is long past
    root.write_json(LEASE, held)
    root.write_json(f"_lease.d/{old.me['token']}.json", held)
    new = Lease(out, stale_after_s=0.8, settle_s=0.1).acquire()
    try:
        assert root.read_json(LEASE)["token"] == new.me["token"]
        old._start_heartbeat()  # the frozen build wakes up
        time.sleep(0.6)  # a few of its beats (every stale_after_s / 4)
        assert not old._thread.is_alive()
        assert root.read_json(LEASE)["token"] == new.me["token"]
    finally:
        old._stop.set()
        new.release()

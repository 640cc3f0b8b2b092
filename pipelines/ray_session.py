"""Starting or joining Ray for the pipelines: one place, so every command behaves the same.

``start_ray(address)`` joins the cluster at ``address`` (or at ``$RAY_ADDRESS``) when one is named, and
otherwise starts a private local Ray. It never lets ``ray.init`` look for a cluster by itself: with no address,
``ray.init`` reads the file ``ray start`` leaves in Ray's temp folder (``/tmp/ray/ray_current_cluster``) and
joins the cluster named there, even one that is gone (it then waits on it forever) or one started for
something else (it then refuses the local ``num_cpus``).
"""

from __future__ import annotations

import os
import sys

LOCAL = "local"


def resolve_address(address: str | None) -> str:
    """The address to join: ``address``, else ``$RAY_ADDRESS``, else ``"local"`` (a private Ray)."""
    return address or os.environ.get("RAY_ADDRESS") or LOCAL


class _DropAuthEnabledNotice:
    """Logging filter: drops Ray's notice that a local Ray it starts uses token authentication (the safe default;
    its text only says how to turn it off). The warning that authentication is *disabled* still shows."""

    def filter(self, record) -> bool:
        return not record.getMessage().startswith("Token authentication is enabled")


def quiet_auth_notice() -> None:
    """Install :class:`_DropAuthEnabledNotice` on Ray's authentication logger (once)."""
    import logging

    log = logging.getLogger("ray._private.authentication.authentication_token_setup")
    if not any(isinstance(f, _DropAuthEnabledNotice) for f in log.filters):
        log.addFilter(_DropAuthEnabledNotice())


def start_ray(address: str | None = None, *, num_cpus: int | None = None, object_store_bytes: int | None = None):
    """Start or join Ray once per process and return the ``ray`` module.

    A Ray already running in this process (a script or a test that started it) is used as it is. Joining a
    cluster takes its resources as they are: ``num_cpus`` and ``object_store_bytes`` size a local Ray only (a
    ``num_cpus`` given for a cluster is named on stderr as not used).
    """
    import ray

    if not ray.is_initialized():
        quiet_auth_notice()
        target = resolve_address(address)
        if target == LOCAL:
            ray.init(address=LOCAL, num_cpus=num_cpus, object_store_memory=object_store_bytes,
                     include_dashboard=False, log_to_driver=False)
        else:
            if num_cpus is not None:
                print(f"note: joining the Ray cluster at {target}: its CPUs were set where it was started, "
                      f"num_cpus={num_cpus} is not used", file=sys.stderr)
            ray.init(address=target, log_to_driver=False)
    _absorb_restart_warning(ray)
    return ray


class _Absorber:
    def __init__(self, arg):
        pass


_ABSORBED: set[str] = set()  # the Ray jobs (driver sessions) of this process whose line is spent


def _absorb_restart_warning(ray) -> None:
    """Spend, out of sight, the one ``core_worker.cc ... E`` line Ray prints per process when an actor with
    restarts gets a constructor argument by reference (ray-project/ray#53727: a restart fails if that argument
    is gone by then). Ray Data passes every actor-pool worker its transformer and context that way, and keeps
    both references for as long as the operator runs, so its restarts find them: the line is a false alarm for
    the pipelines' graphs. It is logged once per process, at actor submission, from the submitting thread: one
    throwaway actor submitted while fd 2 points at /dev/null uses it up, and later real warnings of other kinds
    still show. Done once per process and Ray session, whoever started Ray.
    """
    session = ray.get_runtime_context().get_job_id()
    if session in _ABSORBED:
        return
    _ABSORBED.add(session)

    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        actor = ray.remote(num_cpus=0, max_restarts=1)(_Absorber).remote(ray.put(0))
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
    ray.kill(actor)

"""Shared pytest fixtures.

The real third-party videos live beside the checkout in ``../shared/data``; they are never copied into the
repository. Tests that need them take the ``shared_data`` fixture and are skipped, with the reason, when the
folder is absent.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from helpers import RayInitStopped

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def one_thread():
    """Torch on one thread for a module of tiny tensors (they run fastest so); the setting is restored after it.
    A module takes it with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path to ``../shared/data``; skips the test when it is not there."""
    if not (SHARED_DATA / "ground_truth.json").is_file():
        pytest.skip(f"real test videos not found at {SHARED_DATA} (../shared/data is absent)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def ground_truth(shared_data: Path) -> dict:
    """The parsed ``ground_truth.json`` of ``../shared/data``."""
    return json.loads((shared_data / "ground_truth.json").read_text())


class LogRecords(list):
    """Log records, with the ones that say an API we call is deprecated (ours to fix) picked out."""

    def deprecations(self) -> list[str]:
        return [r.getMessage() for r in self if "deprecat" in r.getMessage().lower()]


@pytest.fixture
def ray_data_log() -> LogRecords:
    """The warnings Ray Data logs while the test runs (its ``ray.data`` logger does not propagate to caplog)."""
    import logging

    import ray.data  # noqa: F401  (importing it configures its loggers, which would drop a handler added before)

    records = LogRecords()

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler, logger = Keep(level=logging.WARNING), logging.getLogger("ray.data")
    logger.addHandler(handler)
    yield records
    logger.removeHandler(handler)


@pytest.fixture
def init_calls(monkeypatch) -> list[dict]:
    """``ray.init``'s keyword arguments, one dict per call; the call then raises :class:`RayInitStopped`. No Ray
    runs in this process meanwhile, and ``$RAY_ADDRESS`` is unset (a test sets it when it needs it)."""
    ray = pytest.importorskip("ray")
    calls: list[dict] = []

    def init(*args, **kwargs):
        calls.append(kwargs)
        raise RayInitStopped

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", init)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    return calls

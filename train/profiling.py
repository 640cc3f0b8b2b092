"""A torch.profiler window over a training run's steps, and what it found (``tessera train-dit --profile_steps``).

``StepProfiler`` records steps ``[first, first + n)``: ``step(i)`` goes before step i's work, ``done(i)`` after
it, and ``close()`` writes a window the run ended inside, with the steps it got. ``OUT_DIR`` gets summary.json
(wall, GPU-kernel and host-op seconds per step, and the GPU's busy share; None on a CPU), ops.txt (the top ops
by GPU and by host time) and trace.json.gz (for chrome://tracing or Perfetto). Only the window's two ends
synchronise the device.
"""

from __future__ import annotations

import gzip
import json
import shutil
import time
from pathlib import Path

import torch


class StepProfiler:
    """torch.profiler over the steps ``[first, first + n)`` of a run (see the module docstring)."""

    def __init__(self, out_dir: Path, first: int, n: int, device: torch.device):
        self.out_dir, self.first, self.n, self.device = out_dir, first, n, device
        self.prof, self.t0, self.steps, self.summary = None, 0.0, 0, None

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def step(self, i: int) -> None:
        if self.prof is None and self.summary is None and i >= self.first:
            from torch.profiler import ProfilerActivity, profile

            acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.device.type == "cuda" else [])
            self._sync()
            self.prof = profile(activities=acts)
            self.prof.__enter__()
            self.first, self.t0 = i, time.perf_counter()

    def done(self, i: int) -> None:
        if self.prof is not None:
            self.steps = i + 1 - self.first
            if self.steps >= self.n:
                self.close()

    def close(self) -> dict | None:
        if self.prof is None or not self.steps:
            return self.summary
        self._sync()
        wall = time.perf_counter() - self.t0
        prof, self.prof = self.prof, None
        prof.__exit__(None, None, None)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        events = prof.key_averages()
        on_device = self.device.type == "cuda"
        kernels = sum(e.self_device_time_total for e in events) / 1e6 if on_device else None
        n = self.steps
        self.summary = {"first_step": self.first, "steps": n, "wall_s_per_step": wall / n,
                        "device_s_per_step": kernels / n if on_device else None,
                        "device_busy": kernels / wall if on_device else None,
                        "host_ops_s_per_step": sum(e.self_cpu_time_total for e in events) / 1e6 / n}
        tables = []
        if on_device:
            tables.append("Top ops by GPU time (self):\n" + events.table(
                sort_by="self_device_time_total", row_limit=30))
        tables.append("Top ops by host time (self):\n" + events.table(sort_by="self_cpu_time_total", row_limit=30))
        (self.out_dir / "ops.txt").write_text("\n\n".join(tables))
        trace = self.out_dir / "trace.json"
        prof.export_chrome_trace(str(trace))
        with open(trace, "rb") as src, gzip.open(str(trace) + ".gz", "wb") as dst:
            shutil.copyfileobj(src, dst)
        trace.unlink()
        (self.out_dir / "summary.json").write_text(json.dumps(self.summary, indent=1))
        busy = (f", GPU kernels {self.summary['device_s_per_step']:.4f} s/step "
                f"({100 * self.summary['device_busy']:.0f} % busy)") if on_device else ""
        print(f"[profile] steps {self.first}-{self.first + n - 1}: {self.summary['wall_s_per_step']:.4f} s/step "
              f"wall{busy} -> {self.out_dir}", flush=True)
        return self.summary

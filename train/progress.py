"""What a training run says while it runs: its limits up front, then a line with the loss and an ETA.

``limits(steps, budget_s)`` is the header's "how long": the step count, and the time budget when there is one
(a budgeted run stops at whichever comes first, so the header names both). ``Progress`` prints, on rank 0, one
line at a log step when ``every_s`` seconds have passed since the last one (and always at the last step):
step, loss, steps per second and the time left, estimated from the step rate and capped by the budget.
``FrameLoss`` collects the DiT's loss per latent frame between log steps (TensorBoard ``frames/flow_t*``).
"""

from __future__ import annotations

import sys
import time

import torch


def limits(steps: int, budget_s: float) -> str:
    """``"100000 steps"`` or ``"100000 steps or 150 s, whichever comes first"``."""
    return f"{steps} steps" + (f" or {budget_s:.0f} s, whichever comes first" if budget_s > 0 else "")


def _clock(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


class Progress:
    """Periodic progress lines of one run (see the module docstring); ``enabled`` False prints nothing."""

    def __init__(self, name: str, start: int, steps: int, budget_s: float = 0.0, every_s: float = 10.0,
                 enabled: bool = True, clock=time.time):
        self.name, self.start, self.steps, self.budget_s = name, start, steps, budget_s
        self.every_s, self.enabled, self.clock = every_s, enabled, clock
        self.t0 = self.last = clock()
        self.lines: list[str] = []  # what was printed (the tests read it)

    def line(self, done: int, loss: float) -> str:
        elapsed = max(1e-9, self.clock() - self.t0)
        rate = (done - self.start) / elapsed
        left = (self.steps - done) / rate if rate > 0 else float("inf")
        if self.budget_s > 0:
            left = min(left, max(0.0, self.budget_s - elapsed))
        eta = _clock(left) if left != float("inf") else "?"
        return (f"[{self.name}] step {done}/{self.steps}  loss {loss:.4f}  {rate:.2f} steps/s  "
                f"elapsed {_clock(elapsed)}  eta {eta}")

    def __call__(self, done: int, loss: float, last: bool = False) -> None:
        if not self.enabled or not (last or self.clock() - self.last >= self.every_s):
            return
        self.last = self.clock()
        text = self.line(done, loss)
        self.lines.append(text)
        print(text, file=sys.stdout, flush=True)


class FrameLoss:
    """Per latent frame, the flow loss summed over the steps since the last log and its step count: (2, T')."""

    def __init__(self):
        self.sums: torch.Tensor | None = None

    def add(self, per_frame: torch.Tensor) -> None:
        n = len(per_frame)
        if self.sums is None or self.sums.shape[1] < n:  # a longer bucket: grow, zero-padded
            grown = per_frame.new_zeros(2, n, dtype=torch.float32)
            if self.sums is not None:
                grown[:, :self.sums.shape[1]] = self.sums
            self.sums = grown
        self.sums[0, :n] += per_frame
        self.sums[1, :n] += 1

    def log(self, writer, step: int) -> None:
        for i, (v, n) in enumerate(zip(*self.sums.tolist())):
            if n and writer is not None:  # this rank's loss on latent frame i, over the steps since the last log
                writer.add_scalar(f"frames/flow_t{i}", v / n, step)
        self.sums.zero_()

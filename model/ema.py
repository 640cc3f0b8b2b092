"""Exponential moving average of a model's weights.

``EMA(model, decay)`` keeps a frozen copy (``ema.module``) whose parameters follow
``p_ema <- d * p_ema + (1 - d) * p`` after each ``update(model, step)``, with ``d = min(decay, (1+step)/(10+step))``
(the usual warm-up; ``step=None`` keeps ``d = decay``); buffers are copied. The copy is an
ordinary ``nn.Module``, so it checkpoints like any other module and can be used for evaluation directly.
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn


class EMA:
    def __init__(self, model: nn.Module, decay: float = 0.999) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.module = copy.deepcopy(model).eval().requires_grad_(False)

    def decay_at(self, step: int | None) -> float:
        """The decay of update number ``step`` (0-based): ``min(decay, (1 + step) / (10 + step))``, so a short run's
        average is not mostly its initial weights (at 0.999 it would be for the first ~1000 steps). ``None``: the
        plain ``decay``. A function of the step only, so a resumed run averages exactly as an uninterrupted one."""
        return self.decay if step is None else min(self.decay, (1.0 + step) / (10.0 + step))

    @torch.no_grad()
    def update(self, model: nn.Module, step: int | None = None) -> None:
        """Move the average towards ``model`` (unwrap DDP before calling); ``step`` warms the decay up."""
        decay = self.decay_at(step)
        ema_params = dict(self.module.named_parameters())
        pairs = [(ema_params[name], p.detach()) for name, p in model.named_parameters()]
        # multi-tensor kernels, not one launch per parameter; ``to`` copies only for an average in another dtype
        torch._foreach_lerp_([e for e, _ in pairs], [p.to(e.dtype) for e, p in pairs], 1.0 - decay)
        ema_buffers = dict(self.module.named_buffers())
        for name, b in model.named_buffers():
            ema_buffers[name].copy_(b)

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Write the averaged weights into ``model``."""
        model.load_state_dict(self.module.state_dict())

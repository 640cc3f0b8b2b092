"""Exponential moving average of a model's weights.

``EMA(model, decay)`` keeps a frozen copy (``ema.module``) whose parameters follow
``p_ema <- decay * p_ema + (1 - decay) * p`` after each ``update(model)``; buffers are copied. The copy is an
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

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the average towards ``model`` (unwrap DDP before calling)."""
        ema_params = dict(self.module.named_parameters())
        for name, p in model.named_parameters():
            ema_params[name].lerp_(p.detach().to(ema_params[name].dtype), 1.0 - self.decay)
        ema_buffers = dict(self.module.named_buffers())
        for name, b in model.named_buffers():
            ema_buffers[name].copy_(b)

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Write the averaged weights into ``model``."""
        model.load_state_dict(self.module.state_dict())

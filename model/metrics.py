"""Reconstruction metrics on videos ``(B, 3, T, H, W)`` (or images ``(B, 3, H, W)``) in ``[-1, 1]``.

- ``psnr``: on the ``[0, 1]`` scale, per sample, from the MSE over all frames (``inf`` when identical).
- ``ssim``: Gaussian-window SSIM (11 x 11, sigma 1.5, K1 = 0.01, K2 = 0.03) on each frame, on the ``[0, 1]``
  scale, averaged over channels and frames; valid-region convolution as in the reference implementation.
- ``LPIPS``: the VGG-16 variant of Zhang et al. (2018), loaded only from a local safetensors file (no
  download, no pickle). Expected keys: torchvision's ``features.{i}.weight|bias`` of ``vgg16`` and the five
  linear heads of the ``lpips`` package as ``lin{k}.model.1.weight`` (shape ``(1, C_k, 1, 1)``). Frames are
  scored independently and averaged.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file


def _frames(x: torch.Tensor) -> torch.Tensor:
    """(B, C, T, H, W) -> (B*T, C, H, W); images pass through."""
    if x.dim() == 4:
        return x
    b, c, t, h, w = x.shape
    return x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)


def psnr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """PSNR in dB per sample, shape ``(B,)``, inputs in [-1, 1]."""
    mse = ((x.float() - y.float()) / 2.0).pow(2).flatten(1).mean(1)
    return 10.0 * torch.log10(1.0 / mse)


def _gaussian(size: int = 11, sigma: float = 1.5, device=None) -> torch.Tensor:
    r = torch.arange(size, dtype=torch.float32, device=device) - (size - 1) / 2
    g = torch.exp(-(r**2) / (2 * sigma**2))
    return g / g.sum()


def ssim(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean SSIM per sample, shape ``(B,)``, inputs in [-1, 1]; frames need H, W >= 11."""
    b = x.shape[0]
    a = (_frames(x.float()) + 1) / 2  # (N, C, H, W) in [0, 1]
    c = (_frames(y.float()) + 1) / 2
    ch = a.shape[1]
    g = _gaussian(device=a.device)
    win = (g[:, None] * g[None, :]).expand(ch, 1, 11, 11).contiguous()  # depthwise window

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, win, groups=ch)

    mu_a, mu_c = blur(a), blur(c)
    var_a = blur(a * a) - mu_a**2
    var_c = blur(c * c) - mu_c**2
    cov = blur(a * c) - mu_a * mu_c
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mu_a * mu_c + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_c**2 + c1) * (var_a + var_c + c2))
    return s.flatten(1).mean(1).view(b, -1).mean(1)


# VGG-16 "features" as in torchvision (indices matter: they name the weights), cut after relu5_3.
_VGG_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]
_TAPS = (3, 8, 15, 22, 29)  # relu1_2, relu2_2, relu3_3, relu4_3, relu5_3


class LPIPS(nn.Module):
    """LPIPS (VGG) distance, frozen; ``forward(x, y) -> (B,)`` for videos or images in [-1, 1]."""

    def __init__(self, weights: str | Path) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = 3
        for v in _VGG_CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(cin, v, 3, padding=1), nn.ReLU(inplace=False)]
                cin = v
        self.features = nn.Sequential(*layers)
        self.lins = nn.ModuleList([nn.Conv2d(c, 1, 1, bias=False) for c in (64, 128, 256, 512, 512)])
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1))
        state = load_file(str(weights))
        mine = {k: v for k, v in state.items() if k.startswith("features.")}
        for k in range(5):
            mine[f"lins.{k}.weight"] = state[f"lin{k}.model.1.weight"]
        self.load_state_dict({**mine, "shift": self.shift, "scale": self.scale}, strict=True)
        self.eval().requires_grad_(False)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        a = (_frames(x) - self.shift) / self.scale
        c = (_frames(y) - self.shift) / self.scale
        total = 0.0
        k = 0
        for i, layer in enumerate(self.features):
            a, c = layer(a), layer(c)
            if i in _TAPS:
                na = a / (a.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
                nc = c / (c.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
                total = total + self.lins[k]((na - nc) ** 2).mean(dim=(2, 3))  # (N, 1)
                k += 1
                if k == len(_TAPS):
                    break
        return total.view(b, -1).mean(1)  # (B,)

"""The DiT training step with QK-norm on the fused RMSNorm kernel (``model.dit.QKNorm``) against the composite.

Run on one H100/H200:  python benchmarks/bench_qknorm.py [--out OUT]
Smoke test on a CPU:    python benchmarks/bench_qknorm.py --smoke

What is measured: the GPU text loop's DiT step (``PROFILES["gpu"]`` until 2026-12-03 13:51 UTC: preset S, a
4-channel latent of 5 x 32 x 32 under (1, 4, 4) patches = 320 tokens per clip, 128 clips, 32 text tokens of 384
dims, pooled text), forward + backward + fused AdamW under bf16 autocast, eager, one fixed random batch. Both
variants run in one process on the same weights: "fused" is ``QKNorm`` as shipped (the weight cast to the input's
bf16), "composite" puts ``nn.RMSNorm.forward`` back on the same modules (fp32 weight, bf16 input: torch's unfused
fallback, the "Mismatch dtype" warning). Median of ``--iters`` steps timed with CUDA events after ``--warmup``
steps, alternating the variants in rounds so clock drift hits both alike.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import types
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.dit import DiT, QKNorm, dit_config  # noqa: E402


def set_variant(model: nn.Module, fused: bool) -> None:
    for m in model.modules():
        if isinstance(m, QKNorm):
            if fused:
                m.__dict__.pop("forward", None)  # back to the class's method
            else:
                m.forward = types.MethodType(nn.RMSNorm.forward, m)


def step_time(model, opt, batch, device, iters: int) -> list[float]:
    x, t, text, mask, target = batch
    times = []
    for _ in range(iters):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
        else:
            t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = (model(x, t, text, mask).float() - target).square().mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            times.append(time.perf_counter() - t0)
    return times


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU: checks the code paths only")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--iters", type=int, default=30, help="timed steps per variant and round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", default="", help="folder for bench_qknorm.json")
    a = p.parse_args(argv)
    device = torch.device("cpu" if a.smoke or not torch.cuda.is_available() else "cuda")
    preset, batch, grid = ("tiny", 2, (2, 8, 8)) if a.smoke else ("S", 128, (5, 32, 32))
    cfg = dit_config(preset, latent_channels=4, text_dim=384, patch=(1, 4, 4), pooled_text=True)
    torch.manual_seed(0)
    model = DiT(cfg).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, cfg.in_channels, *grid, generator=g)
    text = torch.randn(batch, 32, 384, generator=g)
    mask = torch.ones(batch, 32, dtype=torch.bool)
    mask[:, 20:] = False
    data = [v.to(device) for v in (x, torch.rand(batch, generator=g), text, mask,
                                   torch.randn(batch, 4, *grid, generator=g))]
    warm, iters, rounds = (1, 2, 1) if a.smoke else (a.warmup, a.iters, a.rounds)
    times: dict[str, list[float]] = {"fused": [], "composite": []}
    for fused in (True, False):
        set_variant(model, fused)
        step_time(model, opt, data, device, warm)
    for _ in range(rounds):
        for name in times:
            set_variant(model, name == "fused")
            times[name] += step_time(model, opt, data, device, iters)
    med = {k: statistics.median(v) for k, v in times.items()}
    tokens = batch * grid[0] * (grid[1] // 4) * (grid[2] // 4)
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    print(f"\nDiT {preset} training step, {batch} clips x {tokens // batch} tokens, bf16 autocast, eager, {name}, "
          f"torch {torch.__version__}\n")
    print("| QK-norm | median s/step | tokens/s | steps |\n|---|---|---|---|")
    for k in times:
        print(f"| {k} | {med[k]:.4f} | {tokens / med[k]:,.0f} | {len(times[k])} |")
    print(f"\ncomposite / fused = {med['composite'] / med['fused']:.3f}x")
    if a.out:
        Path(a.out).mkdir(parents=True, exist_ok=True)
        (Path(a.out) / "bench_qknorm.json").write_text(json.dumps(
            {"device": name, "torch": torch.__version__, "median_s": med, "times": times, "tokens": tokens}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

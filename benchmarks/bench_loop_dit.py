"""DiT sizes for the GPU text loop: seconds per training step and what the loop's DiT budget buys.

Run on one H100/H200:  python benchmarks/bench_loop_dit.py [--out OUT] [--budget-s 240]
Smoke test on a CPU:    python benchmarks/bench_loop_dit.py --smoke

The loop's DiT step (``PROFILES["gpu"]``): a 4-channel 5 x 32 x 32 latent under (1, 4, 4) patches (320 tokens
per clip), 32 text tokens of 384 dims, pooled text, forward + backward + fused AdamW under bf16 autocast, one
fixed random batch (no data loading: the loop adds ~0.02 s per step for it). Variants: ``--variants``, each
``PRESET[+hidden=H,depth=D,heads=N]@BATCH[:compiled]``; "compiled" is the loop's regional ``torch.compile``
(each block, ``dynamic=True``, as ``train.train_dit`` does), its compile time reported apart. The reference is
the first variant (DiT-S eager at 128 clips: the profile until 2026-12-03 13:51 UTC). For each variant the
table gives the median s/step, tokens/s, model TFLOP/s (6 x parameters x tokens: matmul FLOPs, attention left
out, which at 320 tokens is small), steps in ``--loop-s`` seconds of DiT budget (the B run had 311.7 s, less the
compile), and the ratio of those steps and of those steps' FLOPs to the reference. Variants not started when
``--budget-s`` is spent are listed as skipped; ``OUT/bench_loop_dit.json`` is rewritten after every variant.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_qknorm import step_time  # noqa: E402  (one timed training step: CUDA events, or the clock on a CPU)
from model.dit import DiT, dit_config  # noqa: E402

DEFAULT_VARIANTS = ("S@128", "S@128:compiled", "B@128:compiled", "B@64:compiled",
                    "B+hidden=1024,heads=16@128:compiled", "L@128:compiled")


def parse_variant(spec: str) -> dict:
    """``"B+hidden=1024,heads=16@64:compiled"`` -> ``{"preset": "B", "overrides": {"hidden": 1024, "heads": 16},
    "batch": 64, "compiled": True}``."""
    body, sep, mode = spec.partition(":")
    if sep and mode != "compiled":
        raise ValueError(f"variant {spec!r}: the only mode is ':compiled'")
    model, at, batch = body.partition("@")
    if not at or not batch.isdigit() or int(batch) < 1:
        raise ValueError(f"variant {spec!r}: expected PRESET[+k=v,...]@BATCH[:compiled]")
    preset, plus, extra = model.partition("+")
    overrides = {}
    for item in extra.split(",") if plus else ():
        key, eq, value = item.partition("=")
        if key not in ("hidden", "depth", "heads") or not value.isdigit():
            raise ValueError(f"variant {spec!r}: overrides are hidden=, depth=, heads= with integers")
        overrides[key] = int(value)
    return {"preset": preset, "overrides": overrides, "batch": int(batch), "compiled": bool(sep)}


def run_variant(spec: str, device: torch.device, grid: tuple[int, int, int], warmup: int, iters: int) -> dict:
    v = parse_variant(spec)
    cfg = dit_config(v["preset"], latent_channels=4, text_dim=384, patch=(1, 4, 4), pooled_text=True,
                     **v["overrides"])
    torch.manual_seed(0)
    model = DiT(cfg).to(device)
    params = sum(p.numel() for p in model.parameters())
    if v["compiled"]:
        for block in model.blocks:
            block.compile(dynamic=True)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    b, g = v["batch"], torch.Generator().manual_seed(1)
    mask = torch.ones(b, 32, dtype=torch.bool)
    mask[:, 20:] = False
    data = [d.to(device) for d in (torch.randn(b, cfg.in_channels, *grid, generator=g), torch.rand(b, generator=g),
                                   torch.randn(b, 32, 384, generator=g), mask, torch.randn(b, 4, *grid, generator=g))]
    t0 = time.perf_counter()
    first = step_time(model, opt, data, device, 1)[0]  # includes the compile
    step_time(model, opt, data, device, warmup)
    warm_s = time.perf_counter() - t0
    times = step_time(model, opt, data, device, iters)
    tokens = b * grid[0] * (grid[1] // 4) * (grid[2] // 4)
    med = statistics.median(times)
    del model, opt, data
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return {"variant": spec, "params": params, "params_m": round(params / 1e6, 1), "batch": b, "tokens": tokens,
            "compiled": v["compiled"], "first_step_s": round(first, 2), "warm_s": round(warm_s, 2),
            "median_s": med, "quartiles_s": statistics.quantiles(times, n=4) if len(times) > 1 else [med] * 3,
            "tflops": 6 * params * tokens / med / 1e12}


def table(rows: list[dict], loop_s: float) -> str:
    ref = rows[0]
    ref_steps = loop_s / ref["median_s"]
    lines = [f"| variant | params (M) | clips | median s/step | tokens/s | model TFLOP/s | compile+warm-up s | "
             f"steps in {loop_s:g} s | steps / ref | FLOPs / ref |", "|---" * 10 + "|"]
    for r in rows:
        steps = max(loop_s - (r["warm_s"] if r["compiled"] else 0.0), 0.0) / r["median_s"]
        flops = steps * r["params"] * r["tokens"] / (ref_steps * ref["params"] * ref["tokens"])
        lines.append(f"| {r['variant']} | {r['params_m']} | {r['batch']} | {r['median_s']:.4f} | "
                     f"{r['tokens'] / r['median_s']:,.0f} | {r['tflops']:.0f} | {r['warm_s']:.1f} | {steps:,.0f} | "
                     f"{steps / ref_steps:.2f} | {flops:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", default=";".join(DEFAULT_VARIANTS),
                   help="';'-separated PRESET[+hidden=H,depth=D,heads=N]@BATCH[:compiled]; the first is the reference")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps after the first")
    p.add_argument("--iters", type=int, default=20, help="timed steps per variant")
    p.add_argument("--loop-s", type=float, default=311.7, help="the DiT's budget in the loop (s)")
    p.add_argument("--budget-s", type=float, default=240.0, help="start no variant after this many seconds")
    p.add_argument("--out", default="", help="folder for bench_loop_dit.json")
    p.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU: checks the code paths only")
    a = p.parse_args(argv)
    specs = [s for s in a.variants.split(";") if s]
    for s in specs:
        parse_variant(s)  # every spec checked before any work
    device = torch.device("cpu" if a.smoke or not torch.cuda.is_available() else "cuda")
    grid = (2, 8, 8) if a.smoke else (5, 32, 32)
    if a.smoke:  # the code paths (parse, build, override, table), not the sizes
        specs = ["tiny@2", "tiny+hidden=32,heads=2@2"]
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    rows, skipped, t0 = [], [], time.perf_counter()
    for spec in specs:
        if time.perf_counter() - t0 > a.budget_s:
            skipped.append(spec)
            continue
        rows.append(run_variant(spec, device, grid, 1 if a.smoke else a.warmup, 2 if a.smoke else a.iters))
        print(f"[bench_loop_dit] {spec}: {rows[-1]['median_s']:.4f} s/step ({time.perf_counter() - t0:.0f} s)",
              flush=True)
        if a.out:
            Path(a.out).mkdir(parents=True, exist_ok=True)
            (Path(a.out) / "bench_loop_dit.json").write_text(json.dumps(
                {"device": name, "torch": torch.__version__, "rows": rows, "skipped": skipped}, indent=1))
    print(f"\nThe loop's DiT step, {grid} latent, (1, 4, 4) patches, bf16 autocast, {name}, "
          f"torch {torch.__version__}\n")
    print(table(rows, a.loop_s))
    if skipped:
        print(f"\nskipped (budget {a.budget_s:g} s spent): {', '.join(skipped)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""GPU benchmark of packed DiT training: mixed-shape packed rows vs a single-shape batch vs diffusers' Wan.

Run on one H100/H200:  python benchmarks/bench_pack.py --out OUT/bench_pack.json      (the table is printed last)
Smoke test on a CPU:    python benchmarks/bench_pack.py --smoke    (tiny sizes: checks the code paths, not speed)
Packer fill (any CPU):  python benchmarks/bench_pack.py --fill     (share of row slots holding clip tokens)

What is measured, and how:
- A training step is forward + backward + a fused AdamW step under bf16 autocast with fp32 master weights, random
  weights, one fixed batch, as ``benchmarks/bench_dit.py`` times it (its ``train_row``: CUDA events, median of
  ``iters`` steps after ``warmup``). Every variant runs ``rounds`` times, the variants alternating; the headline
  is the median of the round medians, with their spread.
- "single shape": the unpacked DiT on ``batch`` clips of one latent grid (a bucket batch).
- "packed <backend>": the first ``--rows`` rows of ``length`` tokens that ``train.packing.PackPlan`` fills from
  ``train.packing.shape_mix`` (native sizes of common sources, 20 % images, 1-129 frames, each clip at most
  ``max_clip`` tokens), each clip attending within itself (``model/packed.py``). tokens/s counts clip tokens only:
  padding is work that buys nothing.
- "wan": diffusers' ``WanTransformer3DModel`` with the same width, depth, heads, MLP, patch, text width and
  input channels at the single shape (the issue's peer), eager and regionally compiled like bench_dit.
- FLOPs: ``model.dit.forward_flops`` summed over the clips (attention is within a clip, so a packed row costs
  the sum of its clips), 3x for a step; MFU against 989.4 TFLOP/s (H100/H200 SXM bf16 dense).
The ratios printed last: packed / single-shape tokens/s (target >= 0.95) and single-shape / Wan compiled.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_dit import Row, free, sync, train_row  # noqa: E402
from model.dit import DiT, dit_config, forward_flops, pack_tokens  # noqa: E402
from model.packed import pack_layout, varlen_kernel  # noqa: E402
from train.packing import PackPlan, shape_mix  # noqa: E402


@dataclass(frozen=True)
class PackBenchConfig:
    preset: str = "1B"
    text_dim: int = 4096  # UMT5-XXL width, as Wan
    text_len: int = 512  # caption tokens per clip (all real)
    single: tuple[int, int, int] = (16, 64, 64)  # the single-shape latent grid (T', H, W): 16,384 tokens
    batch: int = 2  # single-shape clips per step (32,768 tokens)
    length: int = 32768  # tokens per packed row
    max_clip: int = 16384  # the packed clips' largest token count (the single shape's, so rows hold >= 2 clips)
    areas: tuple[int, ...] = (256 * 256, 384 * 384, 512 * 512)  # pixel areas of the packed clips (shape_mix)
    rows: int = 1
    backends: tuple[str, ...] = ("varlen", "flex", "split")  # packed attention backends to time
    modes: tuple[str, ...] = ("eager", "compiled")
    wan: bool = True
    rounds: int = 3
    warmup: int = 3
    iters: int = 10
    seed: int = 0
    peak_tflops: float = 989.4
    device: str = "cuda"
    budget_s: float = 420.0  # start no new variant after this many seconds
    out: str | None = None


def packed_batch(bc: PackBenchConfig, cfg, device: str):
    """One packed step's inputs: the first ``rows`` rows the packer makes from a realistic shape mix; returns the
    packed tokens, times, captions and mask (on ``device``), the rows' grids and the step's FLOPs."""
    shapes = shape_mix(4000, seed=bc.seed, max_tokens=bc.max_clip, areas=bc.areas, channels=cfg.latent_channels,
                       patch=cfg.patch)
    pt, ph, pw = cfg.patch
    grids = [(t // pt, h // ph, w // pw) for _, t, h, w in shapes]
    rows = PackPlan([a * b * c for a, b, c in grids], bc.length, bc.rows, bc.seed).batch(0)
    row_grids = [[grids[i] for i in row] for row in rows]
    k = sum(len(r) for r in rows)
    g = torch.Generator().manual_seed(bc.seed)
    clips = [torch.randn(cfg.in_channels, t * pt, h * ph, w * pw, generator=g) for row in row_grids for t, h, w in row]
    text = torch.randn(k, bc.text_len, bc.text_dim, generator=g)
    mask = torch.ones(k, bc.text_len, dtype=torch.bool)
    x = pack_tokens(clips, pack_layout(row_grids, bc.length, mask), cfg.patch)
    flops = 3 * sum(forward_flops(cfg, grid, bc.text_len) for row in row_grids for grid in row)
    return (x.to(device), torch.rand(k, generator=g).to(device), text.to(device), mask.to(device)), row_grids, flops


def main(bc: PackBenchConfig) -> dict:
    device = bc.device
    torch.manual_seed(0)
    torch._dynamo.config.cache_size_limit = 64
    cfg = dit_config(bc.preset, text_dim=bc.text_dim)
    grid = (bc.single[0] // cfg.patch[0], bc.single[1] // cfg.patch[1], bc.single[2] // cfg.patch[2])
    single_tokens = bc.batch * grid[0] * grid[1] * grid[2]
    single_flops = 3 * bc.batch * forward_flops(cfg, grid, bc.text_len)
    g = torch.Generator().manual_seed(bc.seed)
    x1 = torch.randn(bc.batch, cfg.in_channels, *bc.single, generator=g).to(device)
    t1 = torch.rand(bc.batch, generator=g).to(device)
    text1 = torch.randn(bc.batch, bc.text_len, bc.text_dim, generator=g).to(device)
    (xp, tp, textp, maskp), row_grids, packed_flops = packed_batch(bc, cfg, device)
    layouts = {b: pack_layout(row_grids, bc.length, maskp.cpu(), backend=b).to(device) for b in bc.backends}
    layout = pack_layout(row_grids, bc.length, maskp.cpu())
    info = dict(torch=torch.__version__, gpu=torch.cuda.get_device_name() if device.startswith("cuda") else "cpu",
                date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), preset=bc.preset, hidden=cfg.hidden,
                depth=cfg.depth, heads=cfg.heads, single=bc.single, batch=bc.batch, single_tokens=single_tokens,
                length=bc.length, rows=bc.rows, packed_clips=layout.num_clips, packed_tokens=sum(layout.tokens),
                packed_fill=layout.fill, packed_grids=[list(gr) for gr in layout.grids], text_len=bc.text_len,
                varlen_kernel=getattr(varlen_kernel(), "__module__", None))
    print(json.dumps(info), flush=True)
    timing = timing_config(bc)
    model = DiT(cfg).to(device)
    wan = None
    if bc.wan:
        from curate.compat import ensure_torchvision

        ensure_torchvision()  # diffusers imports torchvision through transformers/peft
        from diffusers import WanTransformer3DModel

        wan = WanTransformer3DModel(
            patch_size=cfg.patch, num_attention_heads=cfg.heads, attention_head_dim=cfg.head_dim,
            in_channels=cfg.in_channels, out_channels=cfg.latent_channels, text_dim=bc.text_dim,
            freq_dim=cfg.freq_dim, ffn_dim=cfg.mlp_hidden, num_layers=cfg.depth).to(device)
    rows: dict[str, list[Row]] = {}
    began = time.perf_counter()
    for mode in bc.modes:  # eager first; compiling changes the models in place
        if mode == "compiled":
            for block in model.blocks:
                block.compile()
            if wan is not None:
                wan.compile_repeated_blocks()
        variants = {f"single shape, {mode}": (model, lambda m: m(x1, t1, text1, None), single_flops, single_tokens)}
        for backend, lay in layouts.items():
            variants[f"packed {backend}, {mode}"] = (
                model, lambda m, lay=lay: m(xp, tp, textp, maskp, packed=lay), packed_flops, sum(lay.tokens))
        if wan is not None:
            variants[f"wan, {mode}"] = (wan, lambda m: m(x1, t1 * 1000, text1, return_dict=False)[0], single_flops,
                                        single_tokens)
        for r in range(bc.rounds):  # the variants alternate within each round
            for name, (m, call, flops, tokens) in variants.items():
                rows.setdefault(name, [])
                if time.perf_counter() - began > bc.budget_s:
                    print(f"skipped {name} round {r}: past the {bc.budget_s:.0f} s budget", flush=True)
                    continue
                try:
                    rows[name].append(train_row(f"{name} (round {r})", m, call, flops, tokens, timing))
                except Exception as exc:  # keep the other variants when one cannot run here
                    print(f"FAILED {name}: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}", flush=True)
                    rows[name].append(Row(name, note=f"failed: {type(exc).__name__}"))
                free(device)
    summary = summarise(rows)
    info["results"] = summary
    report(info, summary)
    if bc.out:
        Path(bc.out).write_text(json.dumps(info, indent=2))
    sync(device)
    return info


def timing_config(bc: PackBenchConfig):
    """The fields ``bench_dit.train_row`` reads."""
    from bench_dit import BenchConfig

    return BenchConfig(warmup=bc.warmup, iters=bc.iters, peak_tflops=bc.peak_tflops, device=bc.device)


def summarise(rows: dict[str, list[Row]]) -> list[dict]:
    """Per variant: the median over rounds of each round's median step, its spread, tokens/s and MFU."""
    out = []
    for name, rs in rows.items():
        ok = [r for r in rs if r.step_s == r.step_s]  # not NaN
        if not ok:
            out.append(dict(name=name, rounds=0, note=rs[0].note if rs else "not run"))
            continue
        steps = [r.step_s for r in ok]
        step = statistics.median(steps)
        k = steps.index(min(steps, key=lambda s: abs(s - step)))
        per = ok[k]
        out.append(dict(name=name, rounds=len(ok), step_s=step, step_min=min(steps), step_max=max(steps),
                        tokens_per_s=per.tokens_per_s * per.step_s / step, mfu=per.mfu * per.step_s / step,
                        peak_mem_gb=max(r.peak_mem_gb for r in ok), round_steps=steps))
    return out


def report(info: dict, summary: list[dict]) -> None:
    """The table, printed last, with the ratios the issue's targets name."""
    print(f"\n{info['gpu']}, torch {info['torch']}, {info['date']}; {info['preset']} (width {info['hidden']}, "
          f"depth {info['depth']}, heads {info['heads']}); single shape {tuple(info['single'])} x {info['batch']} = "
          f"{info['single_tokens']} tokens; packed: {info['rows']} row(s) of {info['length']}, "
          f"{info['packed_clips']} clips, {info['packed_tokens']} clip tokens ({100 * info['packed_fill']:.1f} % "
          f"fill); text {info['text_len']}")
    print("| variant | rounds | step ms (median, min-max) | tokens/s | MFU % | peak GiB |")
    print("|---|---|---|---|---|---|")
    by = {}
    for r in summary:
        if not r["rounds"]:
            print(f"| {r['name']} | 0 | {r['note']} | | | |")
            continue
        by[r["name"]] = r
        print(f"| {r['name']} | {r['rounds']} | {1e3 * r['step_s']:.1f} ({1e3 * r['step_min']:.1f}-"
              f"{1e3 * r['step_max']:.1f}) | {r['tokens_per_s']:.0f} | {100 * r['mfu']:.1f} | {r['peak_mem_gb']:.1f} |")
    for mode in ("eager", "compiled"):
        single = by.get(f"single shape, {mode}")
        for name, r in by.items():
            if single and name.startswith("packed") and name.endswith(mode):
                print(f"{name} / single shape: {r['tokens_per_s'] / single['tokens_per_s']:.3f}x tokens/s")
        wan = by.get(f"wan, {mode}")
        if single and wan:
            print(f"single shape / Wan ({mode}): {single['tokens_per_s'] / wan['tokens_per_s']:.3f}x tokens/s")


def fill_table(lengths: tuple[int, ...] = (8192, 16384, 32768, 65536), clips: int = 5000,
               seeds: tuple[int, ...] = (10, 11, 12)) -> list[dict]:
    """The packer's fill (clip tokens / row slots, epoch 0) on native and bucketed shape mixes of ``clips`` clips at
    most a row long, per row length; the median over ``seeds`` (mixes the tests and development never drew)."""
    out = []
    for bucketed in (False, True):
        for length in lengths:
            fills, bounds, clips_per_row = [], [], []
            for seed in seeds:
                shapes = shape_mix(clips, seed=seed, max_tokens=length, bucketed=bucketed)
                tokens = [t * (h // 2) * (w // 2) for _, t, h, w in shapes]
                plan = PackPlan(tokens, length, 1, seed)
                rows = plan.epoch_rows(0)
                fills.append(plan.fill(0))
                # no packer does better: clips over half a row need a row each, and rows hold at most `length`
                fewest = max(sum(t > length // 2 for t in tokens), -(-sum(tokens) // length))
                bounds.append(sum(tokens) / (fewest * length))
                clips_per_row.append(clips / len(rows))
            out.append(dict(mix="bucketed" if bucketed else "native", length=length, fill=statistics.median(fills),
                            fill_min=min(fills), fill_max=max(fills), bound=statistics.median(bounds),
                            clips_per_row=statistics.median(clips_per_row)))
    print("| shape mix | row tokens | fill % (median, min-max over mixes) | upper bound % | clips per row |")
    print("|---|---|---|---|---|")
    for r in out:
        print(f"| {r['mix']} | {r['length']} | {100 * r['fill']:.1f} ({100 * r['fill_min']:.1f}-"
              f"{100 * r['fill_max']:.1f}) | {100 * r['bound']:.1f} | {r['clips_per_row']:.1f} |")
    return out


def _csv(text: str) -> tuple[str, ...]:
    return tuple(v for v in text.split(",") if v)


def parse(argv: list[str] | None = None) -> PackBenchConfig | None:
    """The benchmark's config; None for ``--fill``."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="1B")
    p.add_argument("--single", default="16,64,64", help="T',H,W of the single-shape latent")
    p.add_argument("--batch", type=int, default=2, help="single-shape clips per step")
    p.add_argument("--length", type=int, default=32768, help="tokens per packed row")
    p.add_argument("--max-clip", type=int, default=16384, help="the packed clips' largest token count")
    p.add_argument("--rows", type=int, default=1)
    p.add_argument("--backends", default="varlen,flex,split", help="packed attention backends (model/packed.py)")
    p.add_argument("--modes", default="eager,compiled")
    p.add_argument("--no-wan", action="store_true", help="skip diffusers' WanTransformer3DModel")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--budget-s", type=float, default=420.0)
    p.add_argument("--out", default=None)
    p.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU: checks code paths, not speed")
    p.add_argument("--fill", action="store_true", help="only the packer's fill on shape mixes (CPU, seconds)")
    a = p.parse_args(argv)
    if a.fill:
        return None
    if a.smoke:
        return PackBenchConfig(preset="tiny", text_dim=32, text_len=8, single=(2, 8, 8), batch=2, length=128,
                               max_clip=64, areas=(32 * 32, 48 * 48, 64 * 64), rows=1, backends=("sdpa", "split"),
                               modes=("eager",), wan=False, rounds=1, warmup=1, iters=2, device="cpu", out=a.out)
    single = tuple(int(v) for v in a.single.split(","))
    if len(single) != 3:
        p.error(f"--single needs T',H,W, got {a.single!r}")
    return PackBenchConfig(preset=a.preset, single=single, batch=a.batch, length=a.length, max_clip=a.max_clip,
                           rows=a.rows,
                           backends=_csv(a.backends), modes=_csv(a.modes), wan=not a.no_wan, rounds=a.rounds,
                           iters=a.iters, budget_s=a.budget_s, out=a.out)


if __name__ == "__main__":
    config = parse()
    fill_table() if config is None else main(config)

"""GPU benchmark of the DiT: training MFU, tokens/s against diffusers' WanTransformer3DModel, sampling time.

Run on one H100/H200:  python benchmarks/bench_dit.py            (a table is printed last; JSON to --out)
Smoke test on a CPU:    python benchmarks/bench_dit.py --smoke    (tiny sizes, checks the code paths only)

What is measured, and how:
- A training step is forward + backward + a fused AdamW step, fp32 master weights under bf16 autocast, one
  fixed random batch (random weights), timed with CUDA events over ``iters`` steps after ``warmup`` steps;
  the median step time is reported.
- Model FLOPs are counted analytically (``model.dit.forward_flops``): 2 FLOPs per multiply-add of every
  linear layer, plus attention's QK^T and AV (4 N^2 D per block for self-attention, 4 N L D for
  cross-attention); a training step is 3x the forward. Recomputation is not counted (none is used here).
  MFU = model FLOPs / step time / peak dense bf16 rate (989.4 TFLOP/s for H100/H200 SXM, the datasheet; the
  measured 8192^3 bf16 matmul rate is printed beside it as a practical ceiling).
- The Wan baseline is ``WanTransformer3DModel`` with the same width (heads x head_dim), depth, heads, MLP
  width, patch, text width and input channels, random weights, the same inputs, precision and optimizer, in
  the same process. Both run eager and both with regional compilation (each block compiled; diffusers'
  ``compile_repeated_blocks`` for Wan). Its FLOPs are counted with the same formula (same architecture).
- FP8 (modes ``fp8-rowwise``, ``fp8-tensorwise``): torchao's float8 training on the linear layers of the blocks,
  compiled per block; FLOPs counted as for bf16, so its "MFU" is against the bf16 peak (a speed ratio).
- Sampling: ``model.flow.denoise`` (Euler, classifier-free guidance = batch of 2) for fixed shapes, seconds
  per video after one warm-up video.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.conditioning import text_to_video  # noqa: E402
from model.dit import DiT, DiTConfig, count_parameters, dit_config, forward_flops  # noqa: E402
from model.flow import Flow, denoise  # noqa: E402


@dataclass(frozen=True)
class BenchConfig:
    preset: str = "1B"
    text_dim: int = 4096  # UMT5-XXL width, as Wan
    latent: tuple[int, int, int] = (16, 64, 64)  # (T', H, W): 61 frames at 512x512 -> 16384 tokens
    batch: int = 1
    text_len: int = 512
    warmup: int = 3
    iters: int = 10
    modes: tuple[str, ...] = ("eager", "compiled")  # Tessera DiT: eager and/or regionally compiled
    wan_modes: tuple[str, ...] = ("eager", "compiled")  # the same for diffusers' Wan ("" to skip)
    masked: bool = True  # also time the compiled DiT with a padded caption (half the text tokens masked)
    sample_shapes: tuple[tuple[int, int, int], ...] = ((16, 64, 64), (9, 32, 32))  # 512^2 x 61 f, 256^2 x 33 f
    sample_steps: int = 30
    cfg_scale: float = 5.0
    profile: bool = False  # print the top CUDA kernels of two compiled training steps
    peak_tflops: float = 989.4
    device: str = "cuda"
    out: str | None = None
    budget_s: float = 330.0  # start no new variant after this many seconds (the device lease is short)


# ------------------------------------------------------------------------------------------------ helpers


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, warmup: int, iters: int, device: str) -> list[float]:
    """Seconds per call of fn, each timed separately (CUDA events on GPU), after warm-up calls."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(iters):
        if device.startswith("cuda"):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return times


def matmul_tflops(device: str) -> float | None:
    """Measured dense bf16 matmul rate (8192^3, random data), the practical ceiling."""
    if not device.startswith("cuda"):
        return None
    a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    t = statistics.median(timed(lambda: a @ b, 3, 10, device))
    return 2 * 8192**3 / t / 1e12


def pick_sdpa_backend(cfg: DiTConfig, tokens: int, device: str) -> str:
    """Time SDPA forward+backward at the benchmark's shape with flash vs cuDNN; keep the faster on."""
    if not device.startswith("cuda"):
        return "default"
    from torch.nn.attention import SDPBackend, sdpa_kernel

    q, k, v = (torch.randn(1, cfg.heads, tokens, cfg.head_dim, device=device, dtype=torch.bfloat16,
                           requires_grad=True) for _ in range(3))
    flops = 3 * 4 * tokens * tokens * cfg.hidden
    results = {}
    for name, backend in (("flash", SDPBackend.FLASH_ATTENTION), ("cudnn", SDPBackend.CUDNN_ATTENTION)):
        def run():
            with sdpa_kernel([backend]):
                torch.nn.functional.scaled_dot_product_attention(q, k, v).sum().backward()
        try:
            results[name] = statistics.median(timed(run, 2, 5, device))
        except RuntimeError as exc:  # backend unavailable for this shape / build
            print(f"sdpa {name}: unavailable ({str(exc).splitlines()[0][:100]})")
    for name, t in results.items():
        print(f"sdpa {name}: fwd+bwd {t * 1e3:.2f} ms  {flops / t / 1e12:.0f} TFLOP/s")
    best = min(results, key=results.get)
    if best == "cudnn":  # flash off, so the dispatcher picks cuDNN where it supports the call
        torch.backends.cuda.enable_flash_sdp(False)
    return best


@dataclass
class Row:
    name: str
    step_s: float = float("nan")
    tokens_per_s: float = float("nan")
    tflops: float = float("nan")
    mfu: float = float("nan")
    peak_mem_gb: float = float("nan")
    note: str = ""
    times: list = field(default_factory=list)


def train_row(name: str, model: torch.nn.Module, call, flops_per_step: float, tokens: int, bc: BenchConfig) -> Row:
    """Median training-step time of ``call(model) -> prediction`` with an MSE loss and fused AdamW."""
    device = bc.device
    target = None
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=device.startswith("cuda"))

    def step():
        nonlocal target
        with torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16):
            pred = call(model)
        if target is None:
            target = torch.randn_like(pred, dtype=torch.float32)
        loss = torch.nn.functional.mse_loss(pred.float(), target)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    t_compile = time.perf_counter()
    step()  # first call: compilation, if any
    sync(device)
    first = time.perf_counter() - t_compile
    times = timed(step, bc.warmup, bc.iters, device)
    t = statistics.median(times)
    mem = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else float("nan")
    tf = flops_per_step / t / 1e12
    row = Row(name, t, tokens / t, tf, tf / bc.peak_tflops, mem, f"first step {first:.1f} s", times)
    print(f"{name:<28} step {t * 1e3:8.1f} ms  {tokens / t:9.0f} tok/s  {tf:6.1f} TFLOP/s  MFU {100 * row.mfu:5.1f} %"
          f"  mem {mem:5.1f} GiB  ({row.note})", flush=True)
    del opt
    return row


def fp8_dit(cfg: DiTConfig, recipe: str, device: str) -> torch.nn.Module:
    """A fresh DiT whose transformer blocks' linear layers run their three matmuls in float8 (torchao's float8
    training, ``recipe`` "rowwise" or "tensorwise" scaling; weights and optimizer stay fp32/bf16 as in bf16
    training), each block compiled. Layers outside the blocks (embedders, final layer) stay bf16: they are a small
    share of the FLOPs and sensitive to precision."""
    from torchao.float8 import Float8LinearConfig, convert_to_float8_training

    torch.manual_seed(0)
    model = DiT(cfg).to(device)

    def in_blocks(module: torch.nn.Module, name: str) -> bool:
        # Left in bf16: cross-attention's key/value projection, which runs on the caption's tokens (512 + a pooled
        # one; float8's weight-gradient matmul needs a token count divisible by 16), and the adaLN projections
        # (``.ada.``), which run on one row per sample (their backward came out column-major and failed on an H100,
        # 2026-12-05). Both are a small share of the FLOPs.
        return (name.startswith("blocks.") and isinstance(module, torch.nn.Linear) and not name.endswith("cross.kv")
                and ".ada." not in name and module.in_features % 16 == 0 and module.out_features % 16 == 0)

    convert_to_float8_training(model, config=Float8LinearConfig.from_recipe_name(recipe), module_filter_fn=in_blocks)
    for block in model.blocks:
        block.compile()
    return model


def free(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


# ------------------------------------------------------------------------------------------------ main


def main(bc: BenchConfig) -> dict:
    device = bc.device
    torch.manual_seed(0)
    # one static graph per shape: an automatic dynamic-shape recompile would time slower generic kernels
    torch._dynamo.config.automatic_dynamic_shapes = False
    torch._dynamo.config.cache_size_limit = 64
    cfg = dit_config(bc.preset, text_dim=bc.text_dim)
    grid = (bc.latent[0] // cfg.patch[0], bc.latent[1] // cfg.patch[1], bc.latent[2] // cfg.patch[2])
    tokens_per_sample = grid[0] * grid[1] * grid[2]
    tokens = bc.batch * tokens_per_sample
    flops = 3 * bc.batch * forward_flops(cfg, grid, bc.text_len)
    info = dict(
        torch=torch.__version__,
        gpu=torch.cuda.get_device_name() if device.startswith("cuda") else "cpu",
        date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        preset=bc.preset, params=count_parameters(cfg), hidden=cfg.hidden, depth=cfg.depth, heads=cfg.heads,
        latent=bc.latent, tokens_per_sample=tokens_per_sample, batch=bc.batch, text_len=bc.text_len,
        train_tflop_per_step=flops / 1e12,
    )
    print(json.dumps(info), flush=True)
    info["matmul_tflops"] = matmul_tflops(device)
    print(f"bf16 matmul 8192^3: {info['matmul_tflops']} TFLOP/s", flush=True)
    info["sdpa_backend"] = pick_sdpa_backend(cfg, tokens_per_sample, device)

    g = torch.Generator().manual_seed(0)
    x = torch.randn(bc.batch, cfg.in_channels, *bc.latent, generator=g).to(device)
    t = torch.rand(bc.batch, generator=g).to(device)
    text = torch.randn(bc.batch, bc.text_len, bc.text_dim, generator=g).to(device)
    mask = torch.zeros(bc.batch, bc.text_len, dtype=torch.bool, device=device)
    mask[:, : bc.text_len // 2] = True  # a padded caption
    rows: list[Row] = []
    began = time.perf_counter()

    def guard(name: str, fn) -> None:
        if time.perf_counter() - began > bc.budget_s:
            print(f"skipped {name}: past the {bc.budget_s:.0f} s budget", flush=True)
            return
        try:
            fn()
        except Exception as exc:  # keep the other measurements when one variant fails
            print(f"FAILED {name}: {type(exc).__name__}: {str(exc)[:300]}", flush=True)
            rows.append(Row(name, note=f"failed: {type(exc).__name__}"))
        free(device)

    # 1. Tessera DiT, eager then regionally compiled (each block compiled; one graph serves all blocks)
    model = DiT(cfg).to(device)
    ours = lambda m: m(x, t, text, None)  # noqa: E731
    if "eager" in bc.modes:
        guard("tessera eager", lambda: rows.append(train_row("tessera eager", model, ours, flops, tokens, bc)))
    if "compiled" in bc.modes:
        for block in model.blocks:
            block.compile()
        guard("tessera compiled", lambda: rows.append(train_row("tessera compiled", model, ours, flops, tokens, bc)))
        if bc.masked:
            guard("tessera compiled, text mask", lambda: rows.append(train_row(
                "tessera compiled, text mask", model, lambda m: m(x, t, text, mask), flops, tokens, bc)))
        if bc.profile:
            guard("profile", lambda: profile(model, ours, device))
    for mode in bc.modes:  # FP8 matmuls in the blocks' linear layers (torchao float8 training), compiled per block
        if mode.startswith("fp8-"):
            def fp8_row(mode=mode):
                fp8 = fp8_dit(cfg, mode.removeprefix("fp8-"), device)
                rows.append(train_row(f"tessera compiled {mode}", fp8, ours, flops, tokens, bc))
            guard(f"tessera {mode}", fp8_row)

    # 2. diffusers WanTransformer3DModel with equal width, depth, heads (and MLP, patch, text width, channels)
    if bc.wan_modes:
        from curate.compat import ensure_torchvision

        ensure_torchvision()  # diffusers imports torchvision through transformers/peft
        from diffusers import WanTransformer3DModel

        wan = WanTransformer3DModel(
            patch_size=cfg.patch, num_attention_heads=cfg.heads, attention_head_dim=cfg.head_dim,
            in_channels=cfg.in_channels, out_channels=cfg.latent_channels, text_dim=bc.text_dim,
            freq_dim=cfg.freq_dim, ffn_dim=cfg.mlp_hidden, num_layers=cfg.depth,
        ).to(device)
        info["wan_params"] = sum(p.numel() for p in wan.parameters())
        wan_call = lambda m: m(x, t * 1000, text, return_dict=False)[0]  # noqa: E731
        if "eager" in bc.wan_modes:
            guard("wan eager", lambda: rows.append(train_row("wan eager", wan, wan_call, flops, tokens, bc)))
        if "compiled" in bc.wan_modes:
            wan.compile_repeated_blocks()
            guard("wan compiled", lambda: rows.append(train_row("wan compiled", wan, wan_call, flops, tokens, bc)))
        del wan
        free(device)

    # 3. Sampling seconds per video (the model as last used, under autocast, Euler, CFG batch of 2)
    flow = Flow(model.eval())
    for shape in bc.sample_shapes:
        guard(f"sample {shape}", lambda: rows.append(sample_row(flow, shape, text, bc)))
    del model, flow
    free(device)

    by = {r.name: r for r in rows}
    for mode in ("eager", "compiled"):
        a, b = by.get(f"tessera {mode}"), by.get(f"wan {mode}")
        if a and b:
            info[f"speedup_vs_wan_{mode}"] = a.tokens_per_s / b.tokens_per_s
    info["rows"] = [asdict(r) for r in rows]
    report(info, rows, bc)
    if bc.out:
        Path(bc.out).write_text(json.dumps(info, indent=2))
    return info


def sample_row(flow: Flow, shape: tuple[int, int, int], text: torch.Tensor, bc: BenchConfig) -> Row:
    """Seconds for one video of latent ``shape`` after one warm-up video."""
    cfg = flow.model.cfg
    cond = text_to_video(1, cfg.latent_channels, *shape).to(bc.device)
    emb, emb_mask = text[:1], torch.ones(1, bc.text_len, dtype=torch.bool, device=bc.device)

    def video():
        with torch.autocast(device_type=bc.device.split(":")[0], dtype=torch.bfloat16):
            return denoise(flow, None, cond, emb, emb_mask, steps=bc.sample_steps, cfg_scale=bc.cfg_scale)

    s = statistics.median(timed(video, 1, 1, bc.device))
    n = (shape[0] // cfg.patch[0]) * (shape[1] // cfg.patch[1]) * (shape[2] // cfg.patch[2])
    row = Row(f"sample {shape} {n} tok", step_s=s, note=f"{bc.sample_steps} Euler steps, cfg {bc.cfg_scale}")
    print(f"{row.name:<28} {s:6.2f} s/video ({bc.sample_steps} steps, CFG)", flush=True)
    return row


def profile(model: torch.nn.Module, call, device: str) -> None:
    """Top CUDA kernels of two training steps (forward + backward), to see where time goes."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    cuda = device.startswith("cuda")
    with torch_profile(activities=[ProfilerActivity.CUDA if cuda else ProfilerActivity.CPU]) as prof:
        for _ in range(2):
            with torch.autocast(device_type="cuda" if cuda else "cpu", dtype=torch.bfloat16):
                out = call(model)
            out.float().square().mean().backward()
        sync(device)
    model.zero_grad(set_to_none=True)
    print(prof.key_averages().table(sort_by="cuda_time_total" if cuda else "cpu_time_total", row_limit=15, max_name_column_width=60), flush=True)


def report(info: dict, rows: list[Row], bc: BenchConfig) -> None:
    """The table, printed last."""
    print(f"\n{info['gpu']}, torch {info['torch']}, {info['date']}; {bc.preset}: {info['params'] / 1e9:.3f} B params, "
          f"latent {bc.latent} = {info['tokens_per_sample']} tokens/sample x batch {bc.batch}, text {bc.text_len}; "
          f"SDPA {info['sdpa_backend']}; bf16 matmul {info['matmul_tflops']} TFLOP/s")
    print(f"| {'variant':<28} | step ms | tokens/s | TFLOP/s | MFU % | peak GiB |")
    print("|" + "-" * 30 + "|---------|----------|---------|-------|----------|")
    for r in rows:
        if not r.name.startswith("sample"):
            print(f"| {r.name:<28} | {r.step_s * 1e3:7.1f} | {r.tokens_per_s:8.0f} | {r.tflops:7.1f} "
                  f"| {100 * r.mfu:5.1f} | {r.peak_mem_gb:8.1f} |")
    for r in rows:
        if r.name.startswith("sample"):
            print(f"{r.name}: {r.step_s:.2f} s/video ({r.note})")
    for mode in ("eager", "compiled"):
        if f"speedup_vs_wan_{mode}" in info:
            print(f"tokens/s vs Wan ({mode}): {info[f'speedup_vs_wan_{mode}']:.2f}x")


def _modes(text: str) -> tuple[str, ...]:
    return tuple(m for m in text.split(",") if m)


def parse(argv: list[str] | None = None) -> BenchConfig:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="1B")
    p.add_argument("--latent", default="16,64,64", help="T',H,W of the latent (tokens = T' H W / 4)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--modes", default="eager,compiled",
                   help="Tessera DiT modes: eager,compiled,fp8-rowwise,fp8-tensorwise (fp8: torchao, compiled)")
    p.add_argument("--wan-modes", default="eager,compiled", help="Wan modes; empty to skip Wan")
    p.add_argument("--no-mask", action="store_true", help="skip the padded-caption variant")
    p.add_argument("--no-sample", action="store_true", help="skip the sampling timings")
    p.add_argument("--profile", action="store_true")
    p.add_argument("--budget-s", type=float, default=330.0)
    p.add_argument("--out", default=None)
    p.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU: checks code paths, not speed")
    a = p.parse_args(argv)
    if a.smoke:
        return BenchConfig(preset="tiny", text_dim=32, latent=(3, 8, 8), text_len=8, warmup=1, iters=2,
                           modes=("eager",), wan_modes=_modes(a.wan_modes.replace("compiled", "")), masked=False,
                           sample_shapes=((2, 4, 4),), sample_steps=2, device="cpu", out=a.out)
    return BenchConfig(preset=a.preset, latent=tuple(int(v) for v in a.latent.split(",")), batch=a.batch,
                       iters=a.iters, modes=_modes(a.modes), wan_modes=_modes(a.wan_modes), masked=not a.no_mask,
                       sample_shapes=() if a.no_sample else BenchConfig.sample_shapes, profile=a.profile,
                       budget_s=a.budget_s, out=a.out)


if __name__ == "__main__":
    main(parse())

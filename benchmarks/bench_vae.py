"""Encode + decode time and peak memory: our VAE against diffusers' CogVideoX and Wan VAEs.

    python benchmarks/bench_vae.py --out bench_vae.json                 # GPU, bf16, both default shapes
    python benchmarks/bench_vae.py --device cpu --shapes 9x64x64 --reps 1 --ours tiny --peers ''   # smoke

All models take the same random input (uniform in [-1, 1], batch 1, bf16 weights and activations) in one
process. Peers are built from their default diffusers configs with random weights and run through their own
``encode(x).latent_dist.mode()`` / ``decode(z).sample`` paths (their built-in frame batching / feature
caches, tiling off, as the defaults have it). Ours runs whole-clip (``encode`` / ``decode``) and chunked
(``encode_chunked`` / ``decode_chunked``, memory bounded by the chunk). Time: CUDA events around
encode + decode, one warm-up, median of ``--reps``. Memory: ``torch.cuda.max_memory_allocated`` during the
timed runs (``peak_gib``, steady state, weights and input included) and during the warm-up
(``peak_warmup_gib``: cuDNN autotuning tries large workspaces on the first call of each shape, for every
model alike). Chunked modes are ``ENC/DEC``: encoder chunks of ENC frames (the first ENC + 1), decoder chunks
of DEC latent frames. Also checks on the device, in fp32 with TF32 off, that chunked equals whole for our
model under three convolution settings (``--exact_modes``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from model.vae import PRESETS, VideoVAE, num_params  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_run(fn: Callable[[], torch.Tensor], device: torch.device, reps: int, budget_s: float) -> dict:
    """Warm up once, then time up to ``reps`` runs (fewer when one run exceeds the time budget)."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    out = fn()
    _sync(device)
    warm = time.perf_counter() - t0
    shape = tuple(out.shape)
    finite = bool(torch.isfinite(out).all())
    del out
    peak_warm = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    if device.type == "cuda":  # steady state: cuDNN autotuning (first call per shape) tries large workspaces
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    n = reps if warm * reps < budget_s else max(1, int(budget_s // max(warm, 1e-3)))
    for _ in range(n):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            out = fn()
            end.record()
            torch.cuda.synchronize(device)
            times.append(start.elapsed_time(end) / 1000)
        else:
            t0 = time.perf_counter()
            out = fn()
            times.append(time.perf_counter() - t0)
        del out
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    return {"time_s": statistics.median(times), "times_s": times, "warmup_s": warm, "peak_gib": peak,
            "peak_warmup_gib": peak_warm, "out_shape": shape, "finite": finite}


def build_peers(device: torch.device, dtype: torch.dtype) -> dict[str, torch.nn.Module]:
    try:
        from curate.compat import ensure_torchvision  # CPU machines with a mismatched torchvision

        ensure_torchvision()
    except ImportError:
        pass
    from diffusers import AutoencoderKLCogVideoX, AutoencoderKLWan

    torch.manual_seed(0)
    return {"cogvideox": AutoencoderKLCogVideoX(), "wan2.1": AutoencoderKLWan()}


EXACT_MODES = ("deterministic", "autotune", "no_cudnn", "deterministic+fp32norm")


def check_chunked_exact(preset: str, device: torch.device, mode: str = "deterministic") -> dict:
    """fp32, TF32 off: max |whole - chunked| for latents and pixels at 17x64x64 (random-init model, 4-frame
    encoder chunks, 1-latent decoder chunks).

    ``mode`` picks how convolutions run: ``autotune`` (cuDNN benchmark on: each chunk shape may get its own
    algorithm, so its own rounding), ``deterministic`` (``cudnn.deterministic``, benchmark off: deterministic
    algorithms picked by heuristics), ``no_cudnn`` (PyTorch's own im2col + GEMM convolutions). A ``+fp32norm``
    suffix turns off the norm's fp64 accumulation (``ChannelRMSNorm.FP64_ACCUMULATE``), for comparison.
    """
    from model.vae import ChannelRMSNorm

    mode, _, norm = mode.partition("+")
    saved_norm, ChannelRMSNorm.FP64_ACCUMULATE = ChannelRMSNorm.FP64_ACCUMULATE, norm != "fp32norm"
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark,
             torch.backends.cudnn.deterministic, torch.backends.cudnn.enabled)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.benchmark = mode == "autotune"
    torch.backends.cudnn.deterministic = mode == "deterministic"
    torch.backends.cudnn.enabled = mode != "no_cudnn"
    try:
        torch.manual_seed(0)
        m = VideoVAE(PRESETS[preset]).to(device).eval()
        with torch.no_grad():
            for p in m.parameters():
                p.add_(0.02 * torch.randn_like(p))
            x = torch.rand(1, 3, 17, 64, 64, device=device) * 2 - 1
            z = m.encode(x).mean
            zc = m.encode_chunked(x, chunk_frames=4).mean
            y = m.decode(z)
            yc = m.decode_chunked(z, chunk_latents=1)
    finally:
        (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark,
         torch.backends.cudnn.deterministic, torch.backends.cudnn.enabled) = saved
        ChannelRMSNorm.FP64_ACCUMULATE = saved_norm
    return {"mode": mode + ("+" + norm if norm else ""), "latent_max_abs": float((z - zc).abs().max()), "pixel_max_abs": float((y - yc).abs().max()),
            "latent_mean_abs": float(z.abs().mean()), "pixel_mean_abs": float(y.abs().mean())}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default="33x256x256,49x480x848", help="TxHxW list")
    ap.add_argument("--ours", default="base,small", help="our presets to time")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--budget_s", type=float, default=25.0, help="max seconds of timed runs per model and shape")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--peers", default="cogvideox,wan2.1", help="peers to time; empty for none")
    ap.add_argument("--channels_last", action="store_true", help="also time ours in channels_last_3d")
    ap.add_argument("--chunks", default="4/1", help="chunked modes to time: ENC_FRAMES/DEC_LATENTS list")
    ap.add_argument("--heuristic", action="store_true", help="also time the first chunked mode with cuDNN "
                    "autotuning off (heuristic algorithms, usually smaller workspaces)")
    ap.add_argument("--exact_modes", default=",".join(EXACT_MODES), help="GPU chunked == whole checks to run")
    ap.add_argument("--upsample_elems", type=int, default=0,
                    help="override model.vae.Upsample.UPSAMPLE_ELEMS (elements per upsampled slice at inference)")
    ap.add_argument("--out", default="")
    args = ap.parse_args(argv)
    if args.upsample_elems:
        from model.vae import Upsample

        Upsample.UPSAMPLE_ELEMS = args.upsample_elems
    device = torch.device(args.device)
    dtype = torch.bfloat16
    torch.backends.cudnn.benchmark = True
    env = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "torch": torch.__version__,
           "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
           "cudnn": torch.backends.cudnn.version() if device.type == "cuda" else None}
    print(json.dumps(env), flush=True)
    results: dict = {"env": env, "rows": []}
    if device.type == "cuda" and args.exact_modes:
        results["chunked_exact_fp32"] = [check_chunked_exact(args.ours.split(",")[0], device, mode)
                                         for mode in args.exact_modes.split(",")]
        for r in results["chunked_exact_fp32"]:
            print("chunked vs whole (fp32):", json.dumps(r), flush=True)

    def chunked(e: int, d: int) -> Callable:
        return lambda m, x: m.decode_chunked(m.encode_chunked(x, e).mode(), d)

    models: dict[str, tuple[torch.nn.Module, Callable]] = {}
    chunk_modes = [tuple(int(v) for v in c.split("/")) for c in args.chunks.split(",") if c]
    for preset in args.ours.split(","):
        torch.manual_seed(0)
        m = VideoVAE(PRESETS[preset]).eval()
        models[f"ours-{preset}"] = (m, lambda m, x: m.decode(m.encode(x).mode()))
        for e, d in chunk_modes:
            models[f"ours-{preset}-chunked-{e}/{d}"] = (m, chunked(e, d))
        if args.heuristic and chunk_modes:
            e, d = chunk_modes[0]
            models[f"ours-{preset}-chunked-{e}/{d}-heuristic"] = (m, chunked(e, d))
        if args.channels_last:
            models[f"ours-{preset}-cl3d"] = (m, lambda m, x: m.decode(m.encode(x.contiguous(
                memory_format=torch.channels_last_3d)).mode()))
    if args.peers:
        peers = build_peers(device, dtype)
        for name in args.peers.split(","):
            models[name] = (peers[name], lambda m, x: m.decode(m.encode(x).latent_dist.mode()).sample)

    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    for name, (model, fn) in models.items():
        try:
            model.to(device=device, dtype=dtype)
            if name.endswith("cl3d"):
                for mod in model.modules():
                    if isinstance(mod, torch.nn.Conv3d):
                        mod.weight.data = mod.weight.data.contiguous(memory_format=torch.channels_last_3d)
        except Exception as e:  # noqa: BLE001 - a benchmark row, not a crash
            print(json.dumps({"model": name, "error": repr(e)[:200]}), flush=True)
            continue
        params = num_params(model)
        for t, h, w in shapes:
            gen = torch.Generator(device="cpu").manual_seed(t * h * w)
            x = (torch.rand(1, 3, t, h, w, generator=gen) * 2 - 1).to(device, dtype)
            row = {"model": name, "shape": f"{t}x{h}x{w}", "params_m": params / 1e6}
            torch.backends.cudnn.benchmark = not name.endswith("-heuristic")
            try:
                with torch.inference_mode():
                    row.update(time_run(lambda: fn(model, x), device, args.reps, args.budget_s))
            except Exception as e:  # noqa: BLE001 - OOM or a failing variant: report it, keep going
                row.update({"error": repr(e)[:160]})
            torch.backends.cudnn.benchmark = True
            print(json.dumps(row), flush=True)
            results["rows"].append(row)
            del x
            gc.collect()
        model.to("cpu", dtype=torch.float32)
        if device.type == "cuda":
            torch.cuda.empty_cache()

    # ratio table: ours vs the faster peer per shape
    print("\n| shape | model | params (M) | enc+dec (s) | peak (GiB) | warm-up peak (GiB) | speed-up vs faster peer "
          "| mem vs that peer |")
    print("|---|---|---|---|---|---|---|---|")
    for t, h, w in shapes:
        shape = f"{t}x{h}x{w}"
        rows = [r for r in results["rows"] if r["shape"] == shape and "time_s" in r]
        peers = [r for r in rows if not r["model"].startswith("ours")]
        best = min(peers, key=lambda r: r["time_s"]) if peers else None
        for r in rows:
            ratio = f"{best['time_s'] / r['time_s']:.2f}x ({best['model']})" if best else "-"
            mem = f"{r['peak_gib'] / best['peak_gib']:.2f}" if best else "-"
            print(f"| {shape} | {r['model']} | {r['params_m']:.1f} | {r['time_s']:.3f} | {r['peak_gib']:.2f} | "
                  f"{r['peak_warmup_gib']:.2f} | {ratio} | {mem} |")
        for r in results["rows"]:
            if r["shape"] == shape and "error" in r:
                print(f"| {shape} | {r['model']} | {r['params_m']:.1f} | {r['error'][:40]} | | | | |")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()

"""A CPU-sized toy of the GPU loop's noise-schedule question: does a strong time shift cost shape, and does a
uniform share of training times give it back?

    python benchmarks/probe_schedule_toy.py [--clips 2048] [--steps 1500] [--out OUT]
    python benchmarks/probe_schedule_toy.py --smoke          # seconds: checks the code paths only

No VAE: the "latents" are the pixels themselves. Clips of the eval vocabulary (6 colours x 4 shapes x 4 motions,
minus the held-out colour-shape pairs of ``ComboSplit.default(0)``) are rendered at 32 x 32, 17 frames, and every
4th frame is kept, so a clip is a 3 x 5 x 32 x 32 grid; with (1, 4, 4) patches that is 320 tokens per clip, the
token grid of the GPU loop (5 x 8 x 8), each token 4 x 4 px. A small DiT (hidden 128, depth 4) trains
text-to-video on it once per schedule, with the same initial weights, batches and seeds; the EMA weights then
generate the 112 eval prompts (20 Euler steps, CFG 5) and ``curate.detect`` reads colour, shape and motion back,
beside its reading of the ground-truth clips at the same size (the ceiling). Schedules (``--schedules``):
``shift1`` (logit-normal, no shift), ``shift3`` (``FlowConfig.shift_scale=3``, the GPU profile's) and
``shift3+u0.3`` (the same with ``uniform_share=0.3``).

What it can and cannot say: pixels are not a VAE's latents, and the model is 300x smaller than the GPU run's, so
only the *direction* of a difference between schedules here is evidence for the GPU run, not its size.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from curate import detect as det  # noqa: E402
from curate import synth  # noqa: E402
from model.conditioning import TaskMix, text_to_video  # noqa: E402
from model.dit import DiT, dit_config  # noqa: E402
from model.ema import EMA  # noqa: E402
from model.flow import Flow, FlowConfig, denoise  # noqa: E402
from model.text import TextConfig, TextEncoder  # noqa: E402

SCHEDULES = {"shift1": (1.0, 0.0), "shift3": (3.0, 0.0), "shift3+u0.3": (3.0, 0.3)}
KEEP = slice(0, 17, 4)  # frames 0, 4, 8, 12, 16


def render(n: int, size: int, split: synth.ComboSplit, seed: int) -> tuple[np.ndarray, list[str]]:
    """n training clips (n, 5, size, size, 3) uint8 and their captions; held-out pairs never appear."""
    vocab = [t for t in split.triples(False)]
    clips, captions = [], []
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        shot = synth.random_shot(rng, vocab[int(rng.integers(len(vocab)))], 17)
        clips.append(synth.render_clip(shot, (size, size), seed=int(rng.integers(1 << 30)))[KEEP])
        captions.append(shot.caption)
    return np.stack(clips), captions


def to_latent(clips: np.ndarray, mean: float, std: float) -> torch.Tensor:
    """uint8 (N, T, H, W, 3) -> normalised float (N, 3, T, H, W)."""
    return (torch.from_numpy(clips).permute(0, 4, 1, 2, 3).float() / 127.5 - 1.0 - mean) / std


def to_frames(x: torch.Tensor, mean: float, std: float) -> np.ndarray:
    """Inverse of ``to_latent``: (N, 3, T, H, W) -> uint8 (N, T, H, W, 3)."""
    x = ((x * std + mean + 1.0) * 127.5).clamp(0, 255).round().to(torch.uint8)
    return x.permute(0, 2, 3, 4, 1).numpy()


def accuracy(found: list[dict], prompts: list[dict]) -> dict:
    out = {}
    for split_name, held in (("seen", False), ("heldout", True)):
        rows = [f for f, p in zip(found, prompts) if p["heldout"] == held]
        acc = {a: float(np.mean([r[a] for r in rows])) for a in ("color", "shape", "motion")}
        acc["attribute"] = float(np.mean(list(acc.values())))
        out[split_name] = {"n": len(rows), **acc}
    return out


def read_back(frames: np.ndarray, prompts: list[dict]) -> list[dict]:
    return [det.score(det.detect(f), p) for f, p in zip(frames, prompts)]


def train_one(name: str, data: torch.Tensor, text: torch.Tensor, mask: torch.Tensor, a) -> tuple[DiT, dict]:
    scale, share = SCHEDULES[name]
    torch.manual_seed(0)  # the same initial weights for every schedule
    cfg = dit_config("tiny", hidden=a.hidden, depth=a.depth, heads=4, latent_channels=3, text_dim=text.shape[-1],
                     patch=(1, 4, 4))
    model = DiT(cfg)
    ema = EMA(model, 0.999)
    flow = Flow(model, FlowConfig(shift_scale=scale, uniform_share=share, tasks=TaskMix(1, 0, 0, 0, 0, 0)))
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, betas=(0.9, 0.99))
    order = torch.Generator().manual_seed(1)  # the same batches for every schedule
    losses, t0 = [], time.time()
    for step in range(a.steps):
        idx = torch.randint(len(data), (a.batch,), generator=order)
        for g in opt.param_groups:
            g["lr"] = a.lr * min(1.0, (step + 1) / 50)
        loss = flow.loss(data[idx], text[idx], mask[idx], torch.Generator().manual_seed(step))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ema.update(model, step)
        losses.append(float(loss))
        if a.progress and (step + 1) % max(1, a.steps // 10) == 0:
            print(f"  [{name}] step {step + 1}/{a.steps} loss {np.mean(losses[-50:]):.4f} "
                  f"({time.time() - t0:.0f} s)", flush=True)
    return ema.module, {"seconds": round(time.time() - t0, 1), "first_loss": float(np.mean(losses[:20])),
                        "last_loss": float(np.mean(losses[-50:]))}


@torch.no_grad()
def generate(model: DiT, name: str, prompts: list[dict], text: torch.Tensor, mask: torch.Tensor, size: int,
             steps: int) -> torch.Tensor:
    flow = Flow(model, FlowConfig(shift_scale=SCHEDULES[name][0]))
    outs = []
    for i, p in enumerate(prompts):  # one prompt per call: its own seed's noise, as eval-text does
        cond = text_to_video(1, 3, 5, size, size)
        outs.append(denoise(flow, None, cond, text[i : i + 1], mask[i : i + 1], steps=steps, cfg_scale=5.0,
                            seed=p["seed"]))
    return torch.cat(outs)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clips", type=int, default=2048)
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--sample-steps", type=int, default=20)
    p.add_argument("--schedules", default=",".join(SCHEDULES), help=f"comma-separated, of {', '.join(SCHEDULES)}")
    p.add_argument("--out", default="", help="folder for probe_schedule_toy.json")
    p.add_argument("--smoke", action="store_true", help="tiny sizes: checks the code paths only")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    a = p.parse_args(argv)
    names = a.schedules.split(",")
    for n in names:
        if n not in SCHEDULES:
            p.error(f"unknown schedule {n!r}; choose from {', '.join(SCHEDULES)}")
    if a.smoke:
        a.clips, a.steps, a.batch, a.hidden, a.depth, a.sample_steps = 16, 3, 4, 32, 1, 2
    size, split = 32, synth.ComboSplit.default(0)
    t0 = time.time()
    clips, captions = render(a.clips, size, split, seed=0)
    raw = torch.from_numpy(clips).float() / 127.5 - 1.0
    mean, std = float(raw.mean()), float(raw.std())
    data = to_latent(clips, mean, std)
    prompts = synth.eval_prompts(split, 1, 0, heldout_repeat=2)
    if a.smoke:
        prompts = [q for q in prompts if not q["heldout"]][:2] + [q for q in prompts if q["heldout"]][:2]
    encoder = TextEncoder(TextConfig(max_length=32))
    emb = encoder(captions + [q["prompt"] for q in prompts])
    text, mask = emb.tokens, emb.mask
    n = len(captions)
    truth = np.stack([synth.render_clip(synth.prompt_shot(q), (size, size), seed=q["seed"])[KEEP] for q in prompts])
    ceiling = accuracy(read_back(truth, prompts), prompts)
    print(f"[toy] {n} clips of 5 x {size} x {size} ({clips.nbytes / 2**20:.0f} MiB) and {len(prompts)} prompts in "
          f"{time.time() - t0:.0f} s; detector on the ground truth: seen {ceiling['seen']['attribute']:.3f}, "
          f"held-out {ceiling['heldout']['attribute']:.3f}", flush=True)
    results = {"config": vars(a), "ceiling": ceiling, "runs": {}}
    for name in names:
        model, info = train_one(name, data, text[:n], mask[:n], a)
        gen = generate(model, name, prompts, text[n:], mask[n:], size, a.sample_steps)
        info["accuracy"] = accuracy(read_back(to_frames(gen, mean, std), prompts), prompts)
        results["runs"][name] = info
        print(f"[toy] {name}: {info['seconds']} s, loss {info['first_loss']:.3f} -> {info['last_loss']:.3f}, "
              f"held-out {info['accuracy']['heldout']['attribute']:.3f}", flush=True)
    print(f"\nPixel-space toy, {n} clips, {a.steps} steps x {a.batch}, DiT hidden {a.hidden} depth {a.depth}, "
          f"{a.sample_steps} Euler steps, CFG 5\n")
    print("| schedule | split | colour | shape | motion | attribute | last loss |\n|---|---|---|---|---|---|---|")
    for name, info in [("ground truth", {"accuracy": ceiling})] + list(results["runs"].items()):
        for s in ("seen", "heldout"):
            r = info["accuracy"][s]
            loss = f"{info['last_loss']:.4f}" if "last_loss" in info else ""
            print(f"| {name} | {s} | {r['color']:.3f} | {r['shape']:.3f} | {r['motion']:.3f} | "
                  f"{r['attribute']:.3f} | {loss} |")
    if a.out:
        Path(a.out).mkdir(parents=True, exist_ok=True)
        (Path(a.out) / "probe_schedule_toy.json").write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

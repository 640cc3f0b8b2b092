"""Given frames in the middle of a clip: how far their pinned latents are from their in-clip latents, three ways,
and what the grouped encoder that makes them exact costs in VAE quality.

    python benchmarks/bench_conditioning.py [--presets small-f4c4,tiny] [--size 64] [--frames 17] [--steps 500]
                                            [--seeds 3] [--batch 8] [--out OUT]

1. **VAE quality.** Per preset and seed, two VAEs start from the same weights and train on the same batches
   (L1 + 1e-6 KL, the loss of ``train/train_vae.py`` without LPIPS or a discriminator): the causal encoder as it
   is (``plain``) and ``VAEConfig.grouped_encoder`` (``grouped``: each latent frame sees only its own 4 frames).
   PSNR of the round trip on held-out clips: other shots and other render seeds than the training clips (test
   material only). Headline: median over seeds of grouped - plain, with the spread.
2. **Pinned latents.** With the seed-0 VAEs, per task, the latents ``model.conditioning.given_condition`` pins
   for frames of a real clip R, against the latents of R itself there (in units of R's latent std; max |diff|),
   and the PSNR, at the given frames, of decoding R's latents with the pinned ones in place against decoding R's
   own latents (what a perfect sampler would output there; inf = identical):
   - ``held`` (plain VAE, what main does): the given frames in a clip whose unknown frames hold given frames;
   - ``refine`` (plain VAE): the best case of re-encoding the sampler's clean estimate with the given frames
     pasted in: the estimate is the decoded truth (an oracle network), so only the VAE's round-trip error of
     the unknown frames is left;
   - ``grouped`` (grouped VAE, what this change adds): as ``held``; exact whenever the given frames fill their
     latent groups.

Prints both tables and writes OUT/conditioning.json and .md after every run. Runs on CUDA when there is one
(needs torch and numpy only).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from curate import synth  # noqa: E402
from model.conditioning import given_condition, latent_index  # noqa: E402
from model.vae import PRESETS, VideoVAE  # noqa: E402


def clips(n: int, frames: int, size: int, seed: int) -> torch.Tensor:
    """n synthetic shots (n, 3, frames, size, size) in [-1, 1]; ``seed`` picks the shots and their renders."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        triple = (str(rng.choice(synth.EVAL_COLORS)), str(rng.choice(synth.EVAL_SHAPES)),
                  str(rng.choice(synth.EVAL_MOTIONS)))
        shot = synth.random_shot(rng, triple, frames)
        out.append(synth.render_clip(shot, (size, size), seed=seed * 100_000 + i))
    return torch.from_numpy(np.stack(out)).permute(0, 4, 1, 2, 3).float().div(127.5).sub(1)


def train_pair(preset: str, seed: int, train: torch.Tensor, a) -> tuple[VideoVAE, VideoVAE]:
    """The plain and the grouped VAE of one preset, from the same init, on the same batches."""
    torch.manual_seed(seed)
    plain = VideoVAE(PRESETS[preset])
    grouped = VideoVAE(dataclasses.replace(PRESETS[preset], grouped_encoder=True))
    grouped.load_state_dict(plain.state_dict())
    models = [plain.to(a.device), grouped.to(a.device)]
    opts = [torch.optim.AdamW(m.parameters(), lr=a.lr, betas=(0.9, 0.99)) for m in models]
    gen = torch.Generator().manual_seed(seed)
    for step in range(a.steps):
        idx = torch.randint(0, len(train), (a.batch,), generator=gen)
        x = train[idx].to(a.device)
        for m, opt in zip(models, opts):
            for g in opt.param_groups:
                g["lr"] = a.lr * min(1.0, (step + 1) / 50)
            recon, post = m(x, sample=False)
            loss = (recon - x).abs().mean() + 1e-6 * post.kl().mean() / x[0].numel()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
            opt.step()
    return models[0].eval(), models[1].eval()


@torch.no_grad()
def psnr(vae: VideoVAE, test: torch.Tensor, device: str) -> float:
    vals = []
    for x in test.split(4):
        x = x.to(device)
        y = vae.decode(vae.encode(x).mode()).clamp(-1, 1)
        vals += (10 * torch.log10(4 / ((y - x) ** 2).flatten(1).mean(1))).tolist()
    return float(np.mean(vals))


def tasks(frames: int) -> dict[str, list[int]]:
    """task -> the output frame indices given (frames of the real clip R at the same indices)."""
    last = frames - 1
    return {
        "extend backward (last 8 frames)": list(range(frames - 8, frames)),
        "keyframes (two whole groups)": [*range(5, 9), *range(last - 3, frames)],
        "transition (1 + 4 and 8 frames)": [*range(5), *range(frames - 8, frames)],
        "interpolation (first and last frame)": [0, last],
        "keyframe (one frame, mid-group)": [0, 2 + 4 * ((frames - 1) // 8)],
    }


@torch.no_grad()
def pinned_errors(plain: VideoVAE, grouped: VideoVAE, real: torch.Tensor, frames: int) -> list[dict]:
    """Per task and way: max |pinned - in-clip| / std of R's latents, and the PSNR at the given frames."""
    rows = []
    for task, idx in tasks(frames).items():
        given = {p: real[:, :, p] for p in idx}
        positions = sorted({latent_index(p) for p in idx})
        for way, vae in (("held", plain), ("refine", plain), ("grouped", grouped)):
            def encode(x, vae=vae):
                return vae.encode(x).mode()

            truth = encode(real)  # (B, C, T', h, w)
            if way == "refine":  # the oracle's clean estimate, decoded, given frames pasted at their indices
                estimate = vae.decode(truth).clamp(-1, 1)
                estimate[:, :, idx] = real[:, :, idx]
                pinned = encode(estimate)
            else:
                pinned = given_condition(given, frames, encode).reference
            mixed = truth.clone()
            mixed[:, :, positions] = pinned[:, :, positions]
            err = (pinned[:, :, positions] - truth[:, :, positions]).abs().amax().item() / truth.std().item()
            a, b = vae.decode(mixed)[:, :, idx], vae.decode(truth)[:, :, idx]
            mse = ((a.clamp(-1, 1) - b.clamp(-1, 1)) ** 2).mean().item()
            rows.append({"task": task, "way": way, "err": err, "psnr": float("inf") if mse == 0 else
                         10 * np.log10(4 / mse)})
    return rows


def spread(vals: list[float]) -> str:
    return f"{statistics.median(vals):+.2f} ({min(vals):+.2f} .. {max(vals):+.2f})"


def report(a, device: str, quality: list[dict], pins: list[dict], seconds: float) -> None:
    """Print both tables (so far) and write OUT/conditioning.json and OUT/conditioning.md."""
    presets = list(dict.fromkeys(r["preset"] for r in quality))
    lines = [f"VAE quality after {a.steps} steps (batch {a.batch}, {a.frames}x{a.size}x{a.size}, lr {a.lr}), "
             f"held-out PSNR dB, median over seeds (min .. max)", "",
             "| preset | seeds | plain | grouped | grouped - plain |", "|---|---|---|---|---|"]
    for preset in presets:
        rs = [r for r in quality if r["preset"] == preset]
        lines.append(f"| {preset} | {len(rs)} | {statistics.median(r['plain'] for r in rs):.2f} | "
                     f"{statistics.median(r['grouped'] for r in rs):.2f} | "
                     f"{spread([r['grouped'] - r['plain'] for r in rs])} |")
    lines += ["", "Pinned latents against the real clip's (seed-0 VAEs, 4 held-out clips): max |diff| / latent std; "
              "PSNR dB at the given frames of decode(truth with the pins) against decode(truth)", "",
              "| preset | task | held err | held PSNR | refine err | refine PSNR | grouped err | grouped PSNR |",
              "|---|---|---|---|---|---|---|---|"]
    for preset in dict.fromkeys(r["preset"] for r in pins):
        for task in tasks(a.frames):
            r = {x["way"]: x for x in pins if x["preset"] == preset and x["task"] == task}
            lines.append(f"| {preset} | {task} | " + " | ".join(f"{r[w]['err']:.3g} | {r[w]['psnr']:.1f}"
                                                                for w in ("held", "refine", "grouped")) + " |")
    print("\n".join(lines), flush=True)
    if a.out:
        out = Path(a.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "conditioning.md").write_text("\n".join(lines) + "\n")
        (out / "conditioning.json").write_text(json.dumps(
            {"device": device, "torch": torch.__version__, "args": vars(a), "quality": quality, "pins": pins,
             "seconds": round(seconds, 1)}, indent=1))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--presets", default="small-f4c4,tiny")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--frames", type=int, default=17)
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=8e-4)
    p.add_argument("--train-clips", type=int, default=48)
    p.add_argument("--test-clips", type=int, default=16)
    p.add_argument("--out", default="")
    a = p.parse_args(argv)
    a.device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.backends.cudnn.benchmark = True
    if a.device == "cpu":
        torch.set_num_threads(1)  # tiny convolutions: one thread is fastest, and far faster on a shared machine
    name = torch.cuda.get_device_name(0) if a.device == "cuda" else "cpu"
    t0 = time.time()
    train = clips(a.train_clips, a.frames, a.size, seed=1)
    test = clips(a.test_clips, a.frames, a.size, seed=2)  # other shots, other renders
    print(f"[conditioning] {name}, torch {torch.__version__}; {a.train_clips} + {a.test_clips} clips of "
          f"{a.frames}x{a.size}x{a.size} in {time.time() - t0:.0f} s", flush=True)
    quality, pins = [], []
    for preset in a.presets.split(","):
        for seed in range(a.seeds):
            t1 = time.time()
            plain, grouped = train_pair(preset, seed, train, a)
            row = {"preset": preset, "seed": seed, "plain": psnr(plain, test, a.device),
                   "grouped": psnr(grouped, test, a.device), "train_s": round(time.time() - t1, 1)}
            quality.append(row)
            print(f"[conditioning] {preset} seed {seed}: PSNR plain {row['plain']:.2f}, grouped {row['grouped']:.2f} "
                  f"({row['train_s']} s for both)", flush=True)
            if seed == 0:
                real = test[:4].to(a.device)
                pins += [{"preset": preset, **r} for r in pinned_errors(plain, grouped, real, a.frames)]
            report(a, name, quality, pins, time.time() - t0)  # after every run: a run cut short keeps its rows
    print(f"[conditioning] done in {time.time() - t0:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

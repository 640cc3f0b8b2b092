"""How well does each VAE preset keep what the text-faithfulness eval reads, after the same short training?

    python benchmarks/probe_vae_ceiling.py --out OUT [--presets small,small-f4c8,small-f4c4] [--seconds 90]

For each preset: ``train.train_vae`` on a shot corpus (``pipelines.loop.write_shot_corpus``, 128 px) for a fixed
wall-clock budget with the GPU loop's VAE settings (9-frame clips, batch 16, lr 8e-4, 50 warm-up steps), then the
*VAE ceiling* of ``tessera eval-text``: the detector reads the ground-truth render of every eval prompt (17 frames)
after an encode/decode round trip, per attribute, plus the PSNR of those round trips. A DiT trained on these
latents can at best reach this ceiling. Writes ``OUT/probe.json`` and ``OUT/probe.md`` after every preset (so a
run cut short keeps what it finished) and prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def ceiling(vae_dir: Path, size: int, frames: int, device: str, limit: int = 0) -> dict:
    """Detector accuracy (per attribute, over the eval prompts or their first ``limit``) and mean PSNR after a
    round trip through the VAE."""
    import numpy as np
    import torch

    from curate import synth
    from curate.detect import DetectConfig, detect, score
    from model.checkpoint import load_vae

    vae = load_vae(vae_dir, device)
    split = synth.ComboSplit.default(0)
    det_cfg = DetectConfig(colors=split.colors, shapes=split.shapes, motions=split.motions)
    hits = {"color": [], "shape": [], "motion": []}
    psnrs, latents = [], []
    prompts = synth.eval_prompts(split, 1, 0, 2)
    for p in prompts[:limit] if limit else prompts:
        truth = synth.render_clip(synth.prompt_shot(p, frames), (size, size), seed=p["seed"])  # (T, H, W, 3)
        x = torch.from_numpy(truth).permute(3, 0, 1, 2)[None].float().div(127.5).sub(1).to(device)
        with torch.no_grad():
            z = vae.encode(x).mode()
            y = vae.decode(z).clamp(-1, 1)
        latents.append(z[0].float().cpu())  # (C, T', H', W')
        psnrs.append(float(10 * torch.log10(4 / ((y - x) ** 2).mean())))
        frames_rt = ((y[0] + 1) * 127.5).round().byte().permute(1, 2, 3, 0).cpu().numpy()
        for k, v in score(detect(frames_rt, det_cfg), p).items():
            hits[k].append(v)
    return {**{k: float(np.mean(v)) for k, v in hits.items()}, "psnr": float(np.mean(psnrs)), "n": len(psnrs),
            "latents": latent_stats(torch.stack(latents))}


def latent_stats(z) -> dict:
    """Scale of the latents (N, C, T', H', W') a DiT would see: std and mean per channel, std per latent frame
    (frame 0 encodes one video frame, the others four each), and the spread of channel stds (max / min). The DiT
    normalises by one global mean and std, so a channel or frame far below the global std is drowned by noise."""
    per_channel_std = z.transpose(0, 1).flatten(1).std(1)
    per_frame_std = z.transpose(0, 2).flatten(1).std(1)
    return {"std": float(z.std()), "mean": float(z.mean()),
            "channel_std": [round(float(v), 4) for v in per_channel_std],
            "channel_mean": [round(float(v), 4) for v in z.transpose(0, 1).flatten(1).mean(1)],
            "frame_std": [round(float(v), 4) for v in per_frame_std],
            "channel_std_spread": float(per_channel_std.max() / per_channel_std.min().clamp_min(1e-12))}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--work", default="", help="working folder (default OUT/work)")
    p.add_argument("--presets", default="small,small-f4c8,small-f4c4")
    p.add_argument("--seconds", type=float, default=90.0, help="training budget per preset")
    p.add_argument("--clips", type=int, default=4096)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--limit", type=int, default=0, help="first N eval prompts only (0: all 112)")
    a = p.parse_args(argv)

    import torch

    from model.vae import PRESETS
    from pipelines.loop import write_shot_corpus
    from train.train_vae import TrainVAEConfig, main as train_vae

    out = Path(a.out)
    work = Path(a.work) if a.work else out / "work"
    out.mkdir(parents=True, exist_ok=True)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    name = torch.cuda.get_device_name(0) if device == "cuda" else "cpu"
    corpus = write_shot_corpus(work / "corpus", a.clips, size=a.size, frames=17)
    print(f"[probe] {name}; corpus {corpus['clips']} clips in {corpus['seconds']} s", flush=True)
    rows = []
    for preset in a.presets.split(","):
        cfg = PRESETS[preset]
        t0 = time.time()
        res = train_vae(TrainVAEConfig(
            data_root=str(work / "corpus"), run_dir=str(work / preset), preset=preset,
            resolutions=((a.size, a.size),), num_frames=(9,), image_prob=0.1, batch_size=16,
            num_workers=min(8, os.cpu_count() or 1),
            holdout_pct=0.0, steps=100000, lr=8e-4, warmup_steps=50, ema_decay=0.999, time_budget_s=a.seconds,
            log_every=50, preview_every=100000, ckpt_every=100000, keep_last=1, resume=False))
        train_s = time.time() - t0
        c = ceiling(work / preset / "checkpoints", a.size, 17, device, a.limit)
        rows.append({"preset": preset, "stride": list(cfg.stride), "z_channels": cfg.z_channels,
                     "latent_dims_per_16px": cfg.z_channels * (16 // cfg.spatial_factor) ** 2,
                     "steps": res["step"], "train_s": round(train_s, 1), **c})
        table = ["| preset | stride (t,h,w) | z | dims per 16x16 px token | steps | PSNR (dB) | colour | shape | "
                 "motion |", "|---|---|---|---|---|---|---|---|---|"]
        table += [f"| {r['preset']} | {tuple(r['stride'])} | {r['z_channels']} | {r['latent_dims_per_16px']} | "
                  f"{r['steps']} | {r['psnr']:.2f} | {r['color']:.3f} | {r['shape']:.3f} | {r['motion']:.3f} |"
                  for r in rows]
        (out / "probe.md").write_text("\n".join(table) + "\n")
        (out / "probe.json").write_text(json.dumps({"device": name, "torch": torch.__version__,
                                                    "seconds_per_preset": a.seconds, "rows": rows}, indent=1))
        print("\n".join(table), flush=True)
        print(f"[probe] {preset} latents: " + json.dumps(rows[-1]["latents"]), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

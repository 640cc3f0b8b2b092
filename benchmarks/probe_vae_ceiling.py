"""How well does each VAE recipe keep what the text-faithfulness eval reads, after the same short training?

    python benchmarks/probe_vae_ceiling.py --out OUT [--recipe f4c4-9f --recipe f4c4-17f-edge] [--seconds 150]

For each recipe (preset, training clip length, batch, edge-loss weight; :data:`RECIPES`): ``train.train_vae`` on a
shot corpus (``pipelines.loop.write_shot_corpus``, 128 px) for a fixed wall-clock budget with the GPU loop's other
VAE settings (lr 8e-4, 50 warm-up steps, EMA 0.999), then the *VAE ceiling* of ``tessera eval-text``, computed by
eval-text's own code: the detector reads the ground-truth render of every eval shot and seed (17 frames) after an
encode/decode round trip, per split and attribute, with shape also read on frames 0-4 and on the late half, plus
the PSNR of those round trips. A DiT trained on these latents can at best reach this ceiling. Writes ``OUT/probe.json`` and ``OUT/probe.md`` after every preset (so a
run cut short keeps what it finished) and prints the table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def ceiling(vae_dir: Path, size: int, frames: int, device: str, limit: int = 0, workers: int = 0) -> dict:
    """eval-text's VAE ceiling for one trained VAE: the ground-truth render of every eval shot and seed
    (``pipelines.eval_text.select_prompts`` with its defaults, first ``limit`` shots per group when given) after an
    encode/decode round trip, read by eval-text's own detector code: per split and attribute, shape on the early
    frames and the late half (``shape_by_window``), the mean PSNR and the latents' scale."""
    import numpy as np
    import torch

    from curate import synth
    from curate.detect import DetectConfig
    from model.checkpoint import load_vae
    from pipelines.eval_text import (EvalTextConfig, _detect_row, accuracy_table, detector_pool, select_prompts,
                                     shape_by_window)

    vae = load_vae(vae_dir, device)
    split = synth.ComboSplit.default(0)
    det_cfg = DetectConfig()
    det_cfg = dataclasses.replace(det_cfg, motions=tuple(m for m in split.motions if m in det_cfg.motions))
    prompts = select_prompts(EvalTextConfig(limit=limit, phrasings=("train",)), split)  # one row per shot and seed
    pool = detector_pool(workers, device)
    psnrs, latents, jobs = [], [], []
    try:
        for start in range(0, len(prompts), 32):
            chunk = prompts[start:start + 32]
            truths = [synth.render_clip(synth.prompt_shot(p, frames), (size, size), seed=p["seed"]) for p in chunk]
            x = torch.from_numpy(np.stack(truths)).permute(0, 4, 1, 2, 3).float().div(127.5).sub(1).to(device)
            with torch.no_grad():
                z = vae.encode(x).mode()
                y = vae.decode(z).clamp(-1, 1)
            latents.append(z[:4].float().cpu())  # (4, C, T', H', W'): enough for the scale
            psnrs += [float(v) for v in 10 * torch.log10(4 / ((y - x) ** 2).flatten(1).mean(1))]
            trips = ((y + 1) * 127.5).round().byte().permute(0, 2, 3, 4, 1).cpu().numpy()
            for p, truth, trip in zip(chunk, truths, trips):
                clips = {"render": truth, "vae": trip}
                jobs.append(pool.submit(_detect_row, p, clips, det_cfg) if pool else _detect_row(p, clips, det_cfg))
        rows = [j.result() if pool else j for j in jobs]
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    table = accuracy_table([{**r, "correct": r["correct_vae"]} for r in rows])
    windows = shape_by_window(rows).get("vae", {})
    return {"n": len(rows), "psnr": float(np.mean(psnrs)),
            **{name: {**{k: table[name][k] for k in ("color", "shape", "motion", "attribute")},
                      "shape_early": windows.get(name, {}).get("early"),
                      "shape_late": windows.get(name, {}).get("late")} for name in table},
            "latents": latent_stats(torch.cat(latents))}


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


RECIPES = {  # the GPU loop's VAE recipes: today's (PROFILES["gpu"] before 2026-12-05) and the candidate
    "f4c4-9f": {"preset": "small-f4c4", "frames": 9, "batch": 16, "edge": 0.0},
    "f4c4-17f-edge": {"preset": "small-f4c4", "frames": 17, "batch": 12, "edge": 0.5},
}


def parse_recipe(text: str) -> tuple[str, dict]:
    """``NAME`` (one of :data:`RECIPES`) or ``NAME=preset:frames:batch:edge`` -> (name, recipe)."""
    name, sep, spec = text.partition("=")
    if not sep:
        if name not in RECIPES:
            raise SystemExit(f"--recipe {text}: unknown; give NAME=preset:frames:batch:edge or one of {sorted(RECIPES)}")
        return name, RECIPES[name]
    preset, frames, batch, edge = spec.split(":")
    return name, {"preset": preset, "frames": int(frames), "batch": int(batch), "edge": float(edge)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--work", default="", help="working folder (default OUT/work)")
    p.add_argument("--recipe", action="append", default=[],
                   help="NAME (f4c4-9f, f4c4-17f-edge) or NAME=preset:frames:batch:edge_weight; repeatable "
                        "(default: f4c4-9f)")
    p.add_argument("--presets", default="", help="shorthand: one recipe per VAE preset named here (comma-separated), "
                                                  "each on 9-frame clips, batch 16, no edge loss")
    p.add_argument("--seconds", type=float, default=150.0, help="training budget per recipe")
    p.add_argument("--clips", type=int, default=4096)
    p.add_argument("--corpus", default="", help="an existing shot corpus (else one is written to WORK/corpus)")
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--workers", type=int, default=8, help="data loader and detector processes")
    p.add_argument("--limit", type=int, default=0, help="first N eval shots per group only (0: all)")
    p.add_argument("--seed", type=int, default=0)
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
    corpus = Path(a.corpus) if a.corpus else work / "corpus"
    if not a.corpus:
        made = write_shot_corpus(corpus, a.clips, size=a.size, frames=17, seed=a.seed)
        print(f"[probe] {name}; corpus {made['clips']} clips in {made['seconds']} s", flush=True)
    rows = []
    recipes = [parse_recipe(x) for x in a.recipe]
    recipes += [(name, {"preset": name, "frames": 9, "batch": 16, "edge": 0.0}) for name in a.presets.split(",") if name]
    for label, r in recipes or [parse_recipe("f4c4-9f")]:
        cfg = PRESETS[r["preset"]]
        t0 = time.time()
        res = train_vae(TrainVAEConfig(
            data_root=str(corpus), run_dir=str(work / label), preset=r["preset"],
            resolutions=((a.size, a.size),), num_frames=(r["frames"],), image_prob=0.1, batch_size=r["batch"],
            num_workers=a.workers, holdout_pct=0.0, steps=100000, lr=8e-4, warmup_steps=50, ema_decay=0.999,
            edge_weight=r["edge"], time_budget_s=a.seconds, seed=a.seed, log_every=50, preview_every=100000,
            ckpt_every=100000, keep_last=1, resume=False))
        train_s = time.time() - t0
        c = ceiling(work / label / "checkpoints", a.size, 17, device, a.limit, a.workers)
        rows.append({"recipe": label, **r, "stride": list(cfg.stride),
                     "latent_dims_per_16px": cfg.z_channels * (16 // cfg.spatial_factor) ** 2, "steps": res["step"],
                     "train_s": round(train_s, 1), **c})
        table = ["| recipe | preset | frames | batch | edge | steps | PSNR (dB) | split | colour | shape | shape, "
                 "frames 0-4 | shape, late half | motion |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for row in rows:
            for split in ("seen", "heldout"):
                v = row[split]
                table.append(f"| {row['recipe']} | {row['preset']} | {row['frames']} | {row['batch']} | "
                             f"{row['edge']:g} | {row['steps']} | {row['psnr']:.2f} | {split} | {v['color']:.3f} | "
                             f"{v['shape']:.3f} | {v['shape_early']:.3f} | {v['shape_late']:.3f} | "
                             f"{v['motion']:.3f} |")
        (out / "probe.md").write_text("\n".join(table) + "\n")
        (out / "probe.json").write_text(json.dumps({"device": name, "torch": torch.__version__,
                                                    "seconds_per_recipe": a.seconds, "rows": rows}, indent=1))
        print("\n".join(table), flush=True)
        print(f"[probe] {label} latents: " + json.dumps(rows[-1]["latents"]), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

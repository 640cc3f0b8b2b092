"""``tessera vae-eval``: reconstruction quality of a VAE checkpoint on held-out clips, whole vs chunked.

For each held-out clip (``train.data`` split rule, or every clip with ``split="all"``) it takes the first
``num_frames`` frames, centre-crops/resizes to ``height`` x ``width``, encodes and decodes with the posterior
mode three ways: whole clip, temporal chunks with the causal cache, and (optionally) spatial tiles. It
reports PSNR, SSIM (and LPIPS when ``lpips_path`` is given) per clip and mode, and the max |whole - chunked|
of latents and pixels (the exactness check). Output: a printed table, ``per_clip.csv``, ``summary.json``.

A checkpoint is a folder written by ``model.checkpoint.save_checkpoint`` (``train/train_vae.py``); its
``ema`` weights are used when present (``weights="ema"``), else ``vae``. The preset comes from the
checkpoint's config unless ``preset`` is set. With no checkpoint, a randomly initialised preset is scored
(a smoke test of the pipeline, not a quality number).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

from curate.media import clip_media, decode_frames, media_columns, resize_crop
from model.checkpoint import load_vae, vae_weights_path
from model.metrics import LPIPS, psnr, ssim
from model.vae import VideoVAE, build_vae
from train.data import ClipDataConfig, scan_clips


@dataclass(frozen=True)
class VAEEvalConfig:
    data_root: str = ""
    out_dir: str = "out/vae_eval"
    checkpoint: str = ""  # a step-* folder or a checkpoints/ folder (latest is taken); empty: random init
    weights: str = "ema"  # ema | vae
    preset: str = ""  # empty: from the checkpoint's config ("base" without one)
    split: str = "heldout"  # heldout | all
    holdout_pct: float = 5.0
    max_clips: int = 32
    num_frames: int = 17  # 1 + 4k; shorter clips repeat their last frame
    height: int = 256
    width: int = 256
    chunk_frames: int = 8
    chunk_latents: int = 2
    tile: int = 0  # > 0: also score spatial tiling with this pixel tile size
    tile_overlap: int = 64
    lpips_path: str = ""
    device: str = "auto"  # auto | cpu | cuda


def load_eval_vae(cfg: VAEEvalConfig, device: torch.device) -> tuple[VideoVAE, str]:
    """The model to score and a description of where its weights came from."""
    if not cfg.checkpoint:
        torch.manual_seed(0)
        return build_vae(cfg.preset or "base").to(device).eval(), "random-init"
    file = vae_weights_path(cfg.checkpoint, cfg.weights)
    return load_vae(cfg.checkpoint, device, cfg.weights, cfg.preset), f"{file.parent}:{file.stem}"


def _clip_tensor(root: Path, units, clip, cfg: VAEEvalConfig) -> torch.Tensor:
    file, rg = units[clip.unit]
    pf = pq.ParquetFile(file)
    row = pf.read_row_group(rg, columns=media_columns(pf.schema_arrow.names)).slice(clip.row, 1).to_pylist()[0]
    frames = decode_frames(clip_media(row, root), 0, cfg.num_frames, 1)  # (T, h, w, 3)
    return resize_crop(frames, (cfg.height, cfg.width), 1.0, 0.5, 0.5)[None]  # (1, 3, T, H, W) centre crop


def _scores(x: torch.Tensor, y: torch.Tensor, lpips: LPIPS | None) -> dict[str, float]:
    y = y.float().clamp(-1, 1)
    out = {"psnr": float(psnr(y, x)[0]), "ssim": float(ssim(y, x)[0])}
    if lpips is not None:
        out["lpips"] = float(lpips(y, x)[0])
    return out


def main(cfg: VAEEvalConfig) -> dict:
    """Score the clips; returns ``{"rows": [...], "summary": {...}}`` and writes both under ``out_dir``."""
    if (cfg.num_frames - 1) % 4:
        raise ValueError(f"num_frames must be 1 + 4k, got {cfg.num_frames}")
    device = torch.device("cuda" if cfg.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if cfg.device == "auto" else cfg.device))
    model, source = load_eval_vae(cfg, device)
    lpips = LPIPS(cfg.lpips_path).to(device) if cfg.lpips_path else None
    data_cfg = ClipDataConfig(root=cfg.data_root, split=cfg.split, holdout_pct=cfg.holdout_pct)
    units, clips = scan_clips(data_cfg)
    clips = sorted(clips, key=lambda c: c.clip_id)[: cfg.max_clips]
    if not clips:
        raise ValueError(f"no {cfg.split} clips under {cfg.data_root}")
    rows = []
    for clip in clips:
        x = _clip_tensor(Path(cfg.data_root), units, clip, cfg).to(device)  # (1, 3, T, H, W)
        with torch.inference_mode():
            post = model.encode(x, pad=True)
            z = post.mode()
            y = model.decode(z, size=x.shape[2:])
            zc = model.encode_chunked(x, cfg.chunk_frames, pad=True).mode()
            yc = model.decode_chunked(zc, cfg.chunk_latents, size=x.shape[2:])
            row = {"clip_id": clip.clip_id, "frames": x.shape[2], "height": x.shape[3], "width": x.shape[4]}
            row.update({f"whole_{k}": v for k, v in _scores(x, y, lpips).items()})
            row.update({f"chunked_{k}": v for k, v in _scores(x, yc, lpips).items()})
            row["latent_max_abs_diff"] = float((z - zc).abs().max())
            row["pixel_max_abs_diff"] = float((y.float() - yc.float()).abs().max())
            if cfg.tile > 0:
                xp = model.pad_input(x)
                zt = model.encode_tiled(xp, cfg.tile, cfg.tile_overlap, cfg.chunk_frames).mode()
                s = model.cfg.spatial_factor
                yt = model.decode_tiled(zt, cfg.tile // s, cfg.tile_overlap // s, cfg.chunk_latents)
                yt = yt[:, :, : x.shape[2], : x.shape[3], : x.shape[4]]
                row.update({f"tiled_{k}": v for k, v in _scores(x, yt, lpips).items()})
                row["tiled_pixel_max_abs_diff"] = float((y.float() - yt.float()).abs().max())
        rows.append(row)

    metrics = [k for k in rows[0] if k not in ("clip_id", "frames", "height", "width")]
    summary = {"clips": len(rows), "weights": source, "config": dataclasses.asdict(cfg)}
    for k in metrics:
        vals = [r[k] for r in rows if math.isfinite(r[k])]
        summary[f"mean_{k}"] = float(np.mean(vals)) if vals else float("inf")
    summary["max_latent_abs_diff"] = max(r["latent_max_abs_diff"] for r in rows)
    summary["max_pixel_abs_diff"] = max(r["pixel_max_abs_diff"] for r in rows)

    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "per_clip.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    _print_table(rows, metrics, summary)
    return {"rows": rows, "summary": summary}


def _print_table(rows: list[dict], metrics: list[str], summary: dict) -> None:
    cols = ["clip_id"] + metrics
    print(" | ".join(cols))
    for r in rows:
        print(" | ".join([str(r["clip_id"])] + [f"{r[k]:.4g}" for k in metrics]))
    print(" | ".join(["MEAN"] + [f"{summary['mean_' + k]:.4g}" for k in metrics]))
    print(f"weights: {summary['weights']}; clips: {summary['clips']}")


def cli(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="tessera vae-eval", description=__doc__.splitlines()[0])
    for f in dataclasses.fields(VAEEvalConfig):
        p.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, type=type(f.default), default=f.default)
    return main(VAEEvalConfig(**vars(p.parse_args(argv))))


if __name__ == "__main__":
    cli()

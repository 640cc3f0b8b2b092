"""Helpers shared by the tests: synthetic clips and clip shards that need no curation run, tiny random models and
pipeline folders.

Import as ``import helpers`` (pytest puts ``tests/`` on the path, as for ``media``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from curate.media import encode_mp4
from curate.schema import clip_columns_schema
from curate.store import write_manifest
from model.dit import DiT, DiTConfig, dit_config
from model.pipeline import export_pipeline
from model.text import TextConfig
from model.vae import build_vae

# ---------------------------------------------------------------------------------------------------------
# synthetic clips and clip shards
# ---------------------------------------------------------------------------------------------------------


def synthetic_frames(seed: int, frames: int, height: int, width: int) -> np.ndarray:
    """uint8 (T, H, W, 3): a smooth colour gradient with a moving square, different per seed."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = rng.uniform(40, 200, size=3)
    out = np.empty((frames, height, width, 3), np.uint8)
    vy, vx = rng.uniform(-2, 2, size=2)
    side = max(4, min(height, width) // 4)
    for t in range(frames):
        img = np.stack([base[c] + 40 * np.sin((xx + 3 * t) / (8 + 4 * c)) * np.cos(yy / 11) for c in range(3)], -1)
        y0 = int((height / 3 + vy * t) % (height - side))
        x0 = int((width / 3 + vx * t) % (width - side))
        img[y0 : y0 + side, x0 : x0 + side] = 255 - base
        out[t] = np.clip(img, 0, 255).astype(np.uint8)
    return out


def write_synthetic_dataset(
    root: str | Path, num_clips: int = 6, frames: int = 21, height: int = 40, width: int = 56,
    clips_per_file: int = 3, path_every: int = 0, drop: tuple[str, ...] = (),
) -> list[str]:
    """Write ``root/clips/part-*.parquet`` (+ ``selection.parquet`` when ``drop``) of synthetic clips.

    Every ``path_every``-th clip (0: none) is stored as a file with ``clip_mp4`` null and ``clip_path`` set.
    Clips named in ``drop`` get ``keep = False``. Returns the clip ids.
    """
    root = Path(root)
    (root / "clips").mkdir(parents=True, exist_ok=True)
    ids = [f"synthetic-{i:04d}" for i in range(num_clips)]
    rows = []
    for i, cid in enumerate(ids):
        data = encode_mp4(synthetic_frames(i, frames, height, width))
        rel = None
        if path_every and i % path_every == path_every - 1:
            rel = f"media/{cid}.mp4"
            (root / "media").mkdir(exist_ok=True)
            (root / rel).write_bytes(data)
            data = None
        rows.append({"clip_id": cid, "clip_mp4": data, "clip_path": rel, "width": width, "height": height,
                     "num_frames": frames, "fps": 24.0, "duration_s": frames / 24.0})
    schema = clip_columns_schema(("clip_id", "clip_mp4", "clip_path", "width", "height", "num_frames", "fps",
                                  "duration_s"))
    for k in range(0, num_clips, clips_per_file):
        table = pa.Table.from_pylist(rows[k : k + clips_per_file], schema=schema)
        pq.write_table(table, root / "clips" / f"part-{k // clips_per_file:05d}.parquet", row_group_size=2)
    if drop:
        sel = pa.table({"clip_id": ids, "keep": [cid not in drop for cid in ids]})
        pq.write_table(sel, root / "selection.parquet")
    write_manifest(root, (root / "clips").glob("*.parquet"))
    return ids


# ---------------------------------------------------------------------------------------------------------
# tiny models and pipeline folders
# ---------------------------------------------------------------------------------------------------------


def tiny_dit_config(**kw) -> DiTConfig:
    """The "tiny" DiT preset with 4 latent channels and 24-wide text (``kw`` overrides any field)."""
    return dit_config("tiny", **{"latent_channels": 4, "text_dim": 24, **kw})


def randomize(model: torch.nn.Module, seed: int = 0, scale: float = 0.2) -> torch.nn.Module:
    """Every parameter replaced by ``scale`` * N(0, 1) from a generator seeded with ``seed`` (in the parameter's
    dtype), so paths that start at zero (adaLN-Zero, the output layer) carry signal too. Returns the model."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * scale)
    return model


def export_tiny_pipeline(path: str | Path, text_length: int = 32, nudge: float = 0.05, latent_scale: float = 1.0,
                         latent_shift: float = 0.0, extra: dict | None = None) -> Path:
    """A pipeline folder of a random tiny DiT (16 latent channels, 384-wide text) and the tiny VAE, drawn after
    ``torch.manual_seed(0)``. ``nudge`` > 0 adds ``nudge`` * N(0, 1) to every weight, taking them off the zero
    init so the output depends on the prompt and the inputs. The other arguments go to ``export_pipeline``."""
    torch.manual_seed(0)
    dit, vae = DiT(dit_config("tiny", latent_channels=16, text_dim=384)), build_vae("tiny")
    if nudge:
        with torch.no_grad():
            for p in list(dit.parameters()) + list(vae.parameters()):
                p.add_(nudge * torch.randn_like(p))
    return export_pipeline(path, dit, vae, TextConfig(max_length=text_length), latent_scale, latent_shift, extra)


class RayInitStopped(BaseException):
    """Raised by the recording ``ray.init`` of the ``init_calls`` fixture: a test that needs the call, not a Ray."""

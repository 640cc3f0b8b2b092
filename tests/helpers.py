"""Helpers shared by the tests: synthetic clips and clip shards that need no curation run.

Import as ``import helpers`` (pytest puts ``tests/`` on the path, as for ``media``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from curate.media import encode_mp4
from curate.schema import clip_columns_schema
from curate.store import write_manifest

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

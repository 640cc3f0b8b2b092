"""``tessera build``: raw videos -> a curated, scored, deduplicated clip table in Parquet shards.

The Ray Data graph (streaming; each stage is a Ray-free function or class from ``curate/``)::

    inputs ─► probe (1:1) ─► split: decode, scenes, cut clips (1:N, sandboxed) ─► basic scores ─► OCR ─► CLIP
           ─► stage shards per input (+ done marker, driver side); on CPUs without captions the scorers and the
           shard writer share one actor stage; meanwhile the driver compares each done input's clips with the
           earlier ones for dedup (``curate.dedup.SequenceMemo``)
    then, on the driver: dedup (looks those pairs up) ─► publish clips/part-NNNNN.parquet ─► filter ─► summary
           ─► _manifest.json (last)

It runs on a local Ray by default and unchanged on a cluster (``RAY_ADDRESS`` or ``--address``). A killed run
re-started with the same command skips the inputs that have a done marker; a changed config is refused.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import time
from collections import defaultdict
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Callable

from curate.clips import ClipConfig
from curate.dedup import DedupThresholds, SequenceMemo
from curate.filter import FilterSpec
from curate.frames import DecodeConfig
from curate.inputs import InputItem, resolve_inputs
from curate.probe import ProbeLimits
from curate.remote import is_uri, refuse_credentials
from curate.scenes import SceneConfig
from curate.schema import SCHEMA_VERSION, TRANSIENT_COLUMNS
from curate.split import SampleConfig, SplitConfig
from curate.store import BuildState, DataRoot, Lease, OutputLocked, fingerprint
from pipelines import publish
if TYPE_CHECKING:  # the caption stack loads only when --caption is used
    from caption.expand import ExpandConfig
    from caption.vlm import VLMConfig

from pipelines.stages import ProbeStage, ScoreStage, SplitFlatMap, StageWriter, TIMING_COLUMNS

VERSION = "0.1.0"


@dataclass(frozen=True)
class Resources:
    """Resource hints per stage. Concurrency ``None`` means: derived from the cluster's CPUs (:func:`pool_sizes`)."""

    # Logical CPUs Ray reserves per actor. They are sized so that one actor of EVERY stage fits on a 2-CPU
    # machine at once (0.1 + 2 x 0.5 + 3 x 0.25 + 0.1 < 2; the scorers that share an actor reserve 0.25 each): a
    # stage whose actor cannot be placed stalls the whole stream. The split stage (decode + detect + encode) is
    # the heavy one and gets the most actors.
    probe_cpus: float = 0.1
    split_cpus: float = 0.5
    split_concurrency: int | None = None
    score_cpus: float = 0.25
    score_concurrency: int | None = None
    write_cpus: float = 0.1
    score_batch_size: int = 8
    score_in_split: bool = True  # on CPUs, run the scorers and the writer in the split actors (no pools of their own)
    clip_gpus: float = 0.0  # >0 puts the CLIP scorer on GPUs
    split_gpus: float = 0.125  # --device cuda: GPU share of a split actor (8 NVDEC decoders per GPU)
    score_gpus: float = 0.0625  # --device cuda: GPU share of a basic-score actor


@dataclass(frozen=True)
class BuildConfig:
    """Every knob of a build. All but ``filters``, ``resources``, ``address`` and ``overwrite`` enter the
    fingerprint: changing them makes a different dataset."""

    input: str | list[str]
    output: str
    limits: ProbeLimits = field(default_factory=ProbeLimits)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    scenes: SceneConfig = field(default_factory=SceneConfig)
    clips: ClipConfig = field(default_factory=ClipConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    split_timeout_s: float = 600.0
    store_media: str = "bytes"  # bytes: MP4 inside the shard; path: MP4 files under DATASET/media/
    clip_checkpoint: str | None = None  # open_clip weights (local file); None -> clip columns say no-model
    clip_model_name: str = "ViT-B-32"
    aesthetic_head: str | None = None  # safetensors linear/MLP head on the CLIP embedding
    ocr: bool = True
    caption: VLMConfig | None = None  # captions inline (caption/vlm.py); None: no caption stage
    expand: ExpandConfig | None = None  # caption expansion inline (caption/expand.py); None: off
    dedup: DedupThresholds = field(default_factory=DedupThresholds)
    rows_per_file: int = 1000
    row_group_size: int = 64
    filters: FilterSpec = field(default_factory=FilterSpec)
    resources: Resources = field(default_factory=Resources)
    address: str | None = None
    overwrite: bool = False
    progress: bool = True
    device: str = "cpu"  # "cuda": decode, thumbnails and basic scores on GPUs (same results within tolerances)

    def split_config(self) -> SplitConfig:
        return SplitConfig(decode=self.decode, scenes=self.scenes, clips=self.clips, sample=self.sample,
                           timeout_s=self.split_timeout_s, device=self.device)

    def fingerprinted(self) -> dict:
        from caption.chat import public_dict  # no api_key ever reaches config.json or the state folder

        d = _jsonable(public_dict(self))
        for k in ("input", "output", "filters", "resources", "address", "overwrite", "progress", "device"):
            d.pop(k, None)
        d["tessera_version"] = VERSION
        d["schema_version"] = SCHEMA_VERSION
        return d


def _jsonable(obj):
    return json.loads(json.dumps(obj, default=str))


# ---------------------------------------------------------------------------------------------------------
# the graph
# ---------------------------------------------------------------------------------------------------------


class _DropBarsOff:
    """Logging filter: drops Ray Data's "Progress bars disabled" warning (we disable them, and show our own)."""

    def filter(self, record) -> bool:
        return not record.getMessage().startswith("Progress bars disabled")


def _init_ray(address: str | None):
    """Start or join Ray (``pipelines.ray_session``) with the build's logging: our own bar, Ray's quiet."""
    import ray.data

    from pipelines.ray_session import start_ray

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # our own tqdm bar counts videos; Ray's per-operator logs are noise here
    for name in ("ray.data", "ray"):
        logging.getLogger(name).setLevel(logging.WARNING)
    progress_log = logging.getLogger("ray.data._internal.progress")  # and so is its warning that we turned them off
    if not any(isinstance(f, _DropBarsOff) for f in progress_log.filters):
        progress_log.addFilter(_DropBarsOff())
    store = os.environ.get("TESSERA_OBJECT_STORE_BYTES")  # a local Ray's object store; 1 GB unless set
    return start_ray(address, object_store_bytes=int(store) if store else 1_000_000_000)


@dataclass(frozen=True)
class Pools:
    """Actors per stage (each score stage gets ``score``; an actor of it reserves ``score_cpus`` per scorer)."""

    probe: int
    split: int
    score: int
    write: int


def pool_sizes(cpus: float, res: Resources, other_cpus: float = 0.0, inputs: int | None = None) -> Pools:
    """Fixed actor pools whose logical CPUs add up to at most ``cpus`` (``other_cpus``: stages added beside
    these, the caption stages), the split stage taking what the others leave. With ``inputs`` (the videos this
    run processes), no pool has more actors than inputs: an actor that can never get a video still costs a
    process start and its reservation, and Ray Data warns about it.

    Fixed, not autoscaling: Ray Data reserves each operator's minimum (one actor of an autoscaling pool) and lets
    a pool grow only within its share of what is left, so in the whole graph on 2 CPUs the split pool could not
    add its second actor (0.5 CPU) while the same pool alone used both: the pipeline ran its heaviest stage on
    half the machine. A fixed pool's actors are all reserved up front."""
    probe = max(1, int(cpus // 16))
    score = res.score_concurrency or max(1, int(cpus // 8))
    write = max(1, int(cpus // 32))
    rest = cpus - other_cpus - probe * res.probe_cpus - 3 * score * res.score_cpus - write * res.write_cpus
    split = res.split_concurrency or max(1, int(rest // res.split_cpus))
    if inputs is not None:
        probe, split, score, write = (max(1, min(k, inputs)) for k in (probe, split, score, write))
    return Pools(probe=probe, split=split, score=score, write=write)


def _graph(ray, todo: list[InputItem], cfg: BuildConfig, state: BuildState, fp: str):
    """The recipe. Returns a dataset of small 'written' rows, one per staged row."""
    items = [{"key": it.key, "uri": it.uri, "path": it.path, "reject_reason": it.reject_reason,
              "reject_message": it.message} for it in todo]
    ds = ray.data.from_items(items, override_num_blocks=max(1, min(len(items), 4096)))
    caption = None
    if cfg.caption is not None:
        caption = partial(_add_captions, cfg=cfg, local=_local_state(state, fp), use_gpu=bool(
            ray.cluster_resources().get("GPU", 0)))
    for _, add in stages(ray, cfg, claims_dir=str(state.content_claims()), stage_root=state.root.uri, fp=fp,
                         caption=caption, inputs=len(items)):
        ds = add(ds)
    return ds


def stages(ray, cfg: BuildConfig, *, claims_dir: str | None, stage_root: str, fp: str,
           caption: Callable | None = None, inputs: int | None = None) -> list[tuple[str, Callable]]:
    """The build's stages in order, as ``(name, dataset -> dataset)``: the graph chains them, and
    ``benchmarks/bench_build.py`` runs each alone with exactly these pools, batch sizes and resources."""
    cpus = max(1.0, float(ray.cluster_resources().get("CPU", 1)))
    res = cfg.resources
    Pool = ray.data.ActorPoolStrategy  # every stage is a callable class: a pool of actors, each set up once
    n = pool_sizes(cpus, res, _caption_cpus(cfg), inputs)
    on_gpu = cfg.device == "cuda"
    out = [("probe", lambda ds: ds.map(                                                   # 1. probe (1:1)
        ProbeStage, fn_constructor_kwargs={"limits": cfg.limits, "claims_dir": claims_dir},
        compute=Pool(size=n.probe), num_cpus=res.probe_cpus))]
    # one input in flight per split actor: a video queued behind another on a busy actor while a second actor
    # sits idle would stretch the end of the stream
    groups = _score_groups(cfg)
    write = {"root": stage_root, "fingerprint": fp, "store_media": cfg.store_media}
    # 5. stage shards, in the last scorer's actor when that is a CPU one and no caption stage comes between: the
    # writer's work is ~0.2 CPU-s per 40 clips, its own actor pool cost ~2 CPU-s (process, Ray Data per block)
    fuse_write = caption is None and groups[-1][0] == 0.0
    # ... and, on CPUs with one scorer group and no CLIP model, the scorers and the writer in the split actors
    # (SplitFlatMap; the OCR session adds ~120 MB to each). A CLIP model keeps a pool of its own: one copy per
    # split actor would cost its memory (and its set-up) as many times as there are split actors
    fused = fuse_write and not on_gpu and len(groups) == 1 and cfg.clip_checkpoint is None and res.score_in_split
    score_kwargs = {"scorers": groups[0][1], "drop": TRANSIENT_COLUMNS, "write": write} if fused else None
    split_name = "split+score:" + "+".join(name for name, _ in groups[0][1]) + "+write" if fused else "split"
    out.append((split_name, lambda ds: ds.flat_map(                                       # 2. scenes -> clips (1:N)
        SplitFlatMap, fn_constructor_kwargs={"cfg": cfg.split_config(), "score": score_kwargs},
        compute=Pool(size=min(n.split, _fits_gpus(ray, res.split_gpus)) if on_gpu else n.split,
                     max_tasks_in_flight_per_actor=1),  # a fixed pool reserves every actor: GPUs too
        num_cpus=res.split_cpus, num_gpus=res.split_gpus if on_gpu else None)))
    if fused:
        return out
    for k, (gpus, scorers) in enumerate(groups):                                          # 3. scores (add columns)
        # on CPUs, one block (one input's clips, as the split stage emits them) per call: a batch size would hold
        # an input's rows back until later inputs fill the batch, and done markers would land in bursts
        last = k == len(groups) - 1
        drop = TRANSIENT_COLUMNS if last else ()  # the sampled frames end with the last scorer
        kwargs = {"scorers": scorers, "drop": drop, "write": write if last and fuse_write else None}
        name = "score:" + "+".join(name for name, _ in scorers) + ("+write" if kwargs["write"] else "")
        out.append((name, lambda ds, gpus=gpus, n_scorers=len(scorers), kwargs=kwargs: ds.map_batches(
            ScoreStage, fn_constructor_kwargs=kwargs,
            batch_size=res.score_batch_size if gpus else None, batch_format="pyarrow",
            compute=Pool(size=min(n.score, _fits_gpus(ray, gpus)) if gpus else n.score),
            num_cpus=res.score_cpus * n_scorers, num_gpus=gpus or None)))
    if caption is not None:                                                               # 4. captions (adds columns)
        out.append(("caption", caption))
    if not fuse_write:
        out.append(("write", lambda ds: ds.map_batches(
            StageWriter, fn_constructor_kwargs=write,
            # one block at a time: waiting for 64 rows would hold finished inputs back (the bar, done markers and
            # so resume would advance in bursts, often only at the very end)
            batch_size=None, batch_format="pyarrow", compute=Pool(size=n.write), num_cpus=res.write_cpus)))
    return out


def _score_groups(cfg: BuildConfig) -> list[tuple[float, list[tuple[str, dict]]]]:
    """The scorers in order, grouped into one actor stage per run of scorers with the same GPU share: on CPUs
    all of them run in one actor; with GPUs, a GPU scorer gets its own pool of GPU actors."""
    res, on_gpu = cfg.resources, cfg.device == "cuda"
    scorers = [("basic", {"device": cfg.device} if on_gpu else {}, res.score_gpus if on_gpu else 0.0)]
    if cfg.ocr:
        scorers.append(("ocr", {}, 0.0))
    scorers.append(("clip", {"checkpoint": cfg.clip_checkpoint, "model_name": cfg.clip_model_name,
                             "aesthetic_head": cfg.aesthetic_head}, res.clip_gpus))
    groups: list[tuple[float, list[tuple[str, dict]]]] = []
    for name, kwargs, gpus in scorers:
        if groups and groups[-1][0] == gpus:
            groups[-1][1].append((name, kwargs))
        else:
            groups.append((gpus, [(name, kwargs)]))
    return groups


def _add_captions(ds, *, cfg: BuildConfig, local: Path, use_gpu: bool):
    """The caption stages of ``tessera caption``, with the build's caches and progress files."""
    from caption.expand import ExpandConfig
    from pipelines.caption import add_caption_stages  # the same stages as `tessera caption`

    cache, progress = str(local / "caption_cache.sqlite"), str(local / "progress")
    vlm = replace(cfg.caption, cache_path=cfg.caption.cache_path or cache, progress_dir=progress)
    expand = cfg.expand or ExpandConfig(backend="off")
    expand = replace(expand, cache_path=expand.cache_path or cache, progress_dir=progress)
    return add_caption_stages(ds, vlm, expand, None, use_gpu=use_gpu, batch_size=cfg.resources.score_batch_size,
                              for_build=True)


def _resolve_device(ray, cfg: BuildConfig) -> BuildConfig:
    """``--device cuda`` needs GPUs in the Ray cluster and, on a local Ray, NVDEC and torch CUDA in this process;
    without them the build runs the CPU path and says so in one line (the device is not in the fingerprint)."""
    if cfg.device != "cuda":
        return cfg
    why = None
    if not ray.cluster_resources().get("GPU"):
        why = "no GPU in the Ray cluster"
    elif not (cfg.address or os.environ.get("RAY_ADDRESS")):
        from curate.gpu import cuda_status

        why = cuda_status()
    if why is None:
        return cfg
    print(f"[build] --device cuda: {why}; decoding and scoring on CPUs instead (same results)", flush=True)
    return replace(cfg, device="cpu")


def _fits_gpus(ray, per_actor: float) -> int:
    """How many actors of ``per_actor`` GPUs the cluster holds (at least 1: Ray waits for one to fit)."""
    return max(1, int(ray.cluster_resources().get("GPU", 0) // per_actor))


def _caption_cpus(cfg: BuildConfig) -> float:
    """Logical CPUs of the caption stages' actors (one captioner, one expander), 0 without captions."""
    if cfg.caption is None:
        return 0.0
    from pipelines.caption import _actor_cpus

    return _actor_cpus(cfg.caption.backend) + _actor_cpus(cfg.expand.backend if cfg.expand else "off")


def _local_state(state: BuildState, fp: str) -> Path:
    """A local folder for state that must be a local file (the caption cache is SQLite, the progress files are
    polled): ``_state`` itself for a local output, a per-fingerprint temp folder on each host for a URI one (a
    cache miss there costs one request again, nothing else)."""
    if state.root.local:
        return state.root.local_path(state.state)
    import tempfile

    path = Path(tempfile.gettempdir()) / f"tessera-state-{fp}"
    path.mkdir(parents=True, exist_ok=True)
    return path


class BuildStopped(RuntimeError):
    """A build that ended early for a reason the user can act on: one line for the terminal, an exit code."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


_DISK_ERRORS = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exhausted",
                errno.EROFS: "the output is on a read-only filesystem", errno.EACCES: "permission denied"}


def _disk_error(exc: BaseException) -> OSError | None:
    """The OSError behind ``exc`` (Ray wraps a worker's error in its own class) when it is one we explain."""
    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, OSError) and exc.errno in _DISK_ERRORS:
            return exc
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return None


def build(cfg: BuildConfig) -> dict:
    """Run a build end to end; returns the summary (also written to ``summary.json``).

    Raises :class:`BuildStopped` (one line, an exit code) when interrupted (SIGINT: 130), when another build
    holds the output, or when the output cannot be written (full, read-only); what finished is kept and the
    same command resumes.
    """
    try:
        for spec in [cfg.output] + ([cfg.input] if isinstance(cfg.input, str) else list(cfg.input)):
            refuse_credentials(str(spec))
    except ValueError as exc:
        raise BuildStopped(f"{exc}", 2) from None
    if is_uri(cfg.output) and cfg.store_media == "path":
        raise BuildStopped(f"--output {cfg.output}: --store-media path needs a local --output (on object storage "
                           "the MP4s stay inside the shards: one object per shard, not one per clip)", 2)
    # workers on other nodes must not resolve a relative path themselves; a URI is the same on every node
    cfg = replace(cfg, output=cfg.output.rstrip("/") if is_uri(cfg.output) else os.path.abspath(cfg.output))
    if cfg.caption is not None:  # a caption or expand backend that cannot work fails here, before any input
        from pipelines.caption import check_config

        check_config(cfg.caption, cfg.expand, flags=("--caption-", "--expand-"))
    out = DataRoot(cfg.output)
    resume = "run the same command again to resume"
    try:
        if out.local:
            out.local_path().mkdir(parents=True, exist_ok=True)
        with Lease(out):
            return _build(cfg, out)
    except OutputLocked as exc:
        raise BuildStopped(f"{exc}", 3) from None
    except KeyboardInterrupt:
        state = BuildState(out)
        done = len(state.done_keys())
        raise BuildStopped(f"interrupted: {done} inputs are done and kept in {out.show(state.state)}; {resume}",
                           130) from None
    except Exception as exc:
        err = _disk_error(exc)
        if err is None and isinstance(exc, OSError) and not out.local:  # the object store refused or is unreachable
            reason = (exc.strerror or str(exc)).splitlines()[0][:300]
            raise BuildStopped(f"cannot use --output {out}: {reason}; inputs finished so far are kept: fix the "
                               f"storage or its credentials, then {resume}", 1) from None
        if err is None:
            raise
        raise BuildStopped(f"cannot write {err.filename or out}: {_DISK_ERRORS[err.errno]} ({err.strerror}); "
                           f"inputs finished so far are kept: make room or fix the output, then {resume}",
                           1) from None


def _build(cfg: BuildConfig, out: DataRoot) -> dict:
    t_start = time.time()
    fp_config = cfg.fingerprinted()
    fp = fingerprint(fp_config)
    state = BuildState.open(out, fp, fp_config, overwrite=cfg.overwrite)
    state.clear_temp_files()

    try:
        items = resolve_inputs(cfg.input)
    except FileNotFoundError as exc:
        raise BuildStopped(str(exc), 2) from None
    retry = {r["key"] for r in state.done_records() if r.get("caption_failed")}  # their failed captions are retried
    done = state.done_keys()
    todo = [it for it in items if it.key not in done or it.key in retry]
    skipped = len(items) - len(todo)
    state.reset_inputs({it.key for it in todo})
    _say(cfg, f"[build] {len(items)} inputs, {skipped} already done (resumed), {len(todo)} to process "
              f"-> {out}  (fingerprint {fp})")

    t_graph = time.time()
    memo = SequenceMemo(cfg.dedup)  # dedup's pair comparisons, made while the stream runs
    if todo:
        ray = _init_ray(cfg.address)
        cfg = _resolve_device(ray, cfg)
        ds = _graph(ray, todo, cfg, state, fp)
        if cfg.caption is not None and cfg.progress:  # what the caption/expand requests wait on, on stderr
            from pipelines.caption import ProgressPrinter

            with ProgressPrinter(_local_state(state, fp) / "progress"):
                _drive(ds, todo, state, cfg, memo)
        else:
            _drive(ds, todo, state, cfg, memo)
    t_graph = time.time() - t_graph

    _say(cfg, "[build] dedup, publish, filter")
    summary = publish.finalize(state, cfg, fp, items=items, skipped=skipped, graph_wall_s=t_graph, memo=memo)
    summary["wall_s"] = round(time.time() - t_start, 3)
    publish.write_summary_and_manifest(state, summary, cfg, fp)
    _say(cfg, publish.format_summary(summary))
    return summary


def _drive(ds, todo: list[InputItem], state: BuildState, cfg: BuildConfig,
           memo: SequenceMemo | None = None) -> None:
    """Consume the graph's output on the driver and write each input's done marker once all its rows landed; with
    ``memo``, compare each finished input's clips with the earlier ones for dedup meanwhile (the driver is idle
    between inputs, and publish then only looks the answers up)."""
    seen: dict[str, list] = defaultdict(list)
    expected: dict[str, int] = {}
    pending = {it.key for it in todo}
    bar = _progress(cfg, len(todo))
    for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        for r in batch.to_pylist():
            if r.get("stop"):  # the writer could not write (full, read-only): stop with its error
                err = json.loads(r["stop"])
                raise OSError(err["errno"], err["strerror"], err["filename"])
            key = r["key"]
            seen[key].append(r)
            expected[key] = r["expected_rows"]
            if len(seen[key]) == expected[key] and key in pending:
                rows = seen.pop(key)
                files = sorted({r["file"] for r in rows if r["file"]})
                clips = sum(1 for r in rows if r["row_kind"] == "clip")
                first = rows[0]
                outcome = "accepted" if clips else (next((r["outcome"] for r in rows if r["outcome"]), "failed"))
                state.mark_done(key, {
                    "key": key, "uri": first["source_uri"], "content_id": first["content_id"],
                    "outcome": outcome, "clips": clips, "failed_clips": sum(1 for r in rows if r["row_kind"] != "clip"),
                    "caption_failed": sum(1 for r in rows if r.get("caption_failed")),
                    "files": files, "source_duration_s": first["source_duration_s"],
                    "source_frames": first["source_frames"],
                    "times": {c: sum(r.get(c) or 0.0 for r in rows) for c in TIMING_COLUMNS},
                })
                pending.discard(key)
                if memo is not None and clips:
                    _remember(memo, state, files)
                if bar is not None:
                    bar.update(1)
    if bar is not None:
        bar.close()
    if pending:  # the graph ended without every row of an input: say so, never hide it
        raise RuntimeError(f"{len(pending)} inputs did not complete (rows missing from the stream); "
                           "re-run the same command to resume them")


def _remember(memo: SequenceMemo, state: BuildState, files: list[str]) -> None:
    """Add the sequence signatures of an input's staged clips without a CLIP embedding (those with one are
    compared by embedding) to ``memo``. Only a head start: whatever fails here, publish compares itself."""
    try:
        for f in files:
            if PurePosixPath(f).name.startswith("clips-"):
                t = state.root.read_table(f, columns=["dedup_sig", "clip_embedding"])
                no_embedding = t.column("clip_embedding").is_null().to_pylist()
                memo.add([g for g, none in zip(t.column("dedup_sig").to_pylist(), no_embedding) if none])
    except Exception as exc:  # noqa: BLE001 - an optimisation must never stop a build
        logging.getLogger(__name__).debug("dedup head start skipped: %s", exc)


def _progress(cfg: BuildConfig, total: int):
    if not cfg.progress:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc="videos", unit="video", dynamic_ncols=True)


def _say(cfg: BuildConfig, msg: str) -> None:
    if cfg.progress:
        print(msg, flush=True)


def main(cfg: BuildConfig) -> dict:
    return build(cfg)

"""Train and evaluate in one go: clip shards -> VAE -> DiT -> pipeline -> eval-text -> training report.

``tessera demo`` runs this after build and caption, at sizes a 2-core CPU finishes in minutes (``PROFILES["cpu"]``).
``benchmarks/run_text_loop.py`` runs it at GPU sizes (``PROFILES["gpu"]``) on a *shot corpus*: single-shot clips
rendered straight into clip shards by ``write_shot_corpus`` (the curation build needs Ray, which the GPU machine
lacks; the shards have the build's columns, so everything after the build is the same code).

Steps (each timed into ``OUT/loop.json``, which is rewritten after every step with ``stages_done``, so a run
killed part-way still says what it finished):
  1. ``train.train_vae.main`` on the shards (square crops of ``size``, ``frames`` frames);
  2. ``train.train_dit.main`` on the same shards, encoded on the fly by the new VAE (latents normalised by their
     measured mean and std), sampling two held-out prompts at the end, and exporting ``OUT/dit/pipeline``;
  3. the combo split and training size are recorded in the pipeline, then ``pipelines.eval_text.main``;
  4. ``write_training_report``: loss curves (from the TensorBoard events), VAE previews, DiT samples and the
     eval sheet on one HTML page.
"""

from __future__ import annotations

import dataclasses
import html
import json
import os
import re
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from curate import synth
from curate.store import atomic_write_bytes, atomic_write_table, write_manifest
from pipelines.eval_text import EvalTextConfig
from train.train_dit import TrainDiTConfig
from train.train_vae import TrainVAEConfig


# What the loop trains and evaluates with unless told otherwise: the fields of the nested configs it does not
# fill in itself (``LOOP_FILLS``). A warm-up of 0 means min(200, steps / 20) for the VAE, min(500, steps / 20) for
# the DiT; eval's size 0 means the loop's ``size``.
LOOP_VAE = TrainVAEConfig(preset="tiny", steps=150, batch_size=4, lr=5e-4, ema_decay=0.99, time_budget_s=0.0,
                          warmup_steps=0, image_prob=0.1, holdout_pct=0.0, keep_last=1, resume=False)
LOOP_DIT = TrainDiTConfig(preset="tiny", hidden=0, depth=0, heads=0, steps=300, lr=5e-4, ema_decay=0.99,
                          time_budget_s=0.0, warmup_steps=0, patch=(1, 2, 2), pooled_text=False, time_shift=1.0,
                          t_uniform=0.0, cooldown=0.0, profile_steps=0, task_mix=(0.5, 0.15, 0.1, 0.05, 0.1, 0.1),
                          token_budget=4096, max_batch=32, compile=False, caption_mix=(("short", 1.0),), keep_last=1,
                          resume=False, sample_seeds=(0,))
LOOP_EVAL = EvalTextConfig(per_triple=1, heldout_repeat=1, steps=20, cfg=5.0, limit=0, size=0)

# The fields of the nested configs that ``run`` sets from the loop's own (paths, sizes, seeds, device, cadence):
# an override of one of them would be overwritten, so ``override`` refuses it.
LOOP_FILLS: dict[str, tuple[str, ...]] = {
    "vae": ("data_root", "run_dir", "resolutions", "num_frames", "num_workers", "seed", "device", "log_every",
            "preview_every", "ckpt_every"),
    "dit": ("data_root", "vae", "run_dir", "text_path", "bucket_areas", "bucket_frames", "profile_from", "stop_at",
            "seed", "device", "log_every", "ckpt_every", "sample_every", "sample_prompts", "sample_frames",
            "sample_size", "sample_steps", "sample_cfg"),
    "eval": ("pipeline", "out", "prompt_seed", "frames", "device"),
}


@dataclass(frozen=True)
class LoopConfig:
    """The loop's own knobs, and the VAE, DiT and eval-text configs it drives, nested whole (``vae``, ``dit``,
    ``eval``): any of their fields can be set, except the ones the loop fills in (``LOOP_FILLS``). ``override``
    changes fields by name: nested (``vae.steps``) or the flat names of the time before nesting (``vae_steps``)."""

    dataset: str = ""  # clip shards (a build's output, or write_shot_corpus)
    out: str = "runs/loop"
    size: int = 64  # square training and generation size (pixels; a multiple of 16)
    frames: int = 17  # 1 + 4k
    split_seed: int = 0  # the held-out colour-shape pairs (curate.synth.ComboSplit.default)
    # VAE (train.train_vae.TrainVAEConfig)
    vae: TrainVAEConfig = LOOP_VAE
    vae_frames: int = 0  # frames per VAE training clip (1 + 4k; 0: ``frames``). The VAE is causal and
    # convolutional, so it trains on shorter clips than it encodes
    vae_run: str = ""  # a VAE run folder of an earlier loop (its ``checkpoints/``): skip VAE training and use it
    # DiT (train.train_dit.TrainDiTConfig; dit.profile_steps: torch.profiler over that many DiT steps from step 50,
    # or half of dit.steps, into OUT/dit/profile)
    dit: TrainDiTConfig = LOOP_DIT
    dit_stop_after_s: float = 0.0  # stop the DiT (as well as at dit.time_budget_s) this many seconds after the loop
    # started: the DiT gets whatever the VAE and the encoding left of a fixed box (eval-text and the report follow)
    # eval (pipelines.eval_text.EvalTextConfig; its steps and cfg also sample the DiT at the end of training)
    eval: EvalTextConfig = LOOP_EVAL
    eval_cfg_sweep: tuple[float, ...] = ()  # further guidance scales, each a whole eval-text of its own (pick one by
    # the seen split: the held-out pairs are the test)
    eval_steps_sweep: tuple[int, ...] = ()  # further sampling step counts at eval.cfg, likewise
    eval_shift_sweep: tuple[float, ...] = ()  # further sampler time-shift scales (0: an even grid), likewise
    eval_solver_sweep: tuple[str, ...] = ()  # further samplers ("heun", "sde", "sde:0.5"), likewise
    # systems
    text_path: str = ""  # text encoder folder ("" = the packaged MiniLM)
    device: str = "auto"
    num_workers: int = 0
    seed: int = 0


# The flat names LoopConfig had before it nested the configs, and the field each one is now.
FLAT_NAMES: dict[str, str] = {
    "vae_preset": "vae.preset", "vae_steps": "vae.steps", "vae_batch": "vae.batch_size", "vae_lr": "vae.lr",
    "vae_ema": "vae.ema_decay", "vae_time_s": "vae.time_budget_s", "vae_warmup": "vae.warmup_steps",
    "dit_preset": "dit.preset", "dit_hidden": "dit.hidden", "dit_depth": "dit.depth", "dit_heads": "dit.heads",
    "dit_steps": "dit.steps", "dit_lr": "dit.lr", "dit_ema": "dit.ema_decay", "dit_time_s": "dit.time_budget_s",
    "dit_warmup": "dit.warmup_steps", "dit_patch": "dit.patch", "dit_pooled_text": "dit.pooled_text",
    "dit_time_shift": "dit.time_shift", "dit_t_uniform": "dit.t_uniform", "dit_cooldown": "dit.cooldown",
    "dit_profile_steps": "dit.profile_steps", "task_mix": "dit.task_mix", "token_budget": "dit.token_budget",
    "max_batch": "dit.max_batch", "compile": "dit.compile",
    "eval_steps": "eval.steps", "eval_cfg": "eval.cfg", "eval_per_triple": "eval.per_triple",
    "eval_heldout_repeat": "eval.heldout_repeat", "eval_limit": "eval.limit", "eval_size": "eval.size",
    "vae_edge_weight": "vae.edge_weight", "eval_batch": "eval.batch", "eval_workers": "eval.workers",
}


def field_names(cfg: LoopConfig) -> list[str]:
    """Every name ``override`` takes: the loop's fields, ``part.field`` for the nested ones it does not fill in,
    and the old flat names."""
    names = []
    for f in dataclasses.fields(cfg):
        if f.name in LOOP_FILLS:
            names += [f"{f.name}.{g.name}" for g in dataclasses.fields(getattr(cfg, f.name))
                      if g.name not in LOOP_FILLS[f.name]]
        else:
            names.append(f.name)
    return names + list(FLAT_NAMES)


def override(cfg: LoopConfig, changes: dict[str, object]) -> LoopConfig:
    """``cfg`` with ``changes`` applied: ``{"vae.steps": 600, "dit_lr": 1e-3, "size": 32}`` (nested or old flat
    names). An unknown name, or a nested field the loop fills in itself, raises ``ValueError``."""
    top: dict[str, object] = {}
    nested: dict[str, dict[str, object]] = {}
    for name, value in changes.items():
        path = FLAT_NAMES.get(name, name)
        part, dot, field = path.partition(".")
        if not dot and part in {f.name for f in dataclasses.fields(cfg)} and part not in LOOP_FILLS:
            top[part] = value
        elif dot and part in LOOP_FILLS and field in {f.name for f in dataclasses.fields(getattr(cfg, part))}:
            if field in LOOP_FILLS[part]:
                raise ValueError(f"{name}: the loop sets {path} itself (from its own fields: dataset, out, size, "
                                 "frames, seed, device, ...)")
            nested.setdefault(part, {})[field] = value
        else:
            raise ValueError(f"{name}: not a LoopConfig field (nested like vae.steps, or an old flat name like "
                             "vae_steps)")
    top.update({part: dataclasses.replace(getattr(cfg, part), **fields) for part, fields in nested.items()})
    return dataclasses.replace(cfg, **top)


def _label(value) -> str:
    """A sweep value as a key: numbers as %g (5.0 -> "5"), anything else as given."""
    return f"{value:g}" if isinstance(value, (int, float)) else str(value)


PROFILES: dict[str, LoopConfig] = {
    # the demo on a 2-core CPU: trained by steps, not by the clock, so a busy machine takes longer and learns the
    # same. The 4x-spatial VAE with DC-AE shortcuts and a grouped encoder (tiny-f4c8-dc-grouped, 0.1 M parameters)
    # on 9-frame clips; 2x2 DiT patches (32 latent values per token, under the tiny DiT's width of 64: with 4x4
    # patches, 128 values, half of every patch kept its noise, model.dit.narrow_output). benchmarks/RESULTS.md,
    # 2026-12-05: after 600 steps on the demo's clips the VAE's round trip keeps colour 1.00 on the eval's seen
    # prompts (tiny-f4c8 without the shortcuts: 0.25); the DiT's loss ends at 0.25 against 0.71 with 4x4 patches,
    # and its clips still read ~0 (colour and background mixed). The DiT recipe of the GPU profile at the tiny size
    # (pooled text, 3x time shift, mostly text-to-video, lr 1e-3) costs the same steps and, replayed on one H100 in
    # fp32 from the same VAE and data (benchmarks/bench_demo_dit.py, 3 seeds, 12 seen shots), read seen colour 0.17
    # (0.06-0.18) against 0.06 (0.03-0.06); models 10-80x the compute reached ~0.5 (RESULTS.md, 2026-12-05).
    # eval-text: 4 seen (colour-shape pairs the training clips showed) and 4 held-out shots
    "cpu": LoopConfig(vae_frames=9, vae=replace(LOOP_VAE, preset="tiny-f4c8-dc-grouped", steps=600, batch_size=2,
                                                lr=1e-3),
                      dit=replace(LOOP_DIT, steps=4000, patch=(1, 2, 2), pooled_text=True, time_shift=3.0, lr=1e-3,
                                  task_mix=(0.85, 0.05, 0.03, 0.02, 0.03, 0.02)),
                      eval=replace(LOOP_EVAL, limit=4)),
    # seconds: the loop's plumbing (tests, a quick look), nothing learned
    # (eval-text at 64 px, where its detector reads every shape: one seen and one held-out shot, 4 phrasings x 4 seeds)
    "smoke": LoopConfig(size=32, vae=replace(LOOP_VAE, steps=6, batch_size=2),
                        dit=replace(LOOP_DIT, steps=8, token_budget=1024, max_batch=8),
                        eval=replace(LOOP_EVAL, steps=3, limit=1, size=64)),
    # one H100/H200, ~10 minutes in all with a 4096-clip shot corpus. The VAE trains on 9-frame clips; the DiT
    # takes batches of 128 clips, mostly text-to-video; short warm-ups, since each model gets ~1-2.5k steps.
    # Measured on one H200 (benchmarks/RESULTS.md, 2026-12-03): the 4x-spatial VAE keeps shapes, 4x4 patches keep
    # 320 tokens per clip, the 3x time shift is what lets the DiT learn motion on its latents, and DiT-B compiled
    # per block (0.106-0.125 s per step) is what moved shape. The eval asks 1,728 prompts (18 held-out pairs, 4
    # phrasings, 4 seeds) in batches of 64 with the DiT under bf16 autocast (768 took 40 s on a shared H100,
    # 2026-12-05), so the DiT steps until 480 s after the loop began, whatever the VAE and the encoding took.
    # A VAE trained on 17-frame clips with an edge loss (vae.edge_weight) was tried on 2026-12-05 and not adopted:
    # in 150 s on a shared H100 it kept shape no better (RESULTS.md). The VAE's encoder is grouped (since
    # 2026-12-05), so given frames anywhere in a clip are pinned to their exact in-clip latents; its cost at this
    # size was measured once (one seed, 400 steps on an H100: 22.01 against 22.27 dB), at 64 px over 3 seeds -0.06 dB
    "gpu": LoopConfig(size=128, vae_frames=9, dit_stop_after_s=480, num_workers=8,
                      vae=replace(LOOP_VAE, preset="small-f4c4-grouped", steps=20000, batch_size=16, lr=8e-4,
                                  ema_decay=0.999, warmup_steps=50, time_budget_s=150),
                      dit=replace(LOOP_DIT, preset="B", patch=(1, 4, 4), pooled_text=True, time_shift=3.0, compile=True,
                                  steps=100000, lr=4e-4, ema_decay=0.999, warmup_steps=100, time_budget_s=0,
                                  t_uniform=0.3, cooldown=0.2, task_mix=(0.85, 0.05, 0.03, 0.02, 0.03, 0.02),
                                  token_budget=40960, max_batch=128),
                      eval=replace(LOOP_EVAL, steps=20, per_triple=1, heldout_repeat=1, batch=64)),
}


# Floors under which a stage "learned nothing", per profile (eval-text's accuracy on the seen prompts; colour
# has 6 values, so chance is ~0.17). The smoke profile only checks the plumbing and has none.
REPORT_FLOORS = {"vae_round_trip_color": 0.5, "generated_color": 0.3}  # the training report's warnings, any profile
LEARN_FLOORS: dict[str, dict[str, float]] = {"cpu": REPORT_FLOORS, "gpu": {"vae_round_trip_color": 0.8,
                                                                           "generated_color": 0.6}}


def learning_warnings(loop: dict, floors: dict[str, float]) -> list[str]:
    """One line per stage that stayed under its floor in a loop summary (``pipelines.loop.run``'s return)."""
    out = []
    trip = ((loop.get("detector_ceiling") or {}).get("vae_round_trip") or {}).get("seen", {}).get("color")
    if "vae_round_trip_color" in floors and (trip is None or trip < floors["vae_round_trip_color"]):
        out.append(f"the VAE learned too little: colour read back after its round trip {_fmt(trip)} on seen prompts "
                   f"(floor {floors['vae_round_trip_color']:g}) after {loop.get('vae', {}).get('steps')} steps")
    gen = ((loop.get("accuracy") or {}).get("seen") or {}).get("color")
    if "generated_color" in floors and (gen is None or gen < floors["generated_color"]):
        out.append(f"the DiT learned too little: colour of generated clips {_fmt(gen)} on seen prompts "
                   f"(floor {floors['generated_color']:g}, chance ~0.17) after {loop.get('dit', {}).get('steps')} "
                   "steps")
    return out


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:.2f}"


# ----------------------------------------------------------------------------------------------------------
# A shot corpus: single-shot clips straight into clip shards (no Ray)
# ----------------------------------------------------------------------------------------------------------


SHOT_COLUMNS = ("clip_id", "source_uri", "scene_index", "clip_mp4", "clip_path", "width", "height", "num_frames",
                "fps", "duration_s", "caption_short")


def _render_shard(args: tuple) -> str:
    """Render and encode clips ``[start, stop)`` into one shard; returns its path. Clip i uses seed (seed, i)."""
    import pyarrow as pa

    from curate.media import encode_mp4
    from curate.schema import clip_columns_schema

    root, start, stop, size, frames, heldout, seed, fps = args
    split = synth.ComboSplit(heldout=tuple(tuple(p) for p in heldout))
    vocab = [(c, s, m) for c in synth.COLORS for s in synth.SHAPES for m in synth.MOTIONS
             if not split.is_heldout(c, s)]
    rows = []
    for i in range(start, stop):
        rng = np.random.default_rng([seed, i])
        shot = synth.random_shot(rng, vocab[int(rng.integers(len(vocab)))], frames)
        data = encode_mp4(synth.render_clip(shot, (size, size), seed=int(rng.integers(1 << 30))), fps=fps)
        rows.append({"clip_id": f"shot-{seed}-{i:06d}", "source_uri": f"synthetic://shot/{seed}/{i}",
                     "scene_index": 0, "clip_mp4": data, "clip_path": None, "width": size, "height": size,
                     "num_frames": frames, "fps": float(fps), "duration_s": frames / fps,
                     "caption_short": shot.caption})
    schema = clip_columns_schema(SHOT_COLUMNS)  # the build's column types
    path = Path(root) / "clips" / f"part-{start:06d}.parquet"
    atomic_write_table(path, pa.Table.from_pylist(rows, schema=schema), row_group_size=64)
    return str(path)


def write_shot_corpus(root: str | Path, num_clips: int, size: int = 128, frames: int = 17, split_seed: int = 0,
                      seed: int = 0, fps: int = 24, workers: int = 0, clips_per_shard: int = 512) -> dict:
    """Clip shards of ``num_clips`` single-shot clips over the whole synthetic vocabulary (every colour, shape and
    motion), except the held-out colour-shape pairs of ``ComboSplit.default(split_seed)``. Deterministic from
    ``seed``; ``workers`` processes (0: all cores). Returns (and writes) ``corpus.json``."""
    root = Path(root)
    (root / "clips").mkdir(parents=True, exist_ok=True)
    split = synth.ComboSplit.default(split_seed)
    jobs = [(str(root), k, min(k + clips_per_shard, num_clips), size, frames, split.heldout, seed, fps)
            for k in range(0, num_clips, clips_per_shard)]
    t0 = time.time()
    with ProcessPoolExecutor(max_workers=workers or os.cpu_count()) as pool:
        shards = list(pool.map(_render_shard, jobs))
    info = {"clips": num_clips, "shards": [Path(s).name for s in shards], "size": size, "frames": frames,
            "split": split.to_dict(), "seed": seed, "seconds": round(time.time() - t0, 1)}
    (root / "corpus.json").write_text(json.dumps(info, indent=1))
    write_manifest(root, (root / "clips").glob("*.parquet"))
    return info


# ----------------------------------------------------------------------------------------------------------
# Training report: curves, previews, samples, eval
# ----------------------------------------------------------------------------------------------------------


def read_scalars(tb_dir: str | Path) -> dict[str, tuple[list[int], list[float]]]:
    """Every scalar of a TensorBoard run folder: ``{tag: (steps, values)}``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tb_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: ([e.step for e in acc.Scalars(tag)], [e.value for e in acc.Scalars(tag)])
            for tag in acc.Tags().get("scalars", [])}


def plot_curves(runs: dict[str, dict], path: Path) -> Path:
    """One panel per (run, tag) of the loss and PSNR curves, plus one per run with the loss of each latent frame
    (``frames/*`` tags, one line each)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels: list[tuple[str, str, dict]] = []
    for run, scalars in runs.items():
        panels += [(run, tag, {tag: xy}) for tag, xy in sorted(scalars.items())
                   if tag.startswith("loss/") or tag == "train/psnr"]
        frames = {tag: xy for tag, xy in sorted(scalars.items(), key=lambda kv: _natural(kv[0]))
                  if tag.startswith("frames/")}
        if frames:
            panels.append((run, "loss per latent frame", frames))
    cols = 3
    rows = max(1, -(-len(panels) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 2.8 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (run, title, lines) in zip(axes.flat, panels):
        ax.axis("on")
        for tag, (steps, values) in lines.items():
            ax.plot(steps, values, lw=1.2, label=tag.split("/", 1)[1])
        ax.set_title(f"{run}: {title}", fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        if len(lines) > 1:
            ax.legend(fontsize=6)
        every = [v for _, vs in lines.values() for v in vs]
        if title.startswith("loss") and every and min(every) > 0:
            ax.set_yscale("log")
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _natural(tag: str) -> tuple:
    """Sort key that puts ``flow_t10`` after ``flow_t9``."""
    return tuple(int(x) if x.isdigit() else x for x in re.split(r"(\d+)", tag))


def markdown_html(text: str) -> str:
    """The little Markdown that eval-text writes (``|`` tables, ``#`` headings, ``**bold**``, paragraphs) as HTML."""
    out, table = [], []

    def flush() -> None:
        if table:
            rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in table
                    if not re.fullmatch(r"\|?[\s:|-]+\|?", line.strip())]
            head, body = rows[0], rows[1:]
            out.append("<table><tr>" + "".join(f"<th>{c}</th>" for c in head) + "</tr>"
                       + "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in body) + "</table>")
            table.clear()

    for line in html.escape(text).splitlines():
        line = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", line)
        if line.lstrip().startswith("|"):
            table.append(line)
            continue
        flush()
        if line.startswith("#"):
            out.append(f"<h3>{line.lstrip('#').strip()}</h3>")
        elif line.strip():
            out.append(f"<p>{line}</p>")
    flush()
    return "\n".join(out)


def _run_summary(summary: dict) -> str:
    """A few rows a reader wants first: steps and loss of each model, seconds per stage, eval-text accuracy."""
    rows = []
    for name in ("vae", "dit"):
        m = summary.get(name) or {}
        if m:
            loss = (f"{m['first_loss']:.4g} -> {m['last_loss']:.4g}" if m.get("first_loss") is not None
                    and m.get("last_loss") is not None else "-")
            rows.append((name.upper(), f"{m.get('steps')} steps, loss {loss}"))
    secs = summary.get("seconds") or {}
    if secs:
        rows.append(("seconds", ", ".join(f"{k[:-2]} {v}" for k, v in secs.items())))
    for split, acc in (summary.get("accuracy") or {}).items():
        rows.append((f"eval-text {split}", ", ".join(f"{a} {acc[a]:.2f}" for a in ("color", "shape", "motion",
                                                                                    "attribute") if a in acc)))
    trip = ((summary.get("detector_ceiling") or {}).get("vae_round_trip") or {}).get("seen")
    if trip:
        rows.append(("VAE round trip, seen", ", ".join(f"{a} {trip[a]:.2f}" for a in ("color", "shape", "motion")
                                                        if a in trip)))
    return "<table>" + "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows) + \
        "</table>"


REPORT_CSS = ("body{font-family:sans-serif;margin:2em;max-width:1200px} table{border-collapse:collapse;margin:8px 0}"
              "th,td{border:1px solid #ccd;padding:3px 8px;text-align:left;font-size:13px} th{background:#eef1f6}"
              ".warn{background:#fdecee;border:1px solid #d1495b;border-radius:8px;padding:8px 14px}"
              ".allgood{background:#eaf6ee;border:1px solid #2f8a4f;border-radius:8px;padding:8px 14px}")


def write_training_report(out: str | Path, vae_run: str | Path, dit_run: str | Path, eval_dir: str | Path | None,
                          summary: dict | None = None, warnings: list[str] | None = None) -> Path:
    """``OUT/index.html``: warnings first, a short run summary, the curves, the last VAE preview, the last DiT
    sample grid, the eval-text tables rendered, and the raw run summary as ``OUT/loop.json`` behind a link."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    runs = {name: read_scalars(Path(run) / "tb") for name, run in (("vae", vae_run), ("dit", dit_run))
            if (Path(run) / "tb").is_dir()}
    plot_curves(runs, out / "curves.png")
    figures = [("Training curves", "curves.png")]
    previews = sorted((Path(vae_run) / "previews").glob("*.png"))
    if previews:
        shutil.copy(previews[-1], out / "vae-preview.png")
        figures.append((f"VAE: input (top) and reconstruction (bottom), {previews[-1].stem}", "vae-preview.png"))
    grids = sorted((Path(dit_run) / "samples").glob("step-*/grid.png"))
    if grids:
        shutil.copy(grids[-1], out / "dit-samples.png")
        figures.append((f"DiT samples at fixed prompts and seeds, {grids[-1].parent.name}", "dit-samples.png"))
    table = ""
    if eval_dir and (Path(eval_dir) / "results.md").is_file():
        table = (Path(eval_dir) / "results.md").read_text()
        if (Path(eval_dir) / "sheet.png").is_file():
            shutil.copy(Path(eval_dir) / "sheet.png", out / "eval-sheet.png")
            figures.append(("eval-text, held-out prompts: generated (left) vs ground-truth render (right); "
                            "[CSM] = colour, shape, motion right", "eval-sheet.png"))
    body = []
    if warnings:
        body.append("<div class='warn'><b>Check these first</b><ul>"
                    + "".join(f"<li>{html.escape(w)}</li>" for w in warnings) + "</ul></div>")
    elif warnings is not None:
        body.append("<div class='allgood'>No warnings: both models learned more than the floors.</div>")
    if summary:
        (out / "loop.json").write_text(json.dumps(summary, indent=1, default=str))
        body.append("<h2>Run summary</h2>" + _run_summary(summary) + "<p><a href='loop.json'>the whole run summary "
                    "(JSON)</a></p>")
    body += [f"<h2>{html.escape(t)}</h2><img src='{src}' style='max-width:100%'>" for t, src in figures]
    if table:
        body.append("<h2>eval-text</h2>" + markdown_html(table))
    (out / "index.html").write_text("<!doctype html><meta charset='utf-8'><title>Tessera training report</title>"
                                    f"<style>{REPORT_CSS}</style><body><h1>Tessera training report</h1>"
                                    + "\n".join(body) + "</body>")
    return out / "index.html"


# ----------------------------------------------------------------------------------------------------------
# The loop
# ----------------------------------------------------------------------------------------------------------


def _record_in_pipeline(pipeline: Path, extra: dict) -> None:
    """Add keys to ``pipeline.json``'s ``extra`` (atomic rewrite)."""
    meta_path = pipeline / "pipeline.json"
    meta = json.loads(meta_path.read_text())
    meta["extra"] = {**meta.get("extra", {}), **extra}
    atomic_write_bytes(meta_path, json.dumps(meta, indent=1, default=str).encode())


def shown_pairs(dataset: str) -> list[list]:
    """``[[colour, shape, clips], ...]``: the colour-shape pairs the captions of a dataset's kept clips name (the
    clips the DiT trains on; ``curate.synth.caption_pair``), most shown first. eval-text asks its seen prompts of
    these only: a small corpus shows few of the pairs the split allows."""
    from curate.store import open_dataset, parquet_file
    from train.data import read_selection

    keep, counts = read_selection(dataset), {}
    for path in open_dataset(dataset).shards:
        t = parquet_file(path).read(columns=["clip_id", "caption_short"])
        for cid, caption in zip(t.column("clip_id").to_pylist(), t.column("caption_short").to_pylist()):
            pair = synth.caption_pair(caption) if keep is None or keep.get(cid, False) else None
            if pair:
                counts[pair] = counts.get(pair, 0) + 1
    return [[c, s, n] for (c, s), n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]


def _last_step(ckpt_dir: Path) -> int | None:
    """The step of the newest ``step-*`` checkpoint in a folder (None when the names say nothing)."""
    steps = [int(m.group(1)) for p in ckpt_dir.iterdir() if (m := re.search(r"(\d+)", p.name))]
    return max(steps) if steps else None


def vae_train_config(cfg: LoopConfig, run_dir: Path) -> TrainVAEConfig:
    """The ``TrainVAEConfig`` step 1 trains with: ``cfg.vae`` with the fields the loop fills in."""
    vae = cfg.vae
    return replace(vae, data_root=cfg.dataset, run_dir=str(run_dir), resolutions=((cfg.size, cfg.size),),
                   num_frames=(cfg.vae_frames or cfg.frames,), num_workers=cfg.num_workers, seed=cfg.seed,
                   device=cfg.device, warmup_steps=vae.warmup_steps or min(200, max(1, vae.steps // 20)),
                   log_every=10 if vae.time_budget_s else max(1, vae.steps // 50), preview_every=vae.steps,
                   ckpt_every=vae.steps)


def dit_train_config(cfg: LoopConfig, vae_run: Path, run_dir: Path, sample_prompts: tuple[str, ...],
                     t_start: float) -> TrainDiTConfig:
    """The ``TrainDiTConfig`` step 2 trains with: ``cfg.dit`` with the fields the loop fills in (``t_start``: when
    the loop began; the DiT samples ``sample_prompts`` at eval's steps and guidance when it ends)."""
    dit = cfg.dit
    return replace(dit, data_root=cfg.dataset, vae=str(vae_run / "checkpoints"), run_dir=str(run_dir),
                   text_path=cfg.text_path, bucket_areas=(cfg.size * cfg.size,), bucket_frames=(cfg.frames,),
                   profile_from=min(50, dit.steps // 2),
                   warmup_steps=dit.warmup_steps or min(500, max(1, dit.steps // 20)),
                   stop_at=t_start + cfg.dit_stop_after_s if cfg.dit_stop_after_s else 0.0, seed=cfg.seed,
                   device=cfg.device,
                   log_every=10 if dit.time_budget_s or cfg.dit_stop_after_s else max(1, dit.steps // 100),
                   ckpt_every=dit.steps, sample_every=dit.steps, sample_prompts=sample_prompts,
                   sample_frames=cfg.frames, sample_size=(cfg.size, cfg.size), sample_steps=cfg.eval.steps,
                   sample_cfg=cfg.eval.cfg)


def eval_config(cfg: LoopConfig, pipeline: Path, out: Path) -> EvalTextConfig:
    """The ``EvalTextConfig`` of step 3 (each sweep changes one field of it): ``cfg.eval`` with the fields the loop
    fills in."""
    return replace(cfg.eval, pipeline=str(pipeline), out=str(out), prompt_seed=cfg.seed, frames=cfg.frames,
                   size=cfg.eval.size or cfg.size, device=cfg.device)


def _train_vae(cfg: LoopConfig, run_dir: Path) -> dict:
    from train.train_vae import main as train_vae

    return train_vae(vae_train_config(cfg, run_dir))


def run(cfg: LoopConfig) -> dict:
    from pipelines.eval_text import main as eval_text
    from train.train_dit import main as train_dit

    if cfg.size % 16 or cfg.frames % 4 != 1 or (cfg.vae_frames and cfg.vae_frames % 4 != 1):
        raise ValueError(f"size must be a multiple of 16 and frames 1 + 4k (got size {cfg.size}, frames "
                         f"{cfg.frames}, vae_frames {cfg.vae_frames})")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    split = synth.ComboSplit.default(cfg.split_seed)
    times: dict[str, float] = {}
    summary: dict = {"config": dataclasses.asdict(cfg), "seconds": times, "stages_done": []}
    t_start = time.time()

    def done(stage: str) -> None:  # OUT/loop.json after every stage, so a run killed later still says what it did
        summary["stages_done"].append(stage)
        atomic_write_bytes(out / "loop.json", json.dumps(summary, indent=1).encode())  # keys in stage order

    t = time.time()  # 1. VAE ---------------------------------------------------------------------------
    vae_run = Path(cfg.vae_run) if cfg.vae_run else out / "vae"
    if cfg.vae_run:
        if not (vae_run / "checkpoints").is_dir():
            raise FileNotFoundError(f"vae_run {vae_run} has no checkpoints/ folder")
        print(f"[loop] 1/4 reusing the VAE of {vae_run}", flush=True)
        vae = {"step": _last_step(vae_run / "checkpoints"), "losses": []}
    else:
        print(f"[loop] 1/4 training the VAE ({cfg.vae.preset}, {cfg.vae.steps} steps) -> {vae_run}", flush=True)
        vae = _train_vae(cfg, vae_run)
    times["vae_s"] = round(time.time() - t, 1)
    summary["vae"] = {"run": str(vae_run), "steps": vae["step"],
                      "first_loss": vae["losses"][0] if vae["losses"] else None,
                      "last_loss": float(np.mean(vae["losses"][-10:])) if vae["losses"] else None}
    done("vae")

    t = time.time()  # 2. DiT ---------------------------------------------------------------------------
    print(f"[loop] 2/4 training the DiT ({cfg.dit.preset}, {cfg.dit.steps} steps) -> {out / 'dit'}", flush=True)
    held = [p["prompt"] for p in synth.eval_prompts(split, 1, cfg.seed, seeds=1, phrasings=("train",))
            if p["heldout"]][:2]
    dit = train_dit(dit_train_config(cfg, vae_run, out / "dit", tuple(held), t_start))
    times["dit_s"] = round(time.time() - t, 1)
    pipeline = out / "dit" / "pipeline"
    _record_in_pipeline(pipeline, {"combo_split": split.to_dict(), "train_size": cfg.size,
                                   "shown_pairs": shown_pairs(cfg.dataset)})
    summary["dit"] = {"steps": dit["step"], "first_loss": dit["losses"][0] if dit["losses"] else None,
                      "last_loss": float(np.mean(dit["losses"][-10:])) if dit["losses"] else None,
                      "seconds": dit["seconds"], "encode_seconds": dit["encode_seconds"],
                      "time_budget_s": dit["time_budget_s"]}
    summary["pipeline"] = str(pipeline)
    done("dit")

    t = time.time()  # 3. eval-text ---------------------------------------------------------------------
    print(f"[loop] 3/4 eval-text on {pipeline}", flush=True)
    ev_cfg = eval_config(cfg, pipeline, out / "eval-text")
    ev = eval_text(ev_cfg)
    times["eval_s"] = round(time.time() - t, 1)
    summary.update(accuracy=ev["accuracy"], detector_ceiling=ev["detector_ceiling"])
    done("eval")
    for field, values, key in (("cfg", cfg.eval_cfg_sweep, "cfg_sweep"), ("steps", cfg.eval_steps_sweep, "steps_sweep"),
                               ("sample_shift", cfg.eval_shift_sweep, "shift_sweep"),
                               ("solver", cfg.eval_solver_sweep, "solver_sweep")):
        if not values:
            continue
        base = ev["time_shift"] if field == "sample_shift" else getattr(ev_cfg, field)  # -1 means the trained one
        sweep = {_label(base): {"accuracy": ev["accuracy"], "seconds": times["eval_s"]}}
        for value in values:  # the same model and prompts, one sampler setting changed
            t = time.time()
            print(f"[loop] 3/4 eval-text at {field} {_label(value)}", flush=True)
            folder = re.sub(r"[^A-Za-z0-9._-]", "_", f"eval-text-{field}{_label(value)}")
            other = eval_text(dataclasses.replace(ev_cfg, **{field: type(getattr(ev_cfg, field))(value)},
                                                  out=str(out / folder)))
            sweep[_label(value)] = {"accuracy": other["accuracy"], "seconds": round(time.time() - t, 1)}
        times[f"eval_{key}_s"] = round(sum(v["seconds"] for v in sweep.values()) - times["eval_s"], 1)
        numeric = all(isinstance(v, (int, float)) for v in (base, *values))
        summary[key] = dict(sorted(sweep.items(), key=lambda kv: float(kv[0]))) if numeric else sweep
        done(f"eval_{key}")
    t = time.time()  # 4. report ------------------------------------------------------------------------
    print(f"[loop] 4/4 training report -> {out / 'report'}", flush=True)
    summary["warnings"] = learning_warnings(summary, REPORT_FLOORS)
    summary["report"] = str(write_training_report(out / "report", vae_run, out / "dit", out / "eval-text", summary,
                                                  summary["warnings"]))
    times["report_s"] = round(time.time() - t, 1)
    done("report")
    return summary

"""``tessera eval-text``: does the model draw what the prompt says? Attribute accuracy on the synthetic corpus.

A trained pipeline (``TextToVideo`` folder) generates clips for the prompts of ``curate.synth.eval_prompts``:
(colour, shape, motion) triples over the corpus's whole vocabulary (9 colours, 6 shapes, 4 directions), each over
a random background, asked in several phrasings (``synth.PHRASINGS``: the training captions' own wording, the
clauses reordered, synonyms such as "crimson disc drifting leftward", and a distractor clause) with several
generation seeds each. A deterministic detector (``curate.detect``) that reads every colour and shape the corpus
draws says which colour, shape and motion direction each clip shows, and the accuracy of each attribute is
reported separately for **seen** combinations (colour-shape pairs the training corpus showed) and **held-out**
ones (pairs no training clip showed, in any motion), so composition is measured apart from memory. The held-out
pairs (``synth.ComboSplit.default``) cover every colour and shape at least twice, and none is one detector
confusion away from a training pair: a training clip is never read as a held-out pair.

Steps:
  1. the split: the pipeline's own (recorded by the training loop in ``pipeline.json``), a JSON file, or
     ``ComboSplit.default(seed)``; with ``expand``, every prompt also goes through the prompt expander
     (``caption.expand``, the configured backend) and is generated a second time from the expanded text;
  2. the detector's ceiling on this very setting: it reads the ground-truth render of every (shot, seed), raw and
     after a round trip through the pipeline's VAE (what a perfect DiT could at best produce), so a low score can
     be blamed on the model or on the detector with numbers, not guesses;
  3. generation and detection. Generation and the VAE round trips run ``batch`` prompts per network call (each
     prompt keeps the noise of its own seed); the detector reads each batch in ``workers`` processes while the
     next one generates;
  4. ``results.json`` (every prompt, detection and verdict), ``results.md`` (the tables) and ``sheet.png``
     (held-out generations next to their ground-truth renders).

Attribute accuracy = mean of the colour, shape and motion accuracies; "all" = the share of clips with all three
right. Every accuracy comes with its spread: the accuracy of each seed index alone (seed k of every prompt),
their standard deviation and a 95 % t-interval over seeds, and a 95 % bootstrap interval that resamples the
colour-shape pairs (which pairs are held out is itself a draw). One run of the loop is one draw of training
noise too: a headline is the median of at least three runs, with their spread.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from curate import synth

ATTRIBUTES = ("color", "shape", "motion")


@dataclass(frozen=True)
class EvalTextConfig:
    pipeline: str = ""  # a TextToVideo folder (pipeline.json + safetensors)
    out: str = ""  # results folder ("" = PIPELINE/../eval-text)
    split: str = ""  # ComboSplit JSON; "" = the pipeline's recorded split, else ComboSplit.default(split_seed)
    split_seed: int = 0
    per_triple: int = 1  # shots (backgrounds) per (colour, shape, motion) triple
    heldout_repeat: int = 1  # times as many shots per held-out triple
    seeds: int = 4  # generation seeds per prompt
    phrasings: tuple[str, ...] = synth.PHRASINGS  # prompt wordings (synth.PHRASINGS); "train" is the captions'
    seen_motions: int = 1  # motions asked per seen colour-shape pair (0: all); held-out pairs get every motion
    seen: str = "shown"  # the seen group: "shown" = the split's seen pairs the training clips showed (the loop
    # records them in pipeline.json; without that record, as "split"), "split" = every pair the split lets training
    # show, shown or not
    expand: bool = False  # also generate from every prompt rewritten by the prompt expander (caption.expand)
    expand_backend: str = "openai"  # the expander's backend: openai (OpenAI-compatible server) | transformers | off
    expand_model: str = ""  # the expander's model (transformers: a local folder; openai: overrides the server's)
    prompt_seed: int = 0
    frames: int = 17
    size: int = 0  # square side in pixels; 0 = the training size recorded in the pipeline (else 64)
    steps: int = 30
    cfg: float = 5.0
    sample_shift: float = -1.0  # sampler time-shift scale (-1: the one the DiT trained with; 0: unshifted)
    solver: str = "euler"  # model.flow.denoise: euler | heun | sde | sde:ETA
    device: str = "auto"
    limit: int = 0  # evaluate only the first N shots of each group (0 = all): quick looks
    batch: int = 16  # prompts generated (and round-tripped through the VAE) per network call
    workers: int = -1  # detector processes beside the generation (-1: up to 8 on a GPU, 0 on the CPU; 0 = inline)


MIN_SIZE = 64
"""Smallest side the detector is trusted at: at 32 px it reads circles as hexagons (``synth.DETECTOR_CONFUSIONS``)."""


WINDOWED = ("vae", "generated")  # sources whose shape is also read on an early and a late window of frames


def frame_windows(num_frames: int) -> dict[str, slice] | None:
    """The frames a clip's shape is also read on, apart: "early" = frames 0-4 (the causal VAE's first two latent
    frames: the image frame and one group of 4) and "late" = the last half after frame 0 (frames 9-16 of 17).
    None below 9 frames, where the two would overlap."""
    if num_frames < 9:
        return None
    return {"early": slice(0, 5), "late": slice(num_frames - (num_frames - 1) // 2, num_frames)}


def _detect_row(prompt: dict, clips: dict, det_cfg) -> dict:
    """One prompt's detections and verdicts for each source clip (``{"render": frames, ...}``); a pool job.
    For the VAE round trip and the generation the shape is also read on :func:`frame_windows` alone
    (``shape_early`` / ``shape_late``): whether shape is lost in the later latent frames or everywhere."""
    from curate.detect import detect, score

    row = {**prompt}
    for source, frames in clips.items():
        d = detect(frames, det_cfg)
        row[source] = {"color": d.color, "shape": d.shape, "motion": d.motion,
                       "area_frac": round(float(d.area_frac), 4),
                       "displacement": [round(float(v), 4) for v in d.displacement]}
        row[f"correct_{source}"] = score(d, prompt)
        windows = frame_windows(len(frames)) if source in WINDOWED else None
        for name, window in (windows or {}).items():
            row[source][f"shape_{name}"] = detect(frames[window], det_cfg).shape
    if "correct_generated" in row:
        row["correct"] = row["correct_generated"]
    return row


def shape_by_window(rows: list[dict]) -> dict:
    """``{source: {"seen"|"heldout": {"n", "whole", "early", "late"}}}``: shape accuracy on the whole clip and
    on each of :func:`frame_windows` alone, for the sources that have them."""
    out: dict = {}
    for source in WINDOWED:
        for name, flag in (("seen", False), ("heldout", True)):
            group = [r for r in rows if r["heldout"] == flag and "shape_early" in r.get(source, {})]
            if group:
                out.setdefault(source, {})[name] = {
                    "n": len(group), "whole": float(np.mean([r[source]["shape"] == r["shape"] for r in group])),
                    **{w: float(np.mean([r[source][f"shape_{w}"] == r["shape"] for r in group]))
                       for w in ("early", "late")}}
    return out


def window_markdown(table: dict) -> str:
    lines = ["Shape read on part of each clip (frames 0-4: the first two latent frames; the late half: the last "
             "latent frames):", "", "| frames from | split | n | whole clip | frames 0-4 | late half |",
             "|---|---|---|---|---|---|"]
    for source, splits in table.items():
        for split, t in splits.items():
            lines.append(f"| {source} | {split} | {t['n']} | {t['whole']:.3f} | {t['early']:.3f} | {t['late']:.3f} |")
    return "\n".join(lines) + "\n"


def detector_pool(workers: int, device: str):
    """A process pool for the detector (numpy + OpenCV hold the GIL, so threads do not help), or None to detect
    inline. Forked where the platform can (as torch's DataLoader workers are: the children never touch the
    parent's CUDA context, and nothing re-imports the caller's script), else spawned."""
    import multiprocessing
    import os
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    if workers < 0:
        workers = min(8, (os.cpu_count() or 1) - 1) if device.startswith("cuda") else 0
    if workers <= 0:
        return None
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(method))
    try:  # a spawned worker re-imports the caller's main script; without a __main__ guard it dies at start
        pool.submit(int).result()
    except BrokenProcessPool:
        pool.shutdown()
        print("[eval-text] warning: the detector processes could not start (a script calling eval-text needs an "
              "`if __name__ == '__main__':` guard); detecting inline", file=sys.stderr, flush=True)
        return None
    return pool


def resolve_split(cfg: EvalTextConfig, meta: dict) -> synth.ComboSplit:
    if cfg.split:
        return synth.ComboSplit.from_dict(json.loads(Path(cfg.split).read_text()))
    recorded = (meta.get("extra") or {}).get("combo_split")
    if recorded:
        return synth.ComboSplit.from_dict(recorded)
    return synth.ComboSplit.default(cfg.split_seed)


T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}
"""Two-sided 95 % Student t quantiles by degrees of freedom (1.96 beyond 10 would understate: 2.228 is used)."""


def _attribute(r: dict) -> float:
    return float(np.mean([r["correct"][a] for a in ATTRIBUTES]))


def spread(rows: list[dict], boot: int = 1000, seed: int = 0) -> dict:
    """The attribute accuracy's spread over ``rows``: ``per_seed`` (the accuracy of each seed index alone),
    ``seed_sd``, ``ci95_seeds`` (mean of the per-seed accuracies +- a t-interval over seeds; None for one seed)
    and ``ci95_pairs`` (2.5 and 97.5 percentiles of ``boot`` bootstrap means that resample colour-shape pairs)."""
    by_seed: dict[int, list[float]] = {}
    for r in rows:
        by_seed.setdefault(int(r.get("seed_index", 0)), []).append(_attribute(r))
    per_seed = [float(np.mean(v)) for _, v in sorted(by_seed.items())]
    sd = float(np.std(per_seed, ddof=1)) if len(per_seed) > 1 else 0.0
    half = T95.get(len(per_seed) - 1, 2.228) * sd / np.sqrt(len(per_seed)) if len(per_seed) > 1 else None
    mean = float(np.mean(per_seed))
    pairs: dict[tuple[str, str], list[float]] = {}
    for r in rows:
        pairs.setdefault((r["color"], r["shape"]), []).append(_attribute(r))
    sums = np.array([[np.sum(v), len(v)] for v in pairs.values()])  # (pairs, 2)
    rng = np.random.default_rng(seed)
    pick = rng.integers(len(sums), size=(boot, len(sums)))
    means = sums[pick, 0].sum(1) / sums[pick, 1].sum(1)
    return {"per_seed": per_seed, "seed_sd": sd,
            "ci95_seeds": None if half is None else [mean - half, mean + half],
            "ci95_pairs": [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))]}


def accuracy_table(rows: list[dict]) -> dict:
    """``{"seen"|"heldout": {"n", "color", "shape", "motion", "attribute", "all", "per_seed", "seed_sd",
    "ci95_seeds", "ci95_pairs"}}`` over scored rows (:func:`spread` for the last four)."""
    out = {}
    for name, flag in (("seen", False), ("heldout", True)):
        group = [r for r in rows if r["heldout"] == flag]
        if not group:
            continue
        acc = {a: float(np.mean([r["correct"][a] for r in group])) for a in ATTRIBUTES}
        acc["attribute"] = float(np.mean([acc[a] for a in ATTRIBUTES]))
        acc["all"] = float(np.mean([all(r["correct"].values()) for r in group]))
        out[name] = {"n": len(group), **acc, **spread(group)}
    return out


def by_phrasing(rows: list[dict]) -> dict:
    """``{phrasing (+ " expanded"): accuracy_table}`` of the generated rows: how much wording matters."""
    out = {}
    for r in rows:
        out.setdefault(r.get("phrasing", "train") + (" expanded" if r.get("expanded") else ""), []).append(r)
    return {k: accuracy_table(v) for k, v in out.items()}


def expansion_gain(rows: list[dict], boot: int = 1000, seed: int = 0) -> dict:
    """What prompt expansion changes: ``{"seen"|"heldout": {"n", "raw", "expanded", "gain", "ci95"}}`` with each
    expanded row paired with the raw row of the same shot, phrasing and seed; ``ci95`` is a bootstrap interval of
    the mean paired difference of attribute accuracy that resamples colour-shape pairs."""
    raw = {(r["shot"], r["phrasing"], r["seed_index"]): r for r in rows if not r.get("expanded")}
    out = {}
    for name, flag in (("seen", False), ("heldout", True)):
        diffs: dict[tuple[str, str], list[tuple[float, float]]] = {}
        for r in rows:
            twin = raw.get((r["shot"], r["phrasing"], r["seed_index"]))
            if r.get("expanded") and r["heldout"] == flag and twin is not None:
                diffs.setdefault((r["color"], r["shape"]), []).append((_attribute(twin), _attribute(r)))
        if not diffs:
            continue
        both = np.array([d for v in diffs.values() for d in v])  # (n, 2): raw, expanded
        sums = np.array([[sum(e - a for a, e in v), len(v)] for v in diffs.values()])
        pick = np.random.default_rng(seed).integers(len(sums), size=(boot, len(sums)))
        means = sums[pick, 0].sum(1) / sums[pick, 1].sum(1)
        out[name] = {"n": len(both), "raw": float(both[:, 0].mean()), "expanded": float(both[:, 1].mean()),
                     "gain": float((both[:, 1] - both[:, 0]).mean()),
                     "ci95": [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))]}
    return out


def constant_baseline(rows: list[dict]) -> dict:
    """What a prompt-blind model scores by drawing the same colour, shape and motion every time (the most common
    true value of each attribute in each split): the floor any accuracy above should be read against."""
    out = {}
    for name, flag in (("seen", False), ("heldout", True)):
        group = [r for r in rows if r["heldout"] == flag]
        if not group:
            continue
        counts = {a: Counter(r[a] for r in group).most_common(1)[0] for a in ATTRIBUTES}  # (value, count)
        best = {a: n / len(group) for a, (_, n) in counts.items()}
        # the three constants are chosen independently, so "all three" is their joint frequency at best
        mode = {a: value for a, (value, _) in counts.items()}
        joint = float(np.mean([all(r[a] == mode[a] for a in ATTRIBUTES) for r in group]))
        out[name] = {"n": len(group), **best, "attribute": float(np.mean(list(best.values()))), "all": joint}
    return out


def confusion(rows: list[dict], source: str, attribute: str) -> dict[str, dict[str, int]]:
    """``{true value: {detected value or "none": count}}`` of one attribute for one frame source."""
    out: dict[str, Counter] = {}
    for r in rows:
        out.setdefault(r[attribute], Counter())[str(r[source][attribute] or "none")] += 1
    return {k: dict(sorted(v.items())) for k, v in sorted(out.items())}


def confusion_markdown(matrix: dict[str, dict[str, int]], title: str) -> str:
    answers = sorted({a for row in matrix.values() for a in row})
    lines = [f"{title}", "", "| true / detected | " + " | ".join(answers) + " |",
             "|---|" + "---|" * len(answers)]
    lines += [f"| {t} | " + " | ".join(str(row.get(a, 0)) for a in answers) + " |" for t, row in matrix.items()]
    return "\n".join(lines) + "\n"


def _interval(v) -> str:
    return "-" if not v else f"{v[0]:.3f}-{v[1]:.3f}"


def markdown(tables: dict[str, dict], first: str = "frames from") -> str:
    """One Markdown table: a row per (source, split) with the accuracies and, where measured, their spread."""
    lines = [f"| {first} | split | n | colour | shape | motion | attribute acc. | seed sd | 95 % (seeds) | "
             "95 % (pairs) | all three |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for source, table in tables.items():
        for split, t in table.items():
            sd = f"{t['seed_sd']:.3f}" if "seed_sd" in t else "-"
            lines.append(f"| {source} | {split} | {t['n']} | {t['color']:.3f} | {t['shape']:.3f} | "
                         f"{t['motion']:.3f} | **{t['attribute']:.3f}** | {sd} | {_interval(t.get('ci95_seeds'))} | "
                         f"{_interval(t.get('ci95_pairs'))} | {t['all']:.3f} |")
    return "\n".join(lines) + "\n"


def gain_markdown(gain: dict) -> str:
    lines = ["Prompt expansion, paired with the raw prompt (same shot, phrasing and seed):", "",
             "| split | n | raw | expanded | gain | 95 % (pairs) |", "|---|---|---|---|---|---|"]
    lines += [f"| {k} | {g['n']} | {g['raw']:.3f} | {g['expanded']:.3f} | **{g['gain']:+.3f}** | "
              f"{_interval(g['ci95'])} |" for k, g in gain.items()]
    return "\n".join(lines) + "\n"


def labelled_sheet(items: list[tuple[str, np.ndarray, np.ndarray]], columns: int = 4) -> np.ndarray:
    """Rows of [generated frames | ground-truth render frames] with the prompt and verdict written above."""
    from PIL import Image, ImageDraw

    from curate.media import contact_sheet

    rows = []
    for label, generated, truth in items:
        strip = np.concatenate([contact_sheet(generated, columns), np.full((generated.shape[1], 4, 3), 255, np.uint8),
                                contact_sheet(truth, columns)], axis=1)
        head = Image.new("RGB", (strip.shape[1], 14), (0, 0, 0))
        ImageDraw.Draw(head).text((2, 1), label, fill=(255, 255, 255))
        rows.append(np.concatenate([np.asarray(head), strip], axis=0))
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0))) for r in rows]
    return np.concatenate(rows, axis=0)


def expand_rows(rows: list[dict], cfg: EvalTextConfig) -> list[dict]:
    """A copy of every row whose prompt is the expander's rewrite (``expanded`` True, ``raw_prompt`` the text it
    rewrote, ``expand_status``); a failed rewrite keeps the raw text and says so in ``expand_status``."""
    from caption.expand import ExpandConfig, Expander

    expander = Expander(ExpandConfig(backend=cfg.expand_backend, model=cfg.expand_model or None))
    texts = sorted({r["prompt"] for r in rows})
    done = dict(zip(texts, expander.expand(texts)))
    return [{**r, "prompt": done[r["prompt"]].text or r["prompt"], "raw_prompt": r["prompt"], "expanded": True,
             "expand_status": done[r["prompt"]].status} for r in rows]


def seen_pairs(cfg: EvalTextConfig, meta: dict, split: synth.ComboSplit) -> tuple[list[tuple[str, str]] | None, str]:
    """(the pairs of the seen group, or None for all the split's seen pairs; a line saying which). ``shown``: the
    pairs the training loop recorded (``shown_pairs`` in pipeline.json: the kept clips' captions), those the split
    counts as seen; none recorded, or none of them seen, falls back to the split."""
    if cfg.seen not in ("shown", "split"):
        raise ValueError(f"seen {cfg.seen!r}: give shown or split")
    recorded = (meta.get("extra") or {}).get("shown_pairs")
    if cfg.seen == "split" or recorded is None:
        why = "asked" if cfg.seen == "split" else "the pipeline records no training pairs"
        return None, f"seen = every colour-shape pair the split lets training show ({why})"
    pairs = [(c, s) for c, s, _ in recorded if not split.is_heldout(c, s)]
    everyone = {(c, s) for c, s, _ in split.triples(False)}
    if not pairs:
        return None, ("seen = every pair the split lets training show (no training caption names a colour-shape "
                      "pair of the corpus)")
    return pairs, (f"seen = the {len(pairs)} colour-shape pairs the training clips showed (of the {len(everyone)} "
                   "the split lets training show)")


def select_prompts(cfg: EvalTextConfig, split: synth.ComboSplit,
                   shown: list[tuple[str, str]] | None = None) -> list[dict]:
    """The prompt rows of this run (seen rows only of the ``shown`` pairs, when given). ``limit``: N shots of each
    group, with all their phrasings and seeds, taken one per colour-shape pair in turn, the pairs taken one per
    colour in turn (so a quick look still sees N different pairs, of as many colours as it can)."""
    rows = synth.eval_prompts(split, cfg.per_triple, cfg.prompt_seed, cfg.heldout_repeat, seeds=cfg.seeds,
                              phrasings=tuple(cfg.phrasings), seen_motions=cfg.seen_motions, seen_pairs=shown)
    if cfg.limit:
        keep = set()
        for flag in (False, True):
            shots = list(dict.fromkeys((r["shot"], (r["color"], r["shape"])) for r in rows if r["heldout"] == flag))
            pairs = list(dict.fromkeys(pair for _, pair in shots))
            nth = {pair: sum(q[0] == pair[0] for q in pairs[:i]) for i, pair in enumerate(pairs)}
            pairs.sort(key=lambda pair: (nth[pair], split.colors.index(pair[0])))  # colours in turn
            rank = {shot: sum(p == pair for _, p in shots[:i]) for i, (shot, pair) in enumerate(shots)}
            order = sorted(shots, key=lambda sp: (rank[sp[0]], pairs.index(sp[1])))
            keep |= {shot for shot, _ in order[: cfg.limit]}
        rows = [r for r in rows if r["shot"] in keep]
    return [{**r, "expanded": False} for r in rows]


def main(cfg: EvalTextConfig) -> dict:
    import torch
    from PIL import Image

    from curate.detect import DetectConfig
    from model.flow import parse_solver
    from model.pipeline import TextToVideo, read_pipeline_config

    # 1. pipeline, split, prompts ----------------------------------------------------------------------
    parse_solver(cfg.solver)  # a bad name fails before any work
    meta = read_pipeline_config(cfg.pipeline)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device
    split = resolve_split(cfg, meta)
    size = cfg.size or int((meta.get("extra") or {}).get("train_size") or 64)
    if size < MIN_SIZE:
        print(f"[eval-text] warning: {size} px is below {MIN_SIZE} px, where the detector confuses shapes; the "
              "detector ceiling below says by how much", file=sys.stderr, flush=True)
    pairs_shown, seen_note = seen_pairs(cfg, meta, split)
    prompts = select_prompts(cfg, split, pairs_shown)
    print(f"[eval-text] {seen_note}", flush=True)
    if cfg.expand:
        prompts += expand_rows(prompts, cfg)
    pipe = TextToVideo.from_pretrained(cfg.pipeline, device=device)
    if cfg.sample_shift >= 0:
        pipe.set_time_shift(cfg.sample_shift)
    det_cfg = DetectConfig()  # every colour and shape the corpus draws; the split's directions
    det_cfg = dataclasses.replace(det_cfg, motions=tuple(m for m in split.motions if m in det_cfg.motions))
    out = Path(cfg.out) if cfg.out else Path(cfg.pipeline).parent / "eval-text"
    out.mkdir(parents=True, exist_ok=True)
    shots = {(p["shot"], p["seed_index"]): p for p in prompts if not p["expanded"]}  # one render per shot and seed
    print(f"[eval-text] {len(prompts)} prompts ({sum(p['heldout'] for p in prompts)} held-out; {len(shots)} shots x "
          f"seeds; phrasings {','.join(cfg.phrasings)}{'; + expanded' if cfg.expand else ''}), {size}x{size}x"
          f"{cfg.frames}, {cfg.steps} steps, cfg {cfg.cfg}, time shift {pipe.time_shift:g}, {cfg.solver}, "
          f"device {device}", flush=True)

    def render(p: dict) -> np.ndarray:
        return synth.render_clip(synth.prompt_shot(p, cfg.frames), (size, size), seed=p["seed"])

    # 2-3. ground truth (raw and through the VAE), then generations, each read by the detector --------------
    # The GPU work runs in batches of ``cfg.batch`` prompts; the detector reads each batch in a process pool
    # while the next batch generates.
    pool = detector_pool(cfg.workers, device)
    step = max(1, cfg.batch)
    truth_jobs, jobs, t0 = [], [], time.time()

    def submit(row: dict, clips: dict):
        return pool.submit(_detect_row, row, clips, det_cfg) if pool else _detect_row(row, clips, det_cfg)

    try:
        keys = list(shots)
        for start in range(0, len(keys), step):
            chunk = [shots[k] for k in keys[start:start + step]]
            truths = [render(p) for p in chunk]
            with torch.no_grad():
                round_trips = pipe.decode_batch(pipe.encode_batch(truths, (size, size)))
            truth_jobs += [submit({k: p[k] for k in ("shot", "seed_index", "seed", "heldout", "color", "shape",
                                                         "motion", "background", "bg_color")},
                                  {"render": truth, "vae": trip}) for p, truth, trip in zip(chunk, truths, round_trips)]
        for start in range(0, len(prompts), step):
            chunk = prompts[start:start + step]
            generated = pipe.generate_batch([p["prompt"] for p in chunk], [p["seed"] for p in chunk],
                                            frames=cfg.frames, size=(size, size), steps=cfg.steps, cfg=cfg.cfg,
                                            solver=cfg.solver)
            for p, gen in zip(chunk, generated):
                shown = (p["heldout"] and p["phrasing"] == cfg.phrasings[0] and not p["expanded"]
                         and sum(j[1] is not None for j in jobs) < 16)  # the sheet's first 16 held-out
                jobs.append((p, gen if shown else None, submit(p, {"generated": gen})))
            print(f"[eval-text] {start + len(chunk)}/{len(prompts)} generated ({time.time() - t0:.0f} s)", flush=True)
        ceiling = [j.result() if pool else j for j in truth_jobs]
        rows, sheet_items = [], []
        for p, shown, job in jobs:
            row = job.result() if pool else job
            rows.append(row)
            if shown is not None:
                verdict = "".join(a[0].upper() if row["correct"][a] else "-" for a in ATTRIBUTES)
                sheet_items.append((f"[{verdict}] {p['prompt']}", shown, render(p)))
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    print(f"[eval-text] {len(rows)} generations and {len(ceiling)} ground truths read by the detector "
          f"({time.time() - t0:.0f} s)", flush=True)

    # 4. tables and files ----------------------------------------------------------------------------------
    raw = [r for r in rows if not r["expanded"]]
    tables = {source: accuracy_table([{**r, "correct": r[f"correct_{source}"]} for r in ceiling])
              for source in ("render", "vae")}
    tables["generated"] = accuracy_table(raw)
    baseline = constant_baseline(raw)
    confusions = {"vae": {a: confusion(ceiling, "vae", a) for a in ATTRIBUTES},
                  "generated": {a: confusion(raw, "generated", a) for a in ATTRIBUTES}}
    phrasing_tables = by_phrasing(rows)
    gain = expansion_gain(rows) if cfg.expand else {}
    result = {"pipeline": str(cfg.pipeline), "config": dataclasses.asdict(cfg), "size": size,
              "time_shift": pipe.time_shift, "split": split.to_dict(), "seen_group": seen_note,
              "seen_pairs": pairs_shown, "seconds": round(time.time() - t0, 1),
              "detector_ceiling": {"render": tables["render"], "vae_round_trip": tables["vae"]},
              "accuracy": tables["generated"], "by_phrasing": phrasing_tables, "expansion": gain,
              "constant_baseline": baseline, "confusion": confusions,
              "shape_by_window": shape_by_window(ceiling + raw), "ground_truth": ceiling, "prompts": rows}
    (out / "results.json").write_text(json.dumps(result, indent=1))
    md = f"{seen_note[0].upper()}{seen_note[1:]}.\n\n" + markdown({"ground-truth render": tables["render"], "render through the VAE": tables["vae"],
                   "best constant answer (prompt-blind)": baseline, "**generated**": tables["generated"]})
    md += "\nGenerated, by phrasing (\"train\" is the training captions' wording):\n\n"
    md += markdown(phrasing_tables, first="phrasing")
    if gain:
        md += "\n" + gain_markdown(gain)
    md += "\n" + "\n".join(confusion_markdown(confusions["generated"][a], f"Generated {a}, seen and held-out "
                                                                          "together:") for a in ATTRIBUTES)
    if result["shape_by_window"]:
        md += "\n" + window_markdown(result["shape_by_window"])
    (out / "results.md").write_text(md)
    if sheet_items:
        Image.fromarray(labelled_sheet(sheet_items)).save(out / "sheet.png")
    result["files"] = {"results": str(out / "results.json"), "table": str(out / "results.md"),
                       "sheet": str(out / "sheet.png") if sheet_items else None}
    print(md, flush=True)
    return result


def cli(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="tessera eval-text", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Text faithfulness on the synthetic corpus: generate clips for (colour, shape, motion) prompts "
                    "in several phrasings and seeds, read the attributes back with a deterministic detector, and "
                    "report accuracy with its spread for seen and held-out colour-shape combinations (plus the "
                    "detector's own accuracy on ground-truth renders, raw and through the pipeline's VAE).")
    d = EvalTextConfig()
    p.add_argument("--pipeline", required=True, help="pipeline folder (train-dit's RUN/pipeline)")
    p.add_argument("--out", default="", help="results folder (default: next to the pipeline, eval-text/)")
    p.add_argument("--split", default="", help="ComboSplit JSON (default: the one recorded in the pipeline)")
    p.add_argument("--split-seed", type=int, default=d.split_seed, help="seed of the default split")
    p.add_argument("--per-triple", type=int, default=d.per_triple, help="shots per colour/shape/motion triple")
    p.add_argument("--heldout-repeat", type=int, default=d.heldout_repeat,
                   help="times as many shots per held-out triple")
    p.add_argument("--seeds", type=int, default=d.seeds, help="generation seeds per prompt")
    p.add_argument("--phrasings", default=",".join(d.phrasings),
                   help=f"comma-separated prompt wordings of {','.join(synth.PHRASINGS)}")
    p.add_argument("--seen-motions", type=int, default=d.seen_motions,
                   help="motions asked per seen colour-shape pair (0: all four)")
    p.add_argument("--expand", action="store_true",
                   help="also generate from every prompt rewritten by the prompt expander, and report the gain")
    p.add_argument("--expand-backend", default=d.expand_backend, help="openai | transformers | off")
    p.add_argument("--expand-model", default=d.expand_model, help="the expander's model (see tessera expand)")
    p.add_argument("--prompt-seed", type=int, default=d.prompt_seed, help="backgrounds and noise seeds")
    p.add_argument("--frames", type=int, default=d.frames)
    p.add_argument("--size", type=int, default=d.size, help="square side (0: the training size)")
    p.add_argument("--steps", type=int, default=d.steps, help="sampling steps")
    p.add_argument("--cfg", type=float, default=d.cfg, help="classifier-free guidance scale")
    p.add_argument("--sample-shift", type=float, default=d.sample_shift,
                   help="sampler time-shift scale: -1 the one the DiT trained with (pipeline.json), 0 an even grid, "
                        "else that scale (more steps near the noise end as it grows)")
    p.add_argument("--solver", default=d.solver,
                   help="sampler: euler, heun (2 calls per step), sde (ancestral: fresh noise at every step) or "
                        "sde:ETA (0 < ETA <= 1: that share of the posterior noise)")
    p.add_argument("--device", default=d.device, help="auto | cpu | cuda")
    p.add_argument("--limit", type=int, default=0, help="first N shots per group only (quick look)")
    p.add_argument("--seen", choices=("shown", "split"), default=d.seen,
                   help="the seen group: the colour-shape pairs the training clips showed, as the training loop "
                        "recorded them (shown), or every pair the split lets training show (split)")
    p.add_argument("--batch", type=int, default=d.batch, help="prompts per network call (generation and VAE)")
    p.add_argument("--workers", type=int, default=d.workers,
                   help="detector processes running beside the generation (-1: up to 8 on a GPU, 0 on the CPU)")
    a = p.parse_args(argv)
    cfg = EvalTextConfig(pipeline=a.pipeline, out=a.out, split=a.split, split_seed=a.split_seed,
                         per_triple=a.per_triple, heldout_repeat=a.heldout_repeat, seeds=a.seeds,
                         phrasings=tuple(x.strip() for x in a.phrasings.split(",") if x.strip()),
                         seen_motions=a.seen_motions, expand=a.expand, expand_backend=a.expand_backend,
                         expand_model=a.expand_model, prompt_seed=a.prompt_seed, frames=a.frames, size=a.size,
                         steps=a.steps, cfg=a.cfg, sample_shift=a.sample_shift, solver=a.solver, device=a.device,
                         limit=a.limit, batch=a.batch, workers=a.workers, seen=a.seen)
    try:
        main(cfg)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(cli())

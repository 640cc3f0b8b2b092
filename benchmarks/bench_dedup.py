"""Near-duplicate benchmark: does the default dedup without CLIP call the right pairs?

Labelled clips, built from ``../shared/data`` and synthetic renders:

- *originals*: one clip per ASL video (20 words; a few signers, each in front of one backdrop), windows of the
  three Intel static-camera videos taken far apart, shots of the PySceneDetect videos (between their annotated
  cuts), and synthetic shots (``curate.synth``);
- *copies* of each original, the positives (amounts drawn per original, see :func:`variants`): a re-encode at
  low quality (crf 35), a crop of 75-92 % of the side anywhere in the frame scaled back, a half-size resize, a
  speed change (2x, 1.5x or 0.5x) and an overlapping window of the same shot (70-85 % of the shot each).

Every pair of clips from one original is a duplicate; every other pair is not (the hard ones: two ASL words of
one signer, two windows of one static camera, two shots of one scene or film). Each clip goes through the
build's path (H.264 bytes -> ``curate.split.sample_clip_frames`` -> the signature). Tuning material and test
material are split by source: thresholds are chosen on ``synth`` + ``intel`` (the highest precision at recall
>= 0.9, then the highest recall), the table reports both splits, and the headline is the test split (``asl`` +
``pysd``). Rules: ``phash`` is the old default (pHash of the temporal-mean luma, Hamming <= 8); ``sequence``
is the new default (``curate.dedup.sequence_signature``: registered grey-thumbnail sequences), at the shipped
``DedupThresholds`` and at the limits this run tunes. Everything is seeded: one run gives the scores.

    python benchmarks/bench_dedup.py [--out results.json]     # prints the table (~6 min on 2 loaded cores)
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data"

from curate import synth  # noqa: E402
from curate import dedup  # noqa: E402
from curate.dedup import hamming, phash_frames  # noqa: E402
from curate.split import SampleConfig, sample_clip_frames  # noqa: E402

SHORT_SIDE = 240  # originals are decoded at this short side (the build samples at 160)
# (file, [(first frame, end frame), ...]) between the annotated cuts of ../shared/data/README.md
PYSD_SHOTS = {"pyscenedetect/testvideo.mp4": [(30, 180), (240, 335), (425, 529), (556, 665)],
              "pyscenedetect/issue-134-rotate.mp4": [(0, 90), (90, 210)],
              "pyscenedetect/issue-195-aspect-ratio.mp4": [(70, 170), (170, 301), (301, 421)]}
INTEL_WINDOWS = {"intel-sample-videos/car-detection.mp4": [(0, 60), (150, 210), (300, 360)],
                 "intel-sample-videos/bottle-detection.mp4": [(0, 90), (400, 490), (800, 890)],
                 "intel-sample-videos/one-by-one-person-detection.mp4": [(0, 40), (500, 540), (1000, 1040)]}
TUNING, TEST = ("synth", "intel"), ("asl", "pysd")


def decode(path: Path, start: int = 0, stop: int | None = None) -> tuple[np.ndarray, float]:
    """Frames ``[start, stop)`` of a video at SHORT_SIDE (even sides), and its frame rate."""
    import av

    with av.open(str(path)) as c:
        s = c.streams.video[0]
        fps = float(s.average_rate or 25)
        out = []
        for i, f in enumerate(c.decode(s)):
            if i < start:
                continue
            if stop is not None and i >= stop:
                break
            scale = SHORT_SIDE / min(f.width, f.height)
            out.append(f.to_ndarray(width=round(f.width * scale / 2) * 2, height=round(f.height * scale / 2) * 2,
                                    format="rgb24"))
    return np.stack(out), fps


def encode(frames: np.ndarray, fps: float, crf: int = 18) -> bytes:
    import av

    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as c:
        s = c.add_stream("libx264", rate=max(1, round(fps)))
        s.height, s.width = frames.shape[1] // 2 * 2, frames.shape[2] // 2 * 2
        s.pix_fmt = "yuv420p"
        s.options = {"crf": str(crf), "preset": "ultrafast"}
        for f in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f[: s.height, : s.width]),
                                                         format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return buf.getvalue()


def originals(n_synth: int) -> list[dict]:
    """``{"source", "name", "frames", "fps"}`` per original clip (sources: asl, pysd, intel, synth)."""
    out = []
    for p in sorted((DATA / "intel-sample-videos" / "asl_gestures").glob("*.mkv")):
        f, fps = decode(p)
        out.append({"source": "asl", "name": p.stem, "frames": f, "fps": fps})
    for group, table in (("pysd", PYSD_SHOTS), ("intel", INTEL_WINDOWS)):
        for rel, spans in table.items():
            for a, b in spans:
                f, fps = decode(DATA / rel, a, b)
                out.append({"source": group, "name": f"{Path(rel).stem}[{a}:{b}]", "frames": f, "fps": fps})
    rng = np.random.default_rng(0)
    vocab = [(c, s, m) for c in synth.COLORS for s in synth.SHAPES for m in synth.MOTIONS]
    for i in range(n_synth):
        shot = synth.random_shot(rng, vocab[int(rng.integers(len(vocab)))], 48)
        out.append({"source": "synth", "name": f"synth-{i}", "frames": synth.render_clip(shot, (240, 240), seed=i),
                    "fps": 24.0})
    return out


def variants(o: dict, rng: np.random.Generator) -> dict[str, bytes]:
    """The original and its copies, as MP4 bytes. The amounts are drawn per original from ``rng``:

    - the original is the first ``overlap`` share of the shot's frames, ``overlap`` in [0.7, 0.85];
    - ``window`` is the last ``overlap`` share (so it shares ``2 - 1 / overlap`` of its frames with the original);
    - ``crop`` keeps a window of 75-92 % of the side at a random place (not only the centre), scaled back;
    - ``speed`` plays the original at 2x, 1.5x (frames dropped) or 0.5x (each frame twice);
    - ``reencode`` is libx264 at crf 35, ``resize`` half the size.
    """
    f, fps = o["frames"], o["fps"]
    n = len(f)
    overlap = float(rng.uniform(0.7, 0.85))
    head, tail = f[: max(2, round(overlap * n))], f[n - max(2, round(overlap * n)):]
    h, w = head.shape[1:3]
    frac = float(rng.uniform(0.75, 0.92))
    ch, cw = int(h * frac) // 2 * 2, int(w * frac) // 2 * 2
    y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    crop = np.stack([cv2.resize(g[y: y + ch, x: x + cw], (w, h), interpolation=cv2.INTER_AREA) for g in head])
    half = np.stack([cv2.resize(g, (w // 4 * 2, h // 4 * 2), interpolation=cv2.INTER_AREA) for g in head])
    factor = float(rng.choice([2.0, 1.5, 0.5]))
    fast = head[np.arange(0, len(head), factor).astype(int)]
    return {"original": encode(head, fps), "reencode": encode(head, fps, crf=35), "crop": encode(crop, fps),
            "resize": encode(half, fps), "speed": encode(fast, fps), "window": encode(tail, fps)}


# ---- the two rules compared -----------------------------------------------------------------------------


def sequence_pairs(frames: list[np.ndarray], idx: list[int], th: dedup.DedupThresholds) -> dict:
    """(appearance, motion) of every pair of ``idx`` that the sequence rule compares (the build's blocking:
    mean thumbnails within ``th.sequence_block``); pairs left out are absent (never duplicates)."""
    stacks = [dedup._stack(dedup.sequence_signature(frames[i])) for i in idx]
    cand = dedup._sequence_candidates(dedup._coarse_windows(stacks), th.sequence_block, th.chunk_bytes)
    weights = (th.sequence_appearance, th.sequence_motion)
    out = {}
    for i, j in cand:
        _, app, mot = dedup._pair(stacks[i], stacks[j], weights)
        out[idx[i], idx[j]] = (app, mot)
    return out


def scores(pairs: list[tuple[float, bool]], t: float) -> tuple[float, float, int, int]:
    tp = sum(d <= t and y for d, y in pairs)
    fp = sum(d <= t and not y for d, y in pairs)
    pos = sum(y for _, y in pairs)
    return (tp / (tp + fp) if tp + fp else 1.0), (tp / pos if pos else 1.0), tp, fp


def choose(pairs: list[tuple[float, bool]]) -> float:
    """The threshold with the highest precision at recall >= 0.9 (ties: higher recall); else the best F1."""
    d = np.array([p[0] for p in pairs], float)
    y = np.array([p[1] for p in pairs], bool)
    o = np.argsort(d, kind="stable")
    d, y = d[o], y[o]
    last = np.r_[d[1:] != d[:-1], True]  # the end of each run of equal distances: one candidate threshold
    tp, fp, th = np.cumsum(y)[last], np.cumsum(~y)[last], d[last]
    prec, rec = tp / np.maximum(tp + fp, 1), tp / max(int(y.sum()), 1)
    ok = rec >= 0.9
    if ok.any():
        return float(th[ok][np.lexsort((rec[ok], prec[ok]))[-1]])
    return float(th[np.argmax(2 * prec * rec / np.maximum(prec + rec, 1e-9))])


def choose2(pairs: list[tuple[float, float, bool]]) -> tuple[float, float]:
    """Two limits (a, b), a pair a duplicate when both values are within them: the highest precision at
    recall >= 0.9 (ties: higher recall) over a grid of the positives' quantiles."""
    v = np.array([(p[0], p[1]) for p in pairs], float)
    y = np.array([p[2] for p in pairs], bool)
    best = None
    for a in np.unique(np.quantile(v[y, 0], np.linspace(0.5, 1, 51))):
        for b in np.unique(np.quantile(v[y, 1], np.linspace(0.5, 1, 51))):
            call = (v[:, 0] <= a) & (v[:, 1] <= b)
            tp, fp = int((call & y).sum()), int((call & ~y).sum())
            p, r = tp / max(tp + fp, 1), tp / max(int(y.sum()), 1)
            if r >= 0.9 and (best is None or (p, r) > best[:2]):
                best = (p, r, float(a), float(b))
    return (best[2], best[3]) if best else (float(v[y, 0].max()), float(v[y, 1].max()))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--synth", type=int, default=12, help="synthetic originals")
    ap.add_argument("--out", default="", help="also write the results (and the test split's false positives) as JSON")
    a = ap.parse_args(argv)
    if not DATA.is_dir():
        print(f"needs ../shared/data ({DATA}): not found", file=sys.stderr)
        return 2
    t0 = time.time()
    clips = []  # (source, original index, variant, sampled frames)
    for k, o in enumerate(originals(a.synth)):
        for v, mp4 in variants(o, np.random.default_rng(1000 + k)).items():
            frames, _ = sample_clip_frames(mp4, SampleConfig())
            clips.append((o["source"], k, o["name"], v, frames))
    print(f"[dedup-bench] {len(clips)} clips from {len({c[1] for c in clips})} originals in "
          f"{time.time() - t0:.0f} s", flush=True)
    result = {"clips": len(clips), "methods": {}}
    rows = []
    groups = {"tuning": TUNING, "test": TEST}
    idx = {label: [i for i, c in enumerate(clips) if c[0] in g] for label, g in groups.items()}
    truth = {label: {(i, j): clips[i][1] == clips[j][1] for i, j in itertools.combinations(ix, 2)}
             for label, ix in idx.items()}

    def score_calls(label: str, called: set) -> dict:
        y = truth[label]
        tp = sum(1 for k in called if y[k])
        fp = len(called) - tp
        pos = sum(y.values())
        return {"precision": tp / (tp + fp) if tp + fp else 1.0, "recall": tp / pos if pos else 1.0, "tp": tp,
                "fp": fp, "positives": pos, "pairs": len(y)}

    # the old default: pHash of the temporal-mean luma, Hamming distance
    t = time.perf_counter()
    hashes = [phash_frames(c[4]) for c in clips]
    ms = (time.perf_counter() - t) / len(clips) * 1e3
    tuned = choose([(hamming(hashes[i], hashes[j]), y) for (i, j), y in truth["tuning"].items()])
    for name, lim in (("phash (old default)", 8), ("phash, tuned", tuned)):
        entry = {"threshold": lim, "signature_ms_per_clip": ms}
        for label in groups:
            called = {k for k in truth[label] if hamming(hashes[k[0]], hashes[k[1]]) <= lim}
            entry[label] = score_calls(label, called)
        result["methods"][name] = entry

    # the new default: registered grey-thumbnail sequences (curate.dedup.sequence_signature / _sequence_edges)
    th = dedup.DedupThresholds()
    t = time.perf_counter()
    for c in clips:
        dedup.sequence_signature(c[4])
    sig_ms = (time.perf_counter() - t) / len(clips) * 1e3
    values, pair_s = {}, {}
    for label in groups:
        t = time.perf_counter()
        values[label] = sequence_pairs([c[4] for c in clips], idx[label], th)
        pair_s[label] = (time.perf_counter() - t, len(values[label]))
    tune = [(v[0], v[1], truth["tuning"][k]) for k, v in values["tuning"].items()]
    tune += [(9.0, 9.0, True)] * sum(1 for k, y in truth["tuning"].items() if y and k not in values["tuning"])
    lim_a, lim_m = choose2(tune)
    for name, (la, lm) in (("sequence (new default)", (th.sequence_appearance, th.sequence_motion)),
                           ("sequence, tuned here", (lim_a, lim_m))):
        entry = {"threshold": [la, lm], "signature_ms_per_clip": sig_ms,
                 "compare": {k: {"seconds": v[0], "pairs_compared": v[1]} for k, v in pair_s.items()}}
        for label in groups:
            called = {k for k, (va, vm) in values[label].items() if va <= la and vm <= lm}
            entry[label] = score_calls(label, called)
        if name.startswith("sequence (new"):
            entry["test_false_positives"] = sorted(
                f"{clips[i][2]}/{clips[i][3]} ~ {clips[j][2]}/{clips[j][3]}" for (i, j), (va, vm) in
                values["test"].items() if va <= la and vm <= lm and not truth["test"][i, j])[:40]
        result["methods"][name] = entry

    print("\n| method | threshold | split | precision | recall | TP | FP | positives | signature ms/clip |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, e in result["methods"].items():
        lim = e["threshold"]
        lim = f"{lim:g}" if not isinstance(lim, list) else f"app {lim[0]:.3g}, motion {lim[1]:.3g}"
        for label in groups:
            r = e[label]
            print(f"| {name} | {lim} | {label} | {r['precision']:.3f} | {r['recall']:.3f} | {r['tp']} | {r['fp']} | "
                  f"{r['positives']} | {e['signature_ms_per_clip']:.2f} |")
    base = result["methods"]["phash (old default)"]["test"]
    new_ = result["methods"]["sequence (new default)"]["test"]
    print(f"sequence vs phash on the test split: precision x{new_['precision'] / max(base['precision'], 1e-9):.2f}, "
          f"recall x{new_['recall'] / max(base['recall'], 1e-9):.2f}")
    for label, (sec, k) in pair_s.items():
        print(f"sequence compare ({label}): {k} candidate pairs of {len(truth[label])}, {sec:.1f} s "
              f"({sec / max(k, 1) * 1e3:.1f} ms per compared pair)")
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

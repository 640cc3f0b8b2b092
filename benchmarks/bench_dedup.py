"""Near-duplicate benchmark: does the default dedup (no CLIP: the perceptual hash) call the right pairs?

Labelled clips, built from ``../shared/data`` and synthetic renders:

- *originals*: one clip per ASL video (20 words, one signer, one backdrop), windows of the three Intel
  static-camera videos taken far apart, shots of the PySceneDetect videos (between their annotated cuts), and
  synthetic shots (``curate.synth``);
- *copies* of each original, the positives: a re-encode at low quality (crf 35), a centre crop (85 %) scaled
  back, a half-size resize, a 2x speed-up (every other frame) and an overlapping window (the original is the
  first 80 % of the frames, the copy the last 80 %).

Every pair of clips from one original is a duplicate; every other pair is not (the hard ones: two ASL words,
two windows of one static camera, two shots of one film). Each clip goes through the build's path (H.264 bytes
-> ``curate.split.sample_clip_frames`` -> the signature), and each method decides every pair. Tuning material
and test material are split by source: thresholds are chosen on ``synth`` + ``intel`` (the highest precision
at recall >= 0.9, then the highest recall), the table reports both splits, and the headline is the test split
(``asl`` + ``pysd``). Methods: ``mean`` is ``curate.dedup``'s pHash of the temporal-mean luma (the default);
the others are candidates computed here.

    python benchmarks/bench_dedup.py [--out results.json]     # prints the table (~5 min on 2 loaded cores)
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import statistics
import sys
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data"

from curate import synth  # noqa: E402
from curate.dedup import hamming, phash_frames, phash_image  # noqa: E402
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


def variants(o: dict) -> dict[str, bytes]:
    """The original (its first 80 % of frames) and its copies, as MP4 bytes."""
    f, fps = o["frames"], o["fps"]
    n = len(f)
    head, tail = f[: max(2, int(0.8 * n))], f[int(0.2 * n):]
    h, w = head.shape[1:3]
    ch, cw = int(h * 0.85) // 2 * 2, int(w * 0.85) // 2 * 2
    y, x = (h - ch) // 2, (w - cw) // 2
    crop = np.stack([cv2.resize(g[y: y + ch, x: x + cw], (w, h), interpolation=cv2.INTER_AREA) for g in head])
    half = np.stack([cv2.resize(g, (w // 4 * 2, h // 4 * 2), interpolation=cv2.INTER_AREA) for g in head])
    return {"original": encode(head, fps), "reencode": encode(head, fps, crf=35), "crop": encode(crop, fps),
            "resize": encode(half, fps), "speed": encode(head[::2], fps), "window": encode(tail, fps)}


# ---- signatures: each returns something ``distance`` takes ------------------------------------------------


def _gray(frames: np.ndarray) -> np.ndarray:
    return np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2GRAY).astype(np.float32) for f in frames])


def sig_mean(frames: np.ndarray) -> str:
    return phash_frames(frames)  # curate.dedup's default


def sig_motion(frames: np.ndarray) -> tuple[str, str | None]:
    """The default hash plus a pHash of where the clip moves (temporal std of luma); None for a still clip."""
    g = _gray(frames)
    std = g.std(axis=0)
    return phash_frames(frames), (f"{phash_image(std):016x}" if std.mean() >= 1.5 else None)


def sig_frames(frames: np.ndarray) -> list[str]:
    """A pHash per sampled pair (the first frame of each), in time order."""
    return [f"{phash_image(g):016x}" for g in _gray(frames[::2])]


def dist_mean(a, b) -> float:
    return hamming(a, b)


def dist_motion(a, b) -> float:
    if (a[1] is None) != (b[1] is None):
        return 64.0  # a still clip and a moving one
    return max(hamming(a[0], b[0]), hamming(a[1], b[1]) if a[1] else 0)


def dist_frames(a, b) -> float:
    """Median over a's frames of the nearest of b's frames (order-free: copies may be faster or shifted)."""
    return float(np.median([min(hamming(x, y) for y in b) for x in a] + [min(hamming(x, y) for y in a) for x in b]))


METHODS = {"mean": (sig_mean, dist_mean), "mean+motion": (sig_motion, dist_motion),
           "frames": (sig_frames, dist_frames)}


def scores(pairs: list[tuple[float, bool]], t: float) -> tuple[float, float, int, int]:
    tp = sum(d <= t and y for d, y in pairs)
    fp = sum(d <= t and not y for d, y in pairs)
    pos = sum(y for _, y in pairs)
    return (tp / (tp + fp) if tp + fp else 1.0), (tp / pos if pos else 1.0), tp, fp


def choose(pairs: list[tuple[float, bool]]) -> float:
    """The threshold with the highest precision at recall >= 0.9 (ties: higher recall); else the best F1."""
    grid = sorted({d for d, _ in pairs})
    ok = [(scores(pairs, t)[0], scores(pairs, t)[1], t) for t in grid if scores(pairs, t)[1] >= 0.9]
    if ok:
        return max(ok)[2]
    f1 = [(2 * p * r / (p + r) if p + r else 0, t) for t in grid for p, r, *_ in [scores(pairs, t)]]
    return max(f1)[1]


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
        for v, mp4 in variants(o).items():
            frames, _ = sample_clip_frames(mp4, SampleConfig())
            clips.append((o["source"], k, o["name"], v, frames))
    print(f"[dedup-bench] {len(clips)} clips from {len({c[1] for c in clips})} originals in "
          f"{time.time() - t0:.0f} s", flush=True)
    result = {"clips": len(clips), "methods": {}}
    rows = []
    for name, (sig, dist) in METHODS.items():
        times = []
        for _ in range(3):  # signature time per clip, median of 3 passes
            t = time.perf_counter()
            sigs = [sig(c[4]) for c in clips]
            times.append((time.perf_counter() - t) / len(clips) * 1e3)
        split_pairs = {}
        for group in (TUNING, TEST):
            idx = [i for i, c in enumerate(clips) if c[0] in group]
            split_pairs[group] = [(dist(sigs[i], sigs[j]), clips[i][1] == clips[j][1])
                                  for i, j in itertools.combinations(idx, 2)]
        default = {"mean": 8}.get(name)
        t = choose(split_pairs[TUNING])
        entry = {"threshold": t, "ms_per_clip": statistics.median(times), "ms_spread": [min(times), max(times)]}
        for label, group in (("tuning", TUNING), ("test", TEST)):
            p, r, tp, fp = scores(split_pairs[group], t)
            entry[label] = {"precision": p, "recall": r, "tp": tp, "fp": fp,
                            "positives": sum(y for _, y in split_pairs[group]), "pairs": len(split_pairs[group])}
            rows.append((name, f"{t:g}", label, p, r, tp, fp, entry[label]["positives"], entry["ms_per_clip"]))
        if default is not None:  # the shipped threshold, as it is
            for label, group in (("tuning", TUNING), ("test", TEST)):
                p, r, tp, fp = scores(split_pairs[group], default)
                entry[f"{label}_at_default_{default}"] = {"precision": p, "recall": r, "tp": tp, "fp": fp}
                rows.append((name, f"{default} (shipped)", label, p, r, tp, fp,
                             entry[label]["positives"], entry["ms_per_clip"]))
        # the false positives on the test split, by source pair, so a reader sees which calls go wrong
        idx = [i for i, c in enumerate(clips) if c[0] in TEST]
        wrong = [f"{clips[i][2]}/{clips[i][3]} ~ {clips[j][2]}/{clips[j][3]}"
                 for i, j in itertools.combinations(idx, 2)
                 if clips[i][1] != clips[j][1] and dist(sigs[i], sigs[j]) <= t]
        entry["test_false_positives"] = wrong[:40]
        result["methods"][name] = entry
    print("\n| method | threshold | split | precision | recall | TP | FP | positives | signature ms/clip |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, t, label, p, r, tp, fp, pos, ms in rows:
        print(f"| {name} | {t} | {label} | {p:.3f} | {r:.3f} | {tp} | {fp} | {pos} | {ms:.2f} |")
    base = result["methods"]["mean"]["test"]
    for name, e in result["methods"].items():
        print(f"{name}: test precision x{e['test']['precision'] / max(base['precision'], 1e-9):.2f}, recall "
              f"x{e['test']['recall'] / max(base['recall'], 1e-9):.2f} vs mean at its tuned threshold")
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

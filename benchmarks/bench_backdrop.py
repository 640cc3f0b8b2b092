"""Transitions between two shots of one backdrop: dirty clips of the scene stage against PySceneDetect.

Two real ASL signers filmed before one wall (``intel-sample-videos/asl_gestures``, the part's sources of
``benchmarks.shots.build.SPLIT``: dev and test never share a signer clip) joined by a slide, a wipe or a dissolve:
most of the picture is the same wall on both sides, so the two ends differ in a quarter to a third of the
picture, the hardest case for the clip purity guard (``curate.scenes``). Every case is a pair of signers (12 pairs
drawn from the part's sources by ``--seed``), a transition kind, a direction (4), a length (10 or 16 frames), and
the outgoing shot either moving (each clip is played forward then backward: longer shots that keep moving) or
held on its last frame (as ``benchmarks/shots`` does with short sources). Frames are rendered at 192x108 in memory
and fed to the detector as RGB (``SceneSplitter.push``): no file is written, nothing is timed.

For each method, clips are planned with the default ``ClipConfig`` from its scenes; a clip is dirty when it holds
a transition frame or frames of both shots (``benchmarks.shots.score.dirty_spans``). Methods:
    ours               ``SceneConfig()`` defaults.
    ours-before        the same detector with the one-backdrop checks turned back (``BEFORE``: slides and wipes need
                       30 % changed cells, no soft-edge band, no drift allowance for wipes, no low-contrast dissolve
                       route); the detector as it stood before they came in, apart from the wipe steadiness rule.
    pyscenedetect      PySceneDetect's ``AdaptiveDetector`` in-process at the CLI's defaults (``SceneConfig(detector=
                       "adaptive")`` with our gradual-transition tests and guards off): hard cuts only.

Usage:
    .venv/bin/python benchmarks/bench_backdrop.py [--data ../shared/data] [--part test] [--seed 7]
"""

from __future__ import annotations

import argparse
import itertools
import sys
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.shots import build as shots  # noqa: E402
from benchmarks.shots import score  # noqa: E402
from curate.clips import ClipConfig, plan_clips  # noqa: E402
from curate.scenes import SceneConfig, SceneSplitter  # noqa: E402

SIZE, FPS = (192, 108), 30.0
KINDS = ("slide", "wipe", "dissolve")
DIRECTION_SEEDS = (11, 1, 4, 0)  # seeds whose first draw in shots.transition is direction 0, 1, 2, 3
BEFORE = dict(guard_slide_min_changed=0.3, guard_low_changed=1.0, guard_wipe_band=0.0, guard_wipe_drift=False,
              guard_dissolve_min_diff=14.0, guard_dissolve_min_share=1.0)
PYSCENEDETECT = dict(detector="adaptive", fades=False, dissolves=False, guard=False, cut_edges=False,
                     transition_edges=False, weak_cut_min_diff=0.0)


def signers(data: Path, part: str) -> dict[str, list[np.ndarray]]:
    """The part's signer clips at ``SIZE``, each played forward then backward."""
    out = {}
    for rel in shots.SPLIT[part]:
        if "asl_gestures" in rel:
            frames = [shots._cover(f, SIZE) for f in shots._decode_span(data, rel, 0, 10_000)]
            out[Path(rel).stem] = frames + frames[::-1]
    return out


def cases(clips: dict[str, list[np.ndarray]], seed: int, pairs: int = 12):
    """Yield ``(key, frames, shots)`` for every case (see the module docstring)."""
    rng = np.random.default_rng(seed)
    names = sorted(clips)
    drawn = [tuple(rng.choice(names, 2, replace=False)) for _ in range(pairs)]
    for (ka, kb), kind, direction, n, held in itertools.product(drawn, KINDS, DIRECTION_SEEDS, (10, 16),
                                                                 (False, True)):
        a, b = clips[ka], clips[kb]
        if held:
            last = a[len(a) // 2 - 1]  # the forward play's last frame
            a = [last] * (60 + n)
        cut = len(a) - n
        frames = a[:cut] + shots.transition(kind, n, a[cut:], b[:n], np.random.default_rng(direction)) + b[n:]
        yield (str(ka), str(kb), kind, direction, n, held), frames, [(0, cut), (cut + n, len(frames))]


def dirty(frames: list[np.ndarray], shot_spans: list[tuple[int, int]], cfg: SceneConfig) -> tuple[int, int]:
    """(dirty clips, clips) planned from ``cfg``'s scenes of ``frames``."""
    splitter = SceneSplitter(cfg, FPS)
    for k, f in enumerate(frames):
        splitter.push(f, k / FPS)
    planned = plan_clips(splitter.finish(), ClipConfig(), FPS)
    truth = {"frames": len(frames), "shots": [{"start": a, "end": b} for a, b in shot_spans]}
    return score.dirty_spans(truth, planned), len(planned)


def main(args: argparse.Namespace) -> None:
    methods = {"ours": SceneConfig(), "ours-before": replace(SceneConfig(), **BEFORE),
               "pyscenedetect": replace(SceneConfig(), **PYSCENEDETECT)}
    if not (Path(args.data) / "intel-sample-videos" / "asl_gestures").is_dir():
        sys.exit(f"no ASL signer clips under {args.data}/intel-sample-videos/asl_gestures (pass --data)")
    clips = signers(Path(args.data), args.part)
    totals = {m: Counter() for m in methods}
    n_cases = 0
    for key, frames, shot_spans in cases(clips, args.seed):
        n_cases += 1
        kind, held = key[2], key[5]
        for name, cfg in methods.items():
            bad, planned = dirty(frames, shot_spans, cfg)
            totals[name][kind, held] += bad
            totals[name]["dirty"] += bad
            totals[name]["clips"] += planned
    print(f"\n{args.part} part: {len(clips)} signer clips, {n_cases} cases (12 pairs, seed {args.seed}); dirty clips "
          f"per kind, outgoing shot moving / held")
    cols = [(k, h) for k in KINDS for h in (False, True)]
    print(f"{'method':15s} " + " ".join(f"{k + ('/held' if h else '/moving'):>16s}" for k, h in cols)
          + f"{'dirty':>7s}{'clips':>7s}{'clean':>7s}")
    for name, t in totals.items():
        print(f"{name:15s} " + " ".join(f"{t[c]:>16d}" for c in cols)
              + f"{t['dirty']:>7d}{t['clips']:>7d}{t['clips'] - t['dirty']:>7d}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--part", choices=["dev", "test"], default="test")
    parser.add_argument("--seed", type=int, default=7)
    main(parser.parse_args())

"""Match detected scenes against the spliced ground truth of ``benchmarks.shots.build``.

* Expected boundaries: a cut at ``c`` -> frames ``[c, c]``; a gradual transition -> its frames ``[start, end - 1]``.
* Detected boundaries: the frames between consecutive scenes, ``[prev.end, next.start - 1]``, or ``[c, c]``
  when the scenes touch (a hard cut at ``c``); frames before the first scene and after the last are no boundary.
* A detection matches an expected cut when it overlaps ``[c - 1, c + 1]`` (+-1 frame), an expected gradual
  transition when it overlaps ``[start - 1, end]``; matching is one-to-one, in time order, so a transition counts
  once. Unmatched detections are false positives, counted as cuts when they are one frame wide, else gradual.
* ``span_exact``: matched gradual detections whose first and last frames are within 1 frame of the truth's.
* ``dirty``: planned clips (or scenes) holding a transition frame or frames of two shots.
"""

from __future__ import annotations

from collections import Counter


def boundaries(scenes) -> list[tuple[int, int]]:
    out = []
    for prev, nxt in zip(scenes, scenes[1:]):
        out.append((prev.end, max(prev.end, nxt.start - 1)))
    return out


def expected(truth: dict) -> list[tuple[int, int, str]]:
    out = []
    for t in truth["transitions"]:
        if t["end"] == t["start"]:
            out.append((t["start"], t["start"], "cut"))
        else:
            out.append((t["start"], t["end"] - 1, "gradual"))
    return out


def match(truth: dict, detected: list[tuple[int, int]]) -> dict:
    """Counts for one video: tp/fp/fn per class, exact spans, false positives by hard-negative kind."""
    exp = expected(truth)
    used = [False] * len(detected)
    c = Counter()
    for a, b, kind in exp:
        lo, hi = (a - 1, b + 1)
        hit = next((k for k, (x, y) in enumerate(detected) if not used[k] and x <= hi and y >= lo), None)
        if hit is None:
            c[f"fn_{kind}"] += 1
            continue
        used[hit] = True
        c[f"tp_{kind}"] += 1
        if kind == "gradual":
            x, y = detected[hit]
            c["gradual_exact"] += abs(x - a) <= 1 and abs(y - b) <= 1
    for k, (x, y) in enumerate(detected):
        if used[k]:
            continue
        c["fp_cut" if x == y else "fp_gradual"] += 1
        for neg in truth["negatives"]:
            if x < neg["end"] + 2 and y >= neg["start"] - 2:
                c[f"fp_on_{neg['kind']}"] += 1
                break
    return dict(c)


def dirty_spans(truth: dict, spans) -> int:
    """How many ``[start, end)`` spans hold a transition frame or frames of more than one shot."""
    return len(dirty_details(truth, spans))


def dirty_details(truth: dict, spans) -> list[dict]:
    """For each span that holds a transition frame or frames of more than one shot: its frames, the truth's
    transitions it overlaps (kind, first frame, end) and the sources of the shots it holds (why it is dirty)."""
    shot_of = [-1] * truth["frames"]  # -1: a transition frame
    for k, s in enumerate(truth["shots"]):
        for i in range(s["start"], s["end"]):
            shot_of[i] = k
    out = []
    for s in spans:
        owners = set(shot_of[s.start: s.end])
        if len(owners) == 1 and -1 not in owners:
            continue
        out.append({"span": (s.start, s.end),
                    "transitions": [(t["kind"], t["start"], t["end"]) for t in truth.get("transitions", ())
                                    if t["start"] < s.end and max(t["end"], t["start"] + 1) > s.start],
                    "shots": [truth["shots"][k].get("source") for k in sorted(o for o in owners if o >= 0)]})
    return out


def f1(counts: dict, kind: str) -> float:
    tp, fp, fn = (counts.get(f"{x}_{kind}", 0) for x in ("tp", "fp", "fn"))
    return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0

"""Calibrate and evaluate the expansion validator on the labelled set ``tests/data/expansions.jsonl``.

Each line is (input, expansion, label good|bad, kind, source). Sources: ``synthetic`` (the synthetic corpus'
vocabulary) and ``freetext-a`` are the calibration material; ``freetext-b`` (other subjects, written separately)
is held out and is the only part reported as the result. The accept rule is the expander's:
``templates.validate_output`` (length, charset, URL, refusal, injection, system echo) and then
``relevance.ExpansionChecker`` (leaks, lost colour, lost subject, similarity >= s, key-term recall >= r).

Calibration: over a grid of (s, r), keep the points whose good-rejection rate on the calibration split is <= 0.05,
take the one with the highest bad-rejection rate, ties broken by the lowest good-rejection and then by the
largest margin (the middle of the widest run of equally good s values). The peer is what the expander checked
before this change, the template rules alone (``validate_output``; with this branch's injection and refusal
patterns, so if anything stronger than it was), scored on the same pairs: the ratio says how many more bad
expansions are rejected. Timing: pairs checked per second for both, median and spread of ``--runs`` runs
(encoder loaded once, before timing).

    PYTHONPATH=$PWD python benchmarks/bench_expand_validator.py [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from caption.relevance import ExpansionChecker, RelevanceConfig
from caption.templates import get_template, validate_output

DATA = Path(__file__).resolve().parents[1] / "tests" / "data" / "expansions.jsonl"
CALIBRATION = ("synthetic", "freetext-a")
EVALUATION = ("freetext-b",)


def load(path: Path = DATA) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def rates(rows: list[dict], rejected: list[bool]) -> dict:
    """bad_rejected (recall of the bad class), good_rejected, precision (rejected that were bad), counts."""
    bad = [r for r, x in zip(rows, rejected) if r["label"] == "bad"]
    good = [r for r, x in zip(rows, rejected) if r["label"] == "good"]
    bad_rej = sum(x for r, x in zip(rows, rejected) if r["label"] == "bad")
    good_rej = sum(x for r, x in zip(rows, rejected) if r["label"] == "good")
    return {"n_bad": len(bad), "n_good": len(good), "bad_rejected": bad_rej / max(1, len(bad)),
            "good_rejected": good_rej / max(1, len(good)),
            "precision": bad_rej / max(1, bad_rej + good_rej), "recall": bad_rej / max(1, len(bad))}


def decide(rows, scores, template, cfg: RelevanceConfig) -> list[str | None]:
    checker = ExpansionChecker(cfg)
    return [validate_output(r["expansion"], template) or checker.verdict(s) for r, s in zip(rows, scores)]


def calibrate(rows, scores, template) -> tuple[RelevanceConfig, dict]:
    sims = [round(0.20 + 0.01 * i, 2) for i in range(51)]
    recalls = [0.0, 0.25, 0.34, 0.4, 0.5, 0.6, 0.67, 0.75]
    best, best_key = None, None
    table = {}
    for r in recalls:
        for s in sims:
            verdicts = decide(rows, scores, template, RelevanceConfig(min_similarity=s, min_term_recall=r))
            table[(s, r)] = rates(rows, [v is not None for v in verdicts])
    feasible = {k: v for k, v in table.items() if v["good_rejected"] <= 0.05}
    top = max(v["bad_rejected"] for v in feasible.values())
    cands = [k for k, v in feasible.items() if v["bad_rejected"] == top]
    low = min(table[k]["good_rejected"] for k in cands)
    cands = sorted(k for k in cands if table[k]["good_rejected"] == low)
    # margin: for the recall value with the widest run of equally good similarity values, take the run's middle
    by_r: dict[float, list[float]] = {}
    for s, r in cands:
        by_r.setdefault(r, []).append(s)
    r_best = max(by_r, key=lambda r: (len(by_r[r]), r))
    s_run = sorted(by_r[r_best])
    best_key = (s_run[len(s_run) // 2], r_best)
    best = RelevanceConfig(min_similarity=best_key[0], min_term_recall=best_key[1])
    return best, {"chosen": best_key, "feasible_similarity": [s_run[0], s_run[-1]], **table[best_key]}


def per_kind(rows, verdicts) -> dict[str, str]:
    out: dict[str, list[int]] = {}
    for r, v in zip(rows, verdicts):
        hit = (v is not None) if r["label"] == "bad" else (v is None)
        out.setdefault(f"{r['label']}:{r['kind']}", []).append(int(hit))
    return {k: f"{sum(v)}/{len(v)}" for k, v in sorted(out.items())}


def throughput(fn, n: int, runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        out.append(n / (time.perf_counter() - t0))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    template = get_template("expand@v1")
    rows = load()
    checker = ExpansionChecker()
    scores = checker.scores([r["input"] for r in rows], [r["expansion"] for r in rows])
    cal = [i for i, r in enumerate(rows) if r["source"] in CALIBRATION]
    ev = [i for i, r in enumerate(rows) if r["source"] in EVALUATION]
    cfg, cal_result = calibrate([rows[i] for i in cal], [scores[i] for i in cal], template)
    default = RelevanceConfig()
    print(f"labelled pairs: {len(rows)} (calibration {len(cal)}, held-out evaluation {len(ev)})")
    print(f"calibrated: min_similarity={cfg.min_similarity} min_term_recall={cfg.min_term_recall} "
          f"(feasible similarity {cal_result['feasible_similarity']}); packaged defaults: "
          f"min_similarity={default.min_similarity} min_term_recall={default.min_term_recall}")
    ev_rows, ev_scores = [rows[i] for i in ev], [scores[i] for i in ev]
    results = {}
    for name, verdicts in (
        ("new validator (defaults)", decide(ev_rows, ev_scores, template, default)),
        ("new validator (calibrated)", decide(ev_rows, ev_scores, template, cfg)),
        ("peer: template rules only", [validate_output(r["expansion"], template) for r in ev_rows]),
    ):
        results[name] = (rates(ev_rows, [v is not None for v in verdicts]), verdicts)
    print("\nheld-out evaluation (freetext-b):")
    print(f"| {'validator':28} | bad rejected | good rejected | precision | recall |")
    print(f"|{'-' * 30}|--------------|---------------|-----------|--------|")
    for name, (res, _) in results.items():
        print(f"| {name:28} | {res['bad_rejected']:12.3f} | {res['good_rejected']:13.3f} | {res['precision']:9.3f} "
              f"| {res['recall']:6.3f} |")
    new = results["new validator (defaults)"][0]["bad_rejected"]
    peer = results["peer: template rules only"][0]["bad_rejected"]
    print(f"bad-rejection ratio new/peer: {new / max(peer, 1e-9):.2f}x")
    print("\nper kind (held out, new validator with defaults; bad: rejected/n, good: accepted/n):")
    print(json.dumps(per_kind(ev_rows, results["new validator (defaults)"][1]), indent=1))
    cal_rates = rates([rows[i] for i in cal],
                      [v is not None for v in decide([rows[i] for i in cal], [scores[i] for i in cal], template,
                                                    default)])
    print(f"\ncalibration split with defaults (for reference, not the result): bad rejected "
          f"{cal_rates['bad_rejected']:.3f}, good rejected {cal_rates['good_rejected']:.3f}")

    ins, outs = [r["input"] for r in rows], [r["expansion"] for r in rows]
    t_new = throughput(lambda: [validate_output(o, template) for o in outs] and checker.check(ins, outs),
                       len(rows), args.runs)
    t_peer = throughput(lambda: [validate_output(o, template) for o in outs], len(rows), args.runs)
    med_new, med_peer = statistics.median(t_new), statistics.median(t_peer)
    print(f"\nthroughput, pairs/s (median of {args.runs}, [min, max]): new {med_new:.0f} "
          f"[{min(t_new):.0f}, {max(t_new):.0f}], peer {med_peer:.0f} [{min(t_peer):.0f}, {max(t_peer):.0f}], "
          f"ratio new/peer {med_new / med_peer:.4f}")


if __name__ == "__main__":
    main()

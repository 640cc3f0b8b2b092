"""Build throughput: seconds of source video per wall-clock second, and the pipeline against its slowest stage.

Runs, on a local Ray with all of this machine's CPUs:

1. the full ``tessera build`` over the inputs (fresh output folder);
2. each stage ALONE over the materialised output of the stage before it (probe, split, each scorer, the
   staging writer), with the same actor-pool settings the pipeline uses.

Throughput is source seconds (sum of the accepted inputs' durations) per wall second. A streaming pipeline on a
machine this small cannot beat its slowest stage; the target is pipeline / slowest-stage-alone >= 0.8 in every
run. Both measurements are repeated ``--repeat`` times (default 3); the headline is the median ratio with its
range.

    .venv/bin/python benchmarks/bench_build.py                      # the real videos in ../shared/data, 3 runs
    .venv/bin/python benchmarks/bench_build.py --input DIR --repeat 1
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _stage_alone(ray, name, ds, fn):
    t0 = time.perf_counter()
    out = fn(ds).materialize()
    return out, time.perf_counter() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--input", default=str(REPO.parent / "shared" / "data"))
    ap.add_argument("--workdir", default=None, help="scratch folder (default: a temp dir, removed)")
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("--repeat", type=int, default=3, help="runs of (pipeline, every stage alone); median reported")
    a = ap.parse_args(argv)
    if a.repeat < 1:
        ap.error("--repeat must be >= 1")

    import ray

    work = Path(a.workdir or tempfile.mkdtemp(prefix="tessera-bench-"))
    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False,
             object_store_memory=2_000_000_000)
    runs = [_one_run(ray, a.input, work / f"run-{i}") for i in range(a.repeat)]
    ratios = sorted(r["ratio"] for r in runs)
    median = statistics.median(ratios)
    print(f"\npipeline / slowest stage alone over {len(runs)} runs: median {median:.2f} "
          f"(range {ratios[0]:.2f}-{ratios[-1]:.2f}; each: {', '.join(f'{r:.2f}' for r in [x['ratio'] for x in runs])})"
          f"  target >= 0.8 in every run")
    if a.json:
        Path(a.json).write_text(json.dumps({"runs": runs, "median_ratio": median}, indent=2, default=str))
    ray.shutdown()
    if not a.workdir:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def _one_run(ray, input_spec: str, work: Path) -> dict:
    from curate.inputs import resolve_inputs
    from pipelines.build import BuildConfig, build
    from pipelines.stages import ProbeStage, ScoreStage, SplitFlatMap, StageWriter

    cfg = BuildConfig(input=input_spec, output=str(work / "full"), progress=False)

    # 1. the whole pipeline
    t0 = time.perf_counter()
    summary = build(cfg)
    full_wall = time.perf_counter() - t0
    src_s = summary["source_seconds_accepted"]

    # 2. each stage alone, fed the previous stage's materialised output
    items = resolve_inputs(input_spec)
    rows = [{"key": it.key, "uri": it.uri, "path": it.path, "reject_reason": it.reject_reason,
             "reject_message": it.message} for it in items]
    cpus = int(ray.cluster_resources()["CPU"])
    res = cfg.resources
    n_split = max(1, cpus)
    n_score = max(1, cpus // 2)
    Pool = ray.data.ActorPoolStrategy  # as pipelines/build.py builds its stages (scorers: one block per call)
    ds = ray.data.from_items(rows, override_num_blocks=len(rows)).materialize()
    stages = [
        ("probe", lambda d: d.map(ProbeStage, fn_constructor_kwargs={"limits": cfg.limits},
                                  compute=Pool(min_size=1, max_size=n_split), num_cpus=res.probe_cpus)),
        ("split", lambda d: d.flat_map(SplitFlatMap, fn_constructor_kwargs={"cfg": cfg.split_config()},
                                       compute=Pool(min_size=1, max_size=n_split), num_cpus=res.split_cpus)),
    ]
    for name, kwargs in (("basic", {}), ("ocr", {}), ("clip", {"checkpoint": None})):
        stages.append((f"score:{name}", lambda d, n=name, k=kwargs: d.map_batches(
            ScoreStage, fn_constructor_kwargs={"name": n, "kwargs": k}, batch_size=None,
            batch_format="pyarrow", compute=Pool(min_size=1, max_size=n_score), num_cpus=res.score_cpus)))
    stage_root = work / "writer"
    stages.append(("write", lambda d: d.map_batches(
        StageWriter, fn_constructor_kwargs={"root": str(stage_root), "fingerprint": "bench", "store_media": "bytes"},
        batch_size=None, batch_format="pyarrow", compute=Pool(size=1), num_cpus=res.write_cpus)))
    alone = []
    for name, fn in stages:
        ds, wall = _stage_alone(ray, name, ds, fn)
        alone.append((name, wall))

    slowest_name, slowest_wall = max(alone, key=lambda x: x[1])
    rate = src_s / full_wall
    rows_out = [("pipeline (streaming)", full_wall, rate)] + [(n, w, src_s / w) for n, w in alone]
    print(f"\nmachine: {platform.node()} {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}; "
          f"date {time.strftime('%Y-%m-%d')}")
    print(f"inputs: {len(items)} ({summary['inputs']['accepted']} accepted), {src_s:.1f} s of source video, "
          f"{summary['clips']['published']} clips\n")
    print(f"| {'run':<22} | {'wall s':>8} | {'source s / wall s':>18} |")
    print(f"|{'-' * 24}|{'-' * 10}|{'-' * 20}|")
    for n, w, r in rows_out:
        print(f"| {n:<22} | {w:8.1f} | {r:18.2f} |")
    ratio = slowest_wall / full_wall
    print(f"\npipeline / slowest stage alone ({slowest_name}): {ratio:.2f}  (target >= 0.8)")
    print("time per stage inside the pipeline (worker-seconds):", json.dumps(summary["time_per_stage_s"]))
    return {"full_wall_s": full_wall, "source_s": src_s, "alone": alone, "ratio": ratio,
            "time_per_stage_s": summary["time_per_stage_s"]}


if __name__ == "__main__":
    sys.exit(main())

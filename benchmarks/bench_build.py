"""Build throughput: seconds of source video per wall-clock second, and the pipeline against its slowest stage.

Runs, on a local Ray with all of this machine's CPUs:

1. the full ``tessera build`` over the inputs (fresh output folder);
2. each stage ALONE over the materialised output of the stage before it (the list ``pipelines.build.stages``
   returns, which the pipeline chains), with the same actor pools, batch sizes and resources. On CPUs that is
   probe, then split with the scorers and the staging writer in its actors (``split+score:...+write``); with
   ``Resources(score_in_split=False)``, a caption stage or a GPU scorer, the scorers and the writer are stages
   of their own.

Throughput is source seconds (sum of the accepted inputs' durations) per wall second. A streaming pipeline on a
machine this small cannot beat its slowest stage; the target is pipeline / slowest-stage-alone >= 0.8 in every
run. Both measurements are repeated ``--repeat`` times (default 3); the headline is the median ratio with its
range.

On a machine shared with other work, wall clock says more about the neighbours than about the pipeline, so each
measured span also records, from ``/proc``, the CPU seconds of this process tree (the driver, Ray and its
workers, the sandboxes) and of the whole machine. The CPU the others used is the machine's minus ours; what was
left for us is ``CPUs x wall - others``. The CPU-based ratio divides what was left during the slowest stage
alone by what was left during the pipeline: it equals the wall ratio on an idle machine, and does not reward or
punish a run for its neighbours' load changing between the two measurements. On a machine kept saturated by
others it reduces to our own CPU seconds, i.e. to the slowest stage's share of the pipeline's work, a bound the
wall ratio cannot beat when every stage shares the same cores. The same samples count the split actors running
a task; their mean in the pipeline over their mean alone says whether the heaviest stage waited on the others.
The *bound* is the wall ratio the pipeline would reach with every CPU busy from its start to its end (its
CPU-seconds over the CPUs): where the bound itself is under the target, the other stages' work, not waiting, is
what separates the pipeline from its slowest stage. The same ratio against the streaming graph alone (the
build's wall less its start and its publish: ``summary.json`` ``graph_wall_s``) is printed beside it; the target is
on the whole build.
The pipeline's CPU is also broken down by process kind (Ray's process title: each stage's actors, the stages'
worker processes, this driver, Ray Data's own actors, Ray's daemons), in the table and the JSON
(``cpu_by_process_s``), so that the CPU the pipeline spends beyond the slowest stage can be found.

Before the first run, a two-row dataset goes through a one-actor pool, untimed: the first dataset a Ray runs
starts Ray Data's own actors, which every later measurement (each stage alone, runs 2 and 3) finds running.

Ray Data's own counters say, per operator of the pipeline, how long backpressure held its task submission or
its outputs back: near zero means no stage was held back by a slower one downstream.

    .venv/bin/python benchmarks/bench_build.py                      # the real videos in ../shared/data, 3 runs
    .venv/bin/python benchmarks/bench_build.py --input DIR --repeat 1
    .venv/bin/python benchmarks/bench_build.py --repeat 1 --workdir RUNDIR --json run.json  # keeps the datasets
    .venv/bin/python benchmarks/bench_build.py --separate-scorers   # scorers and writer in pools of their own
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


_TICK = os.sysconf("SC_CLK_TCK")


_SPLIT_ACTOR = b"ray::MapWorker(FlatMap(SplitFlatMap))"


_TITLES: dict[int, str] = {}  # pid -> what the process is (Ray's process title), for the CPU breakdown


def _title(cmdline: bytes) -> str:
    """A process's kind from its command line: Ray's title up to the first ``(`` or space
    (``ray::MapWorker(MapBatches(ScoreStage))`` stays whole), ``sandbox`` for a stage's worker process (multiprocessing)."""
    head = cmdline.split(b"\0")[0].decode(errors="replace")
    if not head or b"multiprocessing" in cmdline:
        return "sandbox (a stage's worker process)"
    if head.startswith("ray::"):
        return head.split(".submit")[0].split(".__call__")[0]
    return os.path.basename(head.split()[0])[:40]


def _tree_cpu() -> tuple[dict[int, float], int, int]:
    """CPU seconds (user + system) of this process and each of its descendants, by pid; and how many of them
    are split actors, and how many of those are running a task (Ray titles the process ``....submit`` then)."""
    stats, split, busy = {}, 0, 0
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # after the command name: state(0) ppid(1) ... utime(11) stime(12), 0-based from state
        stats[int(d)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / _TICK)
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in stats.items():
        children.setdefault(ppid, []).append(pid)
    out, todo = {}, [os.getpid()]
    while todo:
        pid = todo.pop()
        if pid in stats:
            out[pid] = stats[pid][1]
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    title = f.read()
            except OSError:
                title = b""
            if title:
                _TITLES[pid] = _title(title) if pid != os.getpid() else "driver (this process)"
            if title.startswith(_SPLIT_ACTOR):
                split += 1
                busy += b".submit" in title
        todo += children.get(pid, [])
    return out, split, busy


def _machine_busy_s() -> float:
    """CPU seconds the whole machine spent busy since boot (every CPU; idle and iowait excluded)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = v[:8]
    return (user + nice + system + irq + softirq + steal) / _TICK


class Span:
    """Wall, our CPU, the others' CPU and the CPU left for us over a ``with`` block.

    Our CPU is sampled every 0.25 s per process (Ray starts and ends actor processes within a span; a process
    that ends loses at most its last 0.25 s), so it is a slight undercount. The same samples count the split
    actors running a task: ``split_busy`` is their mean over the samples where split actors exist, a measure of
    whether the heaviest stage had work that no neighbour's load can shift much."""

    def __enter__(self):
        import threading

        self.load = os.getloadavg()[0]
        self.first = _tree_cpu()[0]
        self.last = dict(self.first)
        self.busy_samples: list[int] = []
        self._stop = threading.Event()

        def sample():
            while not self._stop.wait(0.25):
                cpu, split, busy = _tree_cpu()
                self.last.update(cpu)
                if split:
                    self.busy_samples.append(busy)

        self._thread = threading.Thread(target=sample, daemon=True)
        self.t0, self.busy0 = time.perf_counter(), _machine_busy_s()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self.t0
        busy = _machine_busy_s() - self.busy0
        self._stop.set()
        self._thread.join()
        self.last.update(_tree_cpu()[0])
        self.split_busy = sum(self.busy_samples) / len(self.busy_samples) if self.busy_samples else 0.0
        self.ours = sum(v - self.first.get(pid, 0.0) for pid, v in self.last.items())
        self.by_kind: dict[str, float] = {}
        for pid, v in self.last.items():
            kind = _TITLES.get(pid, "other")
            self.by_kind[kind] = self.by_kind.get(kind, 0.0) + v - self.first.get(pid, 0.0)
        self.others = max(0.0, busy - self.ours)
        self.left = max(1e-6, (os.cpu_count() or 1) * self.wall - self.others)

    def row(self) -> dict:
        return {"wall_s": self.wall, "cpu_ours_s": self.ours, "cpu_others_s": self.others, "cpu_left_s": self.left,
                "split_busy": self.split_busy, "load_1min_at_start": self.load,
                "cpu_by_process_s": {k: round(v, 2) for k, v in sorted(self.by_kind.items(), key=lambda kv: -kv[1])}}


def _blocked(ds) -> list[dict]:
    """Per operator of the pipeline's graph, from Ray Data's own counters (``Dataset._get_stats_summary``, a
    private API: empty when it changes): seconds its task submission was held back by backpressure, and seconds
    its finished outputs waited for room downstream."""
    def walk(s):
        for p in s.parents:
            yield from walk(p)
        yield s

    try:
        out = []
        for s in walk(ds._get_stats_summary()):
            m = s.extra_metrics
            for op in s.operators_stats:
                out.append({"operator": op.operator_name,
                            "submission_backpressure_s": float(m.get("task_submission_backpressure_time") or 0.0),
                            "output_backpressure_s": float(m.get("task_output_backpressure_time_s") or 0.0)})
        return out
    except Exception:  # a Ray version without these counters: the table says so
        return []


def _stage_alone(ray, name, ds, fn):
    with Span() as span:
        out = fn(ds).materialize()
    return out, span


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--input", default=str(REPO.parent / "shared" / "data"))
    ap.add_argument("--workdir", default=None, help="scratch folder (default: a temp dir, removed)")
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("--repeat", type=int, default=3, help="runs of (pipeline, every stage alone); median reported")
    ap.add_argument("--separate-scorers", action="store_true",
                    help="the scorers and the writer in actor pools of their own (Resources(score_in_split=False)), "
                         "not in the split actors: the layout before they were merged, for a before/after")
    a = ap.parse_args(argv)
    if a.repeat < 1:
        ap.error("--repeat must be >= 1")

    from pipelines.ray_session import start_ray

    work = Path(a.workdir or tempfile.mkdtemp(prefix="tessera-bench-"))
    ray = start_ray("local", num_cpus=os.cpu_count(), object_store_bytes=2_000_000_000)  # this host, always
    _warm_up(ray)
    runs = [_one_run(ray, a.input, work / f"run-{i}", a.separate_scorers) for i in range(a.repeat)]
    out = {"runs": runs, "separate_scorers": a.separate_scorers}
    each = [r["source_s"] / r["pipeline"]["wall_s"] for r in runs]
    print(f"\npipeline throughput, source s per wall s, over {len(runs)} runs: median {statistics.median(each):.2f} "
          f"(range {min(each):.2f}-{max(each):.2f}; each: {', '.join(f'{r:.2f}' for r in each)})")
    out["median_throughput"] = statistics.median(each)
    for key, what in (("ratio", "wall clock"), ("cpu_ratio", "CPU left for us"), ("busy_ratio", "split actors busy"),
                      ("cpu_bound_ratio", "bound: the pipeline's CPU-s over all CPUs"),
                      ("graph_ratio", "the streaming graph alone, without start and publish")):
        each = [r[key] for r in runs]
        median = statistics.median(each)
        print(f"\npipeline / slowest stage alone ({what}) over {len(runs)} runs: median {median:.2f} "
              f"(range {min(each):.2f}-{max(each):.2f}; each: {', '.join(f'{r:.2f}' for r in each)})"
              f"  target >= 0.8 in every run")
        out[f"median_{key}"] = median
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=2, default=str))
    ray.shutdown()
    if not a.workdir:
        shutil.rmtree(work, ignore_errors=True)
    return 0


class _Echo:
    def __call__(self, batch):
        return batch


def _warm_up(ray) -> None:
    """Run a two-row dataset through a one-actor pool before any timed run. The first dataset a Ray runs starts
    Ray Data's own actors (its stats actor, autoscaling coordinator, actor-location tracker: ~2.5 CPU-s here)
    and imports its executor in this process; every later dataset finds them. Without this, run 1's pipeline
    pays that once and its stages alone never do, which is no measure of how the stages overlap."""
    with Span() as span:
        ray.data.range(2).map_batches(_Echo, compute=ray.data.ActorPoolStrategy(size=1)).materialize()
    print(f"Ray Data warm-up (untimed): {span.wall:.1f} s wall, {span.ours:.1f} CPU-s")


def _one_run(ray, input_spec: str, work: Path, separate_scorers: bool = False) -> dict:
    from curate.inputs import resolve_inputs
    from pipelines.build import BuildConfig, Resources, build, pool_sizes
    from pipelines.build import stages as build_stages

    cfg = BuildConfig(input=input_spec, output=str(work / "full"), progress=False,
                      resources=Resources(score_in_split=not separate_scorers))

    # 1. the whole pipeline (its graph kept, to read Ray Data's backpressure counters afterwards)
    import pipelines.build as build_module

    graphs, drive = [], build_module._drive

    def keep_graph(ds, *args, **kwargs):
        graphs.append(ds)
        return drive(ds, *args, **kwargs)

    build_module._drive = keep_graph
    try:
        with Span() as full:
            summary = build(cfg)
    finally:
        build_module._drive = drive
    blocked = _blocked(graphs[0]) if graphs else []
    full_wall = full.wall
    src_s = summary["source_seconds_accepted"]

    # 2. each stage alone, fed the previous stage's materialised output: the pipeline's own stages
    # (pipelines/build.py `stages`), with its pools, batch sizes and resources
    items = resolve_inputs(input_spec)
    rows = [{"key": it.key, "uri": it.uri, "path": it.path, "reject_reason": it.reject_reason,
             "reject_message": it.message} for it in items]
    n = pool_sizes(float(ray.cluster_resources()["CPU"]), cfg.resources)
    ds = ray.data.from_items(rows, override_num_blocks=len(rows)).materialize()
    stages = build_stages(ray, cfg, claims_dir=None, stage_root=str(work / "writer"), fp="bench")
    alone = []
    for name, fn in stages:
        ds, span = _stage_alone(ray, name, ds, fn)
        alone.append((name, span))

    slowest_name, slowest = max(alone, key=lambda x: x[1].wall)
    rows_out = [("pipeline (streaming)", full)] + alone
    print(f"\nmachine: {platform.node()} {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}; "
          f"date {time.strftime('%Y-%m-%d %H:%M')}; pools {n}")
    print(f"inputs: {len(items)} ({summary['inputs']['accepted']} accepted), {src_s:.1f} s of source video, "
          f"{summary['clips']['published']} clips\n")
    print(f"| {'run':<22} | {'wall s':>8} | {'source s / wall s':>18} | {'our CPU s':>9} | {'others CPU s':>12} "
          f"| {'CPU left s':>10} | {'split busy':>10} | {'load':>5} |")
    print(f"|{'-' * 24}|{'-' * 10}|{'-' * 20}|{'-' * 11}|{'-' * 14}|{'-' * 12}|{'-' * 12}|{'-' * 7}|")
    for name, sp in rows_out:
        print(f"| {name:<22} | {sp.wall:8.1f} | {src_s / sp.wall:18.2f} | {sp.ours:9.1f} | {sp.others:12.1f} "
              f"| {sp.left:10.1f} | {sp.split_busy:10.2f} | {sp.load:5.1f} |")
    ratio = slowest.wall / full.wall
    cpu_ratio = slowest.left / full.left
    split_alone = next(sp for name, sp in alone if name.split("+")[0] == "split")  # "split", or fused with the scorers
    busy_ratio = full.split_busy / split_alone.split_busy if split_alone.split_busy else 0.0
    # what the wall ratio would be if the pipeline kept every CPU busy from start to end: its CPU-seconds spread
    # over all cores. Below the wall ratio's target, the stages' own work, not their waiting, is what is left
    bound = slowest.wall / max(1e-6, full.ours / (os.cpu_count() or 1))
    # the streaming graph alone: the build's wall less what runs before it (inputs, lease) and after it (dedup
    # lookups, publish, summary); the target is on the whole build (``ratio``)
    graph_ratio = slowest.wall / max(1e-6, summary["graph_wall_s"])
    print(f"\npipeline / slowest stage alone ({slowest_name}): wall {ratio:.2f}, CPU left {cpu_ratio:.2f}; split "
          f"actors busy, pipeline / alone: {busy_ratio:.2f}  (target >= 0.8); with every CPU busy throughout, "
          f"the pipeline's own CPU-seconds would allow {bound:.2f}; against the streaming graph alone (the build "
          f"less its start and publish, {summary['graph_wall_s']:.1f} s of {full.wall:.1f}): {graph_ratio:.2f}")
    print("our CPU-s inside the pipeline, by process: " + ", ".join(
        f"{k} {v:.1f}" for k, v in sorted(full.by_kind.items(), key=lambda kv: -kv[1]) if v >= 0.05))
    print("time per stage inside the pipeline (worker-seconds):", json.dumps(summary["time_per_stage_s"]))
    print("time blocked inside the pipeline (Ray Data backpressure, s): " + (", ".join(
        f"{b['operator']} submit {b['submission_backpressure_s']:.1f} / output {b['output_backpressure_s']:.1f}"
        for b in blocked) or "unavailable"))
    return {"pipeline": full.row(), "source_s": src_s, "alone": {k: sp.row() for k, sp in alone},
            "slowest": slowest_name, "ratio": ratio, "cpu_ratio": cpu_ratio, "busy_ratio": busy_ratio,
            "cpu_bound_ratio": bound, "graph_ratio": graph_ratio, "graph_wall_s": summary["graph_wall_s"],
            "pools": str(n),
            "time_per_stage_s": summary["time_per_stage_s"], "blocked": blocked}


if __name__ == "__main__":
    sys.exit(main())

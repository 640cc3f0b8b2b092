"""Scene stage vs PySceneDetect on the spliced shot-boundary benchmark (``benchmarks/shots``): F1 and speed.

Usage:
    .venv/bin/python benchmarks/bench_scenes.py [--data ../shared/data] [--cache /tmp/tessera-shots] [--seed 0]
        [--videos 4] [--runs 3] [--part test] [--no-previous] [--previous-ref main] [--previous-reader rgb|thumbs]
        [--dirty]

Methods, run interleaved (every run visits every file and runs the methods in a rotating order):
    ours            ``curate.frames.iter_thumbs`` + ``curate.scenes.SceneSplitter`` (defaults), in-process.
    ours-previous   git main's scene stage (``iter_frames`` + ``SceneSplitter`` of main's ``curate/``, extracted
                    with ``git archive``), in a child process that times itself. ``--previous-ref`` picks another
                    commit; ``--previous-reader thumbs`` runs it through ``iter_thumbs`` + ``push_thumb`` (the
                    build's path, as ours), so the same run gives ours before and after a change.
    cli-adaptive /  ``scenedetect -i FILE detect-adaptive|detect-content list-scenes -n`` (its default OpenCV
    cli-content     backend and automatic downscale).
Speed is frames per CPU-second (user + system, all threads): ours from ``os.times`` of this process around the
file; ours-previous from ``os.times`` inside its child around the file; the CLI from ``RUSAGE_CHILDREN`` of its
run minus that of the same command on a 3-frame file run next to it (the interpreter and import start-up), so
start-up is excluded on every side. The headline is the median over runs of each method's total frames / total
CPU-seconds over the part's files, with the min-max spread; F1 is deterministic (one value).

Scoring is ``benchmarks.shots.score``: cuts +-1 frame, gradual transitions by overlap, one match per transition.
``dirty clips``: clips planned by ``curate.clips.plan_clips`` (default ``ClipConfig``) from a method's scenes that
hold a transition frame or two shots' frames (CLI scenes carry no transition spans: each is a scene start);
``clean``: the other clips (the yield). ``ours-unguarded``: the clips of ours' scenes planned without the clip
purity guard's suspect spans (``Scene.suspect``), so the guard's effect on dirty clips and yield is read from one run.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import tempfile
from collections import Counter
from dataclasses import replace
from pathlib import Path

import av
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.shots import score  # noqa: E402
from benchmarks.shots.build import SPLIT, build  # noqa: E402
from curate.clips import ClipConfig, plan_clips  # noqa: E402
from curate.frames import iter_thumbs  # noqa: E402
from curate.scenes import Scene, SceneConfig, SceneSplitter  # noqa: E402

CLI = Path(sys.executable).with_name("scenedetect")
UNGUARDED = "ours-unguarded"

_PREVIOUS = r"""
import json, os, sys
from curate.frames import iter_frames, iter_thumbs
from curate.scenes import SceneConfig, SceneSplitter
path, fps, thumbs = sys.argv[1], float(sys.argv[2]), sys.argv[3] == "thumbs"
t0 = os.times()
splitter, pts = SceneSplitter(SceneConfig(), fps), []
if thumbs:
    for _, pts_s, thumb in iter_thumbs(path):
        splitter.push_thumb(thumb, pts_s)
        pts.append(pts_s)
else:
    for f in iter_frames(path):
        splitter.push(f.rgb, f.pts_s)
        pts.append(f.pts_s)
scenes = splitter.finish()
t1 = os.times()
print(json.dumps({"cpu": t1.user - t0.user + t1.system - t0.system, "frames": len(pts),
                  "scenes": [[s.start, s.end, s.start_s, s.end_s, s.cut_in, s.cut_out,
                              [list(x) for x in getattr(s, "suspect", ())]] for s in scenes]}))
"""


def _cpu() -> float:
    t = os.times()
    return t.user + t.system


def _child_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run_ours(path: str, fps: float) -> dict:
    c0 = _cpu()
    splitter, n = SceneSplitter(SceneConfig(), fps), 0
    for _, pts_s, thumb in iter_thumbs(path):
        splitter.push_thumb(thumb, pts_s)
        n += 1
    scenes = splitter.finish()
    return {"cpu": _cpu() - c0, "frames": n, "scenes": scenes}


def run_previous(path: str, fps: float, prev_root: Path, reader: str) -> dict:
    env = dict(os.environ, PYTHONPATH=str(prev_root))
    proc = subprocess.run([sys.executable, "-c", _PREVIOUS, os.path.abspath(path), str(fps), reader],
                          capture_output=True, text=True, env=env, cwd=prev_root)  # cwd: `-c` puts it first on sys.path
    if proc.returncode != 0:
        raise RuntimeError(f"previous detector failed on {path}: {proc.stderr[-500:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    scenes = [Scene(*s[:6], suspect=tuple(tuple(x) for x in s[6])) for s in out["scenes"]]  # with the guard's spans
    return {"cpu": out["cpu"], "frames": out["frames"], "scenes": scenes}


_ROW = re.compile(r"^\s*\|\s*(\d+)\s*\|\s*(\d+)\s*\|\s*(\d+):(\d+):([\d.]+)\s*\|")


def _cli(path: str, command: str) -> tuple[float, str]:
    c0 = _child_cpu()
    proc = subprocess.run([str(CLI), "-i", path, command, "list-scenes", "-n"], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"scenedetect failed on {path}: {proc.stderr[-500:]}")
    return _child_cpu() - c0, proc.stdout + proc.stderr


def run_cli(path: str, command: str, fps: float, frames: int, tiny: str) -> dict:
    cpu, text = _cli(path, command)
    startup, _ = _cli(tiny, command)
    starts = []
    for line in text.splitlines():
        m = _ROW.match(line)
        if m and int(m.group(1)) > 1:
            t = int(m.group(3)) * 3600 + int(m.group(4)) * 60 + float(m.group(5))
            starts.append(int(round(t * fps)))
    bounds = [0] + starts + [frames]
    scenes = [Scene(a, b, a / fps, b / fps, "cut", "cut") for a, b in zip(bounds, bounds[1:])]
    return {"cpu": max(1e-9, cpu - startup), "frames": frames, "scenes": scenes}


def _tiny_video(path: Path) -> str:
    if not path.exists():
        with av.open(str(path), "w") as out:
            s = out.add_stream("libx264", rate=30)
            s.width, s.height, s.pix_fmt = 640, 360, "yuv420p"
            for k in range(3):
                frame = av.VideoFrame.from_ndarray(np.full((360, 640, 3), 40 * k, np.uint8), format="rgb24")
                out.mux(s.encode(frame))
            out.mux(s.encode(None))
    return str(path)


def _previous_root(cache: Path, ref: str) -> tuple[Path, str]:
    proc = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"bench_scenes: --previous-ref {ref!r} is not a commit of this repository")
    commit = proc.stdout.strip()
    root = cache / f"previous-{commit[:12]}"
    if not root.exists():
        root.mkdir(parents=True)
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", commit, "curate"], capture_output=True,
                                 check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(root)], input=archive, check=True)
    return root, commit


def main(args: argparse.Namespace) -> None:
    cache = Path(args.cache)
    truths = build(Path(args.data), cache, seed=args.seed, videos=args.videos, parts=(args.part,))[args.part]
    tiny = _tiny_video(cache / "tiny.mp4")
    methods = ["ours", "cli-adaptive", "cli-content"]
    prev_root = None
    if not args.no_previous:
        prev_root, commit = _previous_root(cache, args.previous_ref)
        methods.insert(1, "ours-previous")
        print(f"ours-previous = git {args.previous_ref} {commit[:12]}, {args.previous_reader} reader")
    speed: dict[str, list[float]] = {m: [] for m in methods}
    counts: dict[str, Counter] = {m: Counter() for m in methods}
    dirty: Counter = Counter()
    clips: Counter = Counter()
    rejected: dict[str, list] = {m: [] for m in methods}
    for run in range(args.runs):
        cpu, frames = Counter(), Counter()
        for k, truth in enumerate(truths):
            order = methods[(run + k) % len(methods):] + methods[: (run + k) % len(methods)]
            for m in order:
                fps = float(truth["fps"])
                if m == "ours":
                    r = run_ours(truth["path"], fps)
                elif m == "ours-previous":
                    r = run_previous(truth["path"], fps, prev_root, args.previous_reader)
                else:
                    r = run_cli(truth["path"], m.replace("cli-", "detect-"), fps, truth["frames"], tiny)
                cpu[m] += r["cpu"]
                frames[m] += r["frames"]
                if run == 0:
                    counts[m].update(score.match(truth, score.boundaries(r["scenes"])))
                    spans = plan_clips(r["scenes"], ClipConfig(), fps, rejected=rejected[m])
                    dirty[m] += score.dirty_spans(truth, spans)
                    if args.dirty and m == "ours":
                        for d in score.dirty_details(truth, spans):
                            print(f"dirty clip of ours: {Path(truth['path']).name} frames {d['span']}, "
                                  f"transitions {d['transitions']}, shots of {d['shots']}")
                    clips[m] += len(spans)
                    if m == "ours":  # the same scenes without the purity guard's suspect spans
                        bare = plan_clips([replace(s, suspect=()) for s in r["scenes"]], ClipConfig(), fps)
                        dirty[UNGUARDED] += score.dirty_spans(truth, bare)
                        clips[UNGUARDED] += len(bare)
        for m in methods:
            speed[m].append(frames[m] / cpu[m])
        print(f"run {run + 1}: " + "  ".join(f"{m} {speed[m][-1]:.0f} f/cpu-s" for m in methods), flush=True)
    total = sum(t["frames"] for t in truths)
    print(f"\n{args.part} part: {len(truths)} videos, {total} frames, sources {len(SPLIT[args.part])} files "
          f"(+ synthetic), seed {args.seed}, {args.runs} runs, {datetime.date.today()}, {platform.processor() or ''}"
          f" {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")
    ref = statistics.median(speed["cli-adaptive"])
    print(f"{'method':<15}{'F1 cut':>8}{'F1 grad':>8}{'exact':>7}{'FP neg':>7}{'dirty':>8}{'clean':>6}"
          f"{'frames/CPU-s (min-max)':>26}{'x cli-adaptive':>16}")
    for m in methods:
        c = counts[m]
        exact = f"{c['gradual_exact']}/{c['tp_gradual']}"
        fp_neg = sum(v for key, v in c.items() if key.startswith("fp_on_"))
        med = statistics.median(speed[m])
        print(f"{m:<15}{score.f1(c, 'cut'):>8.3f}{score.f1(c, 'gradual'):>8.3f}{exact:>7}{fp_neg:>7}"
              f"{dirty[m]:>4}/{clips[m]:<3}{clips[m] - dirty[m]:>6}{med:>12.0f} ({min(speed[m]):.0f}-"
              f"{max(speed[m]):.0f}){'':>3}{med / ref:>12.2f}")
    print(f"{UNGUARDED:<15}{'(the scenes of ours, clips planned without the purity guard)':<44}"
          f"{dirty[UNGUARDED]:>4}/{clips[UNGUARDED]:<3}{clips[UNGUARDED] - dirty[UNGUARDED]:>6}")
    print(f"ours: {len(rejected['ours'])} scenes whose clips the purity guard dropped (reported as rejected)")
    for m in methods:
        neg = {k[6:]: v for k, v in counts[m].items() if k.startswith("fp_on_")}
        print(f"{m}: counts {dict(sorted((k, v) for k, v in counts[m].items() if not k.startswith('fp_on_')))}"
              f" false positives on negatives {neg}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "tessera-shots"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--videos", type=int, default=4, help="videos per part")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--part", choices=["dev", "test"], default="test")
    parser.add_argument("--dirty", action="store_true",
                        help="list each dirty clip of ours: its frames, the transitions it holds, its shots' sources")
    parser.add_argument("--no-previous", action="store_true", help="skip git main's detector")
    parser.add_argument("--previous-ref", default="main", help="the commit ours-previous runs (default main)")
    parser.add_argument("--previous-reader", choices=["rgb", "thumbs"], default="rgb",
                        help="ours-previous reads RGB frames (iter_frames, as the bench always ran it) or "
                             "thumbnails (iter_thumbs, the build's path): a before/after of ours in one run")
    main(parser.parse_args())

"""Which DiT recipe makes the CPU demo's clips read as their prompts? Whole loops after the VAE, by steps, not clock.

    python -m pipelines.cli demo --out /tmp/demo                                   # a demo run: dataset + VAE
    python -m pipelines.cli cache-latents -i /tmp/demo/captioned --vae /tmp/demo/train/vae/checkpoints \\
        -o /tmp/demo/latents --areas 4096 --frames 9                                # optional: no decoding later
    python benchmarks/bench_demo_dit.py --dataset /tmp/demo/captioned --vae-run /tmp/demo/train/vae \\
        --latents /tmp/demo/latents --out OUT --seeds 0,1,2 --jobs 4 \\
        --recipe base= --recipe pooled='dit.pooled_text=True' --recipe shift3='dit.time_shift=3.0;dit.lr=1e-3'

Each recipe is a set of ``pipelines.loop.override`` changes (``;``-separated ``name=value``, values read as Python
literals) on ``PROFILES["cpu"]`` (``--profile``), run as the demo runs its loop but reusing one trained VAE
(``vae_run``): the DiT trains its steps, eval-text reads the generated clips (colour, shape, motion on seen and
held-out prompts). Every (recipe, seed) is its own process, ``--jobs`` at a time with ``--threads`` torch threads
each, so the table does not depend on the machine: a 16-core GPU host answers what a 2-core CPU would, faster.
``--latents`` (a ``tessera cache-latents`` folder made with the same VAE) trains from cached latents, which needs
no video decoder; without it the DiT encodes ``--dataset`` on the fly as the demo does.

The table gives, per recipe, the median over seeds (and the range) of the generated clips' colour accuracy on seen
prompts (the demo's aim: >= 0.8), with shape and held-out colour, the DiT's final loss, and its seconds. A
recipe's cost on the 2-core machine is not measured here (``bench_demo_steps.py`` does that). Writes
``OUT/demo_dit.json`` and ``OUT/demo_dit.md``.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def parse_recipe(text: str) -> tuple[str, dict]:
    """``NAME=a.b=1;c.d=(1, 2, 2)`` -> (name, {"a.b": 1, "c.d": (1, 2, 2)}); ``NAME=`` is the profile as it is."""
    name, sep, spec = text.partition("=")
    if not sep or not name:
        raise SystemExit(f"--recipe {text}: give NAME=field=value;field=value (or NAME= for the profile itself)")
    changes = {}
    for item in filter(None, (s.strip() for s in spec.split(";"))):
        field, eq, value = item.partition("=")
        if not eq:
            raise SystemExit(f"--recipe {text}: {item!r} is not field=value")
        try:
            changes[field.strip()] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            changes[field.strip()] = value.strip()
    return name, changes


def run_one(a: argparse.Namespace, label: str, seed: int, changes: dict) -> dict:
    """One loop after the VAE (its own process): DiT, eval-text, report; the numbers the table needs."""
    import torch

    torch.set_num_threads(a.threads)
    from pipelines.loop import PROFILES, override, run

    extra = {"dit.latents": str(Path(a.latents).resolve())} if a.latents else {}
    cfg = override(PROFILES[a.profile], {"dataset": str(Path(a.dataset).resolve()), "vae_run": str(Path(a.vae_run).resolve()),
                                         "out": str(Path(a.out).resolve() / "work" / f"{label}-s{seed}"),
                                         "seed": seed, "device": a.device, "text_path": a.text_path,
                                         **extra, **changes})
    t0 = time.time()
    s = run(cfg)
    acc = s.get("accuracy") or {}
    return {"recipe": label, "seed": seed, "changes": {k: repr(v) for k, v in changes.items()},
            "dit_steps": s["dit"]["steps"], "dit_loss": s["dit"]["last_loss"], "dit_s": s["seconds"].get("dit_s"),
            "wall_s": round(time.time() - t0, 1), "seen": acc.get("seen", {}), "heldout": acc.get("heldout", {}),
            "vae_round_trip": ((s.get("detector_ceiling") or {}).get("vae_round_trip") or {}).get("seen", {})}


def _med(rows: list[dict], get) -> str:
    vals = [get(r) for r in rows]
    vals = [v for v in vals if v is not None]
    if not vals:
        return "-"
    m = statistics.median(vals)
    return f"{m:.3f}" if len(vals) == 1 else f"{m:.3f} ({min(vals):.2f}-{max(vals):.2f})"


def table(rows: list[dict], recipes: dict) -> str:
    out = ["| recipe | changes | runs | seen colour | seen shape | seen motion | held-out colour | DiT loss | DiT s |",
           "|---|---|---|---|---|---|---|---|---|"]
    for label, changes in recipes.items():
        group = [r for r in rows if r["recipe"] == label]
        desc = "; ".join(f"{k}={v!r}" for k, v in changes.items()) or "(profile)"
        out.append(f"| {label} | {desc} | {len(group)} | {_med(group, lambda r: r['seen'].get('color'))} | "
                   f"{_med(group, lambda r: r['seen'].get('shape'))} | {_med(group, lambda r: r['seen'].get('motion'))} | "
                   f"{_med(group, lambda r: r['heldout'].get('color'))} | {_med(group, lambda r: r['dit_loss'])} | "
                   f"{_med(group, lambda r: r['dit_s'])} |")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", required=True, help="the demo's captioned dataset (its clips and captions)")
    p.add_argument("--vae-run", required=True, help="a trained VAE run folder (with checkpoints/), reused by every run")
    p.add_argument("--latents", default="", help="a cache-latents folder made with that VAE (no video decoding)")
    p.add_argument("--text-path", default="", help="text-encoder folder ('' = the packaged MiniLM)")
    p.add_argument("--out", required=True)
    p.add_argument("--profile", default="cpu", help="pipelines.loop.PROFILES entry the recipes change")
    p.add_argument("--recipe", action="append", default=[], help="NAME=field=value;field=value (repeatable)")
    p.add_argument("--seeds", default="0", help="loop seeds per recipe, comma separated (median over them)")
    p.add_argument("--jobs", type=int, default=1, help="runs at once (one process each)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run")
    p.add_argument("--device", default="cpu", help="cpu, cuda, auto")
    p.add_argument("--one", default="", help=argparse.SUPPRESS)  # internal: LABEL:SEED, run here
    a = p.parse_args(argv)
    recipes = dict(parse_recipe(r) for r in a.recipe) or {"base": {}}
    seeds = [int(s) for s in a.seeds.split(",")]
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    if a.one:
        label, _, seed = a.one.rpartition(":")
        row = run_one(a, label, int(seed), recipes[label])
        (out / f"row-{label}-s{seed}.json").write_text(json.dumps(row, indent=1))
        return 0
    env = {**os.environ, "OMP_NUM_THREADS": str(a.threads), "PYTHONPATH": f"{ROOT}{os.pathsep}"
           f"{os.environ.get('PYTHONPATH', '')}"}
    pending = [(label, seed) for seed in seeds for label in recipes]  # seed-major: every recipe gets seed 0 first
    running: list = []
    while pending or running:
        while pending and len(running) < a.jobs:
            label, seed = pending.pop(0)
            log = open(out / f"log-{label}-s{seed}.txt", "w")
            running.append((f"{label}:{seed}", subprocess.Popen(
                [sys.executable, __file__, *(argv if argv is not None else sys.argv[1:]), "--one", f"{label}:{seed}"],
                stdout=log, stderr=subprocess.STDOUT, env=env)))
        time.sleep(2)
        for item in [r for r in running if r[1].poll() is not None]:
            running.remove(item)
            print(f"[demo-dit] {item[0]} finished (status {item[1].returncode})", flush=True)
            rows = [json.loads(f.read_text()) for f in sorted(out.glob("row-*.json"))]
            (out / "demo_dit.md").write_text(table(rows, recipes))  # rewritten as runs finish
    rows = [json.loads(f.read_text()) for f in sorted(out.glob("row-*.json"))]
    (out / "demo_dit.json").write_text(json.dumps({"threads": a.threads, "device": a.device, "rows": rows}, indent=1))
    md = table(rows, recipes)
    (out / "demo_dit.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())

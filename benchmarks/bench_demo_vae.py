"""Which VAE recipe keeps colour within the CPU demo's step budget? Learning curves by steps, not by the clock.

    python -m pipelines.cli demo --no-train --out /tmp/demo            # the demo's captioned dataset
    python benchmarks/bench_demo_vae.py --dataset /tmp/demo/captioned --out OUT \\
        --recipe base=tiny-f4c8:1e-3:2 --recipe dc=tiny-f4c8-dc:1e-3:2 --steps 300,600,1200 --jobs 2

Each recipe (``NAME=preset:lr:batch``) trains ``train.train_vae`` as the demo's loop does (``PROFILES["cpu"]``:
9-frame clips at the loop's size, EMA 0.99, no warm-up, the same seed and data) and stops at every step count of
``--steps`` in turn (resuming its own checkpoint; the learning rate is constant after warm-up, so this is one run).
At each stop, eval-text's *VAE ceiling* (``probe_vae_ceiling.ceiling``: the detector reads the ground-truth renders
of every eval shot and seed after an encode/decode round trip) gives colour, shape and motion per split, and the
PSNR. Recipes run as separate processes, ``--jobs`` at a time, each with ``--threads`` torch threads, so the
table is the same on a 2-core machine (slowly) and on a 16-core one. Writes ``OUT/demo_vae.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def parse_recipe(text: str) -> tuple[str, dict]:
    """``NAME=preset:lr:batch`` -> (name, recipe)."""
    name, sep, spec = text.partition("=")
    parts = spec.split(":")
    if not sep or len(parts) != 3:
        raise SystemExit(f"--recipe {text}: give NAME=preset:lr:batch, e.g. dc=tiny-f4c8-dc:1e-3:2")
    return name, {"preset": parts[0], "lr": float(parts[1]), "batch": int(parts[2])}


def run_one(a: argparse.Namespace, label: str, recipe: dict) -> list[dict]:
    """Train one recipe through every step count; the ceiling after each. Runs in its own process."""
    import torch

    torch.set_num_threads(a.threads)
    from benchmarks.probe_vae_ceiling import ceiling
    from pipelines.loop import PROFILES, override, vae_train_config
    from train.train_vae import main as train_vae

    base = PROFILES["cpu"]
    cfg = override(dataclasses.replace(base, dataset=a.dataset, out=str(Path(a.out) / "work" / label), seed=a.seed),
                   {"vae.preset": recipe["preset"], "vae.lr": recipe["lr"], "vae.batch_size": recipe["batch"],
                    "vae.warmup_steps": 30, "num_workers": 0})  # 30: what the demo's 600 steps get
    rows, t0 = [], time.time()
    for steps in [int(s) for s in a.steps.split(",")]:
        step_cfg = override(cfg, {"vae.steps": steps, "vae.resume": True})
        run_dir = Path(step_cfg.out) / "vae"
        res = train_vae(vae_train_config(step_cfg, run_dir))
        c = ceiling(run_dir / "checkpoints", step_cfg.size, 17, "cpu", a.limit, 0)
        rows.append({"recipe": label, **recipe, "steps": res.get("step", steps), "train_s": round(time.time() - t0, 1),
                     "psnr": c["psnr"], "seen": c["seen"], "heldout": c["heldout"]})
        print(f"[demo-vae] {label} {steps} steps: PSNR {c['psnr']:.2f}, seen colour {c['seen']['color']:.3f}, "
              f"shape {c['seen']['shape']:.3f}", flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", required=True, help="the demo's captioned dataset (demo --no-train writes it)")
    p.add_argument("--out", required=True)
    p.add_argument("--recipe", action="append", default=[], help="NAME=preset:lr:batch; repeatable")
    p.add_argument("--steps", default="300,600,1200", help="step counts to stop and measure at (ascending)")
    p.add_argument("--jobs", type=int, default=1, help="recipes trained at once (one process each)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per recipe")
    p.add_argument("--limit", type=int, default=0, help="first N eval shots per group (0: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--one", default="", help=argparse.SUPPRESS)  # internal: run this recipe here
    a = p.parse_args(argv)
    recipes = dict(parse_recipe(r) for r in a.recipe) or {"tiny-f4c8": {"preset": "tiny-f4c8", "lr": 1e-3, "batch": 2}}
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    if a.one:
        rows = run_one(a, a.one, recipes[a.one])
        (out / f"rows-{a.one}.json").write_text(json.dumps(rows, indent=1))
        return 0
    env = {**os.environ, "OMP_NUM_THREADS": str(a.threads), "PYTHONPATH": f"{ROOT}{os.pathsep}"
           f"{os.environ.get('PYTHONPATH', '')}"}
    pending, running = list(recipes), []
    while pending or running:
        while pending and len(running) < a.jobs:
            label = pending.pop(0)
            log = open(out / f"log-{label}.txt", "w")
            running.append((label, subprocess.Popen([sys.executable, __file__, *(argv or sys.argv[1:]), "--one", label],
                                                    stdout=log, stderr=subprocess.STDOUT, env=env)))
        time.sleep(2)
        for item in [r for r in running if r[1].poll() is not None]:
            running.remove(item)
            print(f"[demo-vae] {item[0]} finished (status {item[1].returncode})", flush=True)
    rows = []
    for label in recipes:
        f = out / f"rows-{label}.json"
        rows += json.loads(f.read_text()) if f.exists() else []
    table = ["| recipe | preset | lr | batch | steps | PSNR (dB) | seen colour | seen shape | held-out colour |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        table.append(f"| {r['recipe']} | {r['preset']} | {r['lr']:g} | {r['batch']} | {r['steps']} | {r['psnr']:.2f} | "
                     f"{r['seen']['color']:.3f} | {r['seen']['shape']:.3f} | {r['heldout']['color']:.3f} |")
    (out / "demo_vae.md").write_text("\n".join(table) + "\n")
    (out / "demo_vae.json").write_text(json.dumps({"threads": a.threads, "rows": rows}, indent=1))
    print("\n".join(table))
    return 0


if __name__ == "__main__":
    sys.exit(main())

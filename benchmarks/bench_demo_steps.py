"""CPU seconds per step of the demo's models, to size ``PROFILES["cpu"]`` by steps on a machine too busy to time.

Each stage runs twice in one process, short and long; the difference of their CPU time (user + system, all
threads) over the difference of their lengths is the cost of one step, with imports and setup cancelled out.
One torch thread: on an oversubscribed machine two OpenMP threads spin-wait for each other and inflate CPU time.

    python -m pipelines.cli demo --no-train --out /tmp/demo                  # the demo's captioned dataset
    OMP_NUM_THREADS=1 python benchmarks/bench_demo_steps.py --dataset /tmp/demo/captioned --work /tmp/steps
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", required=True, help="a captioned demo dataset")
    ap.add_argument("--work", required=True, help="scratch folder for the runs")
    ap.add_argument("--vae", default="3,13", help="short,long VAE step counts")
    ap.add_argument("--dit", default="5,105", help="short,long DiT step counts")
    ap.add_argument("--eval", default="1,3", help="short,long eval-text prompts per group")
    a = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    from pipelines.eval_text import EvalTextConfig, main as eval_text
    from pipelines.loop import PROFILES, _train_vae, override
    from train.train_dit import TrainDiTConfig, main as train_dit

    cfg = dataclasses.replace(PROFILES["cpu"], dataset=a.dataset, out=a.work)
    work, cost = Path(a.work), {}

    def per_unit(name: str, counts: str, run, units) -> None:
        n = [int(x) for x in counts.split(",")]
        spent = []
        for k in n:
            t = cpu_s()
            run(k)
            spent.append(cpu_s() - t)
        cost[name] = round((spent[1] - spent[0]) / (units(n[1]) - units(n[0])), 4)
        print(f"[steps] {name}: {cost[name]} CPU s per unit (runs {n}: {[round(s, 1) for s in spent]} CPU s)",
              flush=True)

    per_unit("vae_step", a.vae, lambda k: _train_vae(override(cfg, {"vae.steps": k}), work / f"vae{k}"),
             lambda k: k)
    vae = work / f"vae{a.vae.split(',')[1]}" / "checkpoints"
    per_unit("dit_step", a.dit, lambda k: train_dit(TrainDiTConfig(
        data_root=a.dataset, vae=str(vae), run_dir=str(work / f"dit{k}"), caption_mix=(("short", 1.0),),
        bucket_areas=(cfg.size * cfg.size,), bucket_frames=(cfg.frames,), token_budget=cfg.dit.token_budget,
        max_batch=cfg.dit.max_batch, preset=cfg.dit.preset, steps=k, lr=cfg.dit.lr, warmup_steps=1, seed=0,
        device="cpu", log_every=5, ckpt_every=k, keep_last=1, resume=False, sample_every=k,
        sample_prompts=("a red square moves left",), sample_seeds=(0,), sample_frames=cfg.frames,
        sample_size=(cfg.size, cfg.size), sample_steps=cfg.eval.steps)), lambda k: k)
    pipe = work / f"dit{a.dit.split(',')[1]}" / "pipeline"
    per_unit("eval_prompt", a.eval, lambda k: eval_text(EvalTextConfig(
        pipeline=str(pipe), out=str(work / f"eval{k}"), frames=cfg.frames, size=cfg.size, steps=cfg.eval.steps,
        cfg=cfg.eval.cfg, device="cpu", limit=k, workers=0)), lambda k: 2 * k)
    print(json.dumps(cost))
    return 0


if __name__ == "__main__":
    sys.exit(main())

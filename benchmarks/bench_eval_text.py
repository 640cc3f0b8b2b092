"""Time ``tessera eval-text`` one prompt per network call against batched generation and detector processes.

    python benchmarks/bench_eval_text.py [--prompts 16] [--size 64] [--device cpu]

A randomly initialised pipeline (DiT ``tiny``, VAE ``tiny``, the packaged MiniLM) is exported once; then
``pipelines.eval_text.main`` runs on the same prompts with each (batch, workers) setting, and the table gives the
seconds and the speed-up over ``batch 1, workers 0`` (how eval-text ran before batching). Random weights make the
verdicts meaningless, but the work (generation, VAE round trips, 3 detections per prompt) is the real one, and
the rows of every setting are checked to agree on the ground-truth detections.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prompts", type=int, default=16, help="shots per group (seen and held-out), one prompt each "
                                                         "(the training phrasing, one seed): 2x in all")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--frames", type=int, default=17)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--device", default="cpu")
    p.add_argument("--settings", default="1:0,16:0,16:1", help="batch:workers pairs, the first is the baseline")
    a = p.parse_args(argv)

    import torch

    from model.dit import DiT, dit_config
    from model.pipeline import export_pipeline
    from model.text import TextConfig
    from model.vae import build_vae
    from pipelines.eval_text import EvalTextConfig, main as eval_text

    torch.manual_seed(0)
    work = Path(tempfile.mkdtemp(prefix="bench-eval-"))
    pipe = export_pipeline(work / "pipeline", DiT(dit_config("tiny", latent_channels=16, text_dim=384)),
                           build_vae("tiny"), TextConfig(max_length=32))
    base = EvalTextConfig(pipeline=str(pipe), size=a.size, frames=a.frames, steps=a.steps, cfg=5.0,
                          device=a.device, limit=a.prompts, seeds=1, phrasings=("train",))
    rows, first = [], None
    for item in a.settings.split(","):
        batch, workers = (int(v) for v in item.split(":"))
        t = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            res = eval_text(dataclasses.replace(base, out=str(work / f"b{batch}-w{workers}"), batch=batch,
                                                workers=workers))
        seconds = time.perf_counter() - t
        truth = [r["render"] for r in res["ground_truth"]]
        first = first or (seconds, truth)
        if truth != first[1]:
            raise SystemExit(f"batch {batch} workers {workers}: ground-truth detections differ from the baseline")
        rows.append((batch, workers, len(res["prompts"]), seconds, first[0] / seconds))
    print(f"\n{a.device}, {a.size}x{a.size}x{a.frames}, {a.steps} steps, cfg 5 (tiny DiT + tiny VAE, random weights)")
    print("| batch | detector processes | prompts | seconds | speed-up |\n|---|---|---|---|---|")
    for batch, workers, n, seconds, ratio in rows:
        print(f"| {batch} | {workers} | {n} | {seconds:.1f} | {ratio:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``tessera demo``: the whole system on a small corpus, on this machine.

Today: render the synthetic sample corpus (or take ``--videos DIR``), build a curated dataset from it and
write its report. Captioning, VAE and DiT training and generation join this command as they land.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class DemoConfig:
    out: str = "runs/demo"
    videos: str | None = None  # a folder of the user's own footage instead of the synthetic samples
    samples: int = 6
    seed: int = 0


def main(cfg: DemoConfig) -> int:
    from curate.synth import render_samples
    from pipelines.build import BuildConfig, build

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.videos:
        videos = cfg.videos
    else:
        videos = out / "samples"
        print(f"[demo] 1/3 rendering {cfg.samples} synthetic videos -> {videos}", flush=True)
        render_samples(videos, n_videos=cfg.samples, seed=cfg.seed)
    dataset = out / "dataset"
    print(f"[demo] 2/3 building the curated dataset -> {dataset}", flush=True)
    summary = build(BuildConfig(input=str(videos), output=str(dataset)))
    from pipelines.report import ReportConfig, main as report

    print(f"[demo] 3/3 writing the dataset report -> {dataset}/report/index.html", flush=True)
    rep = report(ReportConfig(dataset=str(dataset)))
    print("\n[demo] done. Where everything is:")
    print(f"  videos         {videos}")
    print(f"  clip shards    {dataset}/clips/  ({summary['clips']['published']} clips)")
    print(f"  failures       {dataset}/failures.parquet")
    print(f"  filter result  {dataset}/selection.parquet")
    print(f"  summary        {dataset}/summary.json")
    print(f"  report         {rep['index']}  (open it in a browser)")
    print(f"  manifest       {dataset}/_manifest.json")
    (out / "demo.json").write_text(json.dumps({"videos": str(videos), "dataset": str(dataset)}, indent=2))
    return 0 if summary["inputs"]["adds_up"] else 1

"""``tessera demo``: the whole system on a small corpus, on this machine.

Today: render the synthetic sample corpus (or take ``--videos DIR``), build a curated dataset from it,
caption it (the sources' own captions when no VLM is configured, a local VLM with ``--vlm DIR``) and write the
report. VAE and DiT training and generation join this command as they land.
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
    vlm: str | None = None  # a local image-text-to-text model dir; None -> captions from the source sidecars


def main(cfg: DemoConfig) -> int:
    from curate.synth import render_samples
    from pipelines.build import BuildConfig, build

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.videos:
        videos = cfg.videos
    else:
        videos = out / "samples"
        print(f"[demo] 1/4 rendering {cfg.samples} synthetic videos -> {videos}", flush=True)
        render_samples(videos, n_videos=cfg.samples, seed=cfg.seed)
    dataset = out / "dataset"
    print(f"[demo] 2/4 building the curated dataset -> {dataset}", flush=True)
    summary = build(BuildConfig(input=str(videos), output=str(dataset)))

    from caption.expand import ExpandConfig
    from caption.sources import SourceConfig
    from caption.vlm import VLMConfig
    from pipelines.caption import CaptionPipelineConfig, main as caption
    from pipelines.report import ReportConfig, main as report

    captioned = out / "captioned"
    if cfg.vlm:
        vlm = VLMConfig(backend="transformers", model=cfg.vlm, source=SourceConfig(use="hint"))
        how = f"VLM {cfg.vlm} (source captions as hints)"
    else:
        vlm = VLMConfig(backend="source", source=SourceConfig(use="caption"))
        how = "no VLM configured: the sources' own captions (status says backend=source)"
    print(f"[demo] 3/4 captioning -> {captioned}  ({how})", flush=True)
    caption(CaptionPipelineConfig(input=str(dataset), output=str(captioned), vlm=vlm,
                                  expand=ExpandConfig(backend="off")))
    print(f"[demo] 4/4 writing the dataset report -> {captioned}/report/index.html", flush=True)
    rep = report(ReportConfig(dataset=str(captioned)))
    print("\n[demo] done. Where everything is:")
    print(f"  videos         {videos}")
    print(f"  clip shards    {dataset}/clips/  ({summary['clips']['published']} clips)")
    print(f"  captioned      {captioned}/clips/")
    print(f"  failures       {dataset}/failures.parquet")
    print(f"  filter result  {dataset}/selection.parquet")
    print(f"  summary        {dataset}/summary.json")
    print(f"  report         {rep['index']}  (open it in a browser)")
    print(f"  manifest       {dataset}/_manifest.json")
    (out / "demo.json").write_text(json.dumps({"videos": str(videos), "dataset": str(dataset),
                                                       "captioned": str(captioned), "report": rep["index"]}, indent=2))
    return 0 if summary["inputs"]["adds_up"] else 1

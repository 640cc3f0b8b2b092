"""``tessera demo``: the whole system on a small corpus, on this machine.

1. render the synthetic sample corpus (square shots of shapes, cuts, dissolves and fades; the eval's held-out
   colour-shape pairs never appear), or take ``--videos DIR``;
2. build a curated dataset from it (Ray, scenes, clips, scores, dedup, filter);
3. caption it (the sources' own captions when no VLM is configured, a local VLM with ``--vlm DIR``);
4. write the dataset report;
5. train a VAE and a DiT briefly on the captioned clips, generate videos for held-out prompts, measure text
   faithfulness (``tessera eval-text``) and write the training report (``pipelines/loop.py``; ``--no-train``
   stops after step 4).

Every path is resolved to an absolute one first, so the demo gives the same result from any working directory.
It ends with warnings and status 1 when something that should have happened did not: no clip has a caption
(the DiT would learn from empty text), or a model learned nothing (``learning_warnings``: the VAE round trip or
the generated colours below a floor, read from eval-text).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:.2f}"


def caption_counts(dataset: Path) -> tuple[int, int]:
    """(clips, clips with a non-empty ``caption_short``) over a dataset's published shards."""
    import pyarrow.parquet as pq

    shards = json.loads((dataset / "_manifest.json").read_text())["shards"]
    captions = [c for s in shards for c in pq.read_table(dataset / s["path"], columns=["caption_short"])
                .column("caption_short").to_pylist()]
    return len(captions), sum(bool(c and c.strip()) for c in captions)


@dataclass(frozen=True)
class DemoConfig:
    out: str = "runs/demo"
    videos: str | None = None  # a folder of the user's own footage instead of the synthetic samples
    samples: int = 12
    seed: int = 0
    vlm: str | None = None  # a local image-text-to-text model dir; None -> captions from the source sidecars
    train: bool = True  # steps 5+: VAE, DiT, generation, eval-text, training report
    profile: str = "cpu"  # pipelines.loop.PROFILES
    size: int = 160  # side of the square synthetic videos


def main(cfg: DemoConfig) -> int:
    from curate.synth import render_samples
    from pipelines.build import BuildConfig, build

    # Every path handed on is absolute: the dataset records ``source_uri`` as given, and captioning reads the
    # sidecars next to it later, from another working directory or process.
    out = Path(cfg.out).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    if cfg.videos:
        videos = Path(cfg.videos).expanduser().resolve()
        if not videos.exists():
            raise FileNotFoundError(f"--videos {cfg.videos}: no such folder")
    else:
        videos = out / "samples"
        from curate.synth import ComboSplit

        print(f"[demo] 1/5 rendering {cfg.samples} synthetic videos -> {videos}", flush=True)
        render_samples(videos, n_videos=cfg.samples, seed=cfg.seed, size=(cfg.size, cfg.size),
                       exclude=ComboSplit.default(cfg.seed).heldout)
    dataset = out / "dataset"
    print(f"[demo] 2/5 building the curated dataset -> {dataset}", flush=True)
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
    print(f"[demo] 3/5 captioning -> {captioned}  ({how})", flush=True)
    caption(CaptionPipelineConfig(input=str(dataset), output=str(captioned), vlm=vlm,
                                  expand=ExpandConfig(backend="off")))
    warnings = []
    clips, captioned_clips = caption_counts(captioned)
    if captioned_clips < clips:
        warnings.append(f"{clips - captioned_clips} of {clips} clips have no caption (see "
                        f"{captioned}/caption_summary.json): the DiT learns nothing from their text")
    print(f"[demo] 4/5 writing the dataset report -> {captioned}/report/index.html", flush=True)
    rep = report(ReportConfig(dataset=str(captioned)))
    loop = None
    if cfg.train:
        import dataclasses

        from pipelines.loop import LEARN_FLOORS, PROFILES, learning_warnings, run

        print(f"[demo] 5/5 training the VAE and the DiT ({cfg.profile} profile), generating for held-out prompts, "
              f"eval-text -> {out / 'train'}", flush=True)
        loop = run(dataclasses.replace(PROFILES[cfg.profile], dataset=str(captioned), out=str(out / "train"),
                                       split_seed=cfg.seed, seed=cfg.seed))
        warnings += learning_warnings(loop, LEARN_FLOORS.get(cfg.profile, {}))
    print("\n[demo] done. Where everything is:")
    print(f"  videos         {videos}")
    print(f"  clip shards    {dataset}/clips/  ({summary['clips']['published']} clips)")
    print(f"  captioned      {captioned}/clips/")
    print(f"  failures       {dataset}/failures.parquet")
    print(f"  filter result  {dataset}/selection.parquet")
    print(f"  summary        {dataset}/summary.json")
    print(f"  report         {rep['index']}  (open it in a browser)")
    print(f"  manifest       {dataset}/_manifest.json")
    where = {"videos": str(videos), "dataset": str(dataset), "captioned": str(captioned), "report": rep["index"]}
    if loop is not None:
        held = loop["accuracy"].get("heldout", {})
        seen = loop["accuracy"].get("seen", {})
        print(f"  VAE run        {out}/train/vae/  (checkpoints, tb/, previews/)")
        print(f"  DiT run        {out}/train/dit/  (checkpoints, tb/, samples/)")
        print(f"  pipeline       {loop['pipeline']}  (tessera generate --model ... \"a red star moves left\")")
        print(f"  generations    {out}/train/eval-text/  (results.md, sheet.png)")
        print(f"  train report   {loop['report']}")
        print(f"  eval-text      seen prompts: colour {_fmt(seen.get('color'))}, shape {_fmt(seen.get('shape'))}, "
              f"motion {_fmt(seen.get('motion'))}; held-out: colour {_fmt(held.get('color'))}, shape "
              f"{_fmt(held.get('shape'))}, motion {_fmt(held.get('motion'))} (chance: colour 0.17, shape 0.25, "
              f"motion 0.25)")
        where.update({"pipeline": loop["pipeline"], "train_report": loop["report"]})
    if not summary["inputs"]["adds_up"]:
        warnings.append(f"the build's input counts do not add up (see {dataset}/summary.json)")
    for w in warnings:
        print(f"[demo] WARNING: {w}", flush=True)
    where["warnings"] = warnings
    (out / "demo.json").write_text(json.dumps(where, indent=2))
    return 1 if warnings else 0

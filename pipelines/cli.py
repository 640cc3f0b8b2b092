"""The ``tessera`` command. Each subcommand parses its arguments here and calls a ``main(cfg)`` elsewhere.

Run ``tessera SUBCOMMAND --help`` for the options of each.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

DESCRIPTION = """\
Tessera: raw video -> a curated, re-captioned training set -> a text-to-video model.

Data flow:  samples/videos --build--> DATASET (Parquet clip shards + scores + lineage)
            --filter--> selection  --caption--> captioned DATASET  --vae/dit training--> generate

Every long command prints progress and ends with a summary; every output folder holds a summary.json.
Ray: local by default; set RAY_ADDRESS (or --address) to run the same command on a cluster.
"""


def _add_build(sub) -> None:
    p = sub.add_parser(
        "build", help="raw videos -> clip shards with quality scores and lineage",
        description=(
            "Turn a folder, glob or list file of raw videos into Parquet shards with one row per scene clip. "
            "Stages: probe -> decode at analysis size + scene detection -> cut H.264 clips -> scores "
            "(sharpness, exposure, motion, on-screen text, CLIP when a checkpoint is given) -> near-duplicate "
            "detection -> publish -> filter. Re-running the same command resumes a killed build; a changed "
            "config is refused (filters excepted: see `tessera filter`)."),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--input", "-i", required=True, nargs="+",
                   help="folder (searched recursively), glob pattern (quote it), .txt list file, or files")
    p.add_argument("--output", "-o", required=True, help="dataset folder to create or resume")
    p.add_argument("--address", default=None, help="Ray cluster address (default: $RAY_ADDRESS, else a local Ray)")
    p.add_argument("--store-media", choices=["bytes", "path"], default="bytes",
                   help="keep clip MP4s inside the shards (bytes) or as files under DATASET/media (path)")
    p.add_argument("--min-clip-s", type=float, default=2.0, help="shortest clip; shorter scenes are dropped")
    p.add_argument("--max-clip-s", type=float, default=15.0, help="longest clip; longer scenes become windows")
    p.add_argument("--detector", choices=["adaptive", "content"], default=None,
                   help="PySceneDetect detector for hard cuts (fades and dissolves are detected either way)")
    p.add_argument("--fast-scenes", action="store_true",
                   help="two-pass scene detection (decode reference frames, refine around candidates): the same "
                        "scenes, ~1.4x faster on long static shots, slower on busy edits")
    p.add_argument("--analysis-size", type=int, default=None, help="short side (px) of frames used for analysis")
    p.add_argument("--split-timeout", type=float, default=600.0,
                   help="seconds one video may take to decode, detect and cut before it is failed")
    p.add_argument("--clip-checkpoint", default=None,
                   help="local open_clip checkpoint file; without it the CLIP columns say no-model")
    p.add_argument("--clip-model", default="ViT-B-32", help="open_clip architecture of --clip-checkpoint")
    p.add_argument("--aesthetic-head", default=None, help="safetensors aesthetic head on the CLIP embedding")
    p.add_argument("--no-ocr", action="store_true", help="skip the on-screen text scorer")
    p.add_argument("--caption", choices=["source", "transformers", "openai"], default=None,
                   help="caption clips inline (as `tessera caption` does): source sidecars, a local VLM dir "
                        "(--caption-model) or an OpenAI-compatible server (--caption-base-url)")
    p.add_argument("--caption-model", default=None, help="VLM model dir (transformers) or served model name")
    p.add_argument("--caption-base-url", default=None, help="OpenAI-compatible VLM server (default: env)")
    p.add_argument("--caption-api-key-env", "--api-key-env", default=None, metavar="VAR",
                   help="name of the environment variable holding the VLM server's key (never the key itself); "
                        "default: $OPENAI_API_KEY, sent only to OpenAI or to $OPENAI_BASE_URL")
    p.add_argument("--expand", choices=["off", "openai", "transformers"], default="off",
                   help="expand captions with an LLM inline (see `tessera caption --help`)")
    p.add_argument("--expand-model", default=None, help="LLM model dir (transformers) or served model name")
    p.add_argument("--expand-base-url", default=None, help="OpenAI-compatible LLM server (default: env)")
    p.add_argument("--expand-api-key-env", default=None, metavar="VAR",
                   help="name of the environment variable holding the LLM server's key (as --caption-api-key-env)")
    p.add_argument("--max-retry-wait", type=float, default=60.0,
                   help="longest wait before retrying a caption/expand request, whatever Retry-After asks (s)")
    p.add_argument("--filter", action="append", default=[], metavar="EXPR",
                   help='filter rule over score columns, e.g. "sharpness >= 40" (repeatable)')
    p.add_argument("--rows-per-file", type=int, default=1000, help="clips per published shard")
    p.add_argument("--row-group-size", type=int, default=64, help="rows per Parquet row group")
    p.add_argument("--overwrite", action="store_true", help="replace a dataset built with a different config")
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary on stdout")
    p.set_defaults(func=_run_build)


def build_config_from_args(a):
    import dataclasses

    from curate.clips import ClipConfig
    from curate.frames import DecodeConfig
    from curate.scenes import SceneConfig
    from curate.filter import FilterSpec
    from pipelines.build import BuildConfig

    decode = DecodeConfig() if a.analysis_size is None else dataclasses.replace(DecodeConfig(), short_side=a.analysis_size)
    scenes = SceneConfig() if a.detector is None else dataclasses.replace(SceneConfig(), detector=a.detector)
    clips = dataclasses.replace(ClipConfig(), min_s=a.min_clip_s, max_s=a.max_clip_s)
    inputs = a.input[0] if len(a.input) == 1 else list(a.input)
    caption = expand = None
    if a.caption:
        from caption.expand import ExpandConfig, OpenAIEndpoint
        from caption.sources import SourceConfig
        from caption.vlm import VLMConfig

        caption = VLMConfig(backend=a.caption, model=a.caption_model,
                            source=SourceConfig(use="caption" if a.caption == "source" else "hint"),
                            endpoint=OpenAIEndpoint(base_url=a.caption_base_url, api_key_env=a.caption_api_key_env,
                                                    timeout_s=120.0, max_retry_wait_s=a.max_retry_wait))
        expand = ExpandConfig(backend=a.expand, model=a.expand_model,
                              endpoint=OpenAIEndpoint(base_url=a.expand_base_url, api_key_env=a.expand_api_key_env,
                                                      max_retry_wait_s=a.max_retry_wait))
    return BuildConfig(
        input=inputs, output=a.output, decode=decode, scenes=scenes, clips=clips,
        split_timeout_s=a.split_timeout, fast_scenes=a.fast_scenes, store_media=a.store_media, clip_checkpoint=a.clip_checkpoint,
        clip_model_name=a.clip_model, aesthetic_head=a.aesthetic_head, ocr=not a.no_ocr, caption=caption,
        expand=expand,
        filters=FilterSpec(expressions=tuple(a.filter)), rows_per_file=a.rows_per_file,
        row_group_size=a.row_group_size, address=a.address, overwrite=a.overwrite, progress=not a.quiet)


def _run_build(a) -> int:
    from curate.store import ConfigChanged
    from pipelines.build import build

    try:
        cfg = build_config_from_args(a)
    except ValueError as exc:  # a config that cannot work (e.g. --min-clip-s above half of --max-clip-s)
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from caption.chat import ChatSetupError

    try:
        summary = build(cfg)
    except (ConfigChanged, ChatSetupError) as exc:  # ChatSetupError: a caption backend that cannot work
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if summary.get("caption", {}).get("failed") or summary.get("expand", {}).get("failed"):
        print(f"error: {summary.get('caption', {}).get('failed', 0)} captions and "
              f"{summary.get('expand', {}).get('failed', 0)} expansions failed (the clips are published with "
              f"their status; see failures.parquet); re-run the same command to retry exactly those", file=sys.stderr)
        return 3
    return 0 if summary["inputs"]["adds_up"] else 1


def _add_filter(sub) -> None:
    p = sub.add_parser(
        "filter", help="re-apply filter thresholds to a built dataset (no re-scoring)",
        description="Recompute DATASET/selection.parquet from the published score columns. Scores are never "
                    "recomputed: changing a threshold takes seconds.")
    p.add_argument("dataset")
    p.add_argument("--where", action="append", default=[], metavar="EXPR",
                   help='extra rule, e.g. "sharpness >= 40" or "text_coverage < 0.1" (repeatable)')
    p.add_argument("--no-defaults", action="store_true",
                   help="apply only the --where rules, not the default thresholds of curate.filter.FilterSpec")
    p.set_defaults(func=_run_filter)


def _run_filter(a) -> int:
    from curate.filter import FilterSpec
    from pipelines.publish import read_light, run_filters

    root = Path(a.dataset)
    manifest = json.loads((root / "_manifest.json").read_text())
    table = read_light(root, manifest["shards"])
    spec = FilterSpec(expressions=tuple(a.where))
    if a.no_defaults:
        import dataclasses

        off = {f.name: (False if isinstance(f.default, bool) else None) for f in dataclasses.fields(FilterSpec)
               if f.name != "expressions"}
        spec = FilterSpec(**off, expressions=tuple(a.where))
    result = run_filters(root, table, spec)
    print(json.dumps({"clips": table.num_rows, "kept": result["kept"], "rates": result["rates"]}, indent=2))
    return 0


def _add_samples(sub) -> None:
    p = sub.add_parser(
        "samples", help="render a synthetic captioned video corpus with ground truth",
        description="Render videos of simple shapes in named colours moving in named directions over textured "
                    "backgrounds, several shots per video joined by hard cuts, dissolves and fades. Each video "
                    "gets a .json sidecar (cut frames, transitions, per-shot attributes) and a .txt caption.")
    p.add_argument("--out", required=True, help="folder to write into")
    p.add_argument("--videos", type=int, default=6, help="number of videos")
    p.add_argument("--seed", type=int, default=0, help="same seed, same videos")
    p.add_argument("--size", default="320x180", help="WxH of the videos (even numbers)")
    p.add_argument("--no-holdout", action="store_true",
                   help="also show the colour-shape pairs that eval-text holds out (default: they never appear)")
    p.add_argument("--split-seed", type=int, default=0, help="seed of the held-out colour-shape pairs")
    p.add_argument("--shots", type=int, default=0,
                   help="instead of videos, write N single-shot clips straight into clip shards (OUT/clips/), "
                        "captioned, for training without a build (what the GPU text loop uses)")
    p.set_defaults(func=_run_samples)


def _run_samples(a) -> int:
    from curate.synth import ComboSplit, render_samples

    w, h = (int(v) for v in a.size.lower().split("x"))
    exclude = () if a.no_holdout else ComboSplit.default(a.split_seed).heldout
    if a.shots:
        from pipelines.loop import write_shot_corpus

        if a.no_holdout:
            print("error: --shots always holds the eval pairs out", file=sys.stderr)
            return 2
        info = write_shot_corpus(a.out, a.shots, size=w, split_seed=a.split_seed, seed=a.seed)
        print(f"[samples] wrote {info['clips']} single-shot {w}x{w} clips in {len(info['shards'])} shards to "
              f"{a.out}/clips ({info['seconds']} s)")
        return 0
    paths = render_samples(a.out, n_videos=a.videos, seed=a.seed, size=(w, h), exclude=exclude)
    held = ", ".join(f"{c} {s}" for c, s in exclude) or "none"
    print(f"[samples] wrote {len(paths)} videos with ground-truth sidecars to {a.out} (held out: {held})")
    return 0


def _add_demo(sub) -> None:
    p = sub.add_parser(
        "demo", help="the whole system on a small corpus: samples -> build -> caption -> train -> generate -> eval",
        description="Render a synthetic sample corpus (or use --videos DIR), build a curated dataset, caption it, "
                    "write its report, then train a small VAE and DiT on it, generate videos for held-out prompts, "
                    "measure text faithfulness (eval-text) and write a training report, printing where "
                    "everything is. About 7 minutes on a 2-core CPU.")
    p.add_argument("--out", default="runs/demo", help="run folder")
    p.add_argument("--videos", default=None, help="your own folder of videos instead of the synthetic samples")
    p.add_argument("--samples", type=int, default=12, help="number of synthetic videos")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--vlm", default=None,
                   help="local VLM model dir for captions (default: the sources' own captions, labelled as such)")
    p.add_argument("--no-train", action="store_true",
                   help="stop after the dataset report (no VAE / DiT training, generation or eval-text)")
    p.add_argument("--profile", choices=["cpu", "gpu", "smoke"], default="cpu",
                   help="training sizes (pipelines/loop.py PROFILES): cpu = minutes on 2 cores, gpu = one H100/H200, "
                        "smoke = seconds, the plumbing only")
    p.set_defaults(func=_run_demo)


def _run_demo(a) -> int:
    from pipelines.demo import DemoConfig, main

    return main(DemoConfig(out=a.out, videos=a.videos, samples=a.samples, seed=a.seed, vlm=a.vlm,
                           train=not a.no_train, profile=a.profile))


DELEGATED = [
    ("caption", "pipelines.caption", "cli", "add caption columns (VLM) and expanded captions (LLM) to a dataset"),
    ("expand-prompt", "pipelines.caption", "expand_prompt_cli", "rewrite a short prompt like a training caption"),
    ("report", "pipelines.report", "cli", "HTML + PNG report of a dataset: histograms, filters, failures, contact sheets"),
    ("train-vae", "train.train_vae", None, "train the video VAE on clip shards (CPU, one GPU, or torchrun)"),
    ("vae-eval", "pipelines.vae_eval", "cli", "PSNR/SSIM of a VAE checkpoint on held-out clips, whole vs chunked"),
    ("cache-latents", "pipelines.cache_latents", "cli", "encode clips to VAE latents + text embeddings (resumable)"),
    ("train-dit", "train.train_dit", None, "train the text-to-video DiT on latent or clip shards (torchrun for GPUs)"),
    ("generate", "pipelines.generate", "cli", "text/image/video-to-video generation from a trained pipeline"),
    ("eval-text", "pipelines.eval_text", "cli", "text faithfulness: colour/shape/motion accuracy, seen vs held-out"),
]


def _add_delegated(sub) -> None:
    """Subcommands whose parsers live with their pipelines (``main`` hands them the raw arguments)."""
    for name, module, fn, help_ in DELEGATED:
        p = sub.add_parser(name, help=help_, add_help=False)
        p.add_argument("rest", nargs=argparse.REMAINDER)
        p.set_defaults(func=_delegate(module, fn))


def _delegate(module: str, fn: str | None):
    """Run ``module.fn(argv)``; with ``fn=None`` the module is a training script: ``main(parse_args(argv))``."""

    def run(a) -> int:
        import importlib

        m = importlib.import_module(module)
        result = getattr(m, fn)(a.rest) if fn else m.main(m.parse_args(a.rest))
        return result if isinstance(result, int) else 0

    return run


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tessera", description=DESCRIPTION,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    _add_demo(sub)
    _add_samples(sub)
    _add_build(sub)
    _add_filter(sub)
    _add_delegated(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    argv = list(sys.argv[1:] if argv is None else argv)
    for name, module, fn, _ in DELEGATED:  # their own parsers own --help and every option
        if argv and argv[0] == name:
            return _delegate(module, fn)(argparse.Namespace(rest=argv[1:]))
    args = parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())

"""The ``tessera`` command. Each subcommand parses its arguments here and calls a ``main(cfg)`` elsewhere.

Run ``tessera SUBCOMMAND --help`` for the options of each.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from train.config_cli import HelpFormatter, parse_source_config, source_fields

ROOT = Path(__file__).resolve().parents[1]

DESCRIPTION = """\
Tessera: raw video -> a curated, re-captioned training set -> a text-to-video model.

Data flow:  samples/videos --build--> DATASET (Parquet clip shards + scores + lineage)
            --filter--> selection  --caption--> captioned DATASET  --vae/dit training--> generate

Every long command prints progress and ends with a summary; every output folder holds a summary.json.
Ray: local by default; set RAY_ADDRESS (or --address) to run the same command on a cluster.
"""


# One example command line per subcommand, shown at the end of its --help.
EXAMPLES = {
    "demo": "tessera demo --out runs/demo",
    "samples": "tessera samples --out runs/samples --videos 6 --size 320x180",
    "build": "tessera build --input runs/samples --output runs/dataset",
    "filter": 'tessera filter runs/dataset --where "sharpness >= 40"',
    "caption": "tessera caption --input runs/dataset --output runs/captioned --backend source",
    "expand-prompt": 'tessera expand-prompt "a cat on a windowsill" --expand-base-url http://localhost:8000/v1 '
                     "--expand-model NAME (or --expand-backend transformers --expand-model DIR)",
    "report": "tessera report runs/demo/captioned",
    "train-vae": "tessera train-vae --data-root runs/demo/captioned --run-dir runs/vae --preset tiny --steps 300 "
                 "--batch-size 2 --resolutions '[[64, 64]]' --num-workers 0",
    "vae-eval": "tessera vae-eval --data-root runs/demo/captioned --checkpoint runs/demo/train/vae/checkpoints "
                "--height 64 --width 64",
    "cache-latents": "tessera cache-latents --input runs/demo/captioned --vae runs/demo/train/vae/checkpoints "
                     "--output runs/latents",
    "train-dit": "tessera train-dit --data-root runs/demo/captioned --vae runs/demo/train/vae/checkpoints "
                 "--run-dir runs/dit --preset tiny --steps 600 --bucket-areas '[4096]' --bucket-frames '[17]' "
                 "--caption-mix '[[\"short\", 1.0]]' --sample-size '[64, 64]'",
    "generate": 'tessera generate "a red square moves left" --model runs/demo/train/dit/pipeline --out red-square',
    "eval-text": "tessera eval-text --pipeline runs/demo/train/dit/pipeline",
}


def _epilog(name: str) -> str:
    return f"example:\n  {EXAMPLES[name]}"


def _defaults(path: str, cls: str) -> dict:
    """A config dataclass's defaults, read from its source (no import): the CLI's defaults are the config's."""
    return {f.name: f.default for f in source_fields(ROOT / path, cls)}


def _add_build(sub) -> None:
    d = _defaults("pipelines/build.py", "BuildConfig")
    clips = _defaults("curate/clips.py", "ClipConfig")
    p = sub.add_parser(
        "build", help="raw videos -> clip shards with quality scores and lineage",
        description=(
            "Turn a folder, glob or list file of raw videos into Parquet shards with one row per scene clip. "
            "Stages: probe -> decode at analysis size + scene detection -> cut H.264 clips -> scores "
            "(sharpness, exposure, motion, on-screen text, CLIP when a checkpoint is given) -> near-duplicate "
            "detection -> publish -> filter. Re-running the same command resumes a killed build; a changed "
            "config is refused (filters excepted: see `tessera filter`)."),
        epilog=_epilog("build"), formatter_class=HelpFormatter)
    p.add_argument("--input", "-i", required=True, nargs="+",
                   help="folder (searched recursively), glob pattern (quote it), .txt list file, or files")
    p.add_argument("--output", "-o", required=True, help="dataset folder to create or resume")
    p.add_argument("--address", default=None, help="Ray cluster address (default: $RAY_ADDRESS, else a local Ray)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                   help="cuda: decode with NVDEC (PyNvVideoCodec) and compute thumbnails and basic scores on GPU "
                        "actors; clips are still cut on CPUs. Without a GPU (or NVDEC) the build says so and runs on "
                        "CPUs")
    p.add_argument("--store-media", choices=["bytes", "path"], default=d["store_media"],
                   help="keep clip MP4s inside the shards (bytes) or as files under DATASET/media (path)")
    p.add_argument("--min-clip-s", type=float, default=clips["min_s"], help="shortest clip; shorter scenes are dropped")
    p.add_argument("--max-clip-s", type=float, default=clips["max_s"],
                   help="longest clip; longer scenes become windows")
    p.add_argument("--detector", choices=["shots", "adaptive", "content"], default=None,
                   help="hard-cut detector: shots (ours) or PySceneDetect's adaptive / content (fades, dissolves and "
                        "wipes are detected either way; default: "
                        f"{_defaults('curate/scenes.py', 'SceneConfig').get('detector')})")
    p.add_argument("--clip-margin", type=int, default=None,
                   help="frames every clip keeps clear of a detected cut or transition (default: "
                        f"{clips.get('margin_frames', 2)})")
    p.add_argument("--analysis-size", type=int, default=None,
                   help="short side (px) of frames used for analysis (default: "
                        f"{_defaults('curate/frames.py', 'DecodeConfig').get('short_side')})")
    p.add_argument("--split-timeout", type=float, default=d["split_timeout_s"],
                   help="seconds one video may take to decode, detect and cut before it is failed")
    p.add_argument("--clip-checkpoint", default=None,
                   help="local open_clip checkpoint file; without it the CLIP columns say no-model")
    p.add_argument("--clip-model", default=d["clip_model_name"], help="open_clip architecture of --clip-checkpoint")
    p.add_argument("--aesthetic-head", default=None, help="safetensors aesthetic head on the CLIP embedding")
    p.add_argument("--no-ocr", action="store_true", help="skip the on-screen text scorer")
    p.add_argument("--caption", choices=["source", "transformers", "openai"], default=None,
                   help="caption clips inline (as `tessera caption` does): source sidecars, a local VLM dir "
                        "(--caption-model) or an OpenAI-compatible server (--caption-base-url)")
    p.add_argument("--caption-model", default=None, help="VLM model dir (transformers) or served model name")
    p.add_argument("--caption-base-url", default=None,
                   help="OpenAI-compatible VLM server (default: $TESSERA_LLM_BASE_URL, else "
                        "$OPENAI_BASE_URL, else OpenAI's public API)")
    p.add_argument("--caption-api-key-env", "--api-key-env", default=None, metavar="VAR",
                   help="name of the environment variable holding the VLM server's key (never the key itself); "
                        "default: $OPENAI_API_KEY, sent only to OpenAI or to $OPENAI_BASE_URL")
    p.add_argument("--expand", choices=["off", "openai", "transformers"], default="off",
                   help="expand captions with an LLM inline (see `tessera caption --help`)")
    p.add_argument("--expand-model", default=None, help="LLM model dir (transformers) or served model name")
    p.add_argument("--expand-base-url", default=None,
                   help="OpenAI-compatible LLM server (default: $TESSERA_LLM_BASE_URL, else "
                        "$OPENAI_BASE_URL, else OpenAI's public API)")
    p.add_argument("--expand-api-key-env", default=None, metavar="VAR",
                   help="name of the environment variable holding the LLM server's key (as --caption-api-key-env)")
    p.add_argument("--max-retry-wait", type=float, default=60.0,
                   help="longest wait before retrying a caption/expand request, whatever Retry-After asks (s)")
    p.add_argument("--filter", action="append", default=[], metavar="EXPR",
                   help='filter rule over score columns, e.g. "sharpness >= 40" (repeatable)')
    p.add_argument("--rows-per-file", type=int, default=d["rows_per_file"], help="clips per published shard")
    p.add_argument("--row-group-size", type=int, default=d["row_group_size"], help="rows per Parquet row group")
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
    if a.clip_margin is not None:
        clips = dataclasses.replace(clips, margin_frames=a.clip_margin)
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
        split_timeout_s=a.split_timeout, store_media=a.store_media, clip_checkpoint=a.clip_checkpoint,
        clip_model_name=a.clip_model, aesthetic_head=a.aesthetic_head, ocr=not a.no_ocr, caption=caption,
        expand=expand,
        filters=FilterSpec(expressions=tuple(a.filter)), rows_per_file=a.rows_per_file,
        row_group_size=a.row_group_size, address=a.address, overwrite=a.overwrite, progress=not a.quiet,
        device=a.device)


def _run_build(a) -> int:
    from curate.store import ConfigChanged
    from pipelines.build import BuildStopped, build

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
    except BuildStopped as exc:  # interrupted, output locked, full or read-only: one line, what was kept
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
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
                    "recomputed: changing a threshold takes seconds.",
        epilog=_epilog("filter"), formatter_class=HelpFormatter)
    p.add_argument("dataset", help="a built dataset folder")
    p.add_argument("--where", action="append", default=[], metavar="EXPR",
                   help='extra rule, e.g. "sharpness >= 40" or "text_coverage < 0.1" (repeatable)')
    p.add_argument("--no-defaults", action="store_true",
                   help="apply only the --where rules, not the default thresholds of curate.filter.FilterSpec")
    p.set_defaults(func=_run_filter)


def _run_filter(a) -> int:
    from curate.filter import FilterSpec
    from curate.store import open_dataset
    from pipelines.publish import read_light, run_filters

    root = a.dataset  # a folder or a dataset URI (s3://...)
    manifest = open_dataset(root).manifest
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
                    "gets a .json sidecar (cut frames, transitions, per-shot attributes) and a .txt caption.",
        epilog=_epilog("samples"), formatter_class=HelpFormatter)
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
                    "everything is. Trains by steps (meant to stay under 10 minutes on an idle 2-core CPU); ends "
                    "with a warning and status 1 when no clip got a caption or a model learned nothing.",
        epilog=_epilog("demo"), formatter_class=HelpFormatter)
    p.add_argument("--out", default="runs/demo", help="run folder")
    p.add_argument("--videos", default=None, help="your own folder of videos instead of the synthetic samples")
    p.add_argument("--samples", type=int, default=12, help="number of synthetic videos")
    p.add_argument("--seed", type=int, default=0, help="seed of the samples, the held-out pairs and training")
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


# Subcommands whose parsers live with their pipelines. Each runner imports its module only when it runs, so
# ``tessera --help`` and ``tessera CMD --help`` stay fast; train-vae, train-dit and vae-eval parse their config
# dataclass from its source (train/config_cli.py) and import torch only after the arguments are good.


def _caption(argv: list[str]) -> int:
    from pipelines.caption import cli

    return cli(argv)


def _expand_prompt(argv: list[str]) -> int:
    from pipelines.caption import expand_prompt_cli

    return expand_prompt_cli(argv)


def _report(argv: list[str]) -> int:
    from pipelines.report import cli

    return cli(argv)


def _train_vae(argv: list[str]) -> int:
    values = parse_source_config(ROOT / "train" / "train_vae.py", "TrainVAEConfig", argv, prog="tessera train-vae",
                                 description="Train the 3-D causal video VAE on clip shards (CPU, one GPU, or "
                                             "torchrun -m train.train_vae for several).",
                                 example=EXAMPLES["train-vae"])
    from train.train_vae import TrainVAEConfig, main

    main(TrainVAEConfig(**values))
    return 0


def _vae_eval(argv: list[str]) -> int:
    values = parse_source_config(ROOT / "pipelines" / "vae_eval.py", "VAEEvalConfig", argv, prog="tessera vae-eval",
                                 description="PSNR / SSIM (LPIPS with local weights) of a VAE checkpoint on held-out "
                                             "clips, whole-clip vs chunked encode/decode.",
                                 example=EXAMPLES["vae-eval"])
    from pipelines.vae_eval import VAEEvalConfig, main

    main(VAEEvalConfig(**values))
    return 0


def _cache_latents(argv: list[str]) -> int:
    from pipelines.cache_latents import cli

    return cli(argv)


def _train_dit(argv: list[str]) -> int:
    values = parse_source_config(ROOT / "train" / "train_dit.py", "TrainDiTConfig", argv, prog="tessera train-dit",
                                 description="Train the text-to-video DiT on latent shards (--latents) or on clip "
                                             "shards encoded on the fly (--data-root with --vae); torchrun -m "
                                             "train.train_dit for DDP / FSDP2.",
                                 example=EXAMPLES["train-dit"])
    from train.train_dit import TrainDiTConfig, main

    main(TrainDiTConfig(**values))
    return 0


def _generate(argv: list[str]) -> int:
    from pipelines.generate import cli

    return cli(argv)


def _eval_text(argv: list[str]) -> int:
    from pipelines.eval_text import cli

    return cli(argv)


# (name, runner, one-line help)
DELEGATED = [
    ("caption", _caption, "add caption columns (VLM) and expanded captions (LLM) to a dataset"),
    ("expand-prompt", _expand_prompt, "rewrite a short prompt like a training caption"),
    ("report", _report, "HTML + PNG report of a dataset: histograms, filters, failures, contact sheets"),
    ("train-vae", _train_vae, "train the video VAE on clip shards (CPU, one GPU, or torchrun)"),
    ("vae-eval", _vae_eval, "PSNR/SSIM of a VAE checkpoint on held-out clips, whole vs chunked"),
    ("cache-latents", _cache_latents, "encode clips to VAE latents + text embeddings (resumable)"),
    ("train-dit", _train_dit, "train the text-to-video DiT on latent or clip shards (torchrun for GPUs)"),
    ("generate", _generate, "text/image/video-to-video generation from a trained pipeline"),
    ("eval-text", _eval_text, "text faithfulness: colour/shape/motion accuracy, seen vs held-out"),
]
OWN_EXAMPLE = {"train-vae", "train-dit", "vae-eval"}  # their parsers print the example themselves

# Errors that are the user's to fix (a missing folder, a bad value, a server that does not answer): one line on
# stderr and status 2, no traceback (TESSERA_DEBUG=1 shows it).
USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError,
               ConnectionError, TimeoutError)


def _add_delegated(sub) -> None:
    """The delegated subcommands in ``tessera --help`` (their own parsers own their options)."""
    for name, runner, help_ in DELEGATED:
        p = sub.add_parser(name, help=help_, add_help=False)
        p.add_argument("rest", nargs=argparse.REMAINDER)
        p.set_defaults(func=lambda a, runner=runner: runner(a.rest))


def _guarded(name: str, run) -> int:
    """``run()``, with a user's error as one line on stderr and status 2."""
    try:
        result = run()
    except Exception as exc:  # noqa: BLE001 - sorted below: a user's error is one line, anything else re-raised
        if os.environ.get("TESSERA_DEBUG") or not _user_error(exc):
            raise
        print(f"tessera {name}: error: {exc}", file=sys.stderr)
        return 2
    return result if isinstance(result, int) else 0


def _user_error(exc: Exception) -> bool:
    """A bad input, a missing or unreadable file, an unreachable server, a dataset whose files do not match its
    manifest, or object storage refusing a read: things a user fixes, not bugs. (``curate.store`` is only looked up
    when it is already imported, so ``--help`` stays free of pyarrow.)"""
    store = sys.modules.get("curate.store")
    return isinstance(exc, USER_ERRORS + (OSError,)) or (store is not None and isinstance(exc, store.DatasetError))


def _run_delegated(name: str, runner, argv: list[str]) -> int:
    asks_help = "-h" in argv or "--help" in argv
    try:
        return _guarded(name, lambda: runner(argv))
    except SystemExit as exc:
        if asks_help and exc.code in (0, None) and name not in OWN_EXAMPLE:
            print("\n" + _epilog(name))
        raise


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
    for name, runner, _ in DELEGATED:  # their own parsers own --help and every option
        if argv and argv[0] == name:
            return _run_delegated(name, runner, argv[1:])
    args = parser().parse_args(argv)
    return _guarded(args.command, lambda: args.func(args))


if __name__ == "__main__":
    sys.exit(main())

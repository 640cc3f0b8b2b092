"""``tessera generate "prompt" --model DIR``: the command line of ``model.pipeline.TextToVideo``.

Reads ``pipeline.json`` once and answers a user's mistake (a missing GPU, an image where a video belongs, a
corrupt weights file, a bad size) with one line on stderr and exit status 2. The media flags are checked before
any weights load; the request itself is checked once, by ``TextToVideo`` (``model.pipeline.check_request``),
before any model runs. ``--size`` and ``--frames`` default to what the pipeline was trained at
(``model.pipeline.trained_defaults``), with a note saying so. ``--expand`` rewrites the prompt with the
caption expander (``caption.expand``) first.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

from train.config_cli import source_fields

ROOT = Path(__file__).resolve().parents[1]
# model.pipeline.Defaults, read from its source so that --help imports no torch (it prints in well under a second)
DEFAULTS = argparse.Namespace(**{f.name: f.default for f in source_fields(ROOT / "model" / "pipeline.py", "Defaults")})


def expand_prompt_text(prompt: str) -> str:
    """The caption expander (``caption.expand``) on one prompt, with its default config from the environment.
    On any failure the expander returns the prompt unchanged (and says so)."""
    from caption.expand import ExpandConfig, expand_prompt

    result = expand_prompt(prompt, ExpandConfig())
    if result.status != "ok":
        print(f"prompt expansion: {result.status}; using the prompt as given", file=sys.stderr)
    return result.text or prompt


def _parse_size(text: str) -> tuple[int, int]:
    try:
        w, h = text.lower().split("x")
        return int(w), int(h)
    except ValueError:
        raise ValueError(f"--size must look like WIDTHxHEIGHT (e.g. 512x288), got {text!r}") from None


def _parse_keyframes(text: str | None) -> dict[int, np.ndarray] | None:
    if not text:
        return None
    from curate.media import read_media

    out = {}
    for item in text.split(","):
        idx, _, path = item.partition(":")
        if not path or not idx.strip().isdigit():
            raise ValueError(f"--keyframes must look like 0:first.png,16:last.png, got {item!r}")
        out[int(idx)] = read_media(path.strip(), max_frames=1)[0]
    return out


def request_shape(frames: int | None, size: str | None, meta: dict) -> tuple[int, tuple[int, int]]:
    """The request's frame count and (W, H): as given, else what ``pipeline.json`` says the DiT was trained at
    (a note on stderr names it), else ``DEFAULTS``."""
    from model.pipeline import trained_defaults

    trained = trained_defaults(meta)
    taken = []
    if frames is None:
        frames = trained.get("frames", DEFAULTS.frames)
        taken.append(f"--frames {frames}")
    if size is None:
        wh = trained.get("size", DEFAULTS.size)
        taken.append(f"--size {wh[0]}x{wh[1]}")
    else:
        wh = _parse_size(size)
    if taken:
        origin = "the size the pipeline was trained at" if trained else "the defaults (pipeline.json records no size)"
        print(f"tessera generate: using {' '.join(taken)} ({origin})", file=sys.stderr)
    return frames, wh


def _note_held(vae_cfg, frames: int, image, video, video_b, keyframes, strength) -> None:
    """A note on stderr when some given frames are pinned to their latents in a clip of held frames rather than
    in the clip that gets generated (``model.conditioning.held_positions``)."""
    from model.conditioning import given_frames, held_positions

    if strength is not None:
        return
    given = given_frames(frames, vae_cfg.time_factor, image, video, video_b, keyframes)
    held = held_positions(given, frames, vae_cfg.time_factor, vae_cfg.grouped_encoder)
    if held:
        why = ("their latent groups are given only in part" if vae_cfg.grouped_encoder else
               "this VAE's encoder is causal over the whole clip (a VAE trained with grouped_encoder pins whole "
               "groups exactly)")
        print(f"tessera generate: latent frames {held} are pinned to the given frames' latents in a clip of held "
              f"frames, not in the generated one: {why}", file=sys.stderr)


def cli(argv: list[str] | None = None) -> int:
    """``tessera generate "prompt" --model DIR [...]``: writes MP4 (PNG for one frame) + a contact sheet."""
    p = argparse.ArgumentParser(prog="tessera generate", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                                description="Generate a video (or an image) from a prompt with a trained pipeline. "
                                            "Inputs pick the task: --image (image-to-video), --keyframes "
                                            "(interpolation), --video (extend forward), --video-b (extend "
                                            "backward), both (transition), --strength with --video (edit).")
    p.add_argument("prompt")
    p.add_argument("--model", default=os.environ.get("TESSERA_MODEL"),
                   help="pipeline folder (train_dit's RUN/pipeline); default $TESSERA_MODEL")
    p.add_argument("--expand", action="store_true", help="rewrite the prompt with the caption expander first")
    p.add_argument("--image", default=None, help="first frame (image-to-video) or the image to edit with --strength")
    p.add_argument("--video", default=None, help="video to extend forward, edit (--strength) or transition from")
    p.add_argument("--video-b", default=None, help="video to extend backward, or transition into")
    p.add_argument("--keyframes", default=None, help="pixel-frame:image pairs, e.g. 0:a.png,16:b.png")
    p.add_argument("--strength", type=float, default=None,
                   help="edit strength in [0, 1]: 0 keeps the input, small keeps its layout, 1 ignores it "
                        "(needs --video or --image)")
    # "%(default).0s" prints nothing: it stops the formatter from adding "(default: None)" to these two
    p.add_argument("--frames", type=int, default=None,
                   help=f"output frames, 1 + 4k (1 = an image) (default: the pipeline's trained count, else "
                        f"{DEFAULTS.frames})%(default).0s")
    p.add_argument("--size", default=None, help=f"WIDTHxHEIGHT, multiples of 16 (default: the pipeline's trained "
                                                f"size, else {DEFAULTS.size[0]}x{DEFAULTS.size[1]})%(default).0s")
    p.add_argument("--fps", type=int, default=DEFAULTS.fps)
    p.add_argument("--steps", type=int, default=DEFAULTS.steps)
    p.add_argument("--cfg", type=float, default=DEFAULTS.cfg, help="classifier-free guidance scale (1 = off)")
    p.add_argument("--seed", type=int, default=DEFAULTS.seed)
    p.add_argument("--device", default="auto", help="auto (a GPU when there is one), cpu or cuda")
    p.add_argument("--out", default="outputs/sample", help="output path without suffix (.mp4/.png added)")
    a = p.parse_args(argv)
    from curate.media import contact_sheet, is_image_file, read_media, save_media
    from model.pipeline import TextToVideo, read_pipeline_config, resolve_device

    try:
        if not a.model:
            raise ValueError("--model DIR is required (or set TESSERA_MODEL)")
        device = resolve_device(a.device)
        meta = read_pipeline_config(a.model)
        for flag, path in (("--video", a.video), ("--video-b", a.video_b)):
            if path and is_image_file(path):
                raise ValueError(f"{flag} takes a video, got the image {path}: give an image with --image "
                                 "(image-to-video, or the image to edit with --strength)")
        num_frames, size = request_shape(a.frames, a.size, meta)
        image = read_media(a.image, 1)[0] if a.image else None
        video = read_media(a.video) if a.video else None
        video_b = read_media(a.video_b) if a.video_b else None
        keyframes = _parse_keyframes(a.keyframes)
        pipe = TextToVideo.from_pretrained(a.model, str(device), expand_prompt_text, meta)
        _note_held(pipe.vae.cfg, num_frames, image, video, video_b, keyframes, a.strength)
        # the pipeline checks the request (frames, size, steps, strength, input combination) before any model runs
        frames = pipe(a.prompt, image=image, video=video, video_b=video_b, keyframes=keyframes, strength=a.strength,
                      frames=num_frames, size=size, fps=a.fps, steps=a.steps, cfg=a.cfg, seed=a.seed,
                      expand=a.expand)
    except (ValueError, FileNotFoundError) as exc:  # WeightsError (a corrupt dit/vae file) is a ValueError
        print(f"tessera generate: {exc}", file=sys.stderr)
        return 2
    out = save_media(frames, a.out, a.fps)
    sheet = Path(a.out).with_name(Path(a.out).name + "_sheet.png")
    from PIL import Image

    Image.fromarray(contact_sheet(frames, columns=4, rows=2)).save(sheet)
    print(json.dumps({"output": str(out), "contact_sheet": str(sheet), "frames": int(frames.shape[0]),
                      "size": [int(frames.shape[2]), int(frames.shape[1])]}))
    return 0


if __name__ == "__main__":
    sys.exit(cli())

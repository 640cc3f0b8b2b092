"""Generation: ``TextToVideo.from_pretrained(dir)(prompt, ...)`` and ``tessera generate "prompt"``.

One sampler serves every task; a task is only the ``Condition`` built from what the caller gives
(``model/conditioning.py``). Which inputs select which task:

| inputs                          | task                                   | output                                        |
|---------------------------------|----------------------------------------|-----------------------------------------------|
| prompt only                     | text-to-video (text-to-image: 1 frame) | ``frames`` frames                             |
| ``image``                       | image-to-video (the image is frame 0)  | ``frames`` frames                             |
| ``keyframes={pixel index: img}``| keyframes / interpolation              | each image at its frame (its group held)      |
| ``video``                       | extend forward                         | the video's last frames, then new ones        |
| ``video_b``                     | extend backward                        | new frames, then the video's first frames     |
| ``video`` + ``video_b``         | transition A -> B                      | tail of A, new frames, head of B              |
| ``video`` (or ``image``) + ``strength`` | video-to-video edit (SDEdit)   | the input re-generated from noise level s     |

Given media are cover-resized and center-cropped to ``size``. The VAE is causal (1 + 4k frames -> 1 + k
latents; every latent after the first is a group of 4 frames), so a clip at the start gives its last ``1 + 4m``
frames and a clip at the end its first ``4m``, the most that fit while leaving at least one latent frame to
generate (``model.conditioning.given_frames``). Every given frame sits at its own output frame index and is
encoded there, inside one clip of the output's length (``model.conditioning.given_condition``); a keyframe after
frame 0 is held over the other frames of its latent group. Given latent frames are pinned by the sampler, so they
come back exactly (in latent space; the pixels are their VAE reconstruction). Every argument is checked before
any model runs: a bad frame count, size, strength or input combination raises ``ValueError`` saying what would
be valid.

A pipeline folder (``export_pipeline``) holds ``dit.safetensors``, ``vae.safetensors`` and ``pipeline.json``
(DiT config, VAE config, text-encoder config, latent scale / shift, extra metadata). Nothing is unpickled.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import uuid
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from model import conditioning as C
from model.dit import DiT, DiTConfig
from model.flow import Flow, FlowConfig, denoise
from model.text import TextConfig, TextEncoder
from model.vae import VAEConfig, VideoVAE

FORMAT = "tessera-pipeline/1"
MAX_SIDE = 4096
MAX_FRAMES = 1025


# ----------------------------------------------------------------------------------------------------------
# Export / load
# ----------------------------------------------------------------------------------------------------------


def _config_from_dict(cls, d: dict):
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


def export_pipeline(directory: str | Path, dit: DiT, vae: VideoVAE, text_cfg: TextConfig, latent_scale: float = 1.0,
                    latent_shift: float = 0.0, extra: dict | None = None, time_shift: float = 1.0) -> Path:
    """Write a ``from_pretrained``-able folder atomically (temp folder, then rename); returns its path.

    ``time_shift``: the noise-schedule shift scale the DiT was trained with (``FlowConfig.shift_scale``), 0 for
    a DiT trained with no shift at all (``FlowConfig.shift`` off); the sampler uses the same schedule."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = directory.parent / f".tmp-{directory.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        for name, module in (("dit", dit), ("vae", vae)):
            sd = {k: v.detach().cpu().contiguous().clone() for k, v in module.state_dict().items()}
            save_file(sd, str(tmp / f"{name}.safetensors"))
        text = dataclasses.replace(text_cfg, cache_dir=None, device="cpu")
        meta = {"format": FORMAT, "dit": dataclasses.asdict(dit.cfg), "vae": dataclasses.asdict(vae.cfg),
                "text": dataclasses.asdict(text), "latent_scale": latent_scale, "latent_shift": latent_shift,
                "time_shift": float(time_shift), "extra": extra or {}}
        (tmp / "pipeline.json").write_text(json.dumps(meta, indent=1, default=str))
        if directory.exists():
            shutil.rmtree(directory)
        os.rename(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def read_pipeline_config(directory: str | Path) -> dict:
    """``pipeline.json`` of a pipeline folder (cheap: no weights)."""
    path = Path(directory) / "pipeline.json"
    if not path.is_file():
        raise FileNotFoundError(f"{directory} is not a Tessera pipeline folder (no pipeline.json)")
    meta = json.loads(path.read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"unknown pipeline format {meta.get('format')!r} in {path}")
    return meta


def expand_prompt_text(prompt: str) -> str:
    """The caption expander (``caption.expand``) on one prompt, with its default config from the environment.
    On any failure the expander returns the prompt unchanged (and says so)."""
    from caption.expand import ExpandConfig, expand_prompt

    result = expand_prompt(prompt, ExpandConfig())
    if result.status != "ok":
        print(f"prompt expansion: {result.status}; using the prompt as given", file=sys.stderr)
    return result.text or prompt


# ----------------------------------------------------------------------------------------------------------
# Media helpers
# ----------------------------------------------------------------------------------------------------------


def _as_video(x, name: str) -> np.ndarray:
    a = np.asarray(x)
    if a.ndim == 3:
        a = a[None]
    if a.ndim != 4 or a.shape[-1] != 3 or min(a.shape) < 1:
        raise ValueError(f"{name} must be uint8 (H, W, 3) or (T, H, W, 3), got shape {a.shape}")
    return a.astype(np.uint8, copy=False)


def fit_frames(frames: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """uint8 (T, h, w, 3) -> (1, 3, T, H, W) in [-1, 1], cover-resized and center-cropped to size=(W, H)."""
    from train.data import resize_crop

    return resize_crop(frames, (size[1], size[0]), 1.0, 0.5, 0.5)[None]


def contact_sheet(frames: np.ndarray, columns: int = 4, rows: int = 1) -> np.ndarray:
    """uint8 grid (rows*H, columns*W, 3) of up to rows*columns evenly spaced frames of (T, H, W, 3)."""
    t = frames.shape[0]
    n = min(t, rows * columns)
    idx = np.linspace(0, t - 1, n).round().astype(int)
    h, w = frames.shape[1:3]
    sheet = np.zeros((rows * h, columns * w, 3), np.uint8)
    for k, i in enumerate(idx):
        r, c = divmod(k, columns)
        sheet[r * h:(r + 1) * h, c * w:(c + 1) * w] = frames[i]
    return sheet[: (-(-n // columns)) * h]


def save_media(frames: np.ndarray, stem: str | Path, fps: int) -> Path:
    """``stem.png`` for one frame, else ``stem.mp4`` (H.264); returns the path written."""
    from PIL import Image

    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    if frames.shape[0] == 1:
        path = stem.with_suffix(".png")
        Image.fromarray(frames[0]).save(path)
        return path
    from train.data import encode_mp4

    path = stem.with_suffix(".mp4")
    path.write_bytes(encode_mp4(frames, fps=int(fps)))
    return path


def read_media(path: str | Path, max_frames: int = MAX_FRAMES) -> np.ndarray:
    """uint8 (T, H, W, 3) of an image or a video file (at most ``max_frames`` frames)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"no such file: {path}")
    if path.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp", ".bmp"):
        from PIL import Image

        return np.array(Image.open(path).convert("RGB"))[None]  # a writable copy
    import av

    out = []
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            out.append(frame.to_ndarray(format="rgb24"))
            if len(out) >= max_frames:
                break
    if not out:
        raise ValueError(f"{path} has no decodable video frames")
    return np.stack(out)


# ----------------------------------------------------------------------------------------------------------
# The pipeline
# ----------------------------------------------------------------------------------------------------------


class TextToVideo:
    """DiT + VAE + text encoder behind one ``__call__`` for every generation task (see the module docstring)."""

    def __init__(self, dit: DiT, vae: VideoVAE, text_cfg: TextConfig = TextConfig(), latent_scale: float = 1.0,
                 latent_shift: float = 0.0, expander: Callable[[str], str] | None = None, time_shift: float = 1.0):
        self.dit, self.vae, self.text_cfg = dit.eval(), vae.eval(), text_cfg
        self.latent_scale, self.latent_shift = latent_scale, latent_shift
        self.expander = expander or expand_prompt_text
        self._text: TextEncoder | None = None
        self.set_time_shift(time_shift)  # sample on the schedule it trained on

    def set_time_shift(self, time_shift: float) -> None:
        """The sampler's noise-schedule shift scale (``FlowConfig.shift_scale``; 0: an even, unshifted grid).
        ``from_pretrained`` sets the one the DiT trained with; another value only moves the sampling grid (the
        network is a velocity field at every t), which is what eval-text's ``sample_shift`` sweeps."""
        if time_shift < 0:
            raise ValueError(f"time_shift must be >= 0 (0: the DiT trained with no shift), got {time_shift}")
        self.time_shift = float(time_shift)
        self.flow = Flow(self.dit, FlowConfig(shift=time_shift > 0, shift_scale=time_shift or 1.0))

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str = "cpu") -> "TextToVideo":
        """Load a folder written by ``export_pipeline`` (safetensors weights + ``pipeline.json``)."""
        from safetensors.torch import load_file

        meta = read_pipeline_config(directory)
        dit = DiT(_config_from_dict(DiTConfig, meta["dit"]))
        dit.load_state_dict(load_file(str(Path(directory) / "dit.safetensors")))
        vae = VideoVAE(_config_from_dict(VAEConfig, meta["vae"]))
        vae.load_state_dict(load_file(str(Path(directory) / "vae.safetensors")))
        text = dataclasses.replace(_config_from_dict(TextConfig, meta["text"]), device=device)
        return cls(dit.to(device).requires_grad_(False), vae.to(device).requires_grad_(False), text,
                   float(meta["latent_scale"]), float(meta["latent_shift"]),
                   time_shift=float(meta.get("time_shift", 1.0)))  # folders from before the option: 1

    @property
    def device(self) -> torch.device:
        return next(self.dit.parameters()).device

    @property
    def text(self) -> TextEncoder:
        if self._text is None:
            self._text = TextEncoder(dataclasses.replace(self.text_cfg, device=str(self.device)))
        return self._text

    # -- checks (no compute) --------------------------------------------------------------------------------
    def check(self, frames: int, size: tuple[int, int], steps: int, cfg: float, strength: float | None, image,
              video, video_b, keyframes) -> None:
        """Raise ``ValueError`` for any invalid request, before anything runs."""
        check_request(frames, size, steps, cfg, strength, image, video, video_b, keyframes,
                      self.vae.cfg.time_factor, self.vae.cfg.spatial_factor * self.dit.cfg.patch[1],
                      self.dit.cfg.patch[0])

    # -- latent helpers -----------------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, frames: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
        """uint8 (T, h, w, 3) with T = 1 + 4k -> scaled latents (1, C, 1 + k, H/8, W/8) on the device."""
        z = self.vae.encode(fit_frames(frames, size).to(self.device)).mode()
        return (z.float() - self.latent_shift) * self.latent_scale

    @torch.no_grad()
    def encode_batch(self, clips: list[np.ndarray], size: tuple[int, int]) -> torch.Tensor:
        """Clips of one length (uint8 (T, h, w, 3) each) -> scaled latents (B, C, T', H', W'), one VAE call."""
        x = torch.cat([fit_frames(c, size) for c in clips]).to(self.device)
        return (self.vae.encode(x).mode().float() - self.latent_shift) * self.latent_scale

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> np.ndarray:
        """Scaled latents (1, C, T', H', W') -> uint8 (T, H, W, 3)."""
        return self.decode_batch(latents[:1])[0]

    @torch.no_grad()
    def decode_batch(self, latents: torch.Tensor) -> np.ndarray:
        """Scaled latents (B, C, T', H', W') -> uint8 (B, T, H, W, 3), one VAE call."""
        x = self.vae.decode(latents.float() / self.latent_scale + self.latent_shift)  # (B, 3, T, H, W)
        x = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        return x.permute(0, 2, 3, 4, 1).cpu().numpy()

    def build_condition(self, frames: int, size: tuple[int, int], image=None, video=None, video_b=None,
                        keyframes=None, strength: float | None = None) -> C.Condition:
        """The one condition of the request (see the table in the module docstring)."""
        tf = self.vae.cfg.time_factor
        latent_t = 1 + (frames - 1) // tf
        h, w = size[1] // self.vae.cfg.spatial_factor, size[0] // self.vae.cfg.spatial_factor
        ch = self.dit.cfg.latent_channels
        if strength is not None:
            given = _as_video(video if video is not None else image, "video")[:frames]
            return C.edit(self.encode(given, size), float(strength))
        given = C.given_frames(frames, tf, image, video, video_b, keyframes)
        if given:  # each at its output index, encoded in one clip of the output's length (model/conditioning.py)
            fitted = {p: fit_frames(f[None], size)[:, :, 0] for p, f in given.items()}  # (1, 3, H, W) each

            def encode(x: torch.Tensor) -> torch.Tensor:
                return (self.vae.encode(x.to(self.device)).mode().float() - self.latent_shift) * self.latent_scale

            with torch.no_grad():
                return C.given_condition(fitted, frames, encode, tf)
        cond = C.text_to_video(1, ch, latent_t, h, w)
        return cond.to(self.device)

    # -- generation ---------------------------------------------------------------------------------------
    @torch.no_grad()
    def sample_latents(self, prompt: str, *, image=None, video=None, video_b=None, keyframes=None,
                       strength: float | None = None, frames: int = 17, size: tuple[int, int] = (256, 256),
                       steps: int = 30, cfg: float = 5.0, seed: int = 0, expand: bool = False,
                       solver: str = "euler") -> tuple[torch.Tensor, C.Condition]:
        """Checked request -> (latents (1, C, T', H', W'), the condition used)."""
        size = (int(size[0]), int(size[1]))
        self.check(frames, size, steps, cfg, strength, image, video, video_b, keyframes)
        if expand:
            prompt = self.expander(prompt)
        emb = self.text([prompt])
        cond = self.build_condition(frames, size, image, video, video_b, keyframes, strength).to(self.device)
        latents = denoise(self.flow, None, cond, emb.tokens.to(self.device), emb.mask.to(self.device),
                          steps=steps, cfg_scale=cfg, solver=solver, seed=seed)
        return latents, cond

    @torch.no_grad()
    def sample_batch(self, prompts: list[str], seeds: list[int], *, frames: int = 17,
                     size: tuple[int, int] = (256, 256), steps: int = 30, cfg: float = 5.0,
                     solver: str = "euler") -> torch.Tensor:
        """Text-to-video for several prompts in one batch -> latents (B, C, T', H', W').

        Sample i starts from the noise ``sample_latents(prompts[i], seed=seeds[i])`` would draw, so a batch gives
        what the one-at-a-time calls give, up to float rounding (captions are padded to the longest one and
        masked). Cost: one network call per step for the whole batch instead of one per prompt."""
        if len(prompts) != len(seeds) or not prompts:
            raise ValueError(f"need one seed per prompt and at least one prompt, got {len(prompts)} prompts and "
                             f"{len(seeds)} seeds")
        size = (int(size[0]), int(size[1]))
        self.check(frames, size, steps, cfg, None, None, None, None, None)
        one = self.build_condition(frames, size)
        cond = C.Condition(one.mask.repeat(len(prompts), 1), one.reference.repeat(len(prompts), 1, 1, 1, 1),
                           one.strength).to(self.device)
        noise = torch.cat([torch.randn(one.shape, generator=torch.Generator().manual_seed(int(s)),
                                       dtype=torch.float32) for s in seeds])
        emb = self.text(list(prompts))
        return denoise(self.flow, noise, cond, emb.tokens.to(self.device), emb.mask.to(self.device), steps=steps,
                       cfg_scale=cfg, solver=solver, seeds=[int(s) for s in seeds])

    def generate_batch(self, prompts: list[str], seeds: list[int], *, frames: int = 17,
                       size: tuple[int, int] = (256, 256), steps: int = 30, cfg: float = 5.0,
                       solver: str = "euler") -> np.ndarray:
        """uint8 (B, T, H, W, 3): :meth:`sample_batch`, then one batched VAE decode."""
        return self.decode_batch(self.sample_batch(prompts, seeds, frames=frames, size=size, steps=steps, cfg=cfg,
                                                   solver=solver))

    def __call__(self, prompt: str, *, image=None, video=None, video_b=None, keyframes=None,
                 strength: float | None = None, frames: int = 17, size: tuple[int, int] = (256, 256), fps: int = 16,
                 steps: int = 30, cfg: float = 5.0, seed: int = 0, expand: bool = False) -> np.ndarray:
        """Generate uint8 frames (T, H, W, 3) for a prompt; ``fps`` is carried for writers (not a model input)."""
        latents, _ = self.sample_latents(prompt, image=image, video=video, video_b=video_b, keyframes=keyframes,
                                         strength=strength, frames=frames, size=size, steps=steps, cfg=cfg,
                                         seed=seed, expand=expand)
        return self.decode(latents)


def clip_latents(num_frames: int, time_factor: int = 4) -> int:
    """Latent frames of the longest 1 + 4m prefix of a clip of ``num_frames`` frames."""
    return 1 + (num_frames - 1) // time_factor


def check_request(frames: int, size: tuple[int, int], steps: int, cfg: float, strength: float | None, image, video,
                  video_b, keyframes, time_factor: int = 4, unit: int = 16, patch_t: int = 1) -> None:
    """Every rule a request must meet, checked on sizes and shapes only (see ``TextToVideo``)."""
    if not isinstance(frames, (int, np.integer)) or frames < 1 or (frames - 1) % time_factor:
        ok = ", ".join(str(1 + time_factor * k) for k in range(5))
        raise ValueError(f"frames must be 1 + {time_factor}k (1 for an image; e.g. {ok}, ...), got {frames}")
    if frames > MAX_FRAMES:
        raise ValueError(f"frames must be at most {MAX_FRAMES}, got {frames}")
    latent_t = 1 + (frames - 1) // time_factor
    if latent_t % patch_t:
        raise ValueError(f"frames give {latent_t} latent frames, not a multiple of the temporal patch {patch_t}")
    if len(size) != 2 or any(not isinstance(s, (int, np.integer)) for s in size):
        raise ValueError(f"size must be (width, height) integers, got {size}")
    w, h = size
    if w < unit or h < unit or w % unit or h % unit or max(w, h) > MAX_SIDE:
        raise ValueError(f"size {w}x{h} is invalid: width and height must be multiples of {unit} in "
                         f"[{unit}, {MAX_SIDE}] (e.g. {w // unit * unit or unit}x{h // unit * unit or unit})")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if not cfg > 0:
        raise ValueError(f"cfg must be > 0 (1 = no guidance), got {cfg}")
    if image is not None:
        _as_video(image, "image")
    for name, v in (("video", video), ("video_b", video_b)):
        if v is not None:
            _as_video(v, name)
    if strength is not None:
        if not 0.0 <= float(strength) <= 1.0:
            raise ValueError(f"strength must be in [0, 1] (0 keeps the input, 1 ignores it), got {strength}")
        if video_b is not None or keyframes:
            raise ValueError("strength (video-to-video edit) takes one input: --video or --image, nothing else")
        src = video if video is not None else image
        if src is None:
            raise ValueError("strength needs an input to edit: a video (or an image for one frame)")
        if video is not None and image is not None:
            raise ValueError("give either a video or an image to edit, not both")
        n = len(_as_video(src, "input"))
        if n < frames:
            raise ValueError(f"the input to edit has {n} frames; frames={frames} needs at least that many")
        return
    if (image is not None or keyframes) and (video is not None or video_b is not None):
        raise ValueError("choose one task: image/keyframes (image-to-video, interpolation) or video/video_b "
                         "(extend, transition), not both")
    if image is not None and frames == 1:
        raise ValueError("image-to-video needs frames > 1 (to edit an image use strength)")
    if keyframes:
        if any(not isinstance(p, (int, np.integer)) or not 0 <= p < frames for p in keyframes):
            raise ValueError(f"keyframe indices must be pixel frames in [0, {frames}), got {sorted(keyframes)}")
        from model.conditioning import latent_index

        lat = [latent_index(int(p), time_factor) for p in keyframes] + ([0] if image is not None else [])
        if len(set(lat)) != len(lat):
            raise ValueError(f"keyframes {sorted(keyframes)} share a latent frame (frame 0 alone, then groups of "
                             f"{time_factor}: 1-{time_factor}, {time_factor + 1}-{2 * time_factor}, ...)")
        if len(lat) >= latent_t:
            raise ValueError(f"{len(lat)} keyframes leave nothing to generate in {latent_t} latent frames; raise frames")
        for p, img in keyframes.items():
            _as_video(img, f"keyframe {p}")
    if video is not None and video_b is not None and latent_t < 3:
        raise ValueError(f"a transition needs frames >= {1 + 2 * time_factor} (context, new, context), got {frames}")
    if (video is not None or video_b is not None) and latent_t < 2:
        raise ValueError(f"extending a video needs frames >= {1 + time_factor}, got {frames}")


# ----------------------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------------------


def _parse_size(text: str) -> tuple[int, int]:
    try:
        w, h = text.lower().split("x")
        return int(w), int(h)
    except ValueError:
        raise ValueError(f"--size must look like WIDTHxHEIGHT (e.g. 512x288), got {text!r}") from None


def _parse_keyframes(text: str | None) -> dict[int, np.ndarray] | None:
    if not text:
        return None
    out = {}
    for item in text.split(","):
        idx, _, path = item.partition(":")
        if not path or not idx.strip().isdigit():
            raise ValueError(f"--keyframes must look like 0:first.png,16:last.png, got {item!r}")
        out[int(idx)] = read_media(path.strip(), max_frames=1)[0]
    return out


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
    p.add_argument("--frames", type=int, default=17, help="output frames, 1 + 4k (1 = an image)")
    p.add_argument("--size", default="256x256", help="WIDTHxHEIGHT, multiples of 16")
    p.add_argument("--fps", type=int, default=16)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--cfg", type=float, default=5.0, help="classifier-free guidance scale (1 = off)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", default="outputs/sample", help="output path without suffix (.mp4/.png added)")
    a = p.parse_args(argv)
    try:
        if not a.model:
            raise ValueError("--model DIR is required (or set TESSERA_MODEL)")
        meta = read_pipeline_config(a.model)
        size = _parse_size(a.size)
        image = read_media(a.image, 1)[0] if a.image else None
        video = read_media(a.video) if a.video else None
        video_b = read_media(a.video_b) if a.video_b else None
        keyframes = _parse_keyframes(a.keyframes)
        vae_cfg = _config_from_dict(VAEConfig, meta["vae"])
        patch = meta["dit"]["patch"]
        check_request(a.frames, size, a.steps, a.cfg, a.strength, image, video, video_b, keyframes,
                      vae_cfg.time_factor, vae_cfg.spatial_factor * patch[1], patch[0])  # before loading weights
    except (ValueError, FileNotFoundError) as exc:
        print(f"tessera generate: {exc}", file=sys.stderr)
        return 2
    pipe = TextToVideo.from_pretrained(a.model, device=a.device)
    frames = pipe(a.prompt, image=image, video=video, video_b=video_b, keyframes=keyframes, strength=a.strength,
                  frames=a.frames, size=size, fps=a.fps, steps=a.steps, cfg=a.cfg, seed=a.seed, expand=a.expand)
    out = save_media(frames, a.out, a.fps)
    sheet = Path(a.out).with_name(Path(a.out).name + "_sheet.png")
    from PIL import Image

    Image.fromarray(contact_sheet(frames, columns=4, rows=2)).save(sheet)
    print(json.dumps({"output": str(out), "contact_sheet": str(sheet), "frames": int(frames.shape[0]),
                      "size": [int(frames.shape[2]), int(frames.shape[1])]}))
    return 0


if __name__ == "__main__":
    sys.exit(cli())

"""The pipeline object: ``TextToVideo.from_pretrained(dir)(prompt, ...)`` and the pipeline folder it loads.

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
frame 0 is held over the other frames of its latent group. With a VAE trained with ``grouped_encoder`` each latent
frame is made from its own 4 frames only, so every latent group the request gives whole is pinned to exactly its
latents inside the clip that gets generated; with a plain causal encoder only those at the start are
(``model.conditioning.held_positions`` names the others). Given latent frames are pinned by the sampler, so they
come back exactly (in latent space; the pixels are their VAE reconstruction). Every argument is checked before
any model runs: a bad frame count, size, strength or input combination raises ``ValueError`` saying what would
be valid.

A pipeline folder (``export_pipeline``) holds ``dit.safetensors``, ``vae.safetensors`` and ``pipeline.json``
(DiT config, VAE config, text-encoder config, latent scale / shift, extra metadata). Nothing is unpickled; a
missing or corrupt weights file raises ``model.checkpoint.WeightsError`` (one line). ``DEFAULTS`` holds the
request defaults once; ``trained_defaults`` reads the size and frame count a folder was trained at. Prompt
expansion is the caller's: pass ``expander`` (a ``str -> str``), e.g. ``caption.expand`` behind the CLI.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from curate.media import MAX_FRAMES, resize_crop
from model import conditioning as C
from model.checkpoint import atomic_folder, config_from_dict, load_weights
from model.dit import DiT, DiTConfig
from model.flow import Flow, FlowConfig, denoise
from model.text import TextConfig, TextEncoder
from model.vae import VAEConfig, VideoVAE

FORMAT = "tessera-pipeline/1"
MAX_SIDE = 4096


@dataclass(frozen=True)
class Defaults:
    """What a request gets for what it does not say (the API's and the CLI's defaults, written once)."""

    frames: int = 17
    size: tuple[int, int] = (256, 256)  # (W, H)
    steps: int = 30
    cfg: float = 5.0
    fps: int = 16
    seed: int = 0


DEFAULTS = Defaults()


# ----------------------------------------------------------------------------------------------------------
# The pipeline folder: export / read
# ----------------------------------------------------------------------------------------------------------


def export_pipeline(directory: str | Path, dit: DiT, vae: VideoVAE, text_cfg: TextConfig, latent_scale: float = 1.0,
                    latent_shift: float = 0.0, extra: dict | None = None, time_shift: float = 1.0) -> Path:
    """Write a ``from_pretrained``-able folder atomically (temp folder, then rename); returns its path.

    ``time_shift``: the noise-schedule shift scale the DiT was trained with (``FlowConfig.shift_scale``), 0 for
    a DiT trained with no shift at all (``FlowConfig.shift`` off); the sampler uses the same schedule."""
    from safetensors.torch import save_file

    with atomic_folder(directory) as tmp:
        for name, module in (("dit", dit), ("vae", vae)):
            sd = {k: v.detach().cpu().contiguous().clone() for k, v in module.state_dict().items()}
            save_file(sd, str(tmp / f"{name}.safetensors"))
        text = dataclasses.replace(text_cfg, cache_dir=None, device="cpu")
        meta = {"format": FORMAT, "dit": dataclasses.asdict(dit.cfg), "vae": dataclasses.asdict(vae.cfg),
                "text": dataclasses.asdict(text), "latent_scale": latent_scale, "latent_shift": latent_shift,
                "time_shift": float(time_shift), "extra": extra or {}}
        (tmp / "pipeline.json").write_text(json.dumps(meta, indent=1, default=str))
    return Path(directory)


def read_pipeline_config(directory: str | Path) -> dict:
    """``pipeline.json`` of a pipeline folder (cheap: no weights)."""
    path = Path(directory) / "pipeline.json"
    if not path.is_file():
        raise FileNotFoundError(f"{directory} is not a Tessera pipeline folder (no pipeline.json)")
    try:
        meta = json.loads(path.read_text())
    except ValueError as exc:
        raise ValueError(f"{path} is not valid JSON ({exc})") from None
    if meta.get("format") != FORMAT:
        raise ValueError(f"unknown pipeline format {meta.get('format')!r} in {path}")
    return meta


def trained_defaults(meta: dict) -> dict:
    """``{"size": (W, H), "frames": n}`` the folder's DiT was trained and sampled at, as far as ``pipeline.json``
    records them (``extra.train_size`` / ``extra.train_frames`` from the loop, else the training config's sample
    size and frames); keys it does not record are absent."""
    extra = meta.get("extra") or {}
    train = (extra.get("train_config") or {}).get("train") or {}
    out = {}
    if extra.get("train_size"):
        out["size"] = (int(extra["train_size"]), int(extra["train_size"]))
    elif train.get("sample_size"):
        out["size"] = tuple(int(v) for v in train["sample_size"])
    frames = extra.get("train_frames") or train.get("sample_frames")
    if frames:
        out["frames"] = int(frames)
    return out


def resolve_device(name: str) -> torch.device:
    """``auto`` (a GPU when there is one), ``cpu`` or ``cuda[:i]``; ``ValueError`` for a GPU that is not there."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"unknown device {name!r} (use auto, cpu or cuda)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r}: no CUDA GPU is visible to torch here; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device {name!r}: only {torch.cuda.device_count()} GPU(s) visible")
    return device


# ----------------------------------------------------------------------------------------------------------
# Request checks and media shaping
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
    return resize_crop(frames, (size[1], size[0]), 1.0, 0.5, 0.5)[None]


def request_units(vae_cfg: VAEConfig, dit_cfg: DiTConfig) -> tuple[int, int, int]:
    """(pixel frames per latent frame, pixels per token side, latent frames per token): what a request's frame
    count and size must be multiples of (``check_request``'s last three arguments)."""
    return vae_cfg.time_factor, vae_cfg.spatial_factor * dit_cfg.patch[1], dit_cfg.patch[0]


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
            raise ValueError(f"{len(lat)} keyframes leave nothing to generate in {latent_t} latent frames; "
                             "raise frames")
        for p, img in keyframes.items():
            _as_video(img, f"keyframe {p}")
    if video is not None and video_b is not None and latent_t < 3:
        raise ValueError(f"a transition needs frames >= {1 + 2 * time_factor} (context, new, context), got {frames}")
    if (video is not None or video_b is not None) and latent_t < 2:
        raise ValueError(f"extending a video needs frames >= {1 + time_factor}, got {frames}")


# ----------------------------------------------------------------------------------------------------------
# The pipeline
# ----------------------------------------------------------------------------------------------------------


class TextToVideo:
    """DiT + VAE + text encoder behind one ``__call__`` for every generation task (see the module docstring)."""

    def __init__(self, dit: DiT, vae: VideoVAE, text_cfg: TextConfig = TextConfig(), latent_scale: float = 1.0,
                 latent_shift: float = 0.0, expander: Callable[[str], str] | None = None, time_shift: float = 1.0):
        self.dit, self.vae, self.text_cfg = dit.eval(), vae.eval(), text_cfg
        self.latent_scale, self.latent_shift = latent_scale, latent_shift
        self.expander = expander
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
    def from_pretrained(cls, directory: str | Path, device: str = "cpu",
                        expander: Callable[[str], str] | None = None, meta: dict | None = None) -> "TextToVideo":
        """Load a folder written by ``export_pipeline`` (safetensors weights + ``pipeline.json``, or ``meta`` when
        the caller read it already); ``expander`` rewrites prompts given with ``expand=True``."""
        meta = meta or read_pipeline_config(directory)
        dit = load_weights(DiT(config_from_dict(DiTConfig, meta["dit"])), Path(directory) / "dit.safetensors")
        vae = load_weights(VideoVAE(config_from_dict(VAEConfig, meta["vae"])), Path(directory) / "vae.safetensors")
        text = dataclasses.replace(config_from_dict(TextConfig, meta["text"]), device=device)
        return cls(dit.to(device).requires_grad_(False), vae.to(device).requires_grad_(False), text,
                   float(meta["latent_scale"]), float(meta["latent_shift"]),
                   expander=expander,
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
                      *request_units(self.vae.cfg, self.dit.cfg))

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
                       strength: float | None = None, frames: int = DEFAULTS.frames,
                       size: tuple[int, int] = DEFAULTS.size, steps: int = DEFAULTS.steps, cfg: float = DEFAULTS.cfg,
                       seed: int = DEFAULTS.seed, expand: bool = False,
                       solver: str = "euler") -> tuple[torch.Tensor, C.Condition]:
        """Checked request -> (latents (1, C, T', H', W'), the condition used)."""
        size = (int(size[0]), int(size[1]))
        self.check(frames, size, steps, cfg, strength, image, video, video_b, keyframes)
        if expand:
            if self.expander is None:
                raise ValueError("expand=True needs a prompt expander: TextToVideo(..., expander=fn)")
            prompt = self.expander(prompt)
        emb = self.text([prompt])
        cond = self.build_condition(frames, size, image, video, video_b, keyframes, strength).to(self.device)
        latents = denoise(self.flow, None, cond, emb.tokens.to(self.device), emb.mask.to(self.device),
                          steps=steps, cfg_scale=cfg, solver=solver, seed=seed)
        return latents, cond

    @torch.no_grad()
    def sample_batch(self, prompts: list[str], seeds: list[int], *, frames: int = DEFAULTS.frames,
                     size: tuple[int, int] = DEFAULTS.size, steps: int = DEFAULTS.steps, cfg: float = DEFAULTS.cfg,
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

    def generate_batch(self, prompts: list[str], seeds: list[int], *, frames: int = DEFAULTS.frames,
                       size: tuple[int, int] = DEFAULTS.size, steps: int = DEFAULTS.steps, cfg: float = DEFAULTS.cfg,
                       solver: str = "euler") -> np.ndarray:
        """uint8 (B, T, H, W, 3): :meth:`sample_batch`, then one batched VAE decode."""
        return self.decode_batch(self.sample_batch(prompts, seeds, frames=frames, size=size, steps=steps, cfg=cfg,
                                                   solver=solver))

    def __call__(self, prompt: str, *, image=None, video=None, video_b=None, keyframes=None,
                 strength: float | None = None, frames: int = DEFAULTS.frames, size: tuple[int, int] = DEFAULTS.size,
                 fps: int = DEFAULTS.fps, steps: int = DEFAULTS.steps, cfg: float = DEFAULTS.cfg,
                 seed: int = DEFAULTS.seed, expand: bool = False) -> np.ndarray:
        """Generate uint8 frames (T, H, W, 3) for a prompt; ``fps`` is carried for writers (not a model input)."""
        latents, _ = self.sample_latents(prompt, image=image, video=video, video_b=video_b, keyframes=keyframes,
                                         strength=strength, frames=frames, size=size, steps=steps, cfg=cfg,
                                         seed=seed, expand=expand)
        return self.decode(latents)

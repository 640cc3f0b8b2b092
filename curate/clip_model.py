"""CLIP image embedding and aesthetic score per clip (open_clip, weights from a local file only).

:class:`ClipScorer` is a batch UDF (model loaded once in ``__init__``). For each clip it embeds
``frames_per_clip`` of the sampled frames, L2-normalises each frame embedding, averages them and normalises
again (``clip_embedding``, unit length). With an aesthetic head configured, ``clip_aesthetic`` is the head's
output averaged over the same frames (the head sees each frame's unit embedding, as the LAION predictors were
trained on single images).

Without a checkpoint the scorer still runs and writes ``clip_status="no-model"`` with null embedding,
aesthetic and model id: a missing model never becomes a number. With a checkpoint but no aesthetic head,
``clip_aesthetic`` is null and ``clip_status`` is ``ok`` (the status describes the embedding; the filter treats
a null aesthetic beside ``ok`` as "no aesthetic model").

Aesthetic head file (``.safetensors``), either of:

- a linear head: ``weight`` ``(1, D)`` and ``bias`` ``(1,)`` (LAION-Aesthetics v1 style), or
- an affine stack: ``layers.<i>.weight`` ``(out_i, in_i)`` and ``layers.<i>.bias`` ``(out_i,)``, applied in
  increasing ``i`` with no activation in between, first ``in`` = D, last ``out`` = 1. This is exactly the
  LAION improved-aesthetic-predictor MLP (keys ``layers.0/2/4/6/7``; its Dropouts carry no weights), saved
  from its state_dict.

``D`` must equal the CLIP embedding width (512 for ViT-B-32, 768 for ViT-L-14).
"""

from __future__ import annotations

import os
import re

import numpy as np
import torch

import pyarrow as pa

from curate.framepack import batch_column, is_empty_blob, unpack_frames, with_columns

CLIP_COLUMNS = ("clip_embedding", "clip_aesthetic", "clip_model", "clip_status")
CLIP_TYPES = {"clip_embedding": pa.list_(pa.float32()), "clip_aesthetic": pa.float32(), "clip_model": pa.string(),
              "clip_status": pa.string()}  # fmt: skip

# -------------------------------------------------------------------------------------------------------------
# aesthetic head
# -------------------------------------------------------------------------------------------------------------


def load_aesthetic_head(path: str, embed_dim: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Load an aesthetic head (format in the module docstring) as ``[(weight (out, in), bias (out,)), ...]``."""
    from safetensors.torch import load_file

    if not str(path).endswith(".safetensors"):
        raise ValueError(f"aesthetic head must be a .safetensors file, got {path!r}")
    sd = load_file(str(path))
    if set(sd) == {"weight", "bias"}:
        layers = [(sd["weight"], sd["bias"])]
    else:
        idx = sorted({int(m.group(1)) for k in sd if (m := re.fullmatch(r"layers\.(\d+)\.(weight|bias)", k))})
        extra = set(sd) - {f"layers.{i}.{p}" for i in idx for p in ("weight", "bias")}
        if not idx or extra:
            raise ValueError(f"unexpected tensors in aesthetic head {path!r}: {sorted(extra) or 'none found'}")
        layers = [(sd[f"layers.{i}.weight"], sd[f"layers.{i}.bias"]) for i in idx]
    d_in = embed_dim
    for w, b in layers:
        if w.ndim != 2 or w.shape[1] != d_in or b.shape != (w.shape[0],):
            raise ValueError(f"aesthetic head layer {tuple(w.shape)}/{tuple(b.shape)} does not take width {d_in}")
        d_in = w.shape[0]
    if d_in != 1:
        raise ValueError(f"aesthetic head ends in width {d_in}, expected 1")
    return [(w.float(), b.float()) for w, b in layers]


def apply_head(layers: list[tuple[torch.Tensor, torch.Tensor]], x: torch.Tensor) -> torch.Tensor:
    """Run the affine stack on unit embeddings ``x`` ``(N, D)`` -> scores ``(N,)``."""
    for w, b in layers:
        x = x @ w.to(x.device).T + b.to(x.device)  # (N, out)
    return x[:, 0]


# -------------------------------------------------------------------------------------------------------------
# scorer
# -------------------------------------------------------------------------------------------------------------


def pick_frames(k: int, n: int) -> np.ndarray:
    """Indices of ``n`` frames spread evenly over ``k`` samples (all of them when ``k <= n``)."""
    return np.unique(np.linspace(0, k - 1, min(n, k)).round().astype(int))


class ClipScorer:
    """Batch UDF adding ``clip_embedding``, ``clip_aesthetic``, ``clip_model``, ``clip_status``.

    Args:
        checkpoint: local path of the open_clip weights (``.safetensors``, or a torch file read with
            ``weights_only=True``); None -> every row gets ``no-model``.
        model_name: open_clip architecture name matching the checkpoint.
        aesthetic_head: local ``.safetensors`` aesthetic head (module docstring), or None.
        device: torch device for the forward passes.
        frames_per_clip: frames embedded per clip (spread over the sampled frames).
        batch_frames: frames per forward pass.
    """

    def __init__(
        self,
        checkpoint: str | None,
        model_name: str = "ViT-B-32",
        aesthetic_head: str | None = None,
        device: str = "cpu",
        frames_per_clip: int = 3,
        batch_frames: int = 64,
    ):
        self.device = torch.device(device)
        self.frames_per_clip = frames_per_clip
        self.batch_frames = batch_frames
        self.model = self.preprocess = self.head = self.model_id = None
        self.model_name = model_name
        if checkpoint is None:
            return
        if not os.path.isfile(checkpoint):
            raise FileNotFoundError(f"CLIP checkpoint not found: {checkpoint}")
        from curate.compat import ensure_torchvision

        ensure_torchvision()
        import open_clip

        model, _, preprocess = open_clip.create_model_and_transforms(model_name, pretrained=checkpoint)
        self.model = model.to(self.device).eval()
        self.preprocess = preprocess
        self.model_id = f"open_clip:{model_name}:{os.path.basename(checkpoint)}"
        if aesthetic_head is not None:
            width = getattr(self.model.visual, "output_dim", None) or self._embed_dim()
            self.head = load_aesthetic_head(aesthetic_head, width)
            self.model_id += f"+aesthetic:{os.path.basename(aesthetic_head)}"

    def _embed_dim(self) -> int:
        """Embedding width, from one dummy forward (towers without ``output_dim``)."""
        size = self.preprocess.transforms[1].size if hasattr(self.preprocess, "transforms") else (224, 224)
        with torch.inference_mode():
            return int(self.model.encode_image(torch.zeros(1, 3, *size, device=self.device)).shape[-1])

    # -------------------------------------------------------------------------------------------------------
    # embedding
    # -------------------------------------------------------------------------------------------------------

    def embed_images(self, images: list[np.ndarray]) -> torch.Tensor:
        """Unit-norm image embeddings of RGB uint8 ``(H, W, 3)`` images -> float32 ``(N, D)`` on CPU."""
        from PIL import Image

        out = []
        for s in range(0, len(images), self.batch_frames):
            x = torch.stack([self.preprocess(Image.fromarray(im)) for im in images[s : s + self.batch_frames]])
            with torch.inference_mode():
                e = self.model.encode_image(x.to(self.device)).float()  # (b, D)
            out.append(torch.nn.functional.normalize(e, dim=-1).cpu())
        return torch.cat(out)

    def embed_clips(self, clips: list[np.ndarray]) -> list[tuple[np.ndarray, float | None]]:
        """Per clip ``(K, H, W, 3)``: its unit embedding ``(D,)`` float32 and aesthetic (None without a head).

        All clips' chosen frames go through the model together (``batch_frames`` per forward pass).
        """
        picks = [[c[i] for i in pick_frames(c.shape[0], self.frames_per_clip)] for c in clips]
        e = self.embed_images([im for p in picks for im in p])  # (sum n_i, D) unit rows
        scores = None if self.head is None else apply_head(self.head, e)  # (sum n_i,)
        out, s = [], 0
        for p in picks:
            ec = e[s : s + len(p)]  # (n_i, D)
            mean = torch.nn.functional.normalize(ec.mean(dim=0), dim=0)
            aes = None if scores is None else float(scores[s : s + len(p)].mean())
            out.append((mean.numpy().astype(np.float32), aes))
            s += len(p)
        return out

    # -------------------------------------------------------------------------------------------------------
    # batch UDF
    # -------------------------------------------------------------------------------------------------------

    def __call__(self, batch):
        """Add ``CLIP_COLUMNS`` to a dict-of-numpy batch or a ``pyarrow.Table``; never raises for a row.

        A failed forward pass marks every row it carried ``error:<Class>``.
        """
        blobs = batch_column(batch, "frames")
        rows: list[dict] = [{} for _ in blobs]
        todo, clips = [], []
        for i, blob in enumerate(blobs):
            if is_empty_blob(blob):
                rows[i] = {"clip_status": "skipped"}
            elif self.model is None:
                rows[i] = {"clip_status": "no-model"}
            else:
                try:
                    clips.append(unpack_frames(blob))
                    todo.append(i)
                except Exception as exc:  # one bad clip must not fail the dataset
                    rows[i] = {"clip_status": f"error:{type(exc).__name__}"}
        if todo:
            try:
                results = self.embed_clips(clips)
            except Exception as exc:
                results = [exc] * len(todo)
            for i, r in zip(todo, results):
                if isinstance(r, Exception):
                    rows[i] = {"clip_status": f"error:{type(r).__name__}"}
                    continue
                emb, aes = r
                rows[i] = {
                    "clip_embedding": emb.tolist(),  # a list of floats -> Arrow list<float>
                    "clip_aesthetic": None if aes is None else float(np.float32(aes)),
                    "clip_model": self.model_id,
                    "clip_status": "ok",
                }
        return with_columns(batch, {c: [r.get(c) for r in rows] for c in CLIP_COLUMNS}, CLIP_TYPES)

    # -------------------------------------------------------------------------------------------------------
    # text
    # -------------------------------------------------------------------------------------------------------

    def embed_texts(self, texts: list[str]) -> torch.Tensor:
        """Unit-norm text embeddings ``(N, D)`` float32 on CPU (open_clip's tokenizer ships in the package)."""
        import open_clip

        tokens = open_clip.get_tokenizer(self.model_name)(list(texts))  # (N, context_length)
        with torch.inference_mode():
            e = self.model.encode_text(tokens.to(self.device)).float()  # (N, D)
        return torch.nn.functional.normalize(e, dim=-1).cpu()

    def text_similarity(self, embeddings, texts: list[str]) -> list[float | None]:
        """Cosine between each clip embedding and its caption's text embedding, row by row.

        ``embeddings``: one unit clip embedding (or None) per text. Returns None for rows without an
        embedding or without text, and for every row when no model is loaded (never an invented number).
        """
        if len(embeddings) != len(texts):
            raise ValueError(f"{len(embeddings)} embeddings for {len(texts)} texts")
        out: list[float | None] = [None] * len(texts)
        if self.model is None:
            return out
        rows = [i for i, (e, t) in enumerate(zip(embeddings, texts)) if e is not None and t]
        if not rows:
            return out
        te = self.embed_texts([texts[i] for i in rows])  # (m, D)
        ie = torch.as_tensor(np.stack([np.asarray(embeddings[i], np.float32) for i in rows]))  # (m, D)
        ie = torch.nn.functional.normalize(ie, dim=-1)
        for i, s in zip(rows, (ie * te).sum(dim=-1).tolist()):
            out[i] = float(s)
        return out

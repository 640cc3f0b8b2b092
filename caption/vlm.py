"""The VLM captioner: a class that loads its model once and adds caption columns to a batch of clips.

``Captioner(cfg)`` is what Ray runs as an actor pool (``map_batches(Captioner, fn_constructor_kwargs=...)``);
it never imports ``ray``. Backends:

- ``transformers``: a local image-text-to-text model dir (``AutoProcessor`` + ``AutoModelForImageTextToText``,
  the model's own chat template), the clip's N uniformly sampled frames as N images, batched left-padded
  generation, bf16 on GPU, greedy unless ``temperature > 0``;
- ``openai``: any OpenAI-compatible server (vLLM, OpenAI) via ``caption.chat.ChatRunner``; frames go inline as
  base64 JPEG data URLs, never as URLs the server would fetch;
- ``source``: the caption that came with the source (``caption.sources``) is the caption, after the same
  ``validate_output`` check as a VLM caption (a sidecar is as untrusted as a server). With another backend,
  ``cfg.source.use == "hint"`` quotes that text as data inside the VLM prompt.

Frames come from the ``caption_frames`` column written by the frame stage (``caption.frames``); without it the
captioner decodes the clip itself. Every (clip, kind) request carries the clip id; results are matched back by
id and a mismatch is an error, never a silently swapped caption.

Columns added: ``caption_<kind>`` per configured kind, ``caption_backend``, ``caption_model``,
``caption_prompt_id`` (template ids, comma-joined in kind order), ``caption_status`` (``ok`` when every kind is
ok, else the first failure's ``error:<reason>``; with the source backend ``error:no-source`` when there is no text,
``error:source-missing`` when the source file is not found),
``caption_error`` (``kind: message`` parts), ``caption_tokens`` (prompt + completion, summed over kinds; 0 when
cached). Successful captions are cached by hash(clip bytes, template fingerprint, model, sampling settings,
hint) so unchanged clips are never decoded or captioned again.
"""

from __future__ import annotations

import base64
import hashlib
import logging
from dataclasses import dataclass, field

import numpy as np

from caption.cache import ResultCache, cache_key
from caption.chat import ChatProgress, ChatRequest, ChatRunner, OpenAIEndpoint, local_model_id, pick_device_dtype
from caption.frames import FrameConfig, decode_jpeg, prepare_clip, present, read_clip_bytes, unpack_jpegs
from caption.sources import SourceConfig, SourceLookup
from caption.templates import VLM_TEMPLATE_FOR_KIND, get_template, validate_output, vlm_instruction

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VLMConfig:
    """Every knob of the captioner, with the defaults a run uses."""

    backend: str = "transformers"  # "transformers" | "openai" | "source"
    model: str | None = None  # transformers: model dir; openai: overrides endpoint.model
    kinds: tuple[str, ...] = ("short",)  # any of VLM_TEMPLATE_FOR_KIND
    frames: FrameConfig = FrameConfig()
    max_new_tokens: tuple[tuple[str, int], ...] = (("short", 64), ("dense", 256))
    temperature: float = 0.0  # 0 = greedy
    seed: int = 0
    batch_size: int = 8  # clips per generate() call (transformers)
    ignore_eos: bool = False  # benchmarks: always generate max_new_tokens
    validate: bool = True  # run templates.validate_output on every caption
    device: str = "auto"
    dtype: str = "auto"  # bf16 on GPU, fp32 on CPU
    attn_implementation: str | None = "sdpa"
    endpoint: OpenAIEndpoint = field(default_factory=lambda: OpenAIEndpoint(timeout_s=120.0))
    source: SourceConfig = SourceConfig()
    cache_path: str | None = None
    progress_dir: str | None = None  # where the chat runner writes its progress (caption.chat.ChatProgress)

    def tokens_for(self, kind: str) -> int:
        return dict(self.max_new_tokens).get(kind, 128)


# ----------------------------------------------------------------------------------------------------------------
# Transformers backend
# ----------------------------------------------------------------------------------------------------------------


class HFVisionLM:
    """A local image-text-to-text model; ``generate(items)`` for (images, system, instruction) items."""

    def __init__(self, path: str, device: str, dtype: str, attn_implementation: str | None):
        import torch

        from curate.compat import ensure_torchvision

        ensure_torchvision()  # image processors import torchvision (broken CPU/CUDA pair on CI machines)
        from transformers import AutoModelForImageTextToText, AutoProcessor

        self.device, torch_dtype = pick_device_dtype(device, dtype)
        self.processor = AutoProcessor.from_pretrained(path)
        tok = getattr(self.processor, "tokenizer", self.processor)
        tok.padding_side = "left"  # generation appends on the right; prompts must end aligned
        kwargs = {"dtype": torch_dtype, "use_safetensors": True}
        if attn_implementation:
            kwargs["attn_implementation"] = attn_implementation
        self.model = AutoModelForImageTextToText.from_pretrained(path, **kwargs).to(self.device).eval()
        self.tokenizer = tok
        self.model_id = local_model_id(path)
        self._torch = torch

    def generate(self, items: list[tuple[list, str, str]], max_new_tokens: int, temperature: float, seed: int,
                 ignore_eos: bool) -> list[tuple[str, int, bool]]:
        """(text, tokens used, finished) per item; items are (PIL frames, system prompt, instruction)."""
        torch = self._torch
        texts, images = [], []
        for frames, system, instruction in items:
            messages = [{"role": "system", "content": [{"type": "text", "text": system}]},
                        {"role": "user", "content": [{"type": "image"} for _ in frames]
                         + [{"type": "text", "text": instruction}]}]
            texts.append(self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False))
            images.append(list(frames))
        enc = self.processor(text=texts, images=images, padding=True, return_tensors="pt").to(self.device)
        if "pixel_values" in enc and enc["pixel_values"].is_floating_point():
            enc["pixel_values"] = enc["pixel_values"].to(self.model.dtype)
        sample = temperature > 0
        torch.manual_seed(seed)
        with torch.inference_mode():
            out = self.model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=sample,
                                      temperature=temperature if sample else None, top_p=None, top_k=None,
                                      min_new_tokens=max_new_tokens if ignore_eos else None,
                                      pad_token_id=self.tokenizer.pad_token_id)
        new = out[:, enc["input_ids"].shape[1]:]  # (B, T_new)
        eos = self.model.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, (list, tuple)) else [eos]) - {None}
        pad = self.tokenizer.pad_token_id
        results = []
        for row, prompt_len in zip(new.tolist(), enc["attention_mask"].sum(1).tolist()):
            used = next((i for i, t in enumerate(row) if t in eos_ids or (t == pad and pad not in eos_ids)),
                        len(row))
            finished = used < len(row) or ignore_eos
            text = self.tokenizer.decode(row[:used], skip_special_tokens=True).strip()
            results.append((text, int(prompt_len + used), finished))
        return results


# ----------------------------------------------------------------------------------------------------------------
# Cache keys (also used by the pipeline to skip decoding clips whose captions are cached)
# ----------------------------------------------------------------------------------------------------------------


def clip_content_hash(row: dict, dataset_dir: str | None) -> str:
    """sha256 of the clip's bytes; falls back to id + path when they cannot be read (the row then fails later)."""
    try:
        return hashlib.sha256(read_clip_bytes(row, dataset_dir)).hexdigest()
    except Exception:  # noqa: BLE001 - unreadable clips get a key anyway and fail at decode, in their row
        return cache_key("unreadable", row.get("clip_id"), row.get("clip_path"))


def model_identity(cfg: VLMConfig) -> str:
    """What the cache keys on for the model: a local dir's content id, a server model name, or ``source``."""
    if cfg.backend == "transformers":
        return f"transformers:{local_model_id(cfg.model)}"
    if cfg.backend == "openai":
        return f"openai:{cfg.model or cfg.endpoint.resolved().model}"
    return "source"


class CaptionKeys:
    """Computes per-(row, kind) cache keys and the source hint of each row; cheap, no model."""

    def __init__(self, cfg: VLMConfig, dataset_dir: str | None):
        self.cfg, self.dataset_dir = cfg, dataset_dir
        self.sources = SourceLookup(cfg.source, dataset_dir)
        self.model_id = model_identity(cfg)

    def rows(self, batch: dict) -> list[dict]:
        n = len(next(iter(batch.values())))
        return [{k: present(batch[k][i]) for k in ("clip_id", "clip_mp4", "clip_path", "source_uri", "start_frame",
                                           "end_frame", *(c for c in [self.cfg.source.column] if c)) if k in batch}
                for i in range(n)]

    def keys(self, row: dict, hint: str | None) -> dict[str, str]:
        c, content = self.cfg, clip_content_hash(row, self.dataset_dir)
        return {kind: cache_key("vlm", content, get_template(VLM_TEMPLATE_FOR_KIND[kind]).fingerprint,
                                self.model_id, c.frames, c.tokens_for(kind), c.temperature, c.seed, hint)
                for kind in c.kinds}

    def hint(self, row: dict) -> str | None:
        return self.sources.lookup(row)


def make_needs_frames(cfg: VLMConfig, dataset_dir: str | None):
    """``batch -> bool array``: True where some kind's caption is not cached (the clip must be decoded)."""
    keys, cache = CaptionKeys(cfg, dataset_dir), ResultCache(cfg.cache_path) if cfg.cache_path else None

    def needs(batch: dict) -> np.ndarray:
        if cfg.backend == "source":
            return np.zeros(len(next(iter(batch.values()))), bool)
        rows = keys.rows(batch)
        if cache is None:
            return np.ones(len(rows), bool)
        per_row = [keys.keys(r, keys.hint(r) if cfg.source.use == "hint" else None) for r in rows]
        hits = cache.get_many([k for ks in per_row for k in ks.values()])
        return np.array([any(k not in hits for k in ks.values()) for ks in per_row], bool)

    return needs


# ----------------------------------------------------------------------------------------------------------------
# Captioner
# ----------------------------------------------------------------------------------------------------------------


def _data_url(jpeg: bytes) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii")


class Captioner:
    """Loads the configured backend once; ``__call__(batch)`` adds the caption columns (never drops rows)."""

    def __init__(self, cfg: VLMConfig, dataset_dir: str | None = None):
        self.cfg, self.dataset_dir = cfg, dataset_dir
        for kind in cfg.kinds:
            if kind not in VLM_TEMPLATE_FOR_KIND:
                raise ValueError(f"unknown caption kind {kind!r}; known: {sorted(VLM_TEMPLATE_FOR_KIND)}")
        self.templates = {k: get_template(VLM_TEMPLATE_FOR_KIND[k]) for k in cfg.kinds}
        self.prompt_id = ",".join(t.id for t in self.templates.values())
        self.keys = CaptionKeys(cfg, dataset_dir)
        self.cache = ResultCache(cfg.cache_path) if cfg.cache_path else None
        self.hf, self.runner = None, None
        if cfg.backend == "transformers":
            if not cfg.model:
                raise ValueError("transformers backend needs model= a local model directory")
            self.hf = HFVisionLM(cfg.model, cfg.device, cfg.dtype, cfg.attn_implementation)
        elif cfg.backend == "openai":
            from dataclasses import replace

            self.runner = ChatRunner(replace(cfg.endpoint, model=cfg.model or cfg.endpoint.model), seed=cfg.seed,
                                     progress=ChatProgress("caption", folder=cfg.progress_dir))
        elif cfg.backend != "source":
            raise ValueError(f"unknown VLM backend {cfg.backend!r}")
        self.model_id = self.keys.model_id

    # --------------------------------------------------------------------------------------------- helpers
    def _frames(self, batch: dict, i: int, row: dict) -> list[bytes]:
        """JPEG frames of row i: from the frame stage's column, else decoded here."""
        if "caption_frames" in batch:
            if isinstance(present(batch["caption_frames"][i]), (bytes, bytearray, memoryview)):
                return unpack_jpegs(bytes(batch["caption_frames"][i]))
            err = present(batch.get("caption_frames_error", [None] * (i + 1))[i])
            if err:
                raise RuntimeError(f"decode: {err}")
        return unpack_jpegs(prepare_clip(read_clip_bytes(row, self.dataset_dir), self.cfg.frames))

    def _generate(self, work: list[tuple[int, str, str, list[bytes], str | None]]) -> dict[tuple[int, str], tuple]:
        """(row, kind) -> (text | None, status, error, tokens) for every work item."""
        cfg, out = self.cfg, {}
        if self.runner is not None:
            requests, index = [], {}
            for i, kind, clip_id, jpegs, hint in work:
                rid = f"{clip_id}|{kind}"
                tmpl = self.templates[kind]
                content = [{"type": "image_url", "image_url": {"url": _data_url(j)}} for j in jpegs]
                content.append({"type": "text", "text": vlm_instruction(tmpl, hint)})
                messages = [{"role": "system", "content": tmpl.system}, {"role": "user", "content": content}]
                requests.append(ChatRequest(rid, messages, cfg.tokens_for(kind), cfg.temperature, cfg.seed))
                index[rid] = (i, kind)
            try:
                results = self.runner.run(requests)
            except Exception as exc:  # noqa: BLE001 - a broken client fails these rows, never the run
                log.warning("VLM client failed for %d requests: %s", len(requests), type(exc).__name__)
                return {index[r.id]: (None, f"error:{type(exc).__name__}", str(exc)[:200], 0) for r in requests}
            for res in results:
                out[index[res.id]] = (res.text, res.status, res.error, res.tokens)
            return out
        for kind in self.cfg.kinds:
            items = [w for w in work if w[1] == kind]
            for start in range(0, len(items), cfg.batch_size):
                chunk = items[start:start + cfg.batch_size]
                try:
                    answers = self._hf_chunk(chunk, kind)
                except Exception:  # noqa: BLE001 - retry one by one so one bad clip fails alone
                    answers = []
                    for item in chunk:
                        try:
                            answers += self._hf_chunk([item], kind)
                        except Exception as exc:  # noqa: BLE001
                            answers.append((None, f"error:{type(exc).__name__}", str(exc)[:200], 0))
                for (i, *_), answer in zip(chunk, answers):
                    out[(i, kind)] = answer
        return out

    def _hf_chunk(self, chunk, kind: str) -> list[tuple]:
        tmpl, cfg = self.templates[kind], self.cfg
        items = [([decode_jpeg(j) for j in jpegs], tmpl.system, vlm_instruction(tmpl, hint))
                 for _, _, _, jpegs, hint in chunk]
        answers = self.hf.generate(items, cfg.tokens_for(kind), cfg.temperature, cfg.seed, cfg.ignore_eos)
        return [(text, "ok", None, tokens) if finished else (None, "error:truncated", "max_new_tokens reached", tokens)
                for text, tokens, finished in answers]

    # --------------------------------------------------------------------------------------------- call
    def __call__(self, batch: dict) -> dict:
        cfg = self.cfg
        rows = self.keys.rows(batch)
        n = len(rows)
        captions = {k: np.empty(n, dtype=object) for k in cfg.kinds}
        status = np.array(["ok"] * n, dtype=object)
        errors = [[] for _ in range(n)]
        tokens = np.zeros(n, dtype=np.int64)
        hints = [self.keys.hint(r) if cfg.source.use in ("hint", "caption") else None for r in rows]

        if cfg.backend == "source":
            for i in range(n):
                if hints[i] is None:
                    problem = self.keys.sources.problem(rows[i])  # the file itself is missing: say where we looked
                    self._fail(status, errors, i, "error:source-missing" if problem else "error:no-source", "all",
                               problem or "no sidecar, manifest or column text for this source")
                    continue
                for kind in cfg.kinds:
                    reason = validate_output(hints[i], self.templates[kind]) if cfg.validate else None
                    if reason:
                        self._fail(status, errors, i, f"error:{reason}", kind, f"source text rejected: {reason}")
                    else:
                        captions[kind][i] = hints[i]
            return self._emit(batch, captions, status, errors, tokens)

        prompt_hints = [h if cfg.source.use == "hint" else None for h in hints]
        keys = [self.keys.keys(r, prompt_hints[i]) for i, r in enumerate(rows)]
        hits = self.cache.get_many([k for ks in keys for k in ks.values()]) if self.cache is not None else {}
        work = []
        for i, row in enumerate(rows):
            missing = [k for k in cfg.kinds if keys[i][k] not in hits]
            for kind in cfg.kinds:
                if kind not in missing:
                    captions[kind][i] = hits[keys[i][kind]]["text"]
            if not missing:
                continue
            try:
                jpegs = self._frames(batch, i, row)
            except Exception as exc:  # noqa: BLE001 - a bad clip is a row error
                self._fail(status, errors, i, "error:decode", "all", str(exc)[:200])
                continue
            work += [(i, kind, str(row.get("clip_id")), jpegs, prompt_hints[i]) for kind in missing]

        fresh = {}
        for (i, kind), (text, st, err, used) in sorted(self._generate(work).items()):
            tokens[i] += used
            if st == "ok" and cfg.validate:
                reason = validate_output(text, self.templates[kind])
                if reason:
                    st, err = f"error:{reason}", f"output rejected: {reason}"
            if st == "ok":
                captions[kind][i] = text
                fresh[keys[i][kind]] = {"text": text}
            else:
                self._fail(status, errors, i, st, kind, err)
        if self.cache is not None and fresh:
            try:
                self.cache.put_many(fresh)
            except Exception as exc:  # noqa: BLE001 - losing the cache costs a re-run, not the run
                log.warning("caption cache write failed: %s", type(exc).__name__)
        return self._emit(batch, captions, status, errors, tokens)

    @staticmethod
    def _fail(status, errors, i: int, st: str, kind: str, err: str | None) -> None:
        if status[i] == "ok":
            status[i] = st
        errors[i].append(f"{kind}: {err or st}")

    def _emit(self, batch, captions, status, errors, tokens) -> dict:
        n = len(status)
        for kind, values in captions.items():
            batch[f"caption_{kind}"] = values
        batch["caption_backend"] = np.array([self.cfg.backend] * n, dtype=object)
        batch["caption_model"] = np.array([self.model_id] * n, dtype=object)
        batch["caption_prompt_id"] = np.array([self.prompt_id if self.cfg.backend != "source" else "source"] * n,
                                              dtype=object)
        batch["caption_status"] = status
        batch["caption_error"] = np.array(["; ".join(e) if e else None for e in errors], dtype=object)
        batch["caption_tokens"] = tokens
        return batch


# ----------------------------------------------------------------------------------------------------------------
# Caption QA: does the caption match its own clip?
# ----------------------------------------------------------------------------------------------------------------


class CaptionClipCheck:
    """Adds ``caption_clip_sim`` (CLIP cosine of a caption and its clip) and ``caption_mismatch`` (sim < threshold).

    Uses ``curate.clip_model.ClipScorer`` (open_clip, local checkpoint). The clip's image embedding is the
    normalised mean of its captioning frames (``caption_frames``); rows without frames (cached, failed) use the
    curation's ``clip_embedding`` column when the batch has one. No caption or no embedding -> both null. Runs
    between the captioner and the frame drop, as one more actor.
    """

    def __init__(self, checkpoint: str | None, model_name: str = "ViT-B-32", threshold: float = 0.2,
                 kind: str = "short", device: str = "cpu", scorer=None):
        if scorer is None:  # ``scorer``: anything with ClipScorer's embed_images / text_similarity
            from curate.clip_model import ClipScorer

            scorer = ClipScorer(checkpoint, model_name=model_name, device=device)
        self.scorer, self.threshold, self.kind = scorer, threshold, kind

    def _embedding(self, batch: dict, i: int):
        frames = present(batch["caption_frames"][i]) if "caption_frames" in batch else None
        if isinstance(frames, (bytes, bytearray, memoryview)):
            images = [np.asarray(decode_jpeg(j)) for j in unpack_jpegs(bytes(frames))]
            mean = np.asarray(self.scorer.embed_images(images), np.float32).mean(0)  # (D,)
            return mean / max(float(np.linalg.norm(mean)), 1e-12)
        given = batch["clip_embedding"][i] if "clip_embedding" in batch else None
        return None if given is None or np.ndim(given) == 0 else np.asarray(given, np.float32)

    def __call__(self, batch: dict) -> dict:
        texts = [t if isinstance(t, str) else None for t in batch[f"caption_{self.kind}"]]
        embeddings = []
        for i, text in enumerate(texts):
            try:
                embeddings.append(self._embedding(batch, i) if text else None)
            except Exception:  # noqa: BLE001 - a bad frame blob costs this row's check only
                embeddings.append(None)
        try:
            sims = self.scorer.text_similarity(embeddings, texts)
        except Exception as exc:  # noqa: BLE001 - QA never fails the run
            log.warning("caption/clip similarity failed: %s", type(exc).__name__)
            sims = [None] * len(texts)
        batch["caption_clip_sim"] = np.array(sims, dtype=object)
        batch["caption_mismatch"] = np.array([None if s is None else bool(s < self.threshold) for s in sims],
                                             dtype=object)
        return batch

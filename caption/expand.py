"""The expander: one rewriter, one template family, for training captions and for users' prompts.

Backends (both from ``caption.chat``): ``openai``, any OpenAI-compatible chat server (``ChatRunner``: bounded
concurrency, deadlines, retries honouring ``Retry-After``, ids checked); ``transformers``, a local causal-LM
directory in process (``LocalChatLM``); ``off``.

The text to rewrite is untrusted: it reaches the model only as quoted data in the user turn
(``templates.build_expand_messages``). An output is accepted only when it passes ``templates.validate_output``
(length, charset, URLs, refusals, injections, system-prompt echo) and ``relevance.ExpansionChecker`` (it is
about its input: embedding similarity with the packaged MiniLM, the input's key terms kept, no URL, path,
e-mail or key-like string the input did not have). On any failure the original text is kept, with
``expand_status = "error:<reason>"`` and a message: no row is ever dropped and no exception escapes
``Expander.__call__``. Low temperature and a fixed seed by default; accepted results are cached by hash(input,
template fingerprint, model, sampling settings, checker settings).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import numpy as np

from caption.cache import ResultCache, cache_key
from caption.chat import ChatProgress, ChatRequest, ChatResult, ChatRunner, LocalChatLM, OpenAIEndpoint
from caption.relevance import ExpansionChecker, RelevanceConfig
from caption.templates import DEFAULT_EXPAND_TEMPLATE, build_expand_messages, get_template, validate_output

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------------------------
# Expander
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExpandConfig:
    """Every knob of the expander, with the defaults a run uses."""

    backend: str = "openai"  # "openai" | "transformers" | "off"
    model: str | None = None  # transformers: model dir; openai: overrides endpoint.model
    template: str = DEFAULT_EXPAND_TEMPLATE
    temperature: float = 0.2
    seed: int = 0
    max_new_tokens: int = 320
    batch_size: int = 8  # transformers backend
    device: str = "auto"
    dtype: str = "auto"
    endpoint: OpenAIEndpoint = OpenAIEndpoint()
    cache_path: str | None = None
    input_columns: tuple[str, ...] = ("caption_dense", "caption_short")  # first non-empty one is expanded
    context_columns: tuple[str, ...] = ()  # e.g. ("title", "ocr_text"): quoted as data next to the text
    relevance: RelevanceConfig | None = RelevanceConfig()  # None: no about-its-input check
    progress_dir: str | None = None  # where the chat runner writes its progress (caption.chat.ChatProgress)


@dataclass(frozen=True)
class ExpandResult:
    """Expanded text (the original on failure), status ``ok`` / ``error:<reason>`` / ``skipped:<why>``."""

    text: str | None
    status: str
    error: str | None
    model: str
    template: str
    cached: bool = False


class Expander:
    """Loads its backend once; ``expand(texts)`` for lists, ``__call__(batch)`` adds the expand columns."""

    def __init__(self, cfg: ExpandConfig):
        self.cfg = cfg
        self.template = get_template(cfg.template)
        self.cache = ResultCache(cfg.cache_path) if cfg.cache_path else None
        self.backend = None
        if cfg.backend == "openai":
            endpoint = replace(cfg.endpoint, model=cfg.model or cfg.endpoint.model)
            self.backend = ChatRunner(endpoint, seed=cfg.seed,
                                      progress=ChatProgress("expand", folder=cfg.progress_dir))
            self.model_id = f"openai:{self.backend.endpoint.model}"
        elif cfg.backend == "transformers":
            if not cfg.model:
                raise ValueError("transformers expand backend needs model= a local model directory")
            self.backend = LocalChatLM(cfg.model, cfg.device, cfg.dtype, cfg.batch_size)
            self.model_id = f"transformers:{self.backend.model_id}"
        elif cfg.backend == "off":
            self.model_id = "off"
        else:
            raise ValueError(f"unknown expand backend {cfg.backend!r}")
        self.checker = ExpansionChecker(cfg.relevance) if cfg.relevance is not None and self.backend else None

    def _key(self, text: str, context: dict[str, str]) -> str:
        c = self.cfg
        return cache_key("expand", text, context, self.template.fingerprint, self.model_id, c.temperature, c.seed,
                         c.max_new_tokens, c.relevance)

    def expand(self, texts: list[str | None], contexts: list[dict[str, str]] | None = None) -> list[ExpandResult]:
        """One result per text, same order. Never raises for a model failure; the original text stays."""
        contexts = contexts or [{} for _ in texts]
        tid, results = self.template.id, [None] * len(texts)
        todo: list[tuple[int, str]] = []
        for i, text in enumerate(texts):
            if text is None or not str(text).strip():
                results[i] = ExpandResult(text, "skipped:no-input", None, self.model_id, tid)
            elif self.backend is None:
                results[i] = ExpandResult(text, "skipped:off", None, self.model_id, tid)
            else:
                todo.append((i, self._key(str(text), contexts[i])))
        hits = self.cache.get_many([k for _, k in todo]) if self.cache is not None and todo else {}
        requests, pending = [], {}
        for i, key in todo:
            if key in hits:
                results[i] = ExpandResult(hits[key]["text"], "ok", None, self.model_id, tid, cached=True)
            elif key not in pending:  # identical inputs are asked once
                pending[key] = [i]
                requests.append(ChatRequest(key, build_expand_messages(self.template, str(texts[i]), contexts[i]),
                                            self.cfg.max_new_tokens, self.cfg.temperature, self.cfg.seed))
            else:
                pending[key].append(i)
        try:
            answers = self.backend.run(requests) if requests else []
        except Exception as exc:  # noqa: BLE001 - the run never dies for the expander
            log.warning("expander backend failed for %d requests: %s", len(requests), type(exc).__name__)
            answers = [ChatResult(r.id, None, f"error:{type(exc).__name__}", str(exc)[:200]) for r in requests]
        fresh = {}
        reasons = self._reasons(answers, {a.id: str(texts[pending[a.id][0]]) for a in answers})
        for answer in answers:
            reason = reasons.get(answer.id)
            for i in pending[answer.id]:
                if answer.status == "ok" and reason is None:
                    results[i] = ExpandResult(answer.text, "ok", None, self.model_id, tid)
                    fresh[answer.id] = {"text": answer.text}
                elif answer.status != "ok":
                    results[i] = ExpandResult(texts[i], answer.status, answer.error, self.model_id, tid)
                else:
                    results[i] = ExpandResult(texts[i], f"error:{reason}", f"output rejected: {reason}",
                                              self.model_id, tid)
        if self.cache is not None and fresh:
            try:
                self.cache.put_many(fresh)
            except Exception as exc:  # noqa: BLE001 - a cache failure costs a re-run, not the run
                log.warning("expand cache write failed: %s", type(exc).__name__)
        return results

    def _reasons(self, answers: list[ChatResult], inputs: dict[str, str]) -> dict[str, str | None]:
        """Why each ok answer is rejected (None: accepted): the output rules, then the about-its-input check."""
        reasons = {a.id: validate_output(a.text, self.template) for a in answers if a.status == "ok"}
        todo = [a for a in answers if a.status == "ok" and reasons[a.id] is None]
        if self.checker is not None and todo:
            try:
                verdicts = self.checker.check([inputs[a.id] for a in todo], [a.text for a in todo])
            except Exception as exc:  # noqa: BLE001 - no checker, no acceptance: the original stays
                log.warning("expansion checker failed: %s", type(exc).__name__)
                verdicts = ["checker-failed"] * len(todo)
            reasons.update({a.id: v for a, v in zip(todo, verdicts)})
        return reasons

    def __call__(self, batch: dict) -> dict:
        """Adds ``caption_expanded``, ``expand_status``, ``expand_error``, ``expand_model``, ``expand_template``."""
        n = len(next(iter(batch.values())))
        texts, contexts = [], []
        for i in range(n):
            text = None
            for col in self.cfg.input_columns:
                value = batch[col][i] if col in batch else None
                if isinstance(value, str) and value.strip():
                    text = str(value)
                    break
            texts.append(text)
            contexts.append({c: batch[c][i] for c in self.cfg.context_columns
                             if c in batch and isinstance(batch[c][i], str) and batch[c][i].strip()})
        results = self.expand(texts, contexts)
        batch["caption_expanded"] = np.array([r.text for r in results], dtype=object)
        batch["expand_status"] = np.array([r.status for r in results], dtype=object)
        batch["expand_error"] = np.array([r.error for r in results], dtype=object)
        batch["expand_model"] = np.array([r.model for r in results], dtype=object)
        batch["expand_template"] = np.array([r.template for r in results], dtype=object)
        return batch


def expand_prompt(text: str, cfg: ExpandConfig) -> ExpandResult:
    """Rewrite one user prompt with the same expander and template family used for training captions."""
    return Expander(cfg).expand([text])[0]

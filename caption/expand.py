"""The expander: one rewriter, one template family, for training captions and for users' prompts.

Backends:
- ``openai``: any OpenAI-compatible chat server through ``AsyncOpenAI`` (``ChatRunner``): bounded concurrency,
  a per-request timeout, bounded retries with exponential backoff that honours ``Retry-After``, the request id
  sent as a header and checked when the server echoes it, ``finish_reason`` and refusals checked;
- ``transformers``: a local causal-LM directory in process (``LocalChatLM``), batched, left-padded.

The text to rewrite is untrusted: it reaches the model only as quoted data in the user turn
(``templates.build_expand_messages``); the output passes ``templates.validate_output``. On any failure the
original text is kept, with ``expand_status = "error:<reason>"`` and a message: no row is ever dropped and no
exception escapes ``Expander.__call__``. Low temperature and a fixed seed by default; successful results are
cached by hash(input, template fingerprint, model, sampling settings).

The API key is read from ``OpenAIEndpoint.api_key`` or the environment variable it names; it is excluded from
``repr`` and from ``public_dict`` (what run directories save) and is redacted from the ``openai``/``httpx``
loggers' records.
"""

from __future__ import annotations

import asyncio
import email.utils
import hashlib
import logging
import os
import random
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from caption.cache import ResultCache, cache_key
from caption.templates import DEFAULT_EXPAND_TEMPLATE, build_expand_messages, get_template, validate_output

log = logging.getLogger(__name__)
ID_HEADER = "x-tessera-request-id"
_RAW_HEADER = "X-Stainless-Raw-Response"  # asks the openai client for the raw response (headers + parse())

# ----------------------------------------------------------------------------------------------------------------
# Endpoint config and secret handling
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OpenAIEndpoint:
    """An OpenAI-compatible server. Unset fields come from the environment (``resolved()``)."""

    base_url: str | None = None  # else $TESSERA_LLM_BASE_URL, else $OPENAI_BASE_URL, else OpenAI's
    model: str | None = None  # else $TESSERA_LLM_MODEL
    api_key: str | None = field(default=None, repr=False)  # else $<api_key_env>; never saved or logged
    api_key_env: str = "OPENAI_API_KEY"
    timeout_s: float = 60.0
    max_retries: int = 4
    backoff_s: float = 0.5
    max_backoff_s: float = 20.0
    max_retry_after_s: float = 60.0
    concurrency: int = 16

    def resolved(self) -> "OpenAIEndpoint":
        """A copy with base_url, model and key filled from the environment where unset."""
        return replace(
            self,
            base_url=self.base_url or os.environ.get("TESSERA_LLM_BASE_URL") or os.environ.get("OPENAI_BASE_URL"),
            model=self.model or os.environ.get("TESSERA_LLM_MODEL"),
            api_key=self.api_key or os.environ.get(self.api_key_env) or "EMPTY",
        )


def public_dict(obj) -> dict:
    """``asdict`` of a config tree with every ``api_key`` field removed: what may be logged or saved."""

    def scrub(value):
        if isinstance(value, dict):
            return {k: scrub(v) for k, v in value.items() if k != "api_key"}
        if isinstance(value, (list, tuple)):
            return [scrub(v) for v in value]
        return value

    return scrub(asdict(obj))


class _RedactSecret(logging.Filter):
    """Replaces a secret in log records of third-party loggers (old ``openai`` versions logged the key)."""

    def __init__(self, secret: str):
        super().__init__()
        self.secret = secret

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secret and self.secret in record.getMessage():
            record.msg, record.args = record.getMessage().replace(self.secret, "***"), None
        return True


_REDACTED: set[str] = set()


def _guard_secret(secret: str) -> None:
    digest = hashlib.sha256(secret.encode()).hexdigest()
    if secret and secret != "EMPTY" and digest not in _REDACTED:
        _REDACTED.add(digest)
        for name in ("openai", "openai._base_client", "httpx", "httpcore", "httpx2", "httpcore2"):
            logging.getLogger(name).addFilter(_RedactSecret(secret))


# ----------------------------------------------------------------------------------------------------------------
# Chat runner (shared by the expander and the VLM's openai backend)
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChatRequest:
    """One chat completion to run; ``id`` travels with it (header) and with its result."""

    id: str
    messages: list
    max_tokens: int
    temperature: float = 0.2
    seed: int | None = 0


@dataclass(frozen=True)
class ChatResult:
    """What came back for one request: text on success, else status ``error:<reason>`` and an error message."""

    id: str
    text: str | None
    status: str
    error: str | None = None
    tokens: int = 0
    attempts: int = 0


def _retry_after_s(headers) -> float | None:
    """Seconds a response asks us to wait (``retry-after-ms`` or ``retry-after`` as seconds or HTTP date)."""
    if headers is None:
        return None
    try:
        if headers.get("retry-after-ms"):
            return float(headers["retry-after-ms"]) / 1000.0
        value = headers.get("retry-after")
        if not value:
            return None
        try:
            return float(value)
        except ValueError:
            when = email.utils.parsedate_to_datetime(value)
            return max(0.0, when.timestamp() - time.time())
    except (TypeError, ValueError, OverflowError):
        return None


def _http_client(concurrency: int):
    """The openai client's default HTTP client with a keep-alive pool as large as our concurrency.

    The default keeps 100 idle connections: above 100 in flight, every wave would reconnect. None (the client's
    default) when this openai version does not expose the pieces.
    """
    try:
        import openai
        from openai._base_client import DEFAULT_CONNECTION_LIMITS

        limits = type(DEFAULT_CONNECTION_LIMITS)(max_connections=max(concurrency, 1),
                                                 max_keepalive_connections=max(concurrency, 1), keepalive_expiry=60)
        return openai.DefaultAsyncHttpxClient(limits=limits)
    except Exception:  # noqa: BLE001 - an optimisation only
        return None


class ChatRunner:
    """Runs many chat requests against one OpenAI-compatible endpoint; results in request order, ids checked.

    One event loop on a daemon thread and one ``AsyncOpenAI`` client live as long as the runner, so connections
    are reused across batches (a new client per batch cost ~1 s of connection setup at 64 in flight).
    """

    def __init__(self, endpoint: OpenAIEndpoint, seed: int = 0):
        self.endpoint = endpoint.resolved()
        if not self.endpoint.model:
            raise ValueError("openai backend needs a model (config or $TESSERA_LLM_MODEL)")
        _guard_secret(self.endpoint.api_key)
        self._rng = random.Random(seed)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client = None
        self._lock = threading.Lock()

    def _ensure_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None or self._loop.is_closed():
                loop = asyncio.new_event_loop()
                threading.Thread(target=loop.run_forever, name="tessera-chat", daemon=True).start()
                self._loop, self._client = loop, None
            return self._loop

    def run(self, requests: list[ChatRequest]) -> list[ChatResult]:
        """All results, one per request, same order; never raises for a failed request."""
        if not requests:
            return []
        return asyncio.run_coroutine_threadsafe(self._run_all(requests), self._ensure_loop()).result()

    def close(self) -> None:
        """Close the client and stop the loop (also fine never to call: the thread is a daemon)."""
        if self._loop is None:
            return
        if self._client is not None:
            asyncio.run_coroutine_threadsafe(self._client.close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._loop, self._client = None, None

    async def _run_all(self, requests: list[ChatRequest]) -> list[ChatResult]:
        from openai import AsyncOpenAI

        ep = self.endpoint
        if self._client is None:
            self._client = AsyncOpenAI(base_url=ep.base_url, api_key=ep.api_key, max_retries=0, timeout=ep.timeout_s,
                                       http_client=_http_client(ep.concurrency))
        sem = asyncio.Semaphore(max(1, ep.concurrency))  # the client's own pool allows more; this bounds it

        async def one(req: ChatRequest) -> ChatResult:
            async with sem:
                return await self._run_one(self._client, req)

        results = await asyncio.gather(*(one(r) for r in requests))
        for req, res in zip(requests, results):  # the id travels with the result; a mismatch is a bug
            if req.id != res.id:
                raise AssertionError(f"result for {res.id!r} returned in the slot of {req.id!r}")
        return list(results)

    async def _run_one(self, client, req: ChatRequest) -> ChatResult:
        import openai
        from openai.types.chat import ChatCompletion

        ep, status, error = self.endpoint, "error:unknown", None
        for attempt in range(1, ep.max_retries + 2):
            wait = None
            try:
                # ``post`` is the client's own call for chat.completions.create minus its recursive TypedDict
                # transform of the messages, which cost ~1.2 ms CPU per request (half the client's cost).
                body = {"model": ep.model, "messages": req.messages, "max_tokens": req.max_tokens,
                        "temperature": req.temperature}
                if req.seed is not None:
                    body["seed"] = req.seed
                raw = await client.post("/chat/completions", body=body, cast_to=ChatCompletion,
                                        options={"headers": {ID_HEADER: req.id, _RAW_HEADER: "true"}})
                echoed = raw.headers.get(ID_HEADER)
                if echoed is not None and echoed != req.id:
                    return ChatResult(req.id, None, "error:id-mismatch", f"server answered for {echoed!r}",
                                      attempts=attempt)
                parsed = raw.parse()
                if asyncio.iscoroutine(parsed):
                    parsed = await parsed
                return self._check(req, parsed, attempt)
            except openai.APITimeoutError as exc:
                status, error = "error:timeout", type(exc).__name__
            except openai.APIConnectionError as exc:
                status, error = "error:connection", type(exc).__name__
            except openai.RateLimitError as exc:
                status, error = "error:rate-limited", "HTTP 429"
                wait = _retry_after_s(exc.response.headers)
            except openai.APIStatusError as exc:
                code = exc.status_code
                status, error = f"error:http-{code}", f"HTTP {code}"
                if code not in (408, 409) and code < 500:
                    return ChatResult(req.id, None, status, error, attempts=attempt)  # not worth retrying
                wait = _retry_after_s(exc.response.headers)
            except Exception as exc:  # noqa: BLE001 - malformed responses etc.: a row error, never a crash
                return ChatResult(req.id, None, f"error:{type(exc).__name__}", str(exc)[:200], attempts=attempt)
            if attempt > ep.max_retries:
                break
            if wait is None:
                wait = min(ep.max_backoff_s, ep.backoff_s * 2 ** (attempt - 1)) * (0.5 + 0.5 * self._rng.random())
            wait = min(wait, ep.max_retry_after_s)
            log.debug("request %s: %s, retry %d in %.2fs", req.id, status, attempt, wait)
            await asyncio.sleep(wait)
        return ChatResult(req.id, None, status, f"{error} after {ep.max_retries + 1} attempts",
                          attempts=ep.max_retries + 1)

    @staticmethod
    def _check(req: ChatRequest, resp, attempt: int) -> ChatResult:
        tokens = int(getattr(getattr(resp, "usage", None), "total_tokens", 0) or 0)
        if not getattr(resp, "choices", None):
            return ChatResult(req.id, None, "error:empty", "no choices", tokens, attempt)
        choice = resp.choices[0]
        message = choice.message
        if getattr(message, "refusal", None) or choice.finish_reason == "content_filter":
            return ChatResult(req.id, None, "error:refused", str(message.refusal or "content_filter")[:200],
                              tokens, attempt)
        if choice.finish_reason == "length":
            return ChatResult(req.id, None, "error:truncated", "finish_reason=length", tokens, attempt)
        text = (message.content or "").strip()
        if not text:
            return ChatResult(req.id, None, "error:empty", "empty content", tokens, attempt)
        return ChatResult(req.id, text, "ok", None, tokens, attempt)


# ----------------------------------------------------------------------------------------------------------------
# Local causal LM (transformers backend)
# ----------------------------------------------------------------------------------------------------------------


def local_model_id(path: str | os.PathLike) -> str:
    """``<dir name>:<hash>`` of a local model dir; the hash covers config.json and the weight files' sizes/mtimes."""
    p = Path(path)
    h = hashlib.sha256()
    for f in sorted(p.glob("*.json")) + sorted(p.glob("*.safetensors")):
        st = f.stat()
        h.update(f"{f.name}:{st.st_size}:{int(st.st_mtime)}".encode())
        if f.name == "config.json":
            h.update(f.read_bytes())
    return f"{p.name}:{h.hexdigest()[:12]}"


def pick_device_dtype(device: str, dtype: str):
    """(device, torch dtype): ``auto`` means CUDA + bf16 when a GPU is visible, else CPU + fp32."""
    import torch

    dev = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    if dtype == "auto":
        return dev, torch.bfloat16 if dev.startswith("cuda") else torch.float32
    return dev, getattr(torch, dtype)


class LocalChatLM:
    """A causal LM directory loaded once (safetensors only); ``run(requests)`` generates in batches."""

    def __init__(self, path: str, device: str = "auto", dtype: str = "auto", batch_size: int = 8):
        import torch

        from curate.compat import ensure_torchvision

        ensure_torchvision()  # transformers' model imports reach torchvision
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.device, torch_dtype = pick_device_dtype(device, dtype)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype, use_safetensors=True)
        self.model.to(self.device).eval()
        self.model_id = local_model_id(path)
        self.batch_size = batch_size
        self._torch = torch

    def run(self, requests: list[ChatRequest]) -> list[ChatResult]:
        """One result per request, in order; a failing batch is retried row by row so one bad row fails alone."""
        out: list[ChatResult] = []
        for start in range(0, len(requests), self.batch_size):
            chunk = requests[start:start + self.batch_size]
            try:
                out += self._generate(chunk)
            except Exception:  # noqa: BLE001 - isolate the culprit
                for req in chunk:
                    try:
                        out += self._generate([req])
                    except Exception as exc:  # noqa: BLE001
                        out.append(ChatResult(req.id, None, f"error:{type(exc).__name__}", str(exc)[:200]))
        return out

    def _generate(self, reqs: list[ChatRequest]) -> list[ChatResult]:
        torch = self._torch
        texts = [self.tokenizer.apply_chat_template(r.messages, tokenize=False, add_generation_prompt=True)
                 for r in reqs]
        enc = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
        temperature, max_new = reqs[0].temperature, max(r.max_tokens for r in reqs)
        sample = temperature > 0
        if reqs[0].seed is not None:
            torch.manual_seed(reqs[0].seed)
        with torch.inference_mode():
            out = self.model.generate(**enc, max_new_tokens=max_new, do_sample=sample,
                                      temperature=temperature if sample else None, top_p=None, top_k=None,
                                      pad_token_id=self.tokenizer.pad_token_id)
        new = out[:, enc["input_ids"].shape[1]:]  # (B, T_new)
        eos = self.model.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos]) | {self.tokenizer.eos_token_id}
        results = []
        for req, row, prompt_len in zip(reqs, new.tolist(), enc["attention_mask"].sum(1).tolist()):
            ended = any(t in eos_ids for t in row)
            used = next((i for i, t in enumerate(row) if t in eos_ids), len(row))
            text = self.tokenizer.decode(row[:used], skip_special_tokens=True).strip()
            if not ended and used >= req.max_tokens:
                results.append(ChatResult(req.id, None, "error:truncated", "max_new_tokens reached",
                                          int(prompt_len + used), 1))
            elif not text:
                results.append(ChatResult(req.id, None, "error:empty", "empty output", int(prompt_len + used), 1))
            else:
                results.append(ChatResult(req.id, text, "ok", None, int(prompt_len + used), 1))
        return results


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
            self.backend = ChatRunner(endpoint, seed=cfg.seed)
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

    def _key(self, text: str, context: dict[str, str]) -> str:
        c = self.cfg
        return cache_key("expand", text, context, self.template.fingerprint, self.model_id, c.temperature, c.seed,
                         c.max_new_tokens)

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
        for answer in answers:
            reason = None if answer.status != "ok" else validate_output(answer.text, self.template)
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

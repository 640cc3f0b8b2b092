"""The chat client: one home for talking to language and vision-language models, remote or local.

- ``OpenAIEndpoint``: an OpenAI-compatible server (vLLM, llama.cpp, OpenAI). Its key comes from the environment
  variable the user names (``api_key_env``); with no name given, ``$OPENAI_API_KEY`` is sent only to OpenAI's own
  host or to ``$OPENAI_BASE_URL`` (the variable the openai client pairs it with), never to another host.
- ``check_endpoint``: fail before work. A missing model, an unset key variable, an unreachable server, a rejected
  key or an unknown model (one tiny probe request answering 404) becomes one ``ChatSetupError`` line.
- ``ChatRunner``: many requests against one endpoint through ``AsyncOpenAI``: bounded concurrency; one total
  deadline per attempt (connect + every read: ``asyncio.wait_for`` around the whole call, so a server that drips
  one byte every second cannot hold a request past ``timeout_s``) and one per request over all its retries
  (``deadline_s``); bounded retries with exponential backoff that honour ``Retry-After`` (seconds or HTTP date)
  up to ``max_retry_wait_s``, announcing any wait over ``announce_wait_s``; the request id sent as a header and
  checked when the server echoes it; ``finish_reason`` and refusals checked. What it is waiting on (requests in
  flight, retries, the longest current wait) is kept in ``ChatRunner.progress`` and, when a progress file is
  given, written there for the driver to print.
- ``LocalChatLM``: a local causal-LM directory in process (transformers), batched, left-padded.

Everything a server says is untrusted: error and refusal text is cleaned (``templates.clean_text``: control
characters, ANSI escapes, bidi overrides) before it is stored or printed. The key is excluded from ``repr`` and
from ``public_dict`` (what run directories save) and redacted from the ``openai``/``httpx`` loggers' records.
"""

from __future__ import annotations

import asyncio
import email.utils
import hashlib
import json
import logging
import os
import random
import sys
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from urllib.parse import urlparse

from caption.templates import clean_text

log = logging.getLogger(__name__)
ID_HEADER = "x-tessera-request-id"
PROBE_HEADER = "x-tessera-probe"
_RAW_HEADER = "X-Stainless-Raw-Response"  # asks the openai client for the raw response (headers + parse())
OPENAI_HOST = "api.openai.com"


class ChatSetupError(ValueError):
    """A configuration that cannot work (no model, no key, no server): raised before any work, one line."""


# ----------------------------------------------------------------------------------------------------------------
# Endpoint config and secret handling
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OpenAIEndpoint:
    """An OpenAI-compatible server. Unset fields come from the environment (``resolved()``)."""

    base_url: str | None = None  # else $TESSERA_LLM_BASE_URL, else $OPENAI_BASE_URL, else OpenAI's
    model: str | None = None  # else $TESSERA_LLM_MODEL
    api_key: str | None = field(default=None, repr=False)  # else $<api_key_env>; never saved or logged
    api_key_env: str | None = None  # None: $OPENAI_API_KEY, and only for OpenAI's host or $OPENAI_BASE_URL
    timeout_s: float = 60.0  # total per attempt: connect + every read of the response
    deadline_s: float = 300.0  # total per request: every attempt and every wait between them
    max_retries: int = 4
    backoff_s: float = 0.5
    max_backoff_s: float = 20.0
    max_retry_wait_s: float = 60.0  # a longer Retry-After is cut to this
    announce_wait_s: float = 5.0  # waits longer than this are announced
    concurrency: int = 16

    def resolved(self) -> "OpenAIEndpoint":
        """A copy with base_url, model and key filled from the environment where unset (key None: not found)."""
        base_url = self.base_url or os.environ.get("TESSERA_LLM_BASE_URL") or os.environ.get("OPENAI_BASE_URL")
        return replace(self, base_url=base_url, model=self.model or os.environ.get("TESSERA_LLM_MODEL"),
                       api_key=self.api_key or self._key_for(base_url))

    def _key_for(self, base_url: str | None) -> str | None:
        if self.api_key_env:
            return os.environ.get(self.api_key_env) or None
        # No variable named: the default key may go only where the openai client itself would send it.
        default_host = base_url is None or urlparse(base_url).hostname == OPENAI_HOST
        if default_host or base_url == os.environ.get("OPENAI_BASE_URL"):
            return os.environ.get("OPENAI_API_KEY") or None
        return None

    @property
    def display_url(self) -> str:
        """Where requests go, for messages (no credentials: a URL with user:password@ loses them)."""
        url = self.base_url or f"https://{OPENAI_HOST}/v1"
        p = urlparse(url)
        return p._replace(netloc=p.hostname + (f":{p.port}" if p.port else "")).geturl() if p.hostname else url


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


def _guard_secret(secret: str | None) -> None:
    if not secret or secret == "EMPTY":
        return
    digest = hashlib.sha256(secret.encode()).hexdigest()
    if digest not in _REDACTED:
        _REDACTED.add(digest)
        for name in ("openai", "openai._base_client", "httpx", "httpcore", "httpx2", "httpcore2"):
            logging.getLogger(name).addFilter(_RedactSecret(secret))


# ----------------------------------------------------------------------------------------------------------------
# Fail before work
# ----------------------------------------------------------------------------------------------------------------


def check_endpoint(endpoint: OpenAIEndpoint, flags: str = "--", probe: bool = True) -> OpenAIEndpoint:
    """The resolved endpoint, or ``ChatSetupError`` with one line saying what is wrong and which flag fixes it.

    ``flags`` is the option prefix the user types for this endpoint (``--`` or ``--expand-``). The probe is one
    chat request with ``max_tokens=1`` (header ``x-tessera-probe``), bounded by ``min(timeout_s, 20)`` seconds.
    """
    ep = endpoint.resolved()
    if not ep.model:
        raise ChatSetupError(f"no model: pass {flags}model (or set $TESSERA_LLM_MODEL); "
                             f"requests would go to {ep.display_url}")
    if endpoint.api_key is None and endpoint.api_key_env and not ep.api_key:
        raise ChatSetupError(f"${endpoint.api_key_env} (named by {flags}api-key-env) is not set")
    if not probe:
        return ep
    import openai

    client = openai.OpenAI(base_url=ep.base_url, api_key=ep.api_key or "EMPTY", max_retries=0,
                           timeout=min(ep.timeout_s, 20.0))
    where = f"{ep.display_url} (model {ep.model!r})"
    try:
        client.chat.completions.create(model=ep.model, messages=[{"role": "user", "content": "ping"}], max_tokens=1,
                                       extra_headers={PROBE_HEADER: "1"})
    except openai.APITimeoutError:
        raise ChatSetupError(f"{where} did not answer a probe request within {min(ep.timeout_s, 20.0):g} s") from None
    except openai.APIConnectionError:
        raise ChatSetupError(f"cannot reach {ep.display_url}: check {flags}base-url") from None
    except openai.APIStatusError as exc:
        code = exc.status_code
        if code in (401, 403):
            named = f"${endpoint.api_key_env}" if endpoint.api_key_env else f"no key (pass {flags}api-key-env VAR)"
            raise ChatSetupError(f"{where} rejected the key (HTTP {code}); key from {named}") from None
        if code == 404:
            raise ChatSetupError(f"{where}: HTTP 404, the server does not know this model or path; "
                                 f"check {flags}model and {flags}base-url") from None
        log.warning("probe of %s answered HTTP %d; going on", where, code)  # transient: the rows will retry
    finally:
        client.close()
    return ep


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


def retry_after_s(headers, now: float | None = None) -> float | None:
    """Seconds a response asks us to wait (``retry-after-ms``, or ``retry-after`` as seconds or an HTTP date)."""
    if headers is None:
        return None
    try:
        if headers.get("retry-after-ms"):
            return max(0.0, float(headers["retry-after-ms"]) / 1000.0)
        value = headers.get("retry-after")
        if not value:
            return None
        try:
            return max(0.0, float(value))
        except ValueError:
            when = email.utils.parsedate_to_datetime(value)
            return max(0.0, when.timestamp() - (time.time() if now is None else now))
    except (TypeError, ValueError, OverflowError, IndexError):
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


def announce(message: str) -> None:
    """Print a wait the user should know about (stderr, one line) and log it."""
    print(message, file=sys.stderr, flush=True)
    log.warning("%s", message)


@dataclass
class ChatProgress:
    """What a runner is waiting on now, and what it has done: ``snapshot()`` is a JSON-able dict."""

    label: str = "chat"
    in_flight: int = 0
    waiting: int = 0  # requests sleeping before a retry
    longest_wait_s: float = 0.0
    wait_reason: str | None = None
    done: int = 0
    failed: int = 0
    retries: int = 0
    folder: str | None = None  # where a JSON file (``<label>-<pid>-<n>.json``) is rewritten, at most once a second
    _written: float = 0.0
    _path: str | None = None

    def snapshot(self) -> dict:
        return {"label": self.label, "in_flight": self.in_flight, "waiting": self.waiting,
                "longest_wait_s": round(self.longest_wait_s, 1), "wait_reason": self.wait_reason, "done": self.done,
                "failed": self.failed, "retries": self.retries, "t": time.time()}

    def changed(self, force: bool = False) -> None:
        """Rewrite the progress file (a no-op without a folder, or within a second of the last write)."""
        if self.folder is None or (not force and time.time() - self._written < 1.0):
            return
        self._written = time.time()
        try:
            if self._path is None:
                Path(self.folder).mkdir(parents=True, exist_ok=True)
                self._path = os.path.join(self.folder, f"{self.label}-{os.getpid()}-{id(self):x}.json")
            tmp = f"{self._path}.tmp"
            Path(tmp).write_text(json.dumps(self.snapshot()))
            os.replace(tmp, self._path)
        except OSError:  # progress is a courtesy; never a failure
            pass


class ChatRunner:
    """Runs many chat requests against one OpenAI-compatible endpoint; results in request order, ids checked.

    One event loop on a daemon thread and one ``AsyncOpenAI`` client live as long as the runner, so connections
    are reused across batches (a new client per batch cost ~1 s of connection setup at 64 in flight).
    """

    def __init__(self, endpoint: OpenAIEndpoint, seed: int = 0, progress: ChatProgress | None = None,
                 on_wait=announce):
        self.endpoint = endpoint.resolved()
        if not self.endpoint.model:
            raise ChatSetupError("openai backend needs a model (config or $TESSERA_LLM_MODEL)")
        _guard_secret(self.endpoint.api_key)
        self.progress = progress or ChatProgress()
        self.on_wait = on_wait
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
            self._client = AsyncOpenAI(base_url=ep.base_url, api_key=ep.api_key or "EMPTY", max_retries=0,
                                       timeout=ep.timeout_s, http_client=_http_client(ep.concurrency))
        sem = asyncio.Semaphore(max(1, ep.concurrency))  # the client's own pool allows more; this bounds it

        async def one(req: ChatRequest) -> ChatResult:
            async with sem:
                result = await self._run_one(self._client, req)
            self.progress.done += 1
            self.progress.failed += result.status != "ok"
            self.progress.changed()
            return result

        results = await asyncio.gather(*(one(r) for r in requests))
        self.progress.changed(force=True)
        for req, res in zip(requests, results):  # the id travels with the result; a mismatch is a bug
            if req.id != res.id:
                raise AssertionError(f"result for {res.id!r} returned in the slot of {req.id!r}")
        return list(results)

    async def _attempt(self, client, req: ChatRequest):
        """One HTTP exchange, headers and body, as a parsed ``ChatCompletion`` (raises what the client raises)."""
        from openai.types.chat import ChatCompletion

        # ``post`` is the client's own call for chat.completions.create minus its recursive TypedDict transform
        # of the messages, which cost ~1.2 ms CPU per request (half the client's cost).
        body = {"model": self.endpoint.model, "messages": req.messages, "max_tokens": req.max_tokens,
                "temperature": req.temperature}
        if req.seed is not None:
            body["seed"] = req.seed
        raw = await client.post("/chat/completions", body=body, cast_to=ChatCompletion,
                                options={"headers": {ID_HEADER: req.id, _RAW_HEADER: "true"}})
        parsed = raw.parse()
        if asyncio.iscoroutine(parsed):
            parsed = await parsed
        return raw.headers.get(ID_HEADER), parsed

    async def _run_one(self, client, req: ChatRequest) -> ChatResult:
        import openai

        ep, prog, status, error = self.endpoint, self.progress, "error:unknown", None
        t_end = time.monotonic() + ep.deadline_s
        for attempt in range(1, ep.max_retries + 2):
            wait, left = None, t_end - time.monotonic()
            if left <= 0:
                return ChatResult(req.id, None, "error:deadline", f"{error} ; no time left of {ep.deadline_s:g} s "
                                  f"after {attempt - 1} attempts", attempts=attempt - 1)
            prog.in_flight += 1
            try:
                echoed, parsed = await asyncio.wait_for(self._attempt(client, req), min(ep.timeout_s, left))
                if echoed is not None and echoed != req.id:
                    return ChatResult(req.id, None, "error:id-mismatch",
                                      f"server answered for {clean_text(echoed, 80)!r}", attempts=attempt)
                return self._check(req, parsed, attempt)
            except (asyncio.TimeoutError, openai.APITimeoutError):
                status, error = "error:timeout", f"no complete answer within {min(ep.timeout_s, left):g} s"
            except openai.APIConnectionError as exc:
                status, error = "error:connection", type(exc).__name__
            except openai.RateLimitError as exc:
                status, error = "error:rate-limited", "HTTP 429"
                wait = retry_after_s(exc.response.headers)
            except openai.APIStatusError as exc:
                code = exc.status_code
                status, error = f"error:http-{code}", f"HTTP {code}"
                if code not in (408, 409) and code < 500:
                    return ChatResult(req.id, None, status, error, attempts=attempt)  # not worth retrying
                wait = retry_after_s(exc.response.headers)
            except Exception as exc:  # noqa: BLE001 - malformed responses etc.: a row error, never a crash
                return ChatResult(req.id, None, "error:bad-response",
                                  f"{type(exc).__name__}: {clean_text(str(exc), 200)}", attempts=attempt)
            finally:
                prog.in_flight -= 1
            if attempt > ep.max_retries:
                break
            asked = wait
            if wait is None:
                wait = min(ep.max_backoff_s, ep.backoff_s * 2 ** (attempt - 1)) * (0.5 + 0.5 * self._rng.random())
            wait = min(wait, ep.max_retry_wait_s)
            if wait >= t_end - time.monotonic():
                return ChatResult(req.id, None, "error:deadline",
                                  f"{error}; the next retry ({wait:.0f} s away) would pass the {ep.deadline_s:g} s "
                                  f"deadline", attempts=attempt)
            await self._sleep(req, wait, asked, error)
        return ChatResult(req.id, None, status, f"{error} after {ep.max_retries + 1} attempts",
                          attempts=ep.max_retries + 1)

    async def _sleep(self, req: ChatRequest, wait: float, asked: float | None, error: str | None) -> None:
        ep, prog = self.endpoint, self.progress
        why = f"{error}, Retry-After {asked:.0f} s" if asked is not None else f"{error}, backoff"
        if asked is not None and asked > ep.max_retry_wait_s:
            why += f" (capped at {ep.max_retry_wait_s:g} s by --max-retry-wait)"
        if wait > ep.announce_wait_s and self.on_wait is not None:
            self.on_wait(f"[{prog.label}] waiting {wait:.0f} s before retrying {clean_text(req.id, 40)} ({why}) "
                         f"at {ep.display_url}")
        log.debug("request %s: %s, retry in %.2fs", req.id, why, wait)
        prog.retries += 1
        prog.waiting += 1
        prog.longest_wait_s, prog.wait_reason = max(prog.longest_wait_s, wait), why
        prog.changed(force=wait > ep.announce_wait_s)
        try:
            await asyncio.sleep(wait)
        finally:
            prog.waiting -= 1
            if not prog.waiting:
                prog.longest_wait_s, prog.wait_reason = 0.0, None

    @staticmethod
    def _check(req: ChatRequest, resp, attempt: int) -> ChatResult:
        tokens = int(getattr(getattr(resp, "usage", None), "total_tokens", 0) or 0)
        if not getattr(resp, "choices", None):
            return ChatResult(req.id, None, "error:empty", "no choices", tokens, attempt)
        choice = resp.choices[0]
        message = choice.message
        if getattr(message, "refusal", None) or choice.finish_reason == "content_filter":
            return ChatResult(req.id, None, "error:refused", clean_text(str(message.refusal or "content_filter"), 200),
                              tokens, attempt)
        if choice.finish_reason == "length":
            return ChatResult(req.id, None, "error:truncated", "finish_reason=length", tokens, attempt)
        content = message.content
        if content is not None and not isinstance(content, str):
            return ChatResult(req.id, None, "error:bad-response", f"content is {type(content).__name__}", tokens,
                              attempt)
        text = (content or "").strip()
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
                        out.append(ChatResult(req.id, None, f"error:{type(exc).__name__}", clean_text(str(exc), 200)))
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

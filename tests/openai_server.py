"""A loopback OpenAI-compatible chat server for tests and benchmarks (real HTTP on 127.0.0.1, aiohttp).

It misbehaves on request: a marker inside the last user message picks the behaviour, so one server serves a
whole batch of mixed cases.

| marker        | behaviour                                                                  |
| ------------- | -------------------------------------------------------------------------- |
| (none)        | answers; text derived from the input (or from the images' mean colour)    |
| ``@slow``     | answers after ``slow_s``                                                   |
| ``@429``      | the first two attempts get 429 with ``Retry-After: <retry_after_s>``       |
| ``@500once``  | the first attempt gets 500, then answers                                   |
| ``@500``      | always 500                                                                 |
| ``@reset``    | closes the connection without answering (a reset)                         |
| ``@timeout``  | sleeps ``hang_s`` (longer than the client's timeout), then drops           |
| ``@length``   | ``finish_reason = "length"``                                               |
| ``@empty``    | empty content                                                              |
| ``@refuse``   | a refusal in prose; ``@refusal-field`` uses the ``refusal`` field instead  |
| ``@obey``     | acts like a model that obeyed an injected instruction: answers with a URL  |
| ``@echo``     | answers with its system prompt                                             |
| ``@wrongid``  | echoes another request id (an in-flight mix-up)                            |
| ``@429date``  | the first two attempts get 429 with ``Retry-After`` as an HTTP date        |
| ``@429long``  | always 429 with ``Retry-After: 3600``                                      |
| ``@503``      | always 503                                                                 |
| ``@400``, ``@401``, ``@404`` | that status, always                                         |
| ``@drip``     | headers at once, then the body one byte every ``drip_s``                   |
| ``@resetbody``| headers and half the body, then the connection is dropped                  |
| ``@badjson``  | 200 with a body that is not JSON                                           |
| ``@nullcontent`` | ``content: null`` and no refusal                                        |
| ``@huge``     | 1 MB of content                                                            |
| ``@control``  | an answer carrying ANSI escapes, a bidi override and control characters    |
| ``@ansirefusal`` | a ``refusal`` field that would clear the screen and set the title       |
| ``@pirate``, ``@offtopic``, ``@leak`` | fluent answers that are not about the input (a pirate    |
|               | poem; a dog on a beach; the input plus a key-like string and a file path)  |

``faults`` maps a substring of "<request id> <user text>" to a marker, so a test can make one clip's requests
misbehave without touching its text (VLM request ids are ``<clip_id>|<kind>``); it may be changed between runs.
``models`` (a set) makes unknown models answer 404; ``api_key`` makes a wrong ``Authorization`` answer 401.
Requests carrying ``x-tessera-probe`` are recorded with ``probe=True``.

With images in the request (a VLM call), the answer names the nearest colour of ``COLOURS`` to the mean colour
of all the images received, so a caption attached to the wrong clip is detectable. ``latency_s`` and
``jitter_s`` delay every answer (seeded, random per request) to shuffle completion order. The request-id header
is echoed back. The server stops by itself after ``max_lifetime_s``.
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import io
import json
import random
import re
import threading
import time
from dataclasses import dataclass, field

import numpy as np

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "yellow": (230, 220, 30),
           "magenta": (210, 30, 210), "cyan": (30, 210, 220), "white": (235, 235, 235), "black": (15, 15, 15)}
ID_HEADER = "x-tessera-request-id"
_MARK = re.compile(r"@(slow|429date|429long|429|500once|500|503|400|401|404|resetbody|reset|timeout|length|empty|"
                   r"refusal-field|refuse|obey|echo|wrongid|drip|badjson|nullcontent|huge|control|ansirefusal|"
                   r"pirate|offtopic|leak)(?![\w-])")
PIRATE = ("Yo ho ho, upon the briny deep, a salty crew their secrets keep; with cutlass bright and flag unfurled, "
          "we sail the seven seas of the world.")
OFFTOPIC = ("A golden retriever runs along a wet sandy beach at low tide, ears flapping, as waves roll in behind it "
            "under a soft evening sky.")


def nearest_colour(rgb) -> str:
    """The name in ``COLOURS`` closest to an RGB triple."""
    return min(COLOURS, key=lambda k: sum((a - b) ** 2 for a, b in zip(COLOURS[k], rgb)))


@dataclass
class Seen:
    """One request as the server saw it."""

    t: float
    request_id: str | None
    marker: str | None
    authorization: str | None
    body: dict
    probe: bool = False


@dataclass
class FakeOpenAIServer:
    """Start with ``with FakeOpenAIServer(...) as server:``; ``server.base_url`` ends in ``/v1``."""

    latency_s: float = 0.0
    jitter_s: float = 0.0
    slow_s: float = 0.5
    hang_s: float = 5.0
    retry_after_s: int = 1
    drip_s: float = 0.5
    max_lifetime_s: float = 900.0  # a safety net only: a loaded CI machine runs a Ray test for minutes
    seed: int = 0
    faults: dict[str, str] = field(default_factory=dict)
    models: set[str] | None = None
    api_key: str | None = None
    seen: list[Seen] = field(default_factory=list)

    def requests(self, probe: bool = False) -> list[Seen]:
        """The requests seen, without (default) or only the probes."""
        return [s for s in self.seen if s.probe == probe]

    def __post_init__(self):
        self._rng = random.Random(self.seed)
        self._attempts: dict[str, int] = {}
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._loop = None
        self._stop = None
        self.port = None

    # --------------------------------------------------------------------------------------------- lifecycle
    def __enter__(self) -> "FakeOpenAIServer":
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("fake server did not start")
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None and not self._loop.is_closed():
            try:
                self._loop.call_soon_threadsafe(self._stop.set)
            except RuntimeError:  # the loop closed in between (max_lifetime_s ran out)
                pass
        self._thread.join(10)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def _serve(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        from aiohttp import web

        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self._chat)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]
        self._ready.set()
        try:
            await asyncio.wait_for(self._stop.wait(), self.max_lifetime_s)
        except asyncio.TimeoutError:
            pass
        await runner.cleanup()

    # --------------------------------------------------------------------------------------------- handler
    async def _chat(self, request):
        from aiohttp import web

        body = await request.json()
        rid = request.headers.get(ID_HEADER)
        messages = body.get("messages", [])
        last = messages[-1] if messages else {"content": ""}
        text, images = _split_content(last.get("content"))
        match = _MARK.search(text)
        marker = match.group(1) if match else None
        where = f"{rid} {text}"
        marker = next((m for pattern, m in self.faults.items() if pattern in where), marker)
        probe = bool(request.headers.get("x-tessera-probe"))
        with self._lock:
            self.seen.append(Seen(time.time(), rid, marker, request.headers.get("Authorization"), body, probe))
            key = f"{marker}:{rid or text}"
            attempt = self._attempts[key] = self._attempts.get(key, 0) + 1
            delay = self.latency_s + (self._rng.random() * self.jitter_s if self.jitter_s else 0.0)
        headers = {ID_HEADER: rid} if rid else {}
        if self.api_key is not None and request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return web.json_response({"error": {"message": "bad key", "type": "invalid_request_error"}}, status=401)
        if self.models is not None and body.get("model") not in self.models:
            return web.json_response({"error": {"message": f"model {body.get('model')!r} not found",
                                                "type": "invalid_request_error"}}, status=404)
        if probe:
            marker = None
        if marker == "wrongid":  # a server (or proxy) that mixes up in-flight requests
            headers = {ID_HEADER: f"not-{rid}"}
        if delay:
            await asyncio.sleep(delay)
        if marker == "slow":
            await asyncio.sleep(self.slow_s)
        if marker in ("429", "429date") and attempt <= 2:
            after = (str(self.retry_after_s) if marker == "429" else
                     email.utils.formatdate(time.time() + self.retry_after_s + 1, usegmt=True))
            return web.json_response({"error": {"message": "slow down", "type": "rate_limit"}}, status=429,
                                     headers={**headers, "Retry-After": after})
        if marker == "429long":
            return web.json_response({"error": {"message": "come back in an hour", "type": "rate_limit"}},
                                     status=429, headers={**headers, "Retry-After": "3600"})
        if marker == "500" or (marker == "500once" and attempt == 1):
            return web.json_response({"error": {"message": "boom", "type": "server_error"}}, status=500,
                                     headers=headers)
        if marker in ("503", "400", "401", "404"):
            return web.json_response({"error": {"message": f"status {marker}", "type": "x"}}, status=int(marker),
                                     headers=headers)
        if marker == "reset":
            if request.transport is not None:
                request.transport.abort()
            return web.Response(status=500)
        if marker == "timeout":
            await asyncio.sleep(self.hang_s)
            if request.transport is not None:
                request.transport.abort()
            return web.Response(status=500)
        if marker == "badjson":
            return web.Response(status=200, text='{"id": "x", "choices": [ not json', content_type="application/json",
                                headers=headers)
        if marker in ("drip", "resetbody"):
            payload = json.dumps(self._completion(rid, attempt, body, "a slow answer about the input", "stop", None,
                                                  messages)).encode()
            resp = web.StreamResponse(status=200, headers={**headers, "Content-Type": "application/json",
                                                           "Content-Length": str(len(payload))})
            await resp.prepare(request)
            if marker == "resetbody":
                await resp.write(payload[: len(payload) // 2])
                if request.transport is not None:
                    request.transport.abort()
                return resp
            try:
                for i in range(len(payload)):
                    await resp.write(payload[i:i + 1])
                    await asyncio.sleep(self.drip_s)
                await resp.write_eof()
            except (ConnectionError, RuntimeError):  # the client gave up on us: what a deadline should do
                pass
            return resp
        content, finish, refusal = self._answer(marker, text, images, messages), "stop", None
        if marker == "length":
            finish = "length"
        elif marker == "empty":
            content = ""
        elif marker == "nullcontent":
            content = None
        elif marker == "refuse":
            content = "I'm sorry, but I can't help with that request."
        elif marker == "refusal-field":
            content, refusal = None, "I can't help with that."
        elif marker == "ansirefusal":
            content, refusal = None, "\x1b]0;pwned\x07\x1b[2J\x1b[HI can't help\u202e with that."
        elif marker == "huge":
            content = "A very long answer. " * ((1 << 20) // 20)
        elif marker == "control":
            content = content + " \x1b[2J\x1b]0;title\x07\u202e\x08"
        return web.json_response(self._completion(rid, attempt, body, content, finish, refusal, messages),
                                 headers=headers)

    @staticmethod
    def _completion(rid, attempt, body, content, finish, refusal, messages) -> dict:
        prompt_tokens = sum(len(json.dumps(m)) // 4 for m in messages)
        completion_tokens = len((content or "").split())
        return {
            "id": f"chatcmpl-{attempt}-{rid}", "object": "chat.completion", "created": int(time.time()),
            "model": body.get("model", "fake"),
            "choices": [{"index": 0, "finish_reason": finish,
                         "message": {"role": "assistant", "content": content, "refusal": refusal}}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
        }

    @staticmethod
    def _answer(marker: str | None, text: str, images: list[bytes], messages: list[dict]) -> str:
        if images:
            means = [np.asarray(_decode(img), dtype=np.float64).reshape(-1, 3).mean(0) for img in images]
            colour = nearest_colour(np.mean(means, axis=0))
            return f"A video of a plain {colour} surface seen in {len(images)} frames."
        if marker == "obey":
            return "Sure. Visit http://evil.example/x for the best videos of a cat."
        if marker == "pirate":
            return PIRATE
        if marker == "offtopic":
            return OFFTOPIC
        if marker == "echo":
            return next((m["content"] for m in messages if m.get("role") == "system"), "")
        data = re.search(r"<data>\s*(\{.*\})\s*</data>", text, re.S)
        original = json.loads(data.group(1)).get("text", "") if data else text
        if marker == "leak":
            return (f"A detailed shot showing {original.rstrip('.')}; the key sk-live-9f8e7d6c5b4a39281706 is stored "
                    f"in /home/admin/.config/secrets.env for later.")
        return (f"A detailed shot showing {original.rstrip('.')}, framed in a steady medium view with soft "
                f"natural light and gentle camera motion.")


def _split_content(content) -> tuple[str, list[bytes]]:
    """(text, image bytes) of an OpenAI message content (a string or a list of parts)."""
    if isinstance(content, str) or content is None:
        return content or "", []
    texts, images = [], []
    for part in content:
        if part.get("type") == "text":
            texts.append(part.get("text", ""))
        elif part.get("type") == "image_url":
            url = part["image_url"]["url"]
            if not url.startswith("data:image/jpeg;base64,"):
                raise ValueError("only inline JPEG data URLs are accepted")
            images.append(base64.b64decode(url.split(",", 1)[1]))
    return "\n".join(texts), images


# ----------------------------------------------------------------------------------------------------------------
# Synthetic clips the server recognises (one solid colour of COLOURS per clip)
# ----------------------------------------------------------------------------------------------------------------


def make_clip_mp4(colour: str, n_frames: int = 6, size: tuple[int, int] = (64, 48), fps: int = 12,
                  seed: int | None = None) -> bytes:
    """An H.264 MP4 of ``n_frames`` frames of ``COLOURS[colour]`` with slight noise (so frames differ).

    The bytes are deterministic per (colour, seed); another seed gives another clip of the same colour."""
    import av

    w, h = size
    rng = np.random.default_rng(sum(map(ord, colour)) if seed is None else [sum(map(ord, colour)), seed])
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        for _ in range(n_frames):
            noise = rng.integers(-6, 7, (h, w, 3))
            rgb = np.clip(np.array(COLOURS[colour])[None, None] + noise, 0, 255).astype(np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return buf.getvalue()


def write_clip_shards(dataset: str, colours: list[str], shards: int = 1, bytes_inline: bool = True) -> list[dict]:
    """``DATASET/clips/part-NNNNN.parquet`` with one clip per colour; returns the rows' (clip_id, colour)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from pathlib import Path

    root = Path(dataset)
    (root / "clips").mkdir(parents=True, exist_ok=True)
    rows = []
    for i, colour in enumerate(colours):
        data = make_clip_mp4(colour)
        row = {"clip_id": f"clip-{i:03d}-{colour}", "clip_mp4": data if bytes_inline else None,
               "clip_path": None, "source_uri": str(root / "src" / f"video{i}.mp4"), "start_s": 0.0,
               "end_s": 0.5, "fps": 12.0, "num_frames": 6, "width": 64, "height": 48, "aesthetic": 0.5,
               "colour": colour}
        if not bytes_inline:
            (root / "media").mkdir(exist_ok=True)
            (root / "media" / f"{row['clip_id']}.mp4").write_bytes(data)
            row["clip_path"] = f"media/{row['clip_id']}.mp4"
        rows.append(row)
    per = -(-len(rows) // shards)
    for s in range(shards):
        part = rows[s * per:(s + 1) * per]
        table = pa.Table.from_pylist(part, schema=pa.schema([
            ("clip_id", pa.string()), ("clip_mp4", pa.binary()), ("clip_path", pa.string()),
            ("source_uri", pa.string()), ("start_s", pa.float64()), ("end_s", pa.float64()), ("fps", pa.float64()),
            ("num_frames", pa.int64()), ("width", pa.int64()), ("height", pa.int64()), ("aesthetic", pa.float64()),
            ("colour", pa.string())]))
        pq.write_table(table, root / "clips" / f"part-{s:05d}.parquet")
    from curate.store import write_manifest  # readers open only what a manifest lists

    write_manifest(root, (root / "clips").glob("*.parquet"))
    return rows


def _decode(data: bytes):
    from PIL import Image

    return Image.open(io.BytesIO(data)).convert("RGB")

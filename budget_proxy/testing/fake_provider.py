"""A fake LLM upstream that speaks the OpenAI, Anthropic, Azure OpenAI, Gemini and Ollama
wire formats.

One aiohttp application serves every family on one port, the way the proxy sees
them: OpenAI under ``/v1/chat/completions``, ``/v1/completions``, ``/v1/embeddings``,
``/v1/responses`` and ``/v1/models``; Anthropic under ``/v1/messages`` and
``/v1/messages/count_tokens``; Azure OpenAI under
``/openai/deployments/{deployment}/...`` (OpenAI's bodies, the deployment as the model);
Gemini under ``/v1beta/models/{model}:generateContent``, ``:streamGenerateContent``
(SSE with ``alt=sse``, else a streamed JSON array) and ``:countTokens``; Ollama under
``/api/chat``, ``/api/generate``, ``/api/embed`` (NDJSON streams) and ``/api/tags``.
Usage figures are deterministic and driven by the :class:`FakeProvider` controller so
tests can assert exact accounting, and the hot paths splice pre-serialised bytes so the
fake is never the bottleneck of a benchmark.

In-process use (pytest-aiohttp)::

    fake = FakeProvider(reply_chunks=["Hi", " there"], prompt_tokens=12)
    server = await aiohttp_server(fake.app())
    base = str(server.make_url(""))  # OpenAI base: f"{base}/v1", Anthropic base: base

Subprocess use (benchmarks)::

    python -m budget_proxy.testing.fake_provider --host 127.0.0.1 --port 8900

The subprocess prints ``fake-provider listening on http://HOST:PORT`` once bound and
can be steered over HTTP: ``POST /_fake/config`` (JSON of knob values),
``POST /_fake/reset``, ``GET /_fake/requests``, ``GET /_fake/stats``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import copy
import gc
import itertools
import os
import struct
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import orjson
from aiohttp import web

__all__ = [
    "PROMPT_TOKEN_OVERHEAD",
    "FakeProvider",
    "Headers",
    "RawAnswer",
    "ReceivedRequest",
    "create_app",
    "estimate_prompt_tokens",
    "main",
]

Family = Literal["openai", "anthropic", "gemini", "ollama"]

PROMPT_TOKEN_OVERHEAD = 7
"""Added to the word count of a request's text to form its default prompt tokens."""

_TEXT_KEYS = ("content", "text", "input", "prompt", "system", "instructions", "messages")
_TOP_LEVEL_TEXT_KEYS = ("messages", "prompt", "input", "instructions", "system")

_SSE_HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache",
}

_OPENAI_ERROR_DEFAULTS: dict[int, tuple[str, str | None, str]] = {
    400: ("invalid_request_error", None, "Invalid request."),
    401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided."),
    403: ("permission_denied", None, "You are not allowed to perform this request."),
    404: ("invalid_request_error", "not_found", "The requested resource does not exist."),
    408: ("timeout", None, "Request timed out."),
    409: ("conflict", None, "Conflict."),
    413: ("invalid_request_error", None, "Request too large."),
    422: ("invalid_request_error", None, "Unprocessable entity."),
    429: ("requests", "rate_limit_exceeded", "Rate limit reached for requests."),
    500: ("server_error", None, "The server had an error while processing your request."),
    502: ("server_error", None, "Bad gateway."),
    503: ("server_error", None, "The engine is currently overloaded, please try again later."),
    504: ("server_error", None, "Gateway timeout."),
}
_OPENAI_CODES = {
    "rate_limit_exceeded": "rate_limit_exceeded",
    "requests": "rate_limit_exceeded",
    "tokens": "rate_limit_exceeded",
    "insufficient_quota": "insufficient_quota",
    "invalid_api_key": "invalid_api_key",
    "context_length_exceeded": "context_length_exceeded",
}
_ANTHROPIC_ERROR_DEFAULTS: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}

_KNOBS = (
    "reply_chunks",
    "prompt_tokens",
    "completion_tokens",
    "cached_tokens",
    "cache_creation_tokens",
    "reasoning_tokens",
    "chunk_delay_s",
    "first_chunk_delay_s",
    "response_delay_s",
    "fail_next",
    "fail_mid_stream",
    "fail_mid_stream_after",
    "response_model",
    "require_auth",
    "anthropic_delta_full_usage",
    "embedding_dims",
    "record_requests",
    "raw_next",
    "tool_calls",
    "tool_call_replies",
    "audio_duration_s",
)


class Headers(dict[str, str]):
    """Request headers stored lower-cased and looked up case-insensitively, as HTTP wants."""

    def __getitem__(self, key: str) -> str:
        return super().__getitem__(key.lower())

    def __contains__(self, key: object) -> bool:
        return super().__contains__(key.lower() if isinstance(key, str) else key)

    def get(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        return super().get(key.lower(), default)


@dataclass(slots=True)
class RawAnswer:
    """An answer sent exactly as given, whatever the request, for testing malformed upstreams.

    ``headers`` are sent as they are (a ``Content-Length`` that lies, a ``Content-Encoding``
    the body does not have); with no ``Content-Length`` the body is sent chunked. The body is
    ``body``, or ``chunks`` written one by one ``chunk_delay_s`` apart. ``close`` is how the
    answer ends: ``"eof"`` (a complete HTTP answer), or ``"abort"`` (the connection is reset
    after the last chunk, the body left unterminated). ``raw`` replaces the whole HTTP answer
    (status line and headers included) with these bytes, then closes the connection: for
    answers aiohttp itself would refuse to write. Over ``POST /_fake/config``, byte fields are
    strings (each character one byte, latin-1).
    """

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    chunks: list[bytes] | None = None
    chunk_delay_s: float = 0.0
    close: Literal["eof", "abort"] = "eof"
    raw: bytes | None = None

    @classmethod
    def from_json(cls, value: Any) -> RawAnswer:
        if isinstance(value, RawAnswer):
            return value
        if not isinstance(value, dict):
            raise ValueError("a raw answer is an object")
        fields = dict(value)
        for name in ("body", "raw"):
            if isinstance(fields.get(name), str):
                fields[name] = fields[name].encode("latin-1")
        if fields.get("chunks") is not None:
            fields["chunks"] = [c.encode("latin-1") if isinstance(c, str) else c
                                for c in fields["chunks"]]
        return cls(**fields)


@dataclass(slots=True)
class ReceivedRequest:
    """One request as the fake saw it, with the usage figures it put on the wire.

    Token fields use neutral names: ``prompt_tokens`` is what was reported as
    ``prompt_tokens`` (OpenAI chat/completions/embeddings) or ``input_tokens``
    (Responses, Anthropic), ``completion_tokens`` as ``completion_tokens`` or
    ``output_tokens``. ``usage_reported`` is False when the stream carried no usage
    (OpenAI streams without ``stream_options.include_usage``) or was cut short.
    """

    request_id: str
    method: str
    path: str
    family: Family
    headers: Headers
    body: Any
    query: str = ""  # the raw query string, as received
    stream: bool = False
    status: int = 200
    error_type: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    cache_creation_tokens: int = 0
    reasoning_tokens: int = 0
    usage_reported: bool = False
    chunks_sent: int = 0
    completed: bool = False
    client_disconnected: bool = False
    received_at: float = 0.0

    @property
    def usage(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cached_tokens": self.cached_tokens,
            "cache_creation_tokens": self.cache_creation_tokens,
            "reasoning_tokens": self.reasoning_tokens,
        }


def _default_chunks() -> list[str]:
    return ["Hello", " from", " the", " fake", " provider."]


@dataclass
class FakeProvider:
    """Controller for the fake upstream; tests change its knobs between requests.

    Knobs are read once when a request arrives. Token numbers are reported verbatim
    in each family's own semantics: for OpenAI ``cached_tokens`` is a part of
    ``prompt_tokens`` and ``reasoning_tokens`` a part of ``completion_tokens``; for
    Anthropic ``input_tokens`` (= ``prompt_tokens``), ``cache_read_input_tokens``
    (= ``cached_tokens``) and ``cache_creation_input_tokens`` add up.
    """

    reply_chunks: list[str] = field(default_factory=_default_chunks)
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cached_tokens: int = 0
    cache_creation_tokens: int = 0
    reasoning_tokens: int = 0
    chunk_delay_s: float = 0.0
    first_chunk_delay_s: float = 0.0
    response_delay_s: float = 0.0
    fail_next: list[tuple[int, str]] = field(default_factory=list)
    fail_mid_stream: bool = False
    fail_mid_stream_after: int = 2
    response_model: str | None = None
    require_auth: bool = False
    anthropic_delta_full_usage: bool = False
    embedding_dims: int = 8
    record_requests: bool = True
    raw_next: list[RawAnswer] = field(default_factory=list)
    """Answers sent as given to the next requests, one each, before any other knob."""
    audio_duration_s: float | None = None
    """The ``duration`` a transcription reports; None: read from an uploaded WAV file."""
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    """`{"name", "arguments"}` calls a non-streamed chat completion answers with (OpenAI
    `tool_calls`, finish_reason `tool_calls`) while `tool_call_replies` is not 0."""
    tool_call_replies: int = 0
    """How many next non-streamed chat completions answer with `tool_calls`; -1: all."""
    requests: list[ReceivedRequest] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)
    url: str | None = field(default=None, init=False)
    """Base URL while :meth:`serve` is running."""

    def __post_init__(self) -> None:
        self._initial = {name: copy.deepcopy(getattr(self, name)) for name in _KNOBS}
        self._ids = itertools.count(1)
        self._json_str_cache: dict[str, bytes] = {}
        self._embedding_cache: dict[tuple[int, str], orjson.Fragment] = {}

    def app(self) -> web.Application:
        """A new aiohttp application bound to this controller."""
        return create_app(self)

    @contextlib.asynccontextmanager
    async def serve(self, host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[str]:
        """Run the fake on a real socket for the duration of the block; yields its base URL."""
        runner = web.AppRunner(self.app(), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        await site.start()
        try:
            bound_host, bound_port = runner.addresses[0][:2]
            self.url = f"http://{bound_host}:{bound_port}"
            yield self.url
        finally:
            self.url = None
            await runner.cleanup()

    def count(
        self,
        path: str | None = None,
        *,
        family: Family | None = None,
        status: int | None = None,
    ) -> int:
        """Number of requests matching every given filter.

        With ``record_requests`` off only the per-path counters exist, so only ``path``
        (or no filter at all) can be answered.
        """
        if not self.record_requests and family is None and status is None:
            return self.counts[path] if path is not None else sum(self.counts.values())
        return sum(
            1
            for r in self.requests
            if (path is None or r.path == path)
            and (family is None or r.family == family)
            and (status is None or r.status == status)
        )

    def requests_to(self, path: str) -> list[ReceivedRequest]:
        return [r for r in self.requests if r.path == path]

    @property
    def last(self) -> ReceivedRequest:
        return self.requests[-1]

    def reset(self) -> None:
        """Forget recorded requests and restore every knob to its value at construction."""
        for name, value in self._initial.items():
            setattr(self, name, copy.deepcopy(value))
        self.requests.clear()
        self.counts.clear()

    def configure(self, **knobs: Any) -> None:
        """Set several knobs at once, rejecting unknown names."""
        for name, value in knobs.items():
            if name not in _KNOBS:
                raise ValueError(f"unknown fake provider knob: {name}")
            if name == "fail_next":
                value = [(int(s), str(t)) for s, t in value]
            if name == "raw_next":
                value = [RawAnswer.from_json(answer) for answer in value]
            setattr(self, name, value)

    def _json_str(self, text: str) -> bytes:
        cached = self._json_str_cache.get(text)
        if cached is None:
            if len(self._json_str_cache) > 4096:
                self._json_str_cache.clear()
            cached = self._json_str_cache[text] = orjson.dumps(text)
        return cached

    def _embedding(self, dims: int, encoding: str) -> orjson.Fragment:
        key = (dims, encoding)
        frag = self._embedding_cache.get(key)
        if frag is None:
            values = [round(((i * 37) % 101) / 101.0 - 0.5, 6) for i in range(dims)]
            if encoding == "base64":
                raw = struct.pack(f"<{dims}f", *values)
                frag = orjson.Fragment(orjson.dumps(base64.b64encode(raw).decode()))
            else:
                frag = orjson.Fragment(orjson.dumps(values))
            self._embedding_cache[key] = frag
        return frag


FAKE_KEY = web.AppKey("fake_provider", FakeProvider)
"""Where :func:`create_app` stores the controller on the application."""


def _count_words(value: Any) -> int:
    if isinstance(value, str):
        return len(value.split())
    if isinstance(value, list):
        total = 0
        for item in value:
            if isinstance(item, bool):
                continue
            if isinstance(item, int):
                total += 1
            else:
                total += _count_words(item)
        return total
    if isinstance(value, dict):
        return sum(_count_words(value[k]) for k in _TEXT_KEYS if k in value)
    return 0


def estimate_prompt_tokens(body: Any) -> int:
    """Default prompt tokens for a request: words in its text fields plus a fixed overhead.

    Integer token arrays (``prompt``/``input`` as token ids) count one per id.
    """
    if not isinstance(body, dict):
        return PROMPT_TOKEN_OVERHEAD
    words = sum(_count_words(body[k]) for k in _TOP_LEVEL_TEXT_KEYS if k in body)
    return words + PROMPT_TOKEN_OVERHEAD


@dataclass(slots=True)
class _Plan:
    """Per-request snapshot of the controller knobs after header overrides."""

    rid: str
    model: str
    chunks: list[str]
    prompt: int
    completion: int
    cached: int
    creation: int
    reasoning: int
    response_delay: float
    first_chunk_delay: float
    chunk_delay: float
    fail_mid_stream: bool
    fail_after: int


def _header_int(request: web.Request, name: str) -> int | None:
    raw = request.headers.get(name)
    if raw is None:
        return None
    try:
        return int(raw)
    except ValueError:
        return None


def _family_for(request: web.Request) -> Family:
    path = request.path
    if path.startswith("/v1beta/"):
        return "gemini"
    if path.startswith("/api/"):
        return "ollama"
    if path.startswith("/v1/messages"):
        return "anthropic"
    if path.startswith("/v1/models") and "anthropic-version" in request.headers:
        return "anthropic"
    return "openai"


def _error_body(
    family: Family, status: int, error_type: str | None, message: str | None, request_id: str
) -> bytes:
    if family == "gemini":
        return orjson.dumps({"error": {"code": status, "message": message or f"Fake {status}.",
                                       "status": error_type or "INTERNAL"}})
    if family == "ollama":
        return orjson.dumps({"error": message or f"fake error {status}"})
    if family == "anthropic":
        etype = error_type or _ANTHROPIC_ERROR_DEFAULTS.get(status, "api_error")
        return orjson.dumps(
            {
                "type": "error",
                "error": {"type": etype, "message": message or f"Fake {etype} ({status})."},
                "request_id": request_id,
            }
        )
    default_type, default_code, default_msg = _OPENAI_ERROR_DEFAULTS.get(
        status, ("server_error", None, "Fake upstream error.")
    )
    etype = error_type or default_type
    code = _OPENAI_CODES.get(etype, default_code if not error_type else None)
    return orjson.dumps(
        {
            "error": {
                "message": message or default_msg,
                "type": etype,
                "param": None,
                "code": code,
            }
        }
    )


class _Handler:
    """Request handling bound to one controller; one instance per application."""

    def __init__(self, fake: FakeProvider) -> None:
        self.fake = fake

    def _id_headers(self, family: Family, rid: str) -> dict[str, str]:
        own = "request-id" if family == "anthropic" else "x-request-id"
        return {"x-fake-request-id": rid, own: rid}

    def _error(
        self,
        family: Family,
        rid: str,
        status: int,
        error_type: str | None,
        message: str | None = None,
    ) -> web.Response:
        headers = self._id_headers(family, rid)
        headers["Content-Type"] = "application/json"
        if family == "openai" and error_type is None and status == 429:
            headers["x-ratelimit-remaining-requests"] = "0"
        return web.Response(
            status=status,
            body=_error_body(family, status, error_type, message, rid),
            headers=headers,
        )

    def _record(self, request: web.Request, family: Family, rid: str, body: Any) -> ReceivedRequest:
        fake = self.fake
        path = request.path
        fake.counts[path] += 1
        keep = fake.record_requests
        rec = ReceivedRequest(
            request_id=rid,
            method=request.method,
            path=path,
            family=family,
            headers=Headers((k.lower(), v) for k, v in request.headers.items())
            if keep
            else Headers(),
            body=body,
            query=request.rel_url.raw_query_string,
            stream=bool(isinstance(body, dict) and body.get("stream")),
            received_at=time.time() if keep else 0.0,
        )
        if keep:
            fake.requests.append(rec)
        return rec

    def _plan(self, request: web.Request, rid: str, body: dict[str, Any]) -> _Plan:
        fake = self.fake
        prompt = _header_int(request, "x-fake-prompt-tokens")
        if prompt is None:
            prompt = fake.prompt_tokens
        if prompt is None:
            prompt = estimate_prompt_tokens(body)
        chunks = fake.reply_chunks
        n_chunks = _header_int(request, "x-fake-chunks")
        if n_chunks is not None and n_chunks >= 0:
            base = chunks or [" token"]
            chunks = [base[i % len(base)] for i in range(n_chunks)]
        completion = _header_int(request, "x-fake-completion-tokens")
        if completion is None:
            completion = fake.completion_tokens
        if completion is None:
            completion = len(chunks)
        delay_ms = _header_int(request, "x-fake-delay-ms")
        chunk_delay_ms = _header_int(request, "x-fake-chunk-delay-ms")
        first_ms = _header_int(request, "x-fake-first-chunk-delay-ms")
        model = fake.response_model or str(body.get("model") or "fake-model")
        return _Plan(
            rid=rid,
            model=model,
            chunks=chunks,
            prompt=prompt,
            completion=completion,
            cached=fake.cached_tokens,
            creation=fake.cache_creation_tokens,
            reasoning=fake.reasoning_tokens,
            response_delay=fake.response_delay_s if delay_ms is None else delay_ms / 1000,
            first_chunk_delay=fake.first_chunk_delay_s if first_ms is None else first_ms / 1000,
            chunk_delay=fake.chunk_delay_s if chunk_delay_ms is None else chunk_delay_ms / 1000,
            fail_mid_stream=fake.fail_mid_stream,
            fail_after=fake.fail_mid_stream_after,
        )

    def _note_usage(self, rec: ReceivedRequest, plan: _Plan, *, output: bool = True) -> None:
        rec.prompt_tokens = plan.prompt
        rec.completion_tokens = plan.completion if output else 0
        rec.cached_tokens = plan.cached
        rec.cache_creation_tokens = plan.creation
        rec.reasoning_tokens = plan.reasoning if output else 0
        rec.usage_reported = True

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        fake = self.fake
        family = _family_for(request)
        rid = f"req_fake_{next(fake._ids):010d}"
        raw = await request.read() if request.can_read_body else b""
        body: Any = None
        if raw and request.content_type == "multipart/form-data":
            body = _form_body(raw)
        elif raw:
            try:
                body = orjson.loads(raw)
            except orjson.JSONDecodeError:
                rec = self._record(request, family, rid, None)
                rec.status, rec.error_type = 400, "invalid_request_error"
                return self._error(
                    family, rid, 400, "invalid_request_error", "We could not parse the JSON body."
                )
        rec = self._record(request, family, rid, body)

        if fake.require_auth:
            if family == "anthropic":
                ok = bool(request.headers.get("x-api-key") or request.headers.get("authorization"))
            else:
                ok = request.headers.get("authorization", "").startswith("Bearer ")
            if not ok:
                rec.status = 401
                rec.error_type = "authentication_error" if family == "anthropic" else None
                return self._error(family, rid, 401, rec.error_type, "Missing API key.")

        if fake.raw_next:
            answer = fake.raw_next.pop(0)
            rec.status, rec.error_type = answer.status, "raw_answer"
            return await self._raw(request, rec, answer)

        if fake.fail_next:
            status, error_type = fake.fail_next.pop(0)
            rec.status, rec.error_type = status, error_type or None
            if fake.response_delay_s:
                await asyncio.sleep(fake.response_delay_s)
            return self._error(family, rid, status, error_type or None)

        route_path, body = _route_path(request.path, body)
        route = _ROUTES.get((request.method, route_path))
        if route is None:
            if request.method == "GET" and request.path.startswith("/v1/models/"):
                return self._model(request, family, rid)
            rec.status = 404
            rec.error_type = "not_found_error" if family == "anthropic" else "invalid_request_error"
            return self._error(
                family, rid, 404, rec.error_type, f"Unknown route {request.method} {request.path}."
            )
        if request.method == "GET":
            return route(self, request, rid, rec, None)  # type: ignore[return-value]
        if not isinstance(body, dict):
            rec.status, rec.error_type = 400, "invalid_request_error"
            return self._error(
                family, rid, 400, "invalid_request_error", "Body must be a JSON object."
            )
        problem = _validate(route_path, body)
        if problem is not None:
            rec.status, rec.error_type = 400, "invalid_request_error"
            return self._error(family, rid, 400, "invalid_request_error", problem)
        plan = self._plan(request, rid, body)
        if plan.response_delay > 0:
            await asyncio.sleep(plan.response_delay)
        return await route(self, request, rid, rec, plan)  # type: ignore[misc]

    async def _raw(
        self, request: web.Request, rec: ReceivedRequest, answer: RawAnswer
    ) -> web.StreamResponse:
        """Send a :class:`RawAnswer`; aiohttp adds no header of its own but ``Date`` and
        ``Server`` (and chunked framing when no ``Content-Length`` is given)."""
        transport = request.transport
        if answer.raw is not None:
            if transport is not None:
                transport.write(answer.raw)
                transport.close()
            rec.completed = True
            raise web.HTTPException()  # the connection is gone: nothing more is written
        resp = web.StreamResponse(status=answer.status, headers=answer.headers)
        if "Content-Type" not in answer.headers and "content-type" not in answer.headers:
            resp.headers.pop("Content-Type", None)
        try:
            await resp.prepare(request)
            chunks = answer.chunks if answer.chunks is not None else [answer.body]
            for i, chunk in enumerate(chunks):
                if i and answer.chunk_delay_s > 0:
                    await asyncio.sleep(answer.chunk_delay_s)
                if chunk:
                    await resp.write(chunk)
                rec.chunks_sent = i + 1
            if answer.close == "abort":
                self._drop(request, rec)
                return resp
            await resp.write_eof()
            if "Content-Length" in resp.headers and transport is not None:
                transport.close()  # it may lie: end the connection rather than leave it open
        except ConnectionError:
            rec.client_disconnected = True
            return resp
        rec.completed = True
        return resp

    # OpenAI -----------------------------------------------------------------------------

    def _openai_usage(self, plan: _Plan) -> dict[str, Any]:
        details: dict[str, int] = {"cached_tokens": plan.cached, "audio_tokens": 0}
        if plan.creation:
            details["cache_write_tokens"] = plan.creation
        return {
            "prompt_tokens": plan.prompt,
            "completion_tokens": plan.completion,
            "total_tokens": plan.prompt + plan.completion,
            "prompt_tokens_details": details,
            "completion_tokens_details": {
                "reasoning_tokens": plan.reasoning,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        }

    def _json(self, family: Family, rid: str, payload: Any) -> web.Response:
        headers = self._id_headers(family, rid)
        headers["Content-Type"] = "application/json"
        return web.Response(body=orjson.dumps(payload), headers=headers)

    async def _stream_start(
        self, request: web.Request, family: Family, rid: str, content_type: str | None = None
    ) -> web.StreamResponse:
        headers = self._id_headers(family, rid)
        headers.update(_SSE_HEADERS)
        if content_type is not None:  # NDJSON, or a streamed JSON array
            headers["Content-Type"] = content_type
        resp = web.StreamResponse(status=200, headers=headers)
        await resp.prepare(request)
        return resp

    async def _send_stream(
        self,
        request: web.Request,
        family: Family,
        rec: ReceivedRequest,
        plan: _Plan,
        opening: list[bytes],
        deltas: list[bytes],
        closing: list[bytes],
        usage_in_closing: bool,
        content_type: str | None = None,
    ) -> web.StreamResponse:
        """Write opening events, then deltas with delays, then closing events.

        With ``fail_mid_stream`` the connection is dropped after ``fail_after`` deltas,
        leaving the chunked body unterminated as a real upstream failure would.
        """
        resp = await self._stream_start(request, family, plan.rid, content_type)
        try:
            if opening:
                await resp.write(b"".join(opening))
            if plan.first_chunk_delay > 0:
                await asyncio.sleep(plan.first_chunk_delay)
            for i, delta in enumerate(deltas):
                if plan.fail_mid_stream and i >= plan.fail_after:
                    self._drop(request, rec)
                    return resp
                if i and plan.chunk_delay > 0:
                    await asyncio.sleep(plan.chunk_delay)
                await resp.write(delta)
                rec.chunks_sent = i + 1
            if plan.fail_mid_stream:
                self._drop(request, rec)
                return resp
            await resp.write(b"".join(closing))
            await resp.write_eof()
        except ConnectionError:
            rec.client_disconnected = True
            return resp
        except asyncio.CancelledError:
            rec.client_disconnected = True
            raise
        if usage_in_closing:
            self._note_usage(rec, plan)
        else:
            rec.prompt_tokens, rec.completion_tokens = plan.prompt, plan.completion
        rec.completed = True
        return resp

    def _drop(self, request: web.Request, rec: ReceivedRequest) -> None:
        rec.error_type = "dropped_mid_stream"
        transport = request.transport
        if transport is not None:
            transport.abort()

    async def chat_completions(
        self, request: web.Request, rid: str, rec: ReceivedRequest, plan: _Plan
    ) -> web.StreamResponse:
        created = int(time.time())
        cid = f"chatcmpl-{rid}"
        if not rec.stream:
            self._note_usage(rec, plan)
            rec.completed = True
            message: dict[str, Any] = {
                "role": "assistant",
                "content": "".join(plan.chunks),
                "refusal": None,
                "annotations": [],
            }
            finish = "stop"
            if self.fake.tool_call_replies and self.fake.tool_calls:
                self.fake.tool_call_replies -= 1 if self.fake.tool_call_replies > 0 else 0
                message["content"], finish = None, "tool_calls"
                message["tool_calls"] = [
                    {"id": f"call_{rid}_{i}", "type": "function", "function": {
                        "name": c["name"],
                        "arguments": orjson.dumps(c.get("arguments", {})).decode()}}
                    for i, c in enumerate(self.fake.tool_calls)]
            return self._json(
                "openai",
                rid,
                {
                    "id": cid,
                    "object": "chat.completion",
                    "created": created,
                    "model": plan.model,
                    "choices": [
                        {
                            "index": 0,
                            "message": message,
                            "logprobs": None,
                            "finish_reason": finish,
                        }
                    ],
                    "usage": self._openai_usage(plan),
                    "service_tier": "default",
                    "system_fingerprint": "fp_fake",
                },
            )
        include_usage = _include_usage(rec.body)
        head = (
            b'data: {"id":"'
            + cid.encode()
            + b'","object":"chat.completion.chunk","created":'
            + str(created).encode()
            + b',"model":'
            + self.fake._json_str(plan.model)
            + b',"service_tier":"default","system_fingerprint":"fp_fake","choices":['
        )
        tail = b'],"usage":null}\n\n' if include_usage else b"]}\n\n"
        opening = [
            head
            + b'{"index":0,"delta":{"role":"assistant","content":"","refusal":null},'
            + b'"logprobs":null,"finish_reason":null}'
            + tail
        ]
        jstr = self.fake._json_str
        deltas = [
            head
            + b'{"index":0,"delta":{"content":'
            + jstr(c)
            + b'},"logprobs":null,"finish_reason":null}'
            + tail
            for c in plan.chunks
        ]
        closing = [head + b'{"index":0,"delta":{},"logprobs":null,"finish_reason":"stop"}' + tail]
        if include_usage:
            closing.append(head + b'],"usage":' + orjson.dumps(self._openai_usage(plan)) + b"}\n\n")
        closing.append(b"data: [DONE]\n\n")
        return await self._send_stream(
            request, "openai", rec, plan, opening, deltas, closing, include_usage
        )

    async def completions(
        self, request: web.Request, rid: str, rec: ReceivedRequest, plan: _Plan
    ) -> web.StreamResponse:
        created = int(time.time())
        cid = f"cmpl-{rid}"
        if not rec.stream:
            self._note_usage(rec, plan)
            rec.completed = True
            return self._json(
                "openai",
                rid,
                {
                    "id": cid,
                    "object": "text_completion",
                    "created": created,
                    "model": plan.model,
                    "choices": [
                        {
                            "text": "".join(plan.chunks),
                            "index": 0,
                            "logprobs": None,
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": self._openai_usage(plan),
                    "system_fingerprint": "fp_fake",
                },
            )
        include_usage = _include_usage(rec.body)
        head = (
            b'data: {"id":"'
            + cid.encode()
            + b'","object":"text_completion","created":'
            + str(created).encode()
            + b',"model":'
            + self.fake._json_str(plan.model)
            + b',"system_fingerprint":"fp_fake","choices":['
        )
        tail = b'],"usage":null}\n\n' if include_usage else b"]}\n\n"
        jstr = self.fake._json_str
        deltas = [
            head
            + b'{"text":'
            + jstr(c)
            + b',"index":0,"logprobs":null,"finish_reason":null}'
            + tail
            for c in plan.chunks
        ]
        closing = [head + b'{"text":"","index":0,"logprobs":null,"finish_reason":"stop"}' + tail]
        if include_usage:
            closing.append(head + b'],"usage":' + orjson.dumps(self._openai_usage(plan)) + b"}\n\n")
        closing.append(b"data: [DONE]\n\n")
        return await self._send_stream(
            request, "openai", rec, plan, [], deltas, closing, include_usage
        )

    async def embeddings(
        self, request: web.Request, rid: str, rec: ReceivedRequest, plan: _Plan
    ) -> web.StreamResponse:
        body = rec.body
        raw_input = body.get("input")
        if isinstance(raw_input, list) and raw_input and not isinstance(raw_input[0], int):
            n_inputs = len(raw_input)
        else:
            n_inputs = 1
        dims = int(body.get("dimensions") or self.fake.embedding_dims)
        encoding = "base64" if body.get("encoding_format") == "base64" else "float"
        vector = self.fake._embedding(dims, encoding)
        plan.completion = 0
        plan.reasoning = 0
        self._note_usage(rec, plan, output=False)
        rec.completed = True
        return self._json(
            "openai",
            rid,
            {
                "object": "list",
                "data": [
                    {"object": "embedding", "index": i, "embedding": vector}
                    for i in range(n_inputs)
                ],
                "model": plan.model,
                "usage": {"prompt_tokens": plan.prompt, "total_tokens": plan.prompt},
            },
        )

    def _responses_usage(self, plan: _Plan) -> dict[str, Any]:
        return {
            "input_tokens": plan.prompt,
            "input_tokens_details": {
                "cached_tokens": plan.cached,
                "cache_write_tokens": plan.creation,
            },
            "output_tokens": plan.completion,
            "output_tokens_details": {"reasoning_tokens": plan.reasoning},
            "total_tokens": plan.prompt + plan.completion,
        }

    def _response_object(
        self,
        plan: _Plan,
        body: dict[str, Any],
        status: str,
        output: list[dict[str, Any]],
        usage: dict[str, Any] | None,
        created: int,
    ) -> dict[str, Any]:
        return {
            "id": f"resp_{plan.rid}",
            "object": "response",
            "created_at": created,
            "status": status,
            "background": False,
            "error": None,
            "incomplete_details": None,
            "instructions": body.get("instructions"),
            "max_output_tokens": body.get("max_output_tokens"),
            "model": plan.model,
            "output": output,
            "parallel_tool_calls": True,
            "previous_response_id": body.get("previous_response_id"),
            "reasoning": {"effort": None, "summary": None},
            "service_tier": "default",
            "store": True,
            "temperature": 1.0,
            "text": {"format": {"type": "text"}, "verbosity": "medium"},
            "tool_choice": "auto",
            "tools": [],
            "top_p": 1.0,
            "truncation": "disabled",
            "usage": usage,
            "user": None,
            "metadata": {},
        }

    async def responses(
        self, request: web.Request, rid: str, rec: ReceivedRequest, plan: _Plan
    ) -> web.StreamResponse:
        created = int(time.time())
        body = rec.body
        msg_id = f"msg_{rid}"
        text = "".join(plan.chunks)
        part_done = {"type": "output_text", "annotations": [], "logprobs": [], "text": text}
        item_done = {
            "id": msg_id,
            "type": "message",
            "status": "completed",
            "content": [part_done],
            "role": "assistant",
        }
        usage = self._responses_usage(plan)
        done_output = [*_builtin_tool_calls(body, rid), item_done]
        if not rec.stream:
            self._note_usage(rec, plan)
            rec.completed = True
            return self._json(
                "openai",
                rid,
                self._response_object(plan, body, "completed", done_output, usage, created),
            )
        seq = itertools.count()

        def event(name: str, payload: dict[str, Any]) -> bytes:
            payload = {"type": name, "sequence_number": next(seq), **payload}
            return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"

        in_progress = self._response_object(plan, body, "in_progress", [], None, created)
        opening = [
            event("response.created", {"response": in_progress}),
            event("response.in_progress", {"response": in_progress}),
            event(
                "response.output_item.added",
                {
                    "output_index": 0,
                    "item": {
                        "id": msg_id,
                        "type": "message",
                        "status": "in_progress",
                        "content": [],
                        "role": "assistant",
                    },
                },
            ),
            event(
                "response.content_part.added",
                {
                    "item_id": msg_id,
                    "output_index": 0,
                    "content_index": 0,
                    "part": {"type": "output_text", "annotations": [], "logprobs": [], "text": ""},
                },
            ),
        ]
        delta_head = (
            b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta"'
        )
        delta_mid = (
            b',"item_id":"' + msg_id.encode() + b'","output_index":0,"content_index":0,"delta":'
        )
        jstr = self.fake._json_str
        deltas = [
            delta_head
            + b',"sequence_number":'
            + str(next(seq)).encode()
            + delta_mid
            + jstr(c)
            + b',"logprobs":[]}\n\n'
            for c in plan.chunks
        ]
        closing = [
            event(
                "response.output_text.done",
                {
                    "item_id": msg_id,
                    "output_index": 0,
                    "content_index": 0,
                    "text": text,
                    "logprobs": [],
                },
            ),
            event(
                "response.content_part.done",
                {"item_id": msg_id, "output_index": 0, "content_index": 0, "part": part_done},
            ),
            event("response.output_item.done", {"output_index": 0, "item": item_done}),
            event(
                "response.completed",
                {
                    "response": self._response_object(
                        plan, body, "completed", done_output, usage, created
                    )
                },
            ),
        ]
        return await self._send_stream(request, "openai", rec, plan, opening, deltas, closing, True)

    def models(
        self, request: web.Request, rid: str, rec: ReceivedRequest, plan: _Plan | None
    ) -> web.Response:
        family = _family_for(request)
        rec.completed = True
        headers = self._id_headers(family, rid)
        headers["Content-Type"] = "application/json"
        payload = _ANTHROPIC_MODELS_BODY if family == "anthropic" else _OPENAI_MODELS_BODY
        return web.Response(body=payload, headers=headers)

    def _model(self, request: web.Request, family: Family, rid: str) -> web.Response:
        model_id = request.path.rsplit("/", 1)[-1]
        if family == "anthropic":
            payload: dict[str, Any] = {
                "type": "model",
                "id": model_id,
                "display_name": model_id,
                "created_at": "2025-01-01T00:00:00Z",
            }
        else:
            payload = {"id": model_id, "object": "model", "created": 1700000000, "owned_by": "fake"}
        return self._json(family, rid, payload)

    # Anthropic --------------------------------------------------------------------------

    def _anthropic_usage(self, plan: _Plan, output_tokens: int) -> dict[str, Any]:
        return {
            "input_tokens": plan.prompt,
            "cache_creation_input_tokens": plan.creation,
            "cache_read_input_tokens": plan.cached,
            "output_tokens": output_tokens,
            "service_tier": "standard",
        }

    async def messages(
        self, request: web.Request, rid: str, rec: ReceivedRequest, plan: _Plan
    ) -> web.StreamResponse:
        msg_id = f"msg_{rid}"
        plan.reasoning = 0
        if not rec.stream:
            self._note_usage(rec, plan)
            rec.completed = True
            return self._json(
                "anthropic",
                rid,
                {
                    "id": msg_id,
                    "type": "message",
                    "role": "assistant",
                    "model": plan.model,
                    "content": [{"type": "text", "text": "".join(plan.chunks)}],
                    "stop_reason": "end_turn",
                    "stop_sequence": None,
                    "usage": self._anthropic_usage(plan, plan.completion),
                },
            )
        start_message: dict[str, Any] = {
            "id": msg_id,
            "type": "message",
            "role": "assistant",
            "model": plan.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": self._anthropic_usage(plan, min(1, plan.completion)),
        }
        opening = [
            b"event: message_start\ndata: "
            + orjson.dumps({"type": "message_start", "message": start_message})
            + b"\n\n",
            b'event: content_block_start\ndata: {"type":"content_block_start","index":0,'
            b'"content_block":{"type":"text","text":""}}\n\n',
            b'event: ping\ndata: {"type": "ping"}\n\n',
        ]
        jstr = self.fake._json_str
        deltas = [
            b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
            b'"delta":{"type":"text_delta","text":' + jstr(c) + b"}}\n\n"
            for c in plan.chunks
        ]
        delta_usage: dict[str, Any] = {"output_tokens": plan.completion}
        if self.fake.anthropic_delta_full_usage:
            delta_usage = {
                "input_tokens": plan.prompt,
                "cache_creation_input_tokens": plan.creation,
                "cache_read_input_tokens": plan.cached,
                "output_tokens": plan.completion,
            }
        closing = [
            b'event: content_block_stop\ndata: {"type":"content_block_stop","index":0}\n\n',
            b"event: message_delta\ndata: "
            + orjson.dumps(
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                    "usage": delta_usage,
                }
            )
            + b"\n\n",
            b'event: message_stop\ndata: {"type":"message_stop"}\n\n',
        ]
        return await self._send_stream(
            request, "anthropic", rec, plan, opening, deltas, closing, True
        )

    # images and audio -------------------------------------------------------------------

    async def images(
        self, request: web.Request, rid: str, rec: ReceivedRequest, plan: _Plan
    ) -> web.StreamResponse:
        """``n`` images (as URLs); gpt-image models also report token usage (``prompt``
        input tokens, ``completion`` image tokens)."""
        n = rec.body.get("n")
        n = n if isinstance(n, int) and not isinstance(n, bool) and 1 <= n <= 10 else 1
        answer: dict[str, Any] = {"created": int(time.time()), "data": [
            {"url": f"https://fake.invalid/{rid}/{i}.png"} for i in range(n)]}
        if plan.model.startswith("gpt-image"):
            answer["usage"] = {
                "input_tokens": plan.prompt, "output_tokens": plan.completion,
                "total_tokens": plan.prompt + plan.completion,
                "input_tokens_details": {"text_tokens": plan.prompt, "image_tokens": 0}}
            self._note_usage(rec, plan)
        rec.completed = True
        return self._json("openai", rid, answer)

    async def speech(
        self, request: web.Request, rid: str, rec: ReceivedRequest, plan: _Plan
    ) -> web.StreamResponse:
        rec.completed = True
        headers = self._id_headers("openai", rid)
        return web.Response(body=b"ID3fake-mp3-audio", headers=headers, content_type="audio/mpeg")

    async def transcription(
        self, request: web.Request, rid: str, rec: ReceivedRequest, plan: _Plan
    ) -> web.StreamResponse:
        """The text, in the asked ``response_format``; ``verbose_json`` reports ``duration``
        (the knob, else the uploaded WAV file's length)."""
        text = "".join(plan.chunks)
        duration = self.fake.audio_duration_s
        if duration is None:
            duration = rec.body.get("file_seconds") or 0.0
        rec.completed = True
        fmt = rec.body.get("response_format") or "json"
        if fmt == "verbose_json":
            return self._json("openai", rid, {"task": "transcribe", "language": "english",
                                              "duration": duration, "text": text})
        if fmt in ("text", "srt", "vtt"):
            return web.Response(text=text, headers=self._id_headers("openai", rid))
        return self._json("openai", rid, {"text": text})

    # Gemini -----------------------------------------------------------------------------

    def _gemini_usage(self, plan: _Plan, candidates: int) -> dict[str, Any]:
        """``cached`` is a part of the prompt; ``reasoning`` counts as thoughts, billed as
        output beside the candidates."""
        usage = {"promptTokenCount": plan.prompt, "candidatesTokenCount": candidates,
                 "totalTokenCount": plan.prompt + candidates + plan.reasoning}
        if plan.cached:
            usage["cachedContentTokenCount"] = plan.cached
        if plan.reasoning:
            usage["thoughtsTokenCount"] = plan.reasoning
        return usage

    def _gemini_chunk(self, plan: _Plan, text: str, usage: dict[str, Any],
                      finish: bool) -> dict[str, Any]:
        candidate: dict[str, Any] = {"content": {"parts": [{"text": text}], "role": "model"},
                                     "index": 0}
        if finish:
            candidate["finishReason"] = "STOP"
        return {"candidates": [candidate], "usageMetadata": usage,
                "modelVersion": plan.model, "responseId": plan.rid}

    async def gemini_generate(
        self, request: web.Request, rid: str, rec: ReceivedRequest, plan: _Plan
    ) -> web.StreamResponse:
        rec.stream = False
        self._note_usage(rec, plan)
        rec.completed = True
        return self._json("gemini", rid, self._gemini_chunk(
            plan, "".join(plan.chunks), self._gemini_usage(plan, plan.completion), True))

    async def gemini_stream(
        self, request: web.Request, rid: str, rec: ReceivedRequest, plan: _Plan
    ) -> web.StreamResponse:
        """Each chunk carries the usage so far (the prompt, and the candidates streamed); the
        last one the final figures and ``finishReason``."""
        rec.stream = True
        sse = request.query.get("alt") == "sse"
        last = len(plan.chunks) - 1
        events = []
        for i, text in enumerate(plan.chunks):
            done = i == last
            usage = self._gemini_usage(plan, plan.completion if done else i + 1)
            if not done:
                usage.pop("thoughtsTokenCount", None)
            events.append(orjson.dumps(self._gemini_chunk(plan, text, usage, done)))
        if sse:
            deltas = [b"data: " + e + b"\r\n\r\n" for e in events]
            opening: list[bytes] = []
            closing: list[bytes] = []
        else:
            deltas = [(b"[" if i == 0 else b"\n,\r\n") + e for i, e in enumerate(events)]
            opening, closing = [], [b"\n]"]
        resp = await self._send_stream(request, "gemini", rec, plan, opening, deltas, closing,
                                       True, content_type=None if sse else "application/json")
        return resp

    async def gemini_count_tokens(
        self, request: web.Request, rid: str, rec: ReceivedRequest, plan: _Plan
    ) -> web.StreamResponse:
        rec.prompt_tokens = plan.prompt
        rec.completed = True
        return self._json("gemini", rid, {"totalTokens": plan.prompt})

    # Ollama -----------------------------------------------------------------------------

    def _ollama_done(self, plan: _Plan, reply: dict[str, Any]) -> dict[str, Any]:
        return {"model": plan.model, "created_at": "2026-01-01T00:00:00Z", **reply,
                "done": True, "done_reason": "stop", "total_duration": 1000,
                "load_duration": 10, "prompt_eval_count": plan.prompt,
                "prompt_eval_duration": 100, "eval_count": plan.completion,
                "eval_duration": 500}

    async def _ollama(
        self, request: web.Request, rec: ReceivedRequest, plan: _Plan, chat: bool
    ) -> web.StreamResponse:
        def reply(text: str) -> dict[str, Any]:
            if chat:
                return {"message": {"role": "assistant", "content": text}}
            return {"response": text}

        rec.stream = rec.body.get("stream") is not False
        if not rec.stream:
            self._note_usage(rec, plan)
            rec.completed = True
            return self._json("ollama", plan.rid,
                              self._ollama_done(plan, reply("".join(plan.chunks))))
        deltas = [orjson.dumps({"model": plan.model, "created_at": "2026-01-01T00:00:00Z",
                                **reply(text), "done": False}) + b"\n" for text in plan.chunks]
        closing = [orjson.dumps(self._ollama_done(plan, reply(""))) + b"\n"]
        return await self._send_stream(request, "ollama", rec, plan, [], deltas, closing, True,
                                       content_type="application/x-ndjson")

    async def ollama_chat(
        self, request: web.Request, rid: str, rec: ReceivedRequest, plan: _Plan
    ) -> web.StreamResponse:
        return await self._ollama(request, rec, plan, chat=True)

    async def ollama_generate(
        self, request: web.Request, rid: str, rec: ReceivedRequest, plan: _Plan
    ) -> web.StreamResponse:
        return await self._ollama(request, rec, plan, chat=False)

    async def ollama_embed(
        self, request: web.Request, rid: str, rec: ReceivedRequest, plan: _Plan
    ) -> web.StreamResponse:
        raw_input = rec.body.get("input")
        n_inputs = len(raw_input) if isinstance(raw_input, list) else 1
        plan.completion = plan.reasoning = 0
        self._note_usage(rec, plan, output=False)
        rec.completed = True
        vector = [round(((i * 37) % 101) / 101.0 - 0.5, 6) for i in range(self.fake.embedding_dims)]
        return self._json("ollama", rid, {"model": plan.model, "embeddings": [vector] * n_inputs,
                                          "total_duration": 1000, "prompt_eval_count": plan.prompt})

    def ollama_tags(
        self, request: web.Request, rid: str, rec: ReceivedRequest, plan: _Plan | None
    ) -> web.Response:
        return self._json("ollama", rid, {"models": [
            {"name": "llama3.2:3b", "model": "llama3.2:3b", "size": 2019393189}]})

    async def count_tokens(
        self, request: web.Request, rid: str, rec: ReceivedRequest, plan: _Plan
    ) -> web.StreamResponse:
        rec.prompt_tokens = plan.prompt
        rec.usage_reported = True
        rec.completed = True
        return self._json("anthropic", rid, {"input_tokens": plan.prompt})


def _include_usage(body: dict[str, Any]) -> bool:
    opts = body.get("stream_options")
    return isinstance(opts, dict) and bool(opts.get("include_usage"))


def _builtin_tool_calls(body: dict[str, Any], rid: str) -> list[dict[str, Any]]:
    """One call of each built-in search tool a Responses request enables, as output items."""
    items: list[dict[str, Any]] = []
    for i, tool in enumerate(body.get("tools") or []):
        kind = tool.get("type") if isinstance(tool, dict) else None
        if isinstance(kind, str) and kind.startswith("web_search"):
            items.append({"id": f"ws_{rid}_{i}", "type": "web_search_call",
                          "status": "completed", "action": {"type": "search", "query": "q"}})
        elif kind == "file_search":
            items.append({"id": f"fs_{rid}_{i}", "type": "file_search_call",
                          "status": "completed", "queries": ["q"], "results": None})
    return items


def _form_body(raw: bytes) -> dict[str, Any]:
    """A multipart form as a body: its text fields, and ``file_size`` and ``file_seconds``
    (the length of a WAV upload, else None) for an uploaded file (``file`` or ``image``)."""
    from budget_proxy.providers.media import form_fields

    body: dict[str, Any] = {}
    for name, value in form_fields(raw).items():
        if name in ("file", "image", "image[]", "mask"):
            body.setdefault("file_size", len(value))
            body.setdefault("file_seconds", _wav_seconds(value))
        else:
            body[name] = value.decode("utf-8", "replace")
    if isinstance(body.get("n"), str) and body["n"].isdigit():
        body["n"] = int(body["n"])
    return body


def _wav_seconds(data: bytes) -> float | None:
    from budget_proxy.providers.media import wav_ms

    found = wav_ms(data)
    return None if found is None else found / 1000


def _route_path(path: str, body: Any) -> tuple[str, Any]:
    """The route a path is served by, and the body as that route reads it: an Azure
    deployment's path is OpenAI's (the deployment is the model), a Gemini model's method is
    one route whatever the model (named in the path)."""
    if path.startswith("/openai/deployments/"):
        deployment, _, rest = path[len("/openai/deployments/"):].partition("/")
        if isinstance(body, dict) and not body.get("model"):
            body = {**body, "model": deployment}
        return f"/v1/{rest}", body
    if path.startswith("/openai/v1/"):
        return path[len("/openai"):], body
    if path.startswith("/v1beta/models/") and ":" in path:
        model, _, method = path[len("/v1beta/models/"):].partition(":")
        if isinstance(body, dict):
            body = {**body, "model": model}
        return f"/v1beta/models/*:{method}", body
    return path, body


def _validate(path: str, body: dict[str, Any]) -> str | None:
    if not body.get("model") and not path.startswith("/v1/images/"):
        return "you must provide a model parameter"
    if path == "/v1/chat/completions" and not isinstance(body.get("messages"), list):
        return "'messages' is a required property"
    if path.startswith("/v1/messages"):
        if not isinstance(body.get("messages"), list):
            return "messages: Field required"
        if path == "/v1/messages" and not isinstance(body.get("max_tokens"), int):
            return "max_tokens: Field required"
    if path == "/v1/embeddings" and body.get("input") in (None, "", []):
        return "'input' is a required property"
    return None


_ROUTES: dict[tuple[str, str], Any] = {
    ("POST", "/v1/chat/completions"): _Handler.chat_completions,
    ("POST", "/v1/completions"): _Handler.completions,
    ("POST", "/v1/embeddings"): _Handler.embeddings,
    ("POST", "/v1/responses"): _Handler.responses,
    ("POST", "/v1/messages"): _Handler.messages,
    ("POST", "/v1/messages/count_tokens"): _Handler.count_tokens,
    ("GET", "/v1/models"): _Handler.models,
    ("POST", "/v1/images/generations"): _Handler.images,
    ("POST", "/v1/images/edits"): _Handler.images,
    ("POST", "/v1/images/variations"): _Handler.images,
    ("POST", "/v1/audio/speech"): _Handler.speech,
    ("POST", "/v1/audio/transcriptions"): _Handler.transcription,
    ("POST", "/v1/audio/translations"): _Handler.transcription,
    ("POST", "/v1beta/models/*:generateContent"): _Handler.gemini_generate,
    ("POST", "/v1beta/models/*:streamGenerateContent"): _Handler.gemini_stream,
    ("POST", "/v1beta/models/*:countTokens"): _Handler.gemini_count_tokens,
    ("POST", "/api/chat"): _Handler.ollama_chat,
    ("POST", "/api/generate"): _Handler.ollama_generate,
    ("POST", "/api/embed"): _Handler.ollama_embed,
    ("GET", "/api/tags"): _Handler.ollama_tags,
}

_MODEL_IDS = (
    "gpt-4o",
    "gpt-4o-mini",
    "gpt-4.1",
    "gpt-4.1-mini",
    "o3-mini",
    "text-embedding-3-small",
    "gpt-3.5-turbo-instruct",
)
_OPENAI_MODELS_BODY = orjson.dumps(
    {
        "object": "list",
        "data": [
            {"id": m, "object": "model", "created": 1700000000, "owned_by": "openai"}
            for m in _MODEL_IDS
        ],
    }
)
_ANTHROPIC_MODEL_IDS = ("claude-sonnet-4-5", "claude-haiku-4-5", "claude-opus-4-1")
_ANTHROPIC_MODELS_BODY = orjson.dumps(
    {
        "data": [
            {
                "type": "model",
                "id": m,
                "display_name": m,
                "created_at": "2025-01-01T00:00:00Z",
            }
            for m in _ANTHROPIC_MODEL_IDS
        ],
        "has_more": False,
        "first_id": _ANTHROPIC_MODEL_IDS[0],
        "last_id": _ANTHROPIC_MODEL_IDS[-1],
    }
)


def _control_routes(fake: FakeProvider) -> list[web.RouteDef]:
    """HTTP control plane so a fake running in another process can be steered and read."""

    async def config(request: web.Request) -> web.Response:
        try:
            knobs = orjson.loads(await request.read() or b"{}")
            fake.configure(**knobs)
        except (ValueError, TypeError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response({name: getattr(fake, name) for name in _KNOBS})

    async def reset(request: web.Request) -> web.Response:
        fake.reset()
        return web.json_response({"ok": True})

    async def requests_log(request: web.Request) -> web.Response:
        body = orjson.dumps([asdict(r) for r in fake.requests])
        return web.Response(body=body, content_type="application/json")

    async def stats(request: web.Request) -> web.Response:
        return web.json_response({"counts": dict(fake.counts), "total": sum(fake.counts.values())})

    async def health(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    return [
        web.post("/_fake/config", config),
        web.post("/_fake/reset", reset),
        web.get("/_fake/requests", requests_log),
        web.get("/_fake/stats", stats),
        web.get("/_fake/health", health),
    ]


def create_app(fake: FakeProvider | None = None) -> web.Application:
    """Build the fake upstream application; a fresh controller is made when none is given."""
    fake = fake if fake is not None else FakeProvider()
    handler = _Handler(fake)
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app[FAKE_KEY] = fake
    app.add_routes(_control_routes(fake))
    app.router.add_route("*", "/{tail:.*}", handler.dispatch)
    return app


def main(argv: list[str] | None = None) -> None:
    """CLI entry point: serve the fake on a TCP port until interrupted."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8900, help="0 picks a free port")
    parser.add_argument("--access-log", action="store_true", help="log every request")
    parser.add_argument("--quiet", action="store_true", help="no access log (the default)")
    parser.add_argument("--record", action="store_true", help="keep a log of every request")
    parser.add_argument("--chunks", type=int, help="number of streamed chunks per reply")
    parser.add_argument("--chunk-delay-ms", type=float, default=0.0)
    parser.add_argument("--first-chunk-delay-ms", type=float, default=0.0)
    parser.add_argument("--delay-ms", type=float, default=0.0, help="delay before responding")
    parser.add_argument("--prompt-tokens", type=int)
    parser.add_argument("--completion-tokens", type=int)
    parser.add_argument(
        "--no-uvloop", action="store_true", help="use asyncio even if uvloop is there"
    )
    args = parser.parse_args(argv)

    chunks = _default_chunks()
    if args.chunks is not None:
        chunks = [chunks[i % len(chunks)] for i in range(args.chunks)]
    fake = FakeProvider(
        reply_chunks=chunks,
        prompt_tokens=args.prompt_tokens,
        completion_tokens=args.completion_tokens,
        chunk_delay_s=args.chunk_delay_ms / 1000,
        first_chunk_delay_s=args.first_chunk_delay_ms / 1000,
        response_delay_s=args.delay_ms / 1000,
        record_requests=args.record,
    )

    if not args.no_uvloop:
        with contextlib.suppress(ImportError):
            import uvloop  # type: ignore[import-not-found]

            asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())

    async def run() -> None:
        runner = web.AppRunner(
            fake.app(), access_log=web.access_logger if args.access_log else None
        )
        await runner.setup()
        site = web.TCPSite(runner, args.host, args.port, backlog=1024, reuse_address=True)
        await site.start()
        host, port = runner.addresses[0][:2]
        gc.freeze()
        print(f"fake-provider listening on http://{host}:{port} pid={os.getpid()}", flush=True)
        try:
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run())


if __name__ == "__main__":
    main()

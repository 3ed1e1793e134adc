"""Provider wire formats: error envelopes, SSE parsing, usage taps (routes: `routing`).

Everything here is pure (bytes and dicts in, bytes and dicts out) so each provider shape is
tested without sockets. SSE parsing keeps partial events across network chunks: one event may
arrive in many reads and one read may carry many events.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from budget_proxy.usage import Usage, from_anthropic, from_gemini, from_openai

# default max output when neither the request nor the catalog says (completions' API default)
DEFAULT_MAX_OUTPUT_TOKENS = 4096


def requested_max_output(endpoint: str, body: dict[str, Any]) -> int | None:
    """The output cap the request itself sets, if any."""
    if endpoint == "embeddings":
        return 0
    if endpoint == "chat.completions":
        keys: tuple[str, ...] = ("max_completion_tokens", "max_tokens")
    elif endpoint == "responses":
        keys = ("max_output_tokens",)
    elif endpoint == "gemini":
        config = body.get("generationConfig") or {}
        value = config.get("maxOutputTokens")
        return value if isinstance(value, int) and value >= 0 else None
    else:  # completions, messages
        keys = ("max_tokens",)
    for key in keys:
        value = body.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            n = body.get("n")
            return value * n if endpoint != "messages" and isinstance(n, int) and n > 1 else value
    return None


def is_streaming(endpoint: str, body: dict[str, Any], path: str) -> bool:
    if endpoint == "gemini":
        return path.endswith(":streamGenerateContent")
    return body.get("stream") is True


def error_body(api: str, status: int, message: str, *, code: str | None = None) -> bytes:
    """An error in the caller's provider format, so its SDK raises its usual exception."""
    if api == "anthropic":
        kind = {
            400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
            404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error",
            503: "overloaded_error", 529: "overloaded_error",
        }.get(status, "api_error")
        return orjson.dumps({"type": "error", "error": {"type": kind, "message": message}})
    if api == "gemini":
        return orjson.dumps({"error": {"code": status, "message": message,
                                       "status": _GEMINI_STATUS.get(status, "INTERNAL")}})
    kind = {
        400: "invalid_request_error", 401: "invalid_request_error", 404: "invalid_request_error",
        413: "invalid_request_error", 429: "insufficient_quota", 503: "service_unavailable",
    }.get(status, "server_error")
    return orjson.dumps({"error": {"message": message, "type": kind, "param": None, "code": code}})


_GEMINI_STATUS = {400: "INVALID_ARGUMENT", 404: "NOT_FOUND", 413: "INVALID_ARGUMENT",
                  429: "RESOURCE_EXHAUSTED", 503: "UNAVAILABLE"}


class SSEParser:
    """Splits a byte stream into complete SSE events, keeping a partial tail between feeds."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, chunk: bytes) -> list[bytes]:
        """Complete raw events (each with its trailing blank line) found so far."""
        data = self._buf + chunk if self._buf else chunk
        if b"\r" in data:
            data = data.replace(b"\r\n", b"\n")
        events = data.split(b"\n\n")
        self._buf = events.pop()
        return [event + b"\n\n" for event in events if event]

    def flush(self) -> bytes:
        rest, self._buf = self._buf, b""
        return rest


def event_data(event: bytes) -> tuple[str | None, bytes]:
    """The `event:` name and the joined `data:` payload of one raw SSE event."""
    name = None
    data: list[bytes] = []
    for line in event.split(b"\n"):
        if line.startswith(b"data:"):
            data.append(line[5:].lstrip(b" "))
        elif line.startswith(b"event:"):
            name = line[6:].strip().decode()
    return name, b"\n".join(data)


@dataclass(slots=True)
class UsageTap:
    """Reads usage (and streamed text, for settling a cut-short stream) from one answer."""

    api: str
    endpoint: str
    strip_usage_chunk: bool = False  # hide the usage-only chunk the proxy asked for
    usage: Usage | None = None
    model: str | None = None
    text_parts: list[str] = field(default_factory=list)
    anthropic_start: dict[str, Any] | None = None
    anthropic_output_tokens: int | None = None

    def observe_json(self, body: dict[str, Any]) -> None:
        """A complete (non-streamed) answer."""
        if self.api == "anthropic":
            usage = body.get("usage")
            if isinstance(usage, dict):
                self.usage = from_anthropic(usage)
        elif self.api == "gemini":
            meta = body.get("usageMetadata")
            if isinstance(meta, dict):
                self.usage = from_gemini(meta)
        else:
            usage = body.get("usage")
            if isinstance(usage, dict):
                self.usage = from_openai(usage)
        model = body.get("model") or body.get("modelVersion")
        if isinstance(model, str):
            self.model = model

    def observe_event(self, event: bytes) -> bool:
        """Read one SSE event; False if it must not be forwarded to the client."""
        name, data = event_data(event)
        if not data or data == b"[DONE]":
            return True
        try:
            payload = orjson.loads(data)
        except orjson.JSONDecodeError:
            return True
        if not isinstance(payload, dict):
            return True
        if self.api == "anthropic":
            self._anthropic(payload)
            return True
        if self.api == "gemini":
            self.observe_json(payload)
            for cand in payload.get("candidates") or ():
                for part in (cand.get("content") or {}).get("parts") or ():
                    if isinstance(part.get("text"), str):
                        self.text_parts.append(part["text"])
            return True
        if self.endpoint == "responses":
            self._responses(name or payload.get("type"), payload)
            return True
        return self._openai_chunk(payload)

    def _openai_chunk(self, payload: dict[str, Any]) -> bool:
        if isinstance(payload.get("model"), str):
            self.model = payload["model"]
        for choice in payload.get("choices") or ():
            delta = choice.get("delta")
            if isinstance(delta, dict):
                content = delta.get("content")
                if isinstance(content, str):
                    self.text_parts.append(content)
                for call in delta.get("tool_calls") or ():
                    args = (call.get("function") or {}).get("arguments")
                    if isinstance(args, str):
                        self.text_parts.append(args)
            elif isinstance(choice.get("text"), str):
                self.text_parts.append(choice["text"])
        usage = payload.get("usage")
        if isinstance(usage, dict):
            self.usage = from_openai(usage)
            if self.strip_usage_chunk and not payload.get("choices"):
                return False
        return True

    def _responses(self, kind: str | None, payload: dict[str, Any]) -> None:
        if kind == "response.output_text.delta" and isinstance(payload.get("delta"), str):
            self.text_parts.append(payload["delta"])
        elif kind in ("response.completed", "response.incomplete", "response.failed"):
            response = payload.get("response") or {}
            if isinstance(response.get("usage"), dict):
                self.usage = from_openai(response["usage"])
            if isinstance(response.get("model"), str):
                self.model = response["model"]

    def _anthropic(self, payload: dict[str, Any]) -> None:
        kind = payload.get("type")
        if kind == "message_start":
            message = payload.get("message") or {}
            self.anthropic_start = message.get("usage") or {}
            if isinstance(message.get("model"), str):
                self.model = message["model"]
        elif kind == "content_block_delta":
            delta = payload.get("delta") or {}
            for key in ("text", "partial_json", "thinking"):
                if isinstance(delta.get(key), str):
                    self.text_parts.append(delta[key])
        elif kind == "message_delta":
            usage = payload.get("usage") or {}
            if isinstance(usage.get("output_tokens"), int):
                self.anthropic_output_tokens = usage["output_tokens"]
        if self.anthropic_start is not None and kind in ("message_delta", "message_stop"):
            merged = {**self.anthropic_start, **_cache_fields(payload.get("usage") or {})}
            self.usage = from_anthropic(merged, self.anthropic_output_tokens)

    def streamed_text(self) -> str:
        return "".join(self.text_parts)


def _cache_fields(usage: dict[str, Any]) -> dict[str, Any]:
    """Fields of a `message_delta` usage that update the `message_start` figures."""
    return {k: v for k, v in usage.items() if k != "output_tokens" and isinstance(v, int)}

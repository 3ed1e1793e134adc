"""Provider wire formats: error envelopes, SSE parsing, usage taps (routes: `routing`).

Everything here is pure (bytes and dicts in, bytes and dicts out) so each provider shape is
tested without sockets. SSE parsing keeps partial events across network chunks: one event may
arrive in many reads and one read may carry many events.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Any

import orjson

from budget_proxy.usage import (
    UNPARSEABLE_USAGE,
    Usage,
    clamp_count,
    from_anthropic,
    from_gemini,
    from_openai,
    merge_flags,
)

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
    """Splits a byte stream into raw SSE events, keeping a partial tail between feeds.

    Lines end in LF, CR or CRLF (the SSE spec allows all three, mixed); an event ends at a
    blank line. Events come back byte for byte as received (line endings included), so
    relaying every event relays the stream unchanged; blank lines between events come back
    as events of their own. A CR that ends a read ends its line at once; when the next read
    starts with an LF, that LF is the rest of the same CRLF (relayed at the head of the
    next event, never read as a blank line). Scanning resumes where the last read stopped,
    so a huge event arriving in many reads costs linear time.
    """

    __slots__ = ("_after_cr", "_buf", "_cr", "_line")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._cr = False  # a CR was seen: events are found line by line from now on
        self._line = 0  # start of the current (unterminated) line in _buf, in CR mode
        self._after_cr = False  # the last read ended in a CR

    def feed(self, chunk: bytes) -> list[bytes]:
        """Complete raw events found so far."""
        buf = self._buf
        if not buf and not self._cr and b"\r" not in chunk:  # the common case: LF only
            parts = chunk.split(b"\n\n")
            buf += parts.pop()
            return [part + b"\n\n" for part in parts]
        resume = len(buf)
        buf += chunk
        if not self._cr and b"\r" in chunk:
            self._cr = True
            self._line = 0
        if self._cr:
            return self._by_lines()
        events: list[bytes] = []
        start = 0
        end = buf.find(b"\n\n", max(0, resume - 1))
        while end >= 0:
            events.append(bytes(buf[start:end + 2]))
            start = end + 2
            end = buf.find(b"\n\n", start)
        del buf[:start]
        return events

    def _by_lines(self) -> list[bytes]:
        buf = self._buf
        size = len(buf)
        events: list[bytes] = []
        start = 0  # start of the current event
        line = self._line
        if self._after_cr and line < size:
            self._after_cr = False
            if buf[line] == 0x0A:  # the LF of a CRLF split between two reads
                line += 1
        while line < size:
            cr = buf.find(b"\r", line)
            lf = buf.find(b"\n", line)
            if cr < 0 and lf < 0:
                break
            if cr < 0 or 0 <= lf < cr:
                end = lf + 1
                at = lf
            else:
                at = cr
                if cr + 1 == size:  # maybe half a CRLF: the next read tells
                    end = size
                    self._after_cr = True
                else:
                    end = cr + 2 if buf[cr + 1] == 0x0A else cr + 1
            if at == line:  # a blank line ends the event
                events.append(bytes(buf[start:end]))
                start = end
            line = end
        del buf[:start]
        self._line = line - start
        return events

    def flush(self) -> bytes:
        """Whatever the stream ended with that no blank line closed."""
        rest = bytes(self._buf)
        self._buf.clear()
        self._line = 0
        self._after_cr = False
        return rest


def event_data(event: bytes) -> tuple[str | None, bytes]:
    """The `event:` name and the joined `data:` payload of one raw SSE event (any line
    ending)."""
    if b"\r" in event:
        event = event.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    name = None
    data: list[bytes] = []
    for line in event.split(b"\n"):
        if line.startswith(b"data:"):
            data.append(line[5:].removeprefix(b" "))
        elif line.startswith(b"event:"):
            name = line[6:].strip().decode("utf-8", "replace")
    return name, b"\n".join(data)


def loads_answer(raw: bytes) -> Any:
    """A JSON value from a provider's bytes, or None. Numbers orjson refuses (`1e400`) are
    read by the standard library so they can be clamped and flagged; deep nesting, bad UTF-8
    or non-JSON read as None. Never raises."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        return None


# keys whose string values are generated text, in every provider's answer shape (OpenAI chat
# `content`/`refusal`/`arguments`, completions and Anthropic `text`, Anthropic `thinking`,
# Gemini parts' `text`, Responses output items)
_TEXT_KEYS = frozenset({"content", "text", "refusal", "arguments", "thinking", "partial_json"})
_TEXT_WALK_MAX_NODES = 100_000  # bound the walk over a hostile answer


def answer_text(answer: Any) -> str:
    """The generated text found anywhere in a non-streamed answer, for counting its output
    when its usage is unusable. Iterative (a deeply nested answer cannot overflow the stack)
    and bounded."""
    parts: list[str] = []
    stack: list[Any] = [answer]
    seen = 0
    while stack and seen < _TEXT_WALK_MAX_NODES:
        node = stack.pop()
        seen += 1
        if isinstance(node, dict):
            for key, value in node.items():
                if isinstance(value, str):
                    if key in _TEXT_KEYS:
                        parts.append(value)
                elif isinstance(value, dict | list) and key not in ("usage", "usageMetadata"):
                    stack.append(value)
        elif isinstance(node, list):
            stack.extend(reversed(node))
    return "".join(parts)


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


@dataclass(slots=True)
class UsageTap:
    """Reads usage (and the generated text, for settling a call whose usage is missing or
    unusable) from one answer.

    Total: any bytes and any JSON shape in, never an exception out; a wrong type anywhere is
    skipped (text) or clamped and flagged (usage, see `budget_proxy.usage`).
    """

    api: str
    endpoint: str
    strip_usage_chunk: bool = False  # hide the usage-only chunk the proxy asked for
    usage: Usage | None = None
    model: str | None = None
    text_parts: list[str] = field(default_factory=list)
    answer: Any = None  # a non-streamed answer, read for its text only when needed
    anthropic_start: Any = None  # `message_start` usage, as sent
    anthropic_delta: dict[str, Any] = field(default_factory=dict)  # last `message_delta` usage

    def observe_answer(self, raw: bytes) -> None:
        """A complete (non-streamed) answer, as bytes."""
        answer = loads_answer(raw)
        self.answer = answer
        if isinstance(answer, dict):
            self.observe_json(answer)

    def observe_json(self, body: dict[str, Any]) -> None:
        """A complete (non-streamed) answer, or one Gemini stream chunk."""
        if self.api == "gemini":
            meta = body.get("usageMetadata")
            if meta is not None:
                self.usage = from_gemini(meta)
        else:
            usage = body.get("usage")
            if usage is not None:
                if self.api == "anthropic":
                    self.usage = from_anthropic(usage)
                else:
                    self.usage = from_openai(usage,
                                             output_expected=self.endpoint != "embeddings")
        model = body.get("model") or body.get("modelVersion")
        if isinstance(model, str):
            self.model = model

    def observe_event(self, event: bytes) -> bool:
        """Read one SSE event; False if it must not be forwarded to the client."""
        name, data = event_data(event)
        if not data or data == b"[DONE]":
            return True
        payload = loads_answer(data)
        if not isinstance(payload, dict):
            return True
        if self.api == "anthropic":
            self._anthropic(payload)
            return True
        if self.api == "gemini":
            self.observe_json(payload)
            for cand in _list(payload.get("candidates")):
                for part in _list(_dict(_dict(cand).get("content")).get("parts")):
                    text = _dict(part).get("text")
                    if isinstance(text, str):
                        self.text_parts.append(text)
            return True
        if self.endpoint == "responses":
            kind = name or payload.get("type")
            self._responses(kind if isinstance(kind, str) else None, payload)
            return True
        return self._openai_chunk(payload)

    def _openai_chunk(self, payload: dict[str, Any]) -> bool:
        model = payload.get("model")
        if isinstance(model, str):
            self.model = model
        choices = payload.get("choices")
        for choice in _list(choices):
            choice = _dict(choice)
            delta = choice.get("delta")
            if isinstance(delta, dict):
                content = delta.get("content")
                if isinstance(content, str):
                    self.text_parts.append(content)
                for call in _list(delta.get("tool_calls")):
                    args = _dict(_dict(call).get("function")).get("arguments")
                    if isinstance(args, str):
                        self.text_parts.append(args)
            elif isinstance(choice.get("text"), str):
                self.text_parts.append(choice["text"])
        usage = payload.get("usage")
        if usage is not None:
            self.usage = from_openai(usage, output_expected=self.endpoint != "embeddings")
            if self.strip_usage_chunk and not choices:
                return False
        return True

    def _responses(self, kind: str | None, payload: dict[str, Any]) -> None:
        if kind == "response.output_text.delta" and isinstance(payload.get("delta"), str):
            self.text_parts.append(payload["delta"])
        elif kind in ("response.completed", "response.incomplete", "response.failed"):
            response = _dict(payload.get("response"))
            if response.get("usage") is not None:
                self.usage = from_openai(response["usage"])
            if isinstance(response.get("model"), str):
                self.model = response["model"]

    def _anthropic(self, payload: dict[str, Any]) -> None:
        kind = payload.get("type")
        if kind == "message_start":
            message = _dict(payload.get("message"))
            start = message.get("usage")
            # kept as sent (a wrong type included), so that reading it flags it
            self.anthropic_start = {} if start is None else start
            if isinstance(message.get("model"), str):
                self.model = message["model"]
        elif kind == "content_block_delta":
            delta = _dict(payload.get("delta"))
            for key in ("text", "partial_json", "thinking"):
                if isinstance(delta.get(key), str):
                    self.text_parts.append(delta[key])
        elif kind == "message_delta":
            usage = payload.get("usage")
            if isinstance(usage, dict):
                # later figures update the start's (cumulative output; newer APIs repeat the
                # input and cache counts); absent ones (null) do not erase them
                self.anthropic_delta.update((k, v) for k, v in usage.items() if v is not None)
            elif usage is not None:
                self.anthropic_delta["output_tokens"] = usage  # read, and flagged, as sent
        if self.anthropic_start is not None and kind in ("message_delta", "message_stop"):
            self.usage = from_anthropic(self._anthropic_merged())

    def _anthropic_merged(self) -> Any:
        start = self.anthropic_start
        return {**start, **self.anthropic_delta} if isinstance(start, dict) else start

    def output_text(self) -> str:
        """The generated text seen: streamed deltas, or the text of a non-streamed answer."""
        if self.text_parts:
            return "".join(self.text_parts)
        return answer_text(self.answer) if self.answer is not None else ""

    def streamed_text(self) -> str:
        return self.output_text()

    def fallback_usage(self, input_estimate: int, output_counted: int, *,
                       complete: bool) -> Usage:
        """The usage to settle when the provider's is missing (a stream cut short) or
        unusable (a main count flagged): the input Anthropic's `message_start` confirmed when
        it reads cleanly, else the proxy's own count of the input; the output counted from
        the text seen, or Anthropic's cumulative `output_tokens` when sane and larger. Keeps
        the flags of the provider's figures; a `complete` answer without usage is flagged
        `unparseable_usage`."""
        flags = self.usage.flags if self.usage is not None else ()
        if self.usage is None and complete:
            flags = merge_flags(flags, (UNPARSEABLE_USAGE,))
        output, _ = clamp_count(output_counted)
        if self.anthropic_start is not None:
            merged = self._anthropic_merged()
            confirmed = from_anthropic(merged, output_tokens=0)  # its input side only
            if confirmed.trusted:
                reported, reason = clamp_count(_dict(merged).get("output_tokens"))
                return replace(confirmed, output_tokens=max(output, 0 if reason else reported),
                               flags=merge_flags(confirmed.flags, flags), trusted=False)
        input_tokens, _ = clamp_count(input_estimate)
        return Usage(input_tokens=input_tokens, output_tokens=output, flags=flags,
                     trusted=False)

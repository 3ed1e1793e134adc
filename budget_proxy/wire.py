"""Wire formats every API family shares: stream framings (SSE, NDJSON, a streamed JSON
array), tolerant JSON reading, and the usage tap's common part. Each family's own shapes live
in its adapter (`budget_proxy.providers`).

Everything here is pure (bytes and dicts in, bytes and dicts out) so each shape is tested
without sockets. Parsers keep partial units across network chunks: one event may arrive in
many reads and one read may carry many events.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import orjson

from budget_proxy.usage import NO_UNITS, UNPARSEABLE_USAGE, Usage, clamp_count, merge_flags

# default max output when neither the request nor the catalog says (completions' API default)
DEFAULT_MAX_OUTPUT_TOKENS = 4096


def error_body(api: str, status: int, message: str, *, code: str | None = None) -> bytes:
    """An error in the caller's provider format, so its SDK raises its usual exception (the
    envelope is the family adapter's: `budget_proxy.providers`)."""
    from budget_proxy.providers import adapter_for  # the adapters build on this module

    return adapter_for(api).error_body(status, message, code=code)


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


def as_dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


class StreamParser(Protocol):
    """Splits a streamed answer into units (SSE events, NDJSON lines, JSON array elements),
    byte for byte: relaying every unit, then `flush()`, relays the stream unchanged."""

    def feed(self, chunk: bytes) -> list[bytes]: ...
    def flush(self) -> bytes: ...


class NDJSONParser:
    """Newline-delimited JSON (Ollama's streams): one unit per line, its LF included."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, chunk: bytes) -> list[bytes]:
        buf = self._buf
        resume = len(buf)
        buf += chunk
        end = buf.rfind(b"\n", resume)
        if end < 0:
            return []
        lines = bytes(buf[:end + 1]).splitlines(keepends=True)
        del buf[:end + 1]
        return lines

    def flush(self) -> bytes:
        rest = bytes(self._buf)
        self._buf.clear()
        return rest


_JSON_STRUCT = re.compile(rb'["{}\[\]]')
_JSON_STRING_END = re.compile(rb'["\\]')


class JSONArrayParser:
    """A JSON array streamed element by element (Gemini's `streamGenerateContent` without
    `alt=sse`): each unit ends right after one top-level element's closing brace, so
    `json_element(unit)` is that element's text. Brackets inside strings are skipped; the
    scan resumes where the last read stopped (linear in the stream's size)."""

    __slots__ = ("_buf", "_depth", "_in_string", "_pos")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._pos = 0
        self._depth = 0  # 1 inside the array, 2 inside an element, ...
        self._in_string = False

    def feed(self, chunk: bytes) -> list[bytes]:
        buf = self._buf
        buf += chunk
        units: list[bytes] = []
        start = 0
        pos = self._pos
        size = len(buf)
        while pos < size:
            if self._in_string:
                found = _JSON_STRING_END.search(buf, pos)
                if found is None:
                    pos = size
                    break
                if found.group() == b"\\":
                    if found.end() >= size:  # an escape split between reads
                        pos = found.start()
                        break
                    pos = found.end() + 1
                    continue
                self._in_string = False
                pos = found.end()
                continue
            found = _JSON_STRUCT.search(buf, pos)
            if found is None:
                pos = size
                break
            char = found.group()
            pos = found.end()
            if char == b'"':
                self._in_string = True
            elif char in (b"{", b"["):
                self._depth += 1
            else:
                self._depth -= 1
                if self._depth == 1 and char == b"}":
                    units.append(bytes(buf[start:pos]))
                    start = pos
        del buf[:start]
        self._pos = pos - start
        return units

    def flush(self) -> bytes:
        rest = bytes(self._buf)
        self._buf.clear()
        self._pos = 0
        return rest


def json_element(unit: bytes) -> bytes:
    """The element of a `JSONArrayParser` unit, without the `[` or `,` before it."""
    return unit.lstrip(b" \t\r\n[,")


@dataclass(slots=True)
class UsageTap:
    """Reads usage (and the generated text, for settling a call whose usage is missing or
    unusable) from one answer. Each API family subclasses it (`budget_proxy.providers`) for
    the shapes of its answers and stream units.

    Total: any bytes and any JSON shape in, never an exception out; a wrong type anywhere is
    skipped (text) or clamped and flagged (usage, see `budget_proxy.usage`).
    """

    endpoint: str
    strip_usage_chunk: bool = False  # hide the usage-only chunk the proxy asked for
    usage: Usage | None = None
    model: str | None = None
    text_parts: list[str] = field(default_factory=list)
    answer: Any = None  # a non-streamed answer, read for its text only when needed
    units: Usage = NO_UNITS  # characters, images, audio: unless read

    def observe_answer(self, raw: bytes) -> None:
        """A complete (non-streamed) answer, as bytes."""
        answer = loads_answer(raw)
        self.answer = answer
        if isinstance(answer, dict):
            self.observe_json(answer)

    def observe_json(self, body: dict[str, Any]) -> None:
        """A complete (non-streamed) answer, read for its usage and model."""
        model = body.get("model")
        if isinstance(model, str):
            self.model = model

    def observe_event(self, unit: bytes) -> bool:
        """Read one stream unit (see `StreamParser`); False if it must not be relayed."""
        name, data = event_data(unit)
        if not data or data == b"[DONE]":
            return True
        payload = loads_answer(data)
        if not isinstance(payload, dict):
            return True
        return self.observe_payload(name, payload)

    def observe_payload(self, name: str | None, payload: dict[str, Any]) -> bool:
        """One decoded stream unit; False if it must not be relayed."""
        return True

    def output_text(self) -> str:
        """The generated text seen: streamed deltas, or the text of a non-streamed answer."""
        if self.text_parts:
            return "".join(self.text_parts)
        return answer_text(self.answer) if self.answer is not None else ""

    def streamed_text(self) -> str:
        return self.output_text()

    def confirmed(self) -> tuple[Usage, int | None] | None:
        """Figures the provider confirmed before its final usage (Anthropic's
        `message_start`): the input side, and the output reported so far when it reads
        cleanly; None when there are none."""
        return None

    def fallback_usage(self, input_estimate: int, output_counted: int, *,
                       complete: bool) -> Usage:
        """The usage to settle when the provider's is missing (a stream cut short) or
        unusable (a main count flagged): the input the provider confirmed (`confirmed`) when
        it reads cleanly, else the proxy's own count of the input; the output counted from
        the text seen, or the provider's reported output when sane and larger. Keeps the
        flags of the provider's figures; a `complete` answer without usage is flagged
        `unparseable_usage`."""
        flags = self.usage.flags if self.usage is not None else ()
        if self.usage is None and complete:
            flags = merge_flags(flags, (UNPARSEABLE_USAGE,))
        output, _ = clamp_count(output_counted)
        confirmed = self.confirmed()
        if confirmed is not None and confirmed[0].trusted:
            usage, reported = confirmed
            return replace(usage, output_tokens=max(output, reported or 0),
                           flags=merge_flags(usage.flags, flags), trusted=False)
        input_tokens, _ = clamp_count(input_estimate)
        return replace(self.units, input_tokens=input_tokens, output_tokens=output, flags=flags,
                       trusted=False)

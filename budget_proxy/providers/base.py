"""The protocol every API family implements, and the parts most families share.

`budget_proxy.proxy` knows no family: it asks the request's adapter which paths are metered
and as what, what a request asks for (model, output cap, choices, streaming), how its body
goes upstream, which header carries the key, how an error reads, and how usage is read
from the answer. Adding a family is one module here plus its tests.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, ClassVar

import orjson

from budget_proxy import tokens
from budget_proxy.config import ProviderConfig
from budget_proxy.usage import NO_UNITS, Usage
from budget_proxy.wire import SSEParser, StreamParser, UsageTap, loads_answer


class RequestProblem(Exception):
    """A request the adapter cannot plan (not JSON, no model): answered 400, never
    forwarded, in the family's error format."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(slots=True)
class Plan:
    """What one metered request asks for, as its adapter read it."""

    endpoint: str  # the metered endpoint kind (a metrics label and the record's route)
    model: str
    body: dict[str, Any]
    streaming: bool
    max_output_tokens: int | None = None  # per choice, when the request sets it
    choices: int = 1  # answers generated (`n`): the output cap counts once per choice
    strip_usage: bool = False  # the proxy asked for a usage chunk the client did not want
    rewritten: bool = False  # `body` differs from the bytes the client sent
    # units priced by the seed's other price types (characters, images, audio): the most
    # the request can use (reserved), and what it is settled at when the answer says nothing
    units: Usage = NO_UNITS
    expected_units: Usage | None = None  # None: as `units`

    def upstream_body(self, raw: bytes) -> bytes:
        return orjson.dumps(self.body) if self.rewritten else raw


def json_body(raw: bytes) -> dict[str, Any]:
    """A request body as a JSON object, or a `RequestProblem`."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise RequestProblem("invalid_json", f"request body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise RequestProblem("invalid_json", "request body must be a JSON object")
    return body


def body_model(body: dict[str, Any]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise RequestProblem("missing_model", "request has no 'model'")
    return model


def whole(value: Any) -> int | None:
    """A non-negative whole number from a request field, else None (bools are not numbers)."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None


def choices_of(value: Any) -> int:
    """`n`: how many answers a request asks for (1 when absent or not a positive integer;
    the provider refuses those, and a huge one is clamped with the rest of the worst case)."""
    n = whole(value)
    return n if n is not None and n > 1 else 1


def segment_matches(pattern: str, path: str) -> bool:
    """`pattern` with `*` standing for one path segment (an id)."""
    want, have = pattern.split("/"), path.split("/")
    return len(want) == len(have) and all(w in ("*", h) for w, h in zip(want, have, strict=True))


class Adapter:
    """One API family. Subclasses set the class attributes and override what differs."""

    api: ClassVar[str]
    needs_key: ClassVar[bool] = True  # a provider of this family needs a key unless it says
    key_header: ClassVar[str] = "Authorization"
    free_posts: ClassVar[tuple[str, ...]] = ()  # POSTs that cost nothing; `*` is one segment
    token_floor_model: ClassVar[str | None] = None  # count input at least at this model's rate

    # routes -------------------------------------------------------------------------------
    def api_root(self, rest: str) -> str:
        """The path under the provider's API root, from the path under its prefix."""
        return rest

    def endpoint_kind(self, path: str) -> str | None:
        """The metered endpoint a POST path (canonical, under the API root) is, or None."""
        raise NotImplementedError

    def is_free_post(self, path: str) -> bool:
        return any(segment_matches(pattern, path) for pattern in self.free_posts)

    def refused_reason(self, path: str) -> str:
        """Why a POST that is neither metered nor free is refused (a phrase)."""
        return "this endpoint is not metered"

    # requests -----------------------------------------------------------------------------
    def plan(self, endpoint: str, path: str, query: str, raw: bytes,
             provider: ProviderConfig) -> Plan:
        """Read a metered request; a `RequestProblem` when it cannot be metered."""
        raise NotImplementedError

    def with_model(self, plan: Plan, model: str) -> Plan | None:
        """The same request for another model (a soft limit's move), or None when the model
        cannot be changed (it is named in the path)."""
        return replace(plan, model=model, body={**plan.body, "model": model}, rewritten=True)

    def with_output_cap(self, plan: Plan, max_output_tokens: int) -> Plan | None:
        """The same request with its output cap (per choice) lowered to `max_output_tokens`
        (BUDGET_ON_INSUFFICIENT=fit), or None when this request has no cap to lower."""
        return None

    async def count_input(self, plan: Plan, raw_len: int) -> int:
        """Input tokens of the request, erring high; never blocks the loop."""
        return await tokens.count_request_input_async(
            plan.endpoint, plan.body, raw_len, at_least_as=self.token_floor_model)

    def catalog_provider(self, provider: ProviderConfig) -> str:
        """The provider name its models are priced under in the catalog."""
        return provider.name

    def auth_headers(self, key: str) -> dict[str, str]:
        return {self.key_header: f"Bearer {key}"}

    # answers ------------------------------------------------------------------------------
    def error_body(self, status: int, message: str, *, code: str | None = None) -> bytes:
        raise NotImplementedError

    def tap(self, plan: Plan) -> UsageTap:
        raise NotImplementedError

    def is_final_event(self, unit: bytes) -> bool:
        """Whether a stream unit is the stream's last event, before which the proxy tells
        the call's cost (`: budget-proxy cost=<usd>`). False for families whose streams have
        no such event or cannot carry a comment (the cost is then not told in the stream)."""
        return False

    def cut_events(self, tap: UsageTap, plan: Plan, usage: Usage, cost_usd: float) -> bytes:
        """The events that end a stream cleanly, in this family's protocol, when a hard limit
        refuses to extend its hold: after the proxy's `: budget-proxy cut policy=<id>`
        comment, what the client's SDK reads as a normal end for lack of output room, with
        the cost comment before the last event. Empty by default: the stream is then closed
        after the last complete unit relayed (Gemini, Ollama, the Responses API)."""
        return b""

    def stream_parser(self, plan: Plan, content_type: str) -> StreamParser | None:
        """How a successful answer is relayed: unit by unit (a parser), or read whole (None).
        SSE by default."""
        return SSEParser() if content_type == "text/event-stream" else None


def cost_comment(cost_usd: float) -> bytes:
    """The SSE comment that tells a stream's cost (SDKs skip comment lines)."""
    return f": budget-proxy cost={cost_usd:.9f}\n\n".encode()


def sse_event(name: str | None, payload: dict[str, Any]) -> bytes:
    head = f"event: {name}\n".encode() if name else b""
    return head + b"data: " + orjson.dumps(payload) + b"\n\n"


__all__ = [
    "Adapter",
    "Plan",
    "RequestProblem",
    "body_model",
    "choices_of",
    "cost_comment",
    "json_body",
    "loads_answer",
    "segment_matches",
    "sse_event",
    "whole",
]

"""Anthropic's Messages API: `v1/messages`, SSE streams whose usage comes in two parts (the
input in `message_start`, the cumulative output in `message_delta`)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import orjson

from budget_proxy.config import ProviderConfig
from budget_proxy.providers.base import (
    Adapter,
    Plan,
    body_model,
    cost_comment,
    json_body,
    sse_event,
    whole,
)
from budget_proxy.usage import Usage, clamp_count, from_anthropic
from budget_proxy.wire import UsageTap, as_dict, event_data

# Anthropic refuses extended thinking with a budget below this many tokens
MIN_THINKING_BUDGET_TOKENS = 1024

_ERROR_TYPES = {
    400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
    404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error",
    503: "overloaded_error", 529: "overloaded_error",
}


@dataclass(slots=True)
class AnthropicTap(UsageTap):
    start: Any = None  # `message_start` usage, as sent
    delta: dict[str, Any] = field(default_factory=dict)  # last `message_delta` usage
    open_block: int | None = None  # index of the content block started and not yet stopped

    def observe_json(self, body: dict[str, Any]) -> None:
        usage = body.get("usage")
        if usage is not None:
            self.usage = from_anthropic(usage)
        model = body.get("model")
        if isinstance(model, str):
            self.model = model

    def observe_payload(self, name: str | None, payload: dict[str, Any]) -> bool:
        kind = payload.get("type")
        if kind == "message_start":
            message = as_dict(payload.get("message"))
            start = message.get("usage")
            # kept as sent (a wrong type included), so that reading it flags it
            self.start = {} if start is None else start
            if isinstance(message.get("model"), str):
                self.model = message["model"]
        elif kind == "content_block_start":
            index = payload.get("index")
            self.open_block = index if isinstance(index, int) else 0
        elif kind == "content_block_stop":
            self.open_block = None
        elif kind == "content_block_delta":
            delta = as_dict(payload.get("delta"))
            for key in ("text", "partial_json", "thinking"):
                if isinstance(delta.get(key), str):
                    self.text_parts.append(delta[key])
        elif kind == "message_delta":
            usage = payload.get("usage")
            if isinstance(usage, dict):
                # later figures update the start's (cumulative output; newer APIs repeat the
                # input and cache counts); absent ones (null) do not erase them
                self.delta.update((k, v) for k, v in usage.items() if v is not None)
            elif usage is not None:
                self.delta["output_tokens"] = usage  # read, and flagged, as sent
        if self.start is not None and kind in ("message_delta", "message_stop"):
            self.usage = from_anthropic(self._merged())
        return True

    def _merged(self) -> Any:
        start = self.start
        return {**start, **self.delta} if isinstance(start, dict) else start

    def confirmed(self) -> tuple[Usage, int | None] | None:
        if self.start is None:
            return None
        merged = self._merged()
        confirmed = from_anthropic(merged, output_tokens=0)  # its input side only
        reported, reason = clamp_count(as_dict(merged).get("output_tokens"))
        return confirmed, None if reason else reported


class Anthropic(Adapter):
    api: ClassVar[str] = "anthropic"
    key_header: ClassVar[str] = "x-api-key"
    free_posts: ClassVar[tuple[str, ...]] = ("v1/messages/count_tokens",)
    # Anthropic's tokenizer yields more tokens than o200k whatever the model is called
    token_floor_model: ClassVar[str | None] = "claude"

    def endpoint_kind(self, path: str) -> str | None:
        return "messages" if path == "v1/messages" else None

    def refused_reason(self, path: str) -> str:
        if path == "v1/messages/batches" or path.startswith("v1/messages/batches/"):
            return "batch jobs are not metered"
        return super().refused_reason(path)

    def plan(self, endpoint: str, path: str, query: str, raw: bytes,
             provider: ProviderConfig) -> Plan:
        body = json_body(raw)
        return Plan(endpoint=endpoint, model=body_model(body), body=body,
                    streaming=body.get("stream") is True,
                    max_output_tokens=whole(body.get("max_tokens")))

    def auth_headers(self, key: str) -> dict[str, str]:
        return {"x-api-key": key}

    def with_output_cap(self, plan: Plan, max_output_tokens: int) -> Plan | None:
        """`max_tokens` lowered; extended thinking's `budget_tokens` must stay below it: it
        is lowered too, and thinking is turned off when that leaves less than Anthropic's
        minimum budget (the answer then fits without it)."""
        body = {**plan.body, "max_tokens": max_output_tokens}
        thinking = body.get("thinking")
        if isinstance(thinking, dict) and thinking.get("type") == "enabled":
            budget = whole(thinking.get("budget_tokens"))
            if budget is None or budget >= max_output_tokens:
                lowered = max_output_tokens - 1
                if lowered < MIN_THINKING_BUDGET_TOKENS:
                    body.pop("thinking")
                else:
                    body["thinking"] = {**thinking, "budget_tokens": lowered}
        return replace(plan, body=body, max_output_tokens=max_output_tokens, rewritten=True)

    def is_final_event(self, unit: bytes) -> bool:
        return b"message_stop" in unit and event_data(unit)[0] == "message_stop"

    def cut_events(self, tap: UsageTap, plan: Plan, usage: Usage, cost_usd: float) -> bytes:
        """The open content block stopped, a `message_delta` with `stop_reason:
        max_tokens` and the output relayed, then `message_stop`."""
        out = []
        block = tap.open_block if isinstance(tap, AnthropicTap) else None
        if block is not None:
            out.append(sse_event("content_block_stop",
                                 {"type": "content_block_stop", "index": block}))
        out.append(sse_event("message_delta", {
            "type": "message_delta",
            "delta": {"stop_reason": "max_tokens", "stop_sequence": None},
            "usage": {"output_tokens": usage.output_tokens}}))
        out += [cost_comment(cost_usd),
                sse_event("message_stop", {"type": "message_stop"})]
        return b"".join(out)

    def error_body(self, status: int, message: str, *, code: str | None = None) -> bytes:
        kind = _ERROR_TYPES.get(status, "api_error")
        return orjson.dumps({"type": "error", "error": {"type": kind, "message": message}})

    def tap(self, plan: Plan) -> UsageTap:
        return AnthropicTap(plan.endpoint)

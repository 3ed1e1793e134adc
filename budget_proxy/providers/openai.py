"""OpenAI's API: chat completions, responses, completions, embeddings, and the OpenAI-shaped
APIs other hosts serve (`api = "openai"` with another base URL).

Streams are SSE. For chat and completions streams the proxy asks for usage
(`stream_options.include_usage`) when the client did not, and hides that extra chunk.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import orjson

from budget_proxy.config import ProviderConfig
from budget_proxy.providers.base import (
    Adapter,
    Plan,
    body_model,
    choices_of,
    json_body,
    whole,
)
from budget_proxy.usage import from_openai
from budget_proxy.wire import UsageTap, as_dict, as_list

# path (relative to the API root) -> metered endpoint kind
ENDPOINTS = {
    "chat/completions": "chat.completions",
    "responses": "responses",
    "completions": "completions",
    "embeddings": "embeddings",
}
# the request fields that cap the output, per endpoint (first present wins)
OUTPUT_CAPS: dict[str, tuple[str, ...]] = {
    "chat.completions": ("max_completion_tokens", "max_tokens"),
    "completions": ("max_tokens",),
    "responses": ("max_output_tokens",),
}
# endpoints whose `n` asks for several answers
CHOICE_ENDPOINTS = frozenset({"chat.completions", "completions"})
# streams the proxy asks usage of (`stream_options.include_usage`)
USAGE_OPTION_ENDPOINTS = frozenset({"chat.completions", "completions"})

_ERROR_TYPES = {
    400: "invalid_request_error", 401: "invalid_request_error", 404: "invalid_request_error",
    413: "invalid_request_error", 429: "insufficient_quota", 503: "service_unavailable",
}


@dataclass(slots=True)
class OpenAITap(UsageTap):
    """Usage of chat, completions and embeddings answers (`usage`), their stream chunks,
    and Responses API answers and events."""

    def observe_json(self, body: dict[str, Any]) -> None:
        usage = body.get("usage")
        if usage is not None:
            self.usage = from_openai(usage, output_expected=self.endpoint != "embeddings")
        model = body.get("model")
        if isinstance(model, str):
            self.model = model

    def observe_payload(self, name: str | None, payload: dict[str, Any]) -> bool:
        if self.endpoint == "responses":
            kind = name or payload.get("type")
            self._responses(kind if isinstance(kind, str) else None, payload)
            return True
        return self._chunk(payload)

    def _chunk(self, payload: dict[str, Any]) -> bool:
        model = payload.get("model")
        if isinstance(model, str):
            self.model = model
        choices = payload.get("choices")
        for choice in as_list(choices):
            choice = as_dict(choice)
            delta = choice.get("delta")
            if isinstance(delta, dict):
                content = delta.get("content")
                if isinstance(content, str):
                    self.text_parts.append(content)
                for call in as_list(delta.get("tool_calls")):
                    args = as_dict(as_dict(call).get("function")).get("arguments")
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
            response = as_dict(payload.get("response"))
            if response.get("usage") is not None:
                self.usage = from_openai(response["usage"])
            if isinstance(response.get("model"), str):
                self.model = response["model"]


def requested_max_output(endpoint: str, body: dict[str, Any]) -> int | None:
    """The output cap the request itself sets (per choice), if any; embeddings have none."""
    if endpoint == "embeddings":
        return 0
    for key in OUTPUT_CAPS.get(endpoint, ()):
        value = whole(body.get(key))
        if value is not None:
            return value
    return None


def plan_openai(endpoint: str, body: dict[str, Any], model: str) -> Plan:
    """The plan of an OpenAI-shaped JSON request whose model is known."""
    streaming = body.get("stream") is True
    strip_usage = rewritten = False
    if streaming and endpoint in USAGE_OPTION_ENDPOINTS:
        options = body.get("stream_options")
        if not (isinstance(options, dict) and options.get("include_usage")):
            body["stream_options"] = {**(options if isinstance(options, dict) else {}),
                                      "include_usage": True}
            strip_usage = rewritten = True
    return Plan(
        endpoint=endpoint, model=model, body=body, streaming=streaming,
        max_output_tokens=requested_max_output(endpoint, body),
        choices=choices_of(body.get("n")) if endpoint in CHOICE_ENDPOINTS else 1,
        strip_usage=strip_usage, rewritten=rewritten,
    )


def openai_error(status: int, message: str, code: str | None) -> bytes:
    kind = _ERROR_TYPES.get(status, "server_error")
    return orjson.dumps({"error": {"message": message, "type": kind, "param": None,
                                   "code": code}})


class OpenAI(Adapter):
    api: ClassVar[str] = "openai"
    free_posts: ClassVar[tuple[str, ...]] = (
        "moderations", "files", "uploads", "uploads/*/parts", "uploads/*/complete",
        "uploads/*/cancel", "responses/input_tokens", "responses/*/cancel",
    )

    def api_root(self, rest: str) -> str:
        # `/openai/v1/...` and `/v1/...` both name the API root, whose base URL ends in /v1
        return rest[3:] if rest.startswith("v1/") else rest

    def endpoint_kind(self, path: str) -> str | None:
        return ENDPOINTS.get(path)

    def refused_reason(self, path: str) -> str:
        if path == "batches" or path.startswith("batches/"):
            return "batch jobs are not metered"
        if path == "realtime" or path.startswith("realtime/"):
            return "realtime sessions are not metered"
        return super().refused_reason(path)

    def plan(self, endpoint: str, path: str, query: str, raw: bytes,
             provider: ProviderConfig) -> Plan:
        body = json_body(raw)
        return plan_openai(endpoint, body, body_model(body))

    def error_body(self, status: int, message: str, *, code: str | None = None) -> bytes:
        return openai_error(status, message, code)

    def tap(self, plan: Plan) -> UsageTap:
        return OpenAITap(plan.endpoint, strip_usage_chunk=plan.strip_usage)

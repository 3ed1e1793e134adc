"""Google's Gemini API: `models/{model}:generateContent` and `:streamGenerateContent`, the
model named in the path. A stream is SSE with `alt=sse`, else one JSON array sent element
by element; each element (or event) carries the cumulative `usageMetadata`."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, ClassVar

import orjson

from budget_proxy.config import ProviderConfig
from budget_proxy.providers.base import Adapter, Plan, RequestProblem, json_body, whole
from budget_proxy.usage import Usage, from_gemini
from budget_proxy.wire import (
    JSONArrayParser,
    SSEParser,
    StreamParser,
    UsageTap,
    as_dict,
    as_list,
    json_element,
    loads_answer,
)

METHODS = {":generateContent": "gemini", ":streamGenerateContent": "gemini"}
FREE_METHODS = (":countTokens",)
BATCH_METHODS = (":batchGenerateContent", ":asyncBatchEmbedContent")
_STATUS = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED",
           404: "NOT_FOUND", 413: "INVALID_ARGUMENT", 429: "RESOURCE_EXHAUSTED",
           503: "UNAVAILABLE"}


@dataclass(slots=True)
class GeminiTap(UsageTap):
    """A chunk's `usageMetadata` is final when every candidate in it has a `finishReason`
    (or it has none: a blocked prompt); an earlier chunk's figures only say how far the
    stream got, and settle a stream cut short (`confirmed`)."""

    partial: Any = None  # `usageMetadata` of the last unfinished chunk, as sent

    def observe_json(self, body: dict[str, Any]) -> None:
        meta = body.get("usageMetadata")
        if meta is not None:
            finished = all(as_dict(cand).get("finishReason")
                           for cand in as_list(body.get("candidates")))
            if finished:
                self.usage = from_gemini(meta)
            else:
                self.partial = meta
        model = body.get("modelVersion") or body.get("model")
        if isinstance(model, str):
            self.model = model

    def observe_event(self, unit: bytes) -> bool:
        element = json_element(unit)
        if element.startswith(b"{"):  # an element of the streamed JSON array
            payload = loads_answer(element)
            if isinstance(payload, dict):
                self.observe_payload(None, payload)
            return True
        return UsageTap.observe_event(self, unit)

    def observe_payload(self, name: str | None, payload: dict[str, Any]) -> bool:
        self.observe_json(payload)
        for cand in as_list(payload.get("candidates")):
            for part in as_list(as_dict(as_dict(cand).get("content")).get("parts")):
                text = as_dict(part).get("text")
                if isinstance(text, str):
                    self.text_parts.append(text)
        return True

    def confirmed(self) -> tuple[Usage, int | None] | None:
        if self.partial is None:
            return None
        seen = from_gemini(self.partial)
        return (replace(seen, output_tokens=0, reasoning_tokens=0),
                None if seen.flags else seen.output_tokens)


def model_in_path(path: str) -> str:
    """`v1beta/models/gemini-2.5-pro:generateContent` -> `gemini-2.5-pro`."""
    model = path.rsplit("/", 1)[-1].split(":", 1)[0]
    if not model:
        raise RequestProblem("missing_model", "the path names no model")
    return model


class Gemini(Adapter):
    api: ClassVar[str] = "gemini"
    key_header: ClassVar[str] = "x-goog-api-key"
    token_floor_model: ClassVar[str | None] = "gemini"

    def endpoint_kind(self, path: str) -> str | None:
        # exact spellings only: an escape in the model name is not metered
        if "%" in path:
            return None
        return next((kind for suffix, kind in METHODS.items() if path.endswith(suffix)), None)

    def is_free_post(self, path: str) -> bool:
        return path.endswith(FREE_METHODS) and "%" not in path

    def refused_reason(self, path: str) -> str:
        if path.endswith(BATCH_METHODS):
            return "batch jobs are not metered"
        return super().refused_reason(path)

    def plan(self, endpoint: str, path: str, query: str, raw: bytes,
             provider: ProviderConfig) -> Plan:
        body = json_body(raw)
        config = as_dict(body.get("generationConfig"))
        count = whole(config.get("candidateCount"))
        return Plan(endpoint=endpoint, model=model_in_path(path), body=body,
                    streaming=path.endswith(":streamGenerateContent"),
                    max_output_tokens=whole(config.get("maxOutputTokens")),
                    choices=count if count is not None and count > 1 else 1)

    def with_model(self, plan: Plan, model: str) -> Plan | None:
        return None  # named in the path

    def with_output_cap(self, plan: Plan, max_output_tokens: int) -> Plan | None:
        config = {**as_dict(plan.body.get("generationConfig")),
                  "maxOutputTokens": max_output_tokens}
        return replace(plan, body={**plan.body, "generationConfig": config},
                       max_output_tokens=max_output_tokens, rewritten=True)

    def auth_headers(self, key: str) -> dict[str, str]:
        return {"x-goog-api-key": key}

    def error_body(self, status: int, message: str, *, code: str | None = None) -> bytes:
        return orjson.dumps({"error": {"code": status, "message": message,
                                       "status": _STATUS.get(status, "INTERNAL")}})

    def tap(self, plan: Plan) -> UsageTap:
        return GeminiTap(plan.endpoint)

    def stream_parser(self, plan: Plan, content_type: str) -> StreamParser | None:
        if content_type == "text/event-stream":
            return SSEParser()
        return JSONArrayParser() if plan.streaming else None

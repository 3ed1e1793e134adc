"""Ollama's native API: `api/chat`, `api/generate` and `api/embed`, streamed by default as
NDJSON (one JSON object a line; the last, `"done": true`, carries `prompt_eval_count` and
`eval_count`). Local models cost nothing, but token and request limits apply; a provider of
this family needs no key."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, ClassVar

import orjson

from budget_proxy.config import ProviderConfig
from budget_proxy.providers.base import Adapter, Plan, body_model, json_body, whole
from budget_proxy.usage import from_ollama
from budget_proxy.wire import NDJSONParser, StreamParser, UsageTap, as_dict, loads_answer

ENDPOINTS = {"api/chat": "ollama.chat", "api/generate": "ollama.generate",
             "api/embed": "ollama.embed", "api/embeddings": "ollama.embed"}


@dataclass(slots=True)
class OllamaTap(UsageTap):
    def observe_json(self, body: dict[str, Any]) -> None:
        model = body.get("model")
        if isinstance(model, str):
            self.model = model
        if body.get("done") is True or self.endpoint == "ollama.embed":
            self.usage = from_ollama(body, output_expected=self.endpoint != "ollama.embed")

    def observe_event(self, unit: bytes) -> bool:
        payload = loads_answer(unit)
        if isinstance(payload, dict):
            text = (as_dict(payload.get("message")).get("content")
                    if self.endpoint == "ollama.chat" else payload.get("response"))
            if isinstance(text, str):
                self.text_parts.append(text)
            self.observe_json(payload)
        return True


class Ollama(Adapter):
    api: ClassVar[str] = "ollama"
    needs_key: ClassVar[bool] = False
    free_posts: ClassVar[tuple[str, ...]] = ("api/show",)

    def endpoint_kind(self, path: str) -> str | None:
        return ENDPOINTS.get(path)

    def refused_reason(self, path: str) -> str:
        return "this endpoint (model management) is not metered"

    def plan(self, endpoint: str, path: str, query: str, raw: bytes,
             provider: ProviderConfig) -> Plan:
        body = json_body(raw)
        embed = endpoint == "ollama.embed"
        # `num_predict` -1 (no limit) and -2 (fill the context) fall to the catalog's cap
        cap = whole(as_dict(body.get("options")).get("num_predict"))
        return Plan(endpoint=endpoint, model=body_model(body), body=body,
                    streaming=not embed and body.get("stream") is not False,
                    max_output_tokens=0 if embed else cap)

    def with_output_cap(self, plan: Plan, max_output_tokens: int) -> Plan | None:
        if plan.endpoint == "ollama.embed":
            return None
        options = {**as_dict(plan.body.get("options")), "num_predict": max_output_tokens}
        return replace(plan, body={**plan.body, "options": options},
                       max_output_tokens=max_output_tokens, rewritten=True)

    def catalog_provider(self, provider: ProviderConfig) -> str:
        return "ollama"  # local models: the catalog's zero-cost wildcards, tiered by size

    def error_body(self, status: int, message: str, *, code: str | None = None) -> bytes:
        return orjson.dumps({"error": message})

    def tap(self, plan: Plan) -> UsageTap:
        return OllamaTap(plan.endpoint)

    def stream_parser(self, plan: Plan, content_type: str) -> StreamParser | None:
        return NDJSONParser() if plan.streaming else None

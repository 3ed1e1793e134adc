"""API families, one adapter each: `openai`, `anthropic`, `gemini`, `azure`, `ollama`
(the `api` of a `[providers.NAME]` table). See `budget_proxy.providers.base.Adapter`."""

from __future__ import annotations

from budget_proxy.providers.anthropic import Anthropic
from budget_proxy.providers.azure import Azure
from budget_proxy.providers.base import Adapter, Plan, RequestProblem
from budget_proxy.providers.gemini import Gemini
from budget_proxy.providers.ollama import Ollama
from budget_proxy.providers.openai import OpenAI
from budget_proxy.wire import UsageTap

ADAPTERS: dict[str, Adapter] = {
    adapter.api: adapter for adapter in (OpenAI(), Anthropic(), Gemini(), Azure(), Ollama())
}


def adapter_for(api: str) -> Adapter:
    """The adapter of an API family (`ProviderConfig.api` is validated against these)."""
    return ADAPTERS[api]


def tap_for(api: str, endpoint: str, *, strip_usage_chunk: bool = False,
            streaming: bool = False) -> UsageTap:
    """A usage tap for one answer of `api`'s `endpoint` (tests and tools)."""
    plan = Plan(endpoint=endpoint, model="", body={}, streaming=streaming,
                strip_usage=strip_usage_chunk)
    return ADAPTERS[api].tap(plan)


__all__ = ["ADAPTERS", "Adapter", "Plan", "RequestProblem", "adapter_for", "tap_for"]

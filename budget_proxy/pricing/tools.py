"""Cost tools over a price: a call's cost line by line, and the cheapest models for a task."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from budget_proxy.pricing.book import _MTOK
from budget_proxy.pricing.catalog import PROVIDER_PREFERENCE, WILDCARD, ModelPrice
from budget_proxy.usage import Usage, cost_of

MONTH_DAYS = 30  # "per month" in recommendations: 30 days of the given daily frequency
EMBEDDING_TASKS = frozenset({"embedding", "embeddings", "embed"})


def cost_breakdown(
    price: ModelPrice, *, input_tokens: int, output_tokens: int, cached_tokens: int = 0,
    cache_write_tokens: int = 0, reasoning_tokens: int = 0,
) -> dict[str, Any]:
    """What the proxy would charge for these token counts, line by line.

    ``input_tokens`` counts every input token, cached and cache-written ones included (as
    OpenAI's ``prompt_tokens`` does); ``output_tokens`` includes reasoning tokens. The total
    is `usage.cost_of`'s, so it is exactly what a usage record would say."""
    counts = (input_tokens, output_tokens, cached_tokens, cache_write_tokens, reasoning_tokens)
    if any(n < 0 for n in counts):
        raise ValueError("token counts cannot be negative")
    if cached_tokens + cache_write_tokens > input_tokens:
        raise ValueError("cached and cache-write tokens are part of input_tokens: their sum "
                         "cannot exceed it")
    if reasoning_tokens > output_tokens:
        raise ValueError("reasoning tokens are part of output_tokens: they cannot exceed it")
    usage = Usage(
        input_tokens=input_tokens - cached_tokens - cache_write_tokens,
        cached_input_tokens=cached_tokens, cache_write_tokens=cache_write_tokens,
        output_tokens=output_tokens, reasoning_tokens=reasoning_tokens,
    )
    cost = cost_of(usage, price)
    lines = [
        ("input", usage.input_tokens, price.input_usd_per_mtok),
        ("cached_input", cached_tokens, price.cache_read_rate),
        ("cache_write", cache_write_tokens, price.cache_write_rate),
        ("output", output_tokens - reasoning_tokens, price.output_usd_per_mtok),
        ("reasoning", reasoning_tokens, price.reasoning_rate),
    ]
    return {
        "provider": price.provider, "model": price.model, "pricing_id": price.pricing_id,
        "input_tokens": input_tokens, "output_tokens": output_tokens,
        "cached_tokens": cached_tokens, "cache_write_tokens": cache_write_tokens,
        "reasoning_tokens": reasoning_tokens,
        "lines": [{"class": name, "tokens": tokens, "usd_per_mtok": str(rate),
                   "cost_usd": float(tokens * rate / _MTOK)}
                  for name, tokens, rate in lines if tokens],
        "input_cost": cost.input_nusd / 1e9, "output_cost": cost.output_nusd / 1e9,
        "total_cost": cost.total_nusd / 1e9, "total_cost_nusd": cost.total_nusd,
        "currency": "USD",
    }


def recommend(
    entries: Iterable[ModelPrice], *, context_tokens: int, output_tokens: int,
    tier: str | None = None, task_type: str | None = None, calls_per_day: float = 1.0,
    max_cost_usd: float | None = None, limit: int = 5,
) -> list[dict[str, Any]]:
    """The cheapest models that fit a task, cheapest first.

    A model fits when its context window holds ``context_tokens + output_tokens`` and its
    output limit (where known) holds ``output_tokens``; models with an unknown context window
    are left out, except local runtimes' wildcard entries, which are offered only when a
    local ``tier`` is asked for. Embedding tasks (``task_type`` embedding) look at embedding
    models only, others at chat, responses and completion models. Cost per call is input at
    the input rate plus output at the output rate (no cache discount); per month is
    ``MONTH_DAYS`` days at ``calls_per_day``."""
    embedding = (task_type or "").lower() in EMBEDDING_TASKS
    modes = ("embedding",) if embedding else ("chat", "responses", "completion")
    out_tokens = 0 if embedding else output_tokens
    rank = {p: i for i, p in enumerate(PROVIDER_PREFERENCE)}
    rows = []
    for entry in entries:
        if entry.mode not in modes or (tier is not None and entry.tier != tier):
            continue
        if entry.model.startswith(WILDCARD):
            if tier is None or not tier.startswith("local"):
                continue
        elif (entry.context_window_tokens is None
              or context_tokens + out_tokens > entry.context_window_tokens
              or (entry.max_output_tokens is not None and out_tokens > entry.max_output_tokens)):
            continue
        per_call_nusd = cost_of(Usage(input_tokens=context_tokens, output_tokens=out_tokens),
                                entry).total_nusd
        per_call = per_call_nusd / 1e9
        if max_cost_usd is not None and per_call > max_cost_usd:
            continue
        rows.append({
            "provider": entry.provider, "model": entry.model, "tier": entry.tier,
            "mode": entry.mode, "context_window_tokens": entry.context_window_tokens,
            "max_output_tokens": entry.max_output_tokens,
            "input_usd_per_mtok": str(entry.input_usd_per_mtok),
            "output_usd_per_mtok": str(entry.output_usd_per_mtok),
            "cost_per_call_usd": per_call, "cost_per_day_usd": per_call * calls_per_day,
            "cost_per_month_usd": per_call * calls_per_day * MONTH_DAYS,
            "pricing_id": entry.pricing_id, "_nusd": per_call_nusd,
        })
    rows.sort(key=lambda r: (r["_nusd"], rank.get(str(r["provider"]), len(rank)), r["model"]))
    for row in rows:
        del row["_nusd"]
    return rows[:limit]

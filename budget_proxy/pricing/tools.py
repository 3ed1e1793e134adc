"""Cost tools over a price: a call's cost line by line (model recommendations live in
`budget_proxy.recommend`)."""

from __future__ import annotations

from typing import Any

from budget_proxy.pricing.book import _MTOK
from budget_proxy.pricing.catalog import ModelPrice
from budget_proxy.usage import Usage, cost_of


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

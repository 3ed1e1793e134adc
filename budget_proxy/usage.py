"""The one usage normaliser and the one cost function.

Providers report tokens in different shapes and with different overlaps: OpenAI's
`prompt_tokens` includes cached tokens and `completion_tokens` includes reasoning tokens;
Anthropic's `input_tokens` excludes cache reads and cache writes. `Usage` removes the overlaps
so each token is priced exactly once:

- `input_tokens`: input billed at the plain input rate (no cache read, no cache write)
- `cached_input_tokens`: input read from the prompt cache
- `cache_write_tokens`: input written to the prompt cache
- `output_tokens`: all output, reasoning included; `reasoning_tokens` is the part of it that
  was reasoning (priced at the reasoning rate when the catalog has one)
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, Protocol


class PriceLike(Protocol):
    input_usd_per_mtok: Decimal
    output_usd_per_mtok: Decimal
    cache_read_usd_per_mtok: Decimal | None
    cache_write_usd_per_mtok: Decimal | None
    reasoning_usd_per_mtok: Decimal | None


@dataclass(frozen=True, slots=True)
class Usage:
    input_tokens: int = 0
    cached_input_tokens: int = 0
    cache_write_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0

    @property
    def total_input_tokens(self) -> int:
        return self.input_tokens + self.cached_input_tokens + self.cache_write_tokens

    @property
    def total_tokens(self) -> int:
        return self.total_input_tokens + self.output_tokens


def _int(value: Any) -> int:
    return int(value) if isinstance(value, int | float) else 0


def from_openai(usage: dict[str, Any]) -> Usage:
    """Chat completions, completions and embeddings (`prompt_tokens`), and the Responses API
    (`input_tokens`), streamed or not."""
    if "input_tokens" in usage:  # Responses API
        prompt = _int(usage.get("input_tokens"))
        output = _int(usage.get("output_tokens"))
        in_details = usage.get("input_tokens_details") or {}
        out_details = usage.get("output_tokens_details") or {}
    else:
        prompt = _int(usage.get("prompt_tokens"))
        output = _int(usage.get("completion_tokens"))
        in_details = usage.get("prompt_tokens_details") or {}
        out_details = usage.get("completion_tokens_details") or {}
    cached = min(prompt, _int(in_details.get("cached_tokens")))
    reasoning = min(output, _int(out_details.get("reasoning_tokens")))
    return Usage(
        input_tokens=prompt - cached,
        cached_input_tokens=cached,
        output_tokens=output,
        reasoning_tokens=reasoning,
    )


def from_anthropic(usage: dict[str, Any], output_tokens: int | None = None) -> Usage:
    """Messages API usage; in a stream, `usage` comes from `message_start` and the cumulative
    `output_tokens` from the last `message_delta`."""
    return Usage(
        input_tokens=_int(usage.get("input_tokens")),
        cached_input_tokens=_int(usage.get("cache_read_input_tokens")),
        cache_write_tokens=_int(usage.get("cache_creation_input_tokens")),
        output_tokens=_int(usage.get("output_tokens")) if output_tokens is None else output_tokens,
    )


def from_gemini(usage_metadata: dict[str, Any]) -> Usage:
    """Gemini `usageMetadata`: prompt includes cached content; thoughts are billed as output."""
    prompt = _int(usage_metadata.get("promptTokenCount"))
    cached = min(prompt, _int(usage_metadata.get("cachedContentTokenCount")))
    candidates = _int(usage_metadata.get("candidatesTokenCount"))
    thoughts = _int(usage_metadata.get("thoughtsTokenCount"))
    return Usage(
        input_tokens=prompt - cached,
        cached_input_tokens=cached,
        output_tokens=candidates + thoughts,
        reasoning_tokens=thoughts,
    )


@dataclass(frozen=True, slots=True)
class Cost:
    """Cost in nano-USD, split as the seed model reports it (input side, output side)."""

    input_nusd: int
    output_nusd: int

    @property
    def total_nusd(self) -> int:
        return self.input_nusd + self.output_nusd


_NUSD_PER_USD_PER_MTOK = Decimal(1000)  # 1 USD per million tokens = 1000 nano-USD per token


def _nusd(tokens: int, usd_per_mtok: Decimal) -> Decimal:
    return tokens * usd_per_mtok * _NUSD_PER_USD_PER_MTOK


def _round(value: Decimal) -> int:
    return int(value.to_integral_value(rounding=ROUND_HALF_UP))


def cost_of(usage: Usage, price: PriceLike) -> Cost:
    """Price each token class at its own rate; missing cache/reasoning rates fall back to the
    input/output rate (how providers without those rates bill them)."""
    cache_read = price.cache_read_usd_per_mtok
    cache_write = price.cache_write_usd_per_mtok
    reasoning = price.reasoning_usd_per_mtok
    input_side = (
        _nusd(usage.input_tokens, price.input_usd_per_mtok)
        + _nusd(usage.cached_input_tokens, price.input_usd_per_mtok if cache_read is None
                else cache_read)
        + _nusd(usage.cache_write_tokens, price.input_usd_per_mtok if cache_write is None
                else cache_write)
    )
    plain_output = usage.output_tokens - usage.reasoning_tokens
    output_side = _nusd(plain_output, price.output_usd_per_mtok) + _nusd(
        usage.reasoning_tokens, price.output_usd_per_mtok if reasoning is None else reasoning
    )
    return Cost(_round(input_side), _round(output_side))


def worst_case_nusd(input_tokens: int, max_output_tokens: int, price: PriceLike) -> int:
    """The most a request can cost: all input uncached at the input rate (cache writes can cost
    more than plain input, so the dearer of the two) plus the maximum output at the dearer of
    the output and reasoning rates."""
    in_rate = max(price.input_usd_per_mtok, price.cache_write_usd_per_mtok or Decimal(0))
    out_rate = max(price.output_usd_per_mtok, price.reasoning_usd_per_mtok or Decimal(0))
    return _round(_nusd(input_tokens, in_rate) + _nusd(max_output_tokens, out_rate))

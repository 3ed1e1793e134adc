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

The readers never raise, whatever JSON a provider sends: every count is clamped into
[0, MAX_CALL_TOKENS] (`clamp_count`), so a negative figure never refunds a budget and an absurd
one never overflows a counter; each change is named in `Usage.flags` (the usage record is
flagged and an alert raised), and an unusable input or output total marks the usage
untrusted, so the call is settled from the proxy's own count instead.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, Protocol

from budget_proxy.models import MAX_CALL_TOKENS


class PriceLike(Protocol):
    """A price's fields (`budget_proxy.pricing.PriceFields`), read-only."""

    @property
    def input_usd_per_mtok(self) -> Decimal: ...
    @property
    def output_usd_per_mtok(self) -> Decimal: ...
    @property
    def cache_read_usd_per_mtok(self) -> Decimal | None: ...
    @property
    def cache_write_usd_per_mtok(self) -> Decimal | None: ...
    @property
    def reasoning_usd_per_mtok(self) -> Decimal | None: ...
    @property
    def cache_read_rate(self) -> Decimal: ...
    @property
    def cache_write_rate(self) -> Decimal: ...
    @property
    def reasoning_rate(self) -> Decimal: ...
    @property
    def input_usd_per_char(self) -> Decimal | None: ...
    @property
    def usd_per_second(self) -> Decimal | None: ...
    @property
    def usd_per_request(self) -> Decimal | None: ...
    @property
    def dearest_image(self) -> Decimal | None: ...
    @property
    def usd_per_tool_call(self) -> Mapping[str, Decimal]: ...
    def image_price(self, size: str, quality: str) -> Decimal | None: ...


@dataclass(frozen=True, slots=True)
class Usage:
    input_tokens: int = 0
    cached_input_tokens: int = 0
    cache_write_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0
    # units of the seed's other price types: input characters (speech), images generated
    # (of `image_size` and `image_quality`, "" when the request named none: the dearest),
    # and milliseconds of audio (transcription)
    characters: int = 0
    images: int = 0
    image_size: str = ""
    image_quality: str = ""
    audio_ms: int = 0
    # calls of built-in tools, by tool name (`web_search`: 2), sorted
    tool_calls: tuple[tuple[str, int], ...] = ()
    # why figures were clamped or replaced (`USAGE_FLAGS`); a flagged record raises an alert
    flags: tuple[str, ...] = ()
    # False when a main count (input or output) was unusable: the call is settled from the
    # proxy's own count instead (`budget_proxy.wire.UsageTap.fallback_usage`)
    trusted: bool = True

    @property
    def total_input_tokens(self) -> int:
        return self.input_tokens + self.cached_input_tokens + self.cache_write_tokens

    @property
    def total_tokens(self) -> int:
        return self.total_input_tokens + self.output_tokens


NO_UNITS = Usage()  # a call that uses no unit of the seed's other price types (immutable)

# Why a provider's usage figure was not taken as is. Every count is clamped into
# [0, MAX_CALL_TOKENS]: a negative count never refunds a budget, an absurd one never overflows
# a counter.
NEGATIVE_COUNT = "negative_count"
ABSURD_COUNT = "absurd_count"  # more than MAX_CALL_TOKENS, infinite included
WRONG_TYPE = "wrong_type"  # not a whole number (string, bool, list, object, NaN, fraction)
MISSING_COUNT = "missing_count"  # a count every answer of that API carries is absent
UNPARSEABLE_USAGE = "unparseable_usage"  # a complete answer without usage the proxy could read
USAGE_FLAGS = (NEGATIVE_COUNT, ABSURD_COUNT, WRONG_TYPE, MISSING_COUNT, UNPARSEABLE_USAGE)


def clamp_count(value: Any, *, required: bool = False) -> tuple[int, str | None]:
    """A provider's token count as an int in [0, MAX_CALL_TOKENS], with the reason it was
    changed (None when taken as is). Total: any JSON value in, never an exception out. A bool
    is not a count; a whole float (`12.0`) is; an absent value (None) is 0, flagged only when
    `required`."""
    if value is None:
        return 0, MISSING_COUNT if required else None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0, WRONG_TYPE
    if value != value:  # NaN
        return 0, WRONG_TYPE
    if value < 0:
        return 0, NEGATIVE_COUNT
    if value > MAX_CALL_TOKENS:
        return MAX_CALL_TOKENS, ABSURD_COUNT
    if isinstance(value, float) and not value.is_integer():
        return int(value), WRONG_TYPE
    return int(value), None


class _Reader:
    """Reads one usage object: clamped counts, and the reasons of every change."""

    __slots__ = ("_no_usage", "flags", "trusted")

    def __init__(self) -> None:
        self.flags: list[str] = []
        self.trusted = True
        self._no_usage = False  # the usage object itself was absent or not an object

    def section(self, value: Any, *, main: bool = False) -> dict[str, Any]:
        """A nested object (`usage`, `prompt_tokens_details`); anything else reads as empty.
        `main`: the usage object itself."""
        if isinstance(value, dict):
            return value
        if value is not None:
            self._flag(WRONG_TYPE, main)
        elif main:
            self._flag(MISSING_COUNT, main)
        self._no_usage = self._no_usage or main
        return {}

    def count(self, value: Any, *, main: bool = False, required: bool = False) -> int:
        """`main`: an input or output total the settlement cannot do without."""
        count, reason = clamp_count(value, required=required and not self._no_usage)
        if reason is not None:
            self._flag(reason, main)
        return count

    def _flag(self, reason: str, main: bool) -> None:
        if reason not in self.flags:
            self.flags.append(reason)
        if main:
            self.trusted = False

    def usage(self, *, input_tokens: int = 0, cached_input_tokens: int = 0,
              cache_write_tokens: int = 0, output_tokens: int = 0,
              reasoning_tokens: int = 0) -> Usage:
        return Usage(input_tokens=input_tokens, cached_input_tokens=cached_input_tokens,
                     cache_write_tokens=cache_write_tokens, output_tokens=output_tokens,
                     reasoning_tokens=reasoning_tokens, flags=tuple(self.flags),
                     trusted=self.trusted)


def from_openai(usage: Any, *, output_expected: bool = True) -> Usage:
    """Chat completions, completions and embeddings (`prompt_tokens`), and the Responses API
    (`input_tokens`), streamed or not. Embeddings report no output (`output_expected=False`)."""
    r = _Reader()
    u = r.section(usage, main=True)
    if "input_tokens" in u:  # Responses API
        in_key, out_key, in_details_key, out_details_key = (
            "input_tokens", "output_tokens", "input_tokens_details", "output_tokens_details")
    else:
        in_key, out_key, in_details_key, out_details_key = (
            "prompt_tokens", "completion_tokens", "prompt_tokens_details",
            "completion_tokens_details")
    prompt = r.count(u.get(in_key), main=True, required=True)
    output = r.count(u.get(out_key), main=True, required=output_expected)
    # overlaps stay consistent: cached is part of the prompt, reasoning part of the output
    cached = min(prompt, r.count(r.section(u.get(in_details_key)).get("cached_tokens")))
    reasoning = min(output, r.count(r.section(u.get(out_details_key)).get("reasoning_tokens")))
    return r.usage(input_tokens=prompt - cached, cached_input_tokens=cached,
                   output_tokens=output, reasoning_tokens=reasoning)


def from_anthropic(usage: Any, output_tokens: Any = None) -> Usage:
    """Messages API usage; in a stream, `usage` comes from `message_start` and the cumulative
    `output_tokens` from the last `message_delta`."""
    r = _Reader()
    u = r.section(usage, main=True)
    output = u.get("output_tokens") if output_tokens is None else output_tokens
    return r.usage(
        input_tokens=r.count(u.get("input_tokens"), main=True, required=True),
        cached_input_tokens=r.count(u.get("cache_read_input_tokens")),
        cache_write_tokens=r.count(u.get("cache_creation_input_tokens")),
        output_tokens=r.count(output, main=True, required=True),
    )


def from_gemini(usage_metadata: Any) -> Usage:
    """Gemini `usageMetadata`: prompt includes cached content; thoughts are billed as output.
    A blocked prompt has no candidates, so their count may be absent."""
    r = _Reader()
    u = r.section(usage_metadata, main=True)
    prompt = r.count(u.get("promptTokenCount"), main=True, required=True)
    cached = min(prompt, r.count(u.get("cachedContentTokenCount")))
    candidates = r.count(u.get("candidatesTokenCount"), main=True)
    # two clamped counts: their sum stays within 2 x MAX_CALL_TOKENS
    thoughts = r.count(u.get("thoughtsTokenCount"), main=True)
    return r.usage(input_tokens=prompt - cached, cached_input_tokens=cached,
                   output_tokens=candidates + thoughts, reasoning_tokens=thoughts)


def from_ollama(answer: Any, *, output_expected: bool = True) -> Usage:
    """Ollama's native answer (the last NDJSON line of a stream, `"done": true`):
    `prompt_eval_count` input and `eval_count` output. Ollama leaves `prompt_eval_count` out
    when the whole prompt came from its cache: no input tokens were evaluated, so none are
    counted. Embeddings (`api/embed`) report input only."""
    r = _Reader()
    u = r.section(answer, main=True)
    return r.usage(
        input_tokens=r.count(u.get("prompt_eval_count"), main=True),
        output_tokens=r.count(u.get("eval_count"), main=True, required=output_expected),
    )


def merge_flags(*groups: tuple[str, ...]) -> tuple[str, ...]:
    """Flags of several readings, each once, in order."""
    return tuple(dict.fromkeys(flag for group in groups for flag in group))


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


_NUSD_PER_USD = Decimal(1_000_000_000)
_MS_PER_S = Decimal(1000)


def _units_nusd(usage: Usage, price: PriceLike) -> tuple[Decimal, Decimal]:
    """(input side, output side) of the prices by character, second, image and request; a
    unit the model has no price for costs nothing (it is priced by tokens). An image of no
    named size costs the dearest image price."""
    tool_fees = price.usd_per_tool_call
    input_side = _NUSD_PER_USD * (
        usage.characters * (price.input_usd_per_char or 0)
        + usage.audio_ms * (price.usd_per_second or 0) / _MS_PER_S
        + (price.usd_per_request or 0)
        + sum((count * tool_fees.get(tool, 0) for tool, count in usage.tool_calls),
              Decimal(0)))
    per_image = (price.image_price(usage.image_size, usage.image_quality)
                 if usage.image_size else price.dearest_image)
    if per_image is None and usage.images:
        per_image = price.dearest_image
    return input_side, _NUSD_PER_USD * usage.images * (per_image or 0)


def cost_of(usage: Usage, price: PriceLike) -> Cost:
    """Price each token class at its own rate; a missing cache or reasoning rate falls back
    to the input or output rate (`PriceFields`' rule: how providers without those rates bill
    them). Characters, seconds of audio, images and the fixed fee of a call are priced by
    the model's unit prices."""
    input_side = (
        _nusd(usage.input_tokens, price.input_usd_per_mtok)
        + _nusd(usage.cached_input_tokens, price.cache_read_rate)
        + _nusd(usage.cache_write_tokens, price.cache_write_rate)
    )
    plain_output = usage.output_tokens - usage.reasoning_tokens
    output_side = (_nusd(plain_output, price.output_usd_per_mtok)
                   + _nusd(usage.reasoning_tokens, price.reasoning_rate))
    units_in, units_out = _units_nusd(usage, price)
    return Cost(_round(input_side + units_in), _round(output_side + units_out))


def worst_case_nusd(input_tokens: int, max_output_tokens: int, price: PriceLike,
                    units: Usage | None = None) -> int:
    """The most a request can cost: all input uncached at the input rate (cache writes can cost
    more than plain input, so the dearer of the two) plus the maximum output at the dearer of
    the output and reasoning rates, plus its `units` (characters, images, seconds of audio:
    the most it can use) at their prices and the fixed fee of a call."""
    in_rate = max(price.input_usd_per_mtok, price.cache_write_rate)
    out_rate = max(price.output_usd_per_mtok, price.reasoning_rate)
    units_in, units_out = _units_nusd(units or Usage(), price)
    return _round(_nusd(input_tokens, in_rate) + _nusd(max_output_tokens, out_rate)
                  + units_in + units_out)

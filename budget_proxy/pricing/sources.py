"""Price sources: where price updates read prices from, and how far each is trusted.

A source is a location (an HTTP URL or a local file) plus an adapter for its format:

- ``litellm``: LiteLLM's ``model_prices_and_context_window.json`` (USD per token as JSON
  numbers, ``litellm_provider`` per record);
- ``openrouter``: OpenRouter's ``/api/v1/models`` (``data[].pricing`` USD-per-token strings:
  ``prompt``, ``completion``, ``input_cache_read``, ``input_cache_write``);
- ``catalog``: our own catalog format (``entries`` with ``*_usd_per_mtok`` decimal strings), the
  natural format of a local file an operator maintains.

Adapters are pure (bytes in, quotes out) and keep only what a quote can say for sure: a field a
source does not give, or gives as zero where zero means "not listed" (cache prices), is left
out, and a price update then keeps the current value of that field. Prices become exact
decimals per million tokens; floats never reach a price.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, replace
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from budget_proxy.config import PriceSourceConfig, Settings
from budget_proxy.pricing.catalog import LOCAL_PROVIDERS, PROVIDER_ALIASES, PROVIDER_PREFERENCE

LITELLM_URL = (
    "https://raw.githubusercontent.com/BerriAI/litellm/main/model_prices_and_context_window.json"
)
OPENROUTER_URL = "https://openrouter.ai/api/v1/models"
DEFAULT_TRUST = {"file": 1.0, "litellm": 0.8, "openrouter": 0.7}
DEFAULT_FORMAT = {"file": "auto", "litellm": "litellm", "openrouter": "openrouter"}
FETCH_TIMEOUT_S = 30.0
MAX_SOURCE_BYTES = 64 * 1024 * 1024

TOKEN_QUOTE_FIELDS = (
    "input_usd_per_mtok",
    "output_usd_per_mtok",
    "cache_read_usd_per_mtok",
    "cache_write_usd_per_mtok",
    "reasoning_usd_per_mtok",
)
# the other price types a source may quote: exact USD per unit (`pricing.fields`)
UNIT_QUOTE_FIELDS = ("input_usd_per_char", "usd_per_image", "usd_per_second",
                     "usd_per_request")
QUOTE_FIELDS = (*TOKEN_QUOTE_FIELDS, *UNIT_QUOTE_FIELDS)
# LiteLLM's names of the unit prices (USD per unit)
LITELLM_UNIT_NAMES = {
    "input_usd_per_char": "input_cost_per_character",
    "usd_per_image": "output_cost_per_image",
    "usd_per_second": "input_cost_per_second",
}
_MTOK = Decimal(1_000_000)
_QUANTUM = Decimal("0.000001")  # per-Mtok precision: 1e-12 USD per token
_UNIT_QUANTUM = Decimal("0.000000000001")  # 1e-12 USD per character, image, second, call

# providers the catalog prices, under the names each source uses for them
KNOWN_PROVIDERS = frozenset(PROVIDER_PREFERENCE)
LITELLM_PROVIDERS: dict[str, str] = {"text-completion-openai": "openai"}
OPENROUTER_PROVIDERS = {
    "openai": "openai", "anthropic": "anthropic", "google": "gemini", "mistralai": "mistral",
    "deepseek": "deepseek", "x-ai": "xai",
}
# providers whose cache-write figure in LiteLLM is not a per-written-token price
# (Gemini: hourly storage; DeepSeek: cache misses, billed at the input rate)
NO_CACHE_WRITE_PRICE = frozenset({"gemini", "deepseek"})


class SourceError(Exception):
    """A source could not be read or parsed; the message names the source."""


@dataclass(frozen=True, slots=True)
class Quote:
    """One source's prices for one model, USD per million tokens; ``None``: not given."""

    provider: str
    model: str
    input_usd_per_mtok: Decimal | None = None
    output_usd_per_mtok: Decimal | None = None
    cache_read_usd_per_mtok: Decimal | None = None
    cache_write_usd_per_mtok: Decimal | None = None
    reasoning_usd_per_mtok: Decimal | None = None
    input_usd_per_char: Decimal | None = None
    usd_per_image: Decimal | None = None
    usd_per_second: Decimal | None = None
    usd_per_request: Decimal | None = None

    def prices(self) -> dict[str, Decimal]:
        return {f: v for f in QUOTE_FIELDS if (v := getattr(self, f)) is not None}

    @property
    def is_zero(self) -> bool:
        """A hosted model quoted at $0 in and out is an error in the source, never a price."""
        return self.provider not in LOCAL_PROVIDERS and not any(self.prices().values())


# conversions ------------------------------------------------------------------------------
def per_mtok(value: Decimal) -> Decimal:
    """Quantize to the catalog's precision and drop trailing zeros beyond cents."""
    value = value.quantize(_QUANTUM).normalize()
    return value.quantize(Decimal("0.01")) if value.as_tuple().exponent > -2 else value  # type: ignore[operator]


def _amount(value: Any) -> Decimal | None:
    """A JSON number or a decimal string as an exact, finite, non-negative `Decimal`, else
    None. Floats go through their shortest repr, so 2.5e-06 is exactly 2.5e-06."""
    if value is None or isinstance(value, bool):
        return None
    try:
        number = Decimal(repr(float(value))) if isinstance(value, float) else Decimal(str(value))
    except (InvalidOperation, ValueError):
        return None
    return number if number.is_finite() and number >= 0 else None


def from_per_token(value: Any) -> Decimal | None:
    """USD per token -> exact USD per million tokens (2.5e-06 becomes exactly 2.50)."""
    number = _amount(value)
    return None if number is None else per_mtok(number * _MTOK)


def from_usd(value: Any) -> Decimal | None:
    """USD per unit -> exact USD, or None when it is not a price (0.04 is 0.04)."""
    number = _amount(value)
    if number is None:
        return None
    try:
        return number.quantize(_UNIT_QUANTUM).normalize()
    except ArithmeticError:  # too large to hold at that precision: not a price
        return None


def from_per_mtok(value: Any) -> Decimal | None:
    number = _amount(value)
    return None if number is None else per_mtok(number)


def _nonzero(value: Decimal | None) -> Decimal | None:
    """Zero cache prices mean "not listed", never "free"."""
    return None if value is None or value == 0 else value


def provider_name(name: str | None) -> str | None:
    if not isinstance(name, str):
        return None
    key = name.strip().lower()
    return PROVIDER_ALIASES.get(key, key)


# adapters ---------------------------------------------------------------------------------
def parse_litellm(data: Any) -> list[Quote]:
    """LiteLLM's table: ``{"gpt-4o": {"litellm_provider": "openai", "input_cost_per_token":
    2.5e-06, ...}, "gemini/gemini-2.5-pro": {...}, ...}``."""
    if not isinstance(data, dict):
        raise ValueError("a LiteLLM price table is a JSON object of models")
    quotes = []
    for key, record in data.items():
        if not isinstance(record, dict) or key == "sample_spec":
            continue
        raw = record.get("litellm_provider")
        raw_provider = raw if isinstance(raw, str) else None
        provider = LITELLM_PROVIDERS.get(raw_provider or "") or provider_name(raw_provider)
        if provider not in KNOWN_PROVIDERS:
            continue
        name = key
        for prefix in (raw_provider, provider):
            if isinstance(prefix, str) and name.startswith(f"{prefix}/"):
                name = name[len(prefix) + 1:]
                break
        units = {f: _nonzero(from_usd(record.get(name)))
                 for f, name in LITELLM_UNIT_NAMES.items()}
        input_rate = from_per_token(record.get("input_cost_per_token"))
        if input_rate is None:
            if any(units.values()):  # priced by the unit only
                quotes.append(Quote(provider=provider, model=name, **units))
            continue
        output_rate = from_per_token(record.get("output_cost_per_token"))
        if output_rate is None and record.get("mode") == "embedding":
            output_rate = Decimal("0.00")
        reasoning = from_per_token(record.get("output_cost_per_reasoning_token"))
        quotes.append(Quote(
            provider=provider, model=name, input_usd_per_mtok=input_rate,
            output_usd_per_mtok=output_rate,
            cache_read_usd_per_mtok=_nonzero(from_per_token(
                record.get("cache_read_input_token_cost"))),
            cache_write_usd_per_mtok=None if provider in NO_CACHE_WRITE_PRICE else _nonzero(
                from_per_token(record.get("cache_creation_input_token_cost"))),
            reasoning_usd_per_mtok=None if reasoning == output_rate else _nonzero(reasoning),
            **units,
        ))
    return quotes


def parse_openrouter(data: Any) -> list[Quote]:
    """OpenRouter's ``/api/v1/models``: ``{"data": [{"id": "openai/gpt-4o", "pricing":
    {"prompt": "0.0000025", "completion": "0.00001", "input_cache_read": ...}}]}``. Variants
    (``:free``, ``:thinking``...) and dynamically priced routers (``-1``) are skipped."""
    models = data.get("data") if isinstance(data, dict) else None
    if not isinstance(models, list):
        raise ValueError("an OpenRouter models list has a 'data' array")
    quotes = []
    for model in models:
        if not isinstance(model, dict) or not isinstance(model.get("id"), str):
            continue
        prefix, _, name = model["id"].partition("/")
        provider = OPENROUTER_PROVIDERS.get(prefix.lower())
        pricing = model.get("pricing")
        if provider is None or not name or ":" in name or not isinstance(pricing, dict):
            continue
        if any(str(v).strip() == "-1" for v in pricing.values()):
            continue
        input_rate = from_per_token(pricing.get("prompt"))
        output_rate = from_per_token(pricing.get("completion"))
        if input_rate is None or output_rate is None:
            continue
        quotes.append(Quote(
            provider=provider, model=name, input_usd_per_mtok=input_rate,
            output_usd_per_mtok=output_rate,
            cache_read_usd_per_mtok=_nonzero(from_per_token(pricing.get("input_cache_read"))),
            cache_write_usd_per_mtok=None if provider in NO_CACHE_WRITE_PRICE else _nonzero(
                from_per_token(pricing.get("input_cache_write"))),
            reasoning_usd_per_mtok=_nonzero(from_per_token(pricing.get("internal_reasoning"))),
        ))
    return quotes


def parse_catalog(data: Any) -> list[Quote]:
    """Our catalog format: ``{"entries": [{"provider", "model", "input_usd_per_mtok": "2.50",
    ...}]}`` or a bare list of such entries; ``aliases`` quote the same prices."""
    entries = data.get("entries") if isinstance(data, dict) else data
    if not isinstance(entries, list):
        raise ValueError("a catalog file has an 'entries' array")
    quotes = []
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        provider = provider_name(entry.get("provider"))
        model = entry.get("model")
        if provider is None or not isinstance(model, str) or not model:
            continue
        prices = {f: from_per_mtok(entry.get(f)) for f in TOKEN_QUOTE_FIELDS}
        prices.update((f, from_usd(entry.get(f))) for f in UNIT_QUOTE_FIELDS)
        if prices["input_usd_per_mtok"] is None:
            continue
        prices["cache_read_usd_per_mtok"] = _nonzero(prices["cache_read_usd_per_mtok"])
        prices["cache_write_usd_per_mtok"] = _nonzero(prices["cache_write_usd_per_mtok"])
        quote = Quote(provider=provider, model=model, **prices)
        quotes.append(quote)
        for alias in entry.get("aliases") or ():
            if isinstance(alias, str) and alias:
                quotes.append(replace(quote, model=alias))
    return quotes


PARSERS = {"litellm": parse_litellm, "openrouter": parse_openrouter, "catalog": parse_catalog}


def detect_format(data: Any) -> str:
    if isinstance(data, list) or (isinstance(data, dict) and "entries" in data):
        return "catalog"
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        return "openrouter"
    return "litellm"


def parse(raw: bytes, fmt: str = "auto") -> list[Quote]:
    """Bytes of a source in ``fmt`` (or detected) -> quotes. CPU-bound for big tables: call
    it in a thread from the event loop."""
    data = orjson.loads(raw)
    fmt = detect_format(data) if fmt == "auto" else fmt
    return PARSERS[fmt](data)


# sources ----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class PriceSource:
    """A configured source: name, kind, location (URL or path), format and trust (0..1)."""

    name: str
    kind: str
    location: str
    format: str
    trust: float

    @property
    def is_url(self) -> bool:
        return self.location.startswith(("http://", "https://"))

    async def read(self, session: aiohttp.ClientSession | None) -> bytes:
        if not self.is_url:
            path = Path(self.location.removeprefix("file://"))
            try:
                return await asyncio.to_thread(path.read_bytes)
            except OSError as exc:
                raise SourceError(f"{self.name}: cannot read {path}: {exc}") from exc
        if session is None:
            raise SourceError(f"{self.name}: no HTTP session to fetch {self.location}")
        try:
            async with session.get(
                self.location, timeout=aiohttp.ClientTimeout(total=FETCH_TIMEOUT_S),
                headers={"Accept": "application/json"},
            ) as resp:
                if resp.status != 200:
                    raise SourceError(f"{self.name}: {self.location} answered HTTP {resp.status}")
                if (resp.content_length or 0) > MAX_SOURCE_BYTES:
                    raise SourceError(f"{self.name}: {self.location} is too large")
                return await resp.content.read(MAX_SOURCE_BYTES + 1)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise SourceError(f"{self.name}: cannot fetch {self.location}: {exc!r}") from exc

    async def fetch(self, session: aiohttp.ClientSession | None) -> list[Quote]:
        """Read and parse (parsing in a thread, so a big table never stalls the proxy)."""
        raw = await self.read(session)
        if len(raw) > MAX_SOURCE_BYTES:
            raise SourceError(f"{self.name}: more than {MAX_SOURCE_BYTES} bytes")
        try:
            return await asyncio.to_thread(parse, raw, self.format)
        except (ValueError, TypeError, KeyError) as exc:
            raise SourceError(f"{self.name}: not a {self.format} price list: {exc}") from exc


def source_from_config(config: PriceSourceConfig) -> PriceSource:
    location = config.url or (str(config.path) if config.path is not None else None)
    if not location:
        raise ValueError(f"price source {config.name or config.kind}: needs a url or a path")
    fmt = DEFAULT_FORMAT[config.kind] if config.format == "auto" else config.format
    trust = DEFAULT_TRUST[config.kind] if config.trust is None else config.trust
    return PriceSource(name=config.name or config.kind, kind=config.kind, location=location,
                       format=fmt, trust=trust)


def parse_sources_env(text: str | None) -> list[PriceSourceConfig]:
    """``BUDGET_PRICE_SOURCES``: ``default``; a JSON list of source tables; or comma-separated
    ``kind=url-or-path[|trust]``, e.g.
    ``litellm=https://.../model_prices_and_context_window.json,file=/etc/prices.json|0.9``."""
    text = (text or "").strip()
    if not text:
        return []
    if text == "default":
        return [PriceSourceConfig(kind="litellm", url=LITELLM_URL),
                PriceSourceConfig(kind="openrouter", url=OPENROUTER_URL)]
    if text.startswith("["):
        return [PriceSourceConfig(**table) for table in json.loads(text)]
    configs = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        kind, sep, rest = item.partition("=")
        if not sep:
            raise ValueError(f"price source {item!r}: expected kind=url-or-path[|trust]")
        location, _, trust = rest.partition("|")
        is_url = location.startswith(("http://", "https://"))
        configs.append(PriceSourceConfig(
            kind=kind.strip(),  # type: ignore[arg-type]
            url=location if is_url else None, path=None if is_url else Path(location),
            trust=float(trust) if trust else None,
        ))
    return configs


def configured_sources(settings: Settings) -> list[PriceSource]:
    """The config file's ``[[price_sources]]`` plus ``BUDGET_PRICE_SOURCES``; names made
    unique (``litellm``, ``litellm-2``...)."""
    configs = [*settings.price_source_tables, *parse_sources_env(settings.price_sources)]
    sources = []
    seen: dict[str, int] = {}
    for config in configs:
        source = source_from_config(config)
        count = seen.get(source.name, 0) + 1
        seen[source.name] = count
        if count > 1:
            source = replace(source, name=f"{source.name}-{count}")
        sources.append(source)
    return sources


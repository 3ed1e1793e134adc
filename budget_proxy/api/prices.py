"""Prices: what is in force, each model's history, manual prices, updates, cost of a call.

Prices are the catalog overlaid with stored price versions (`budget_proxy.pricing.PriceBook`);
a change is always a new version. Rates cross the API as exact decimal strings in USD per
million tokens (`*_usd_per_mtok`), alongside the seed's USD-per-token floats
(`*_cost_per_token`, informational); the other price types as exact USD per character,
image, second or call (`input_usd_per_char`, `usd_per_image`, `usd_per_second`,
`usd_per_request`, or the seed's names `input_cost_per_char`, `cost_per_image`,
`cost_per_second`, `fixed_cost_per_request`), per image by size and per tool call.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any

import orjson
from aiohttp import ChainMapProxy, web
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from budget_proxy.api.common import api_error, json_response, read_model, read_query
from budget_proxy.api.openapi import api_route
from budget_proxy.appkeys import SETTINGS
from budget_proxy.models import MAX_CALL_TOKENS, Bound, CallTokens, Timestamp
from budget_proxy.pricing import (
    PRICE_FIELDS,
    UNIT_PRICE_FIELDS,
    Mode,
    ModelPrice,
    PriceWriteError,
    Tier,
    cost_breakdown,
)
from budget_proxy.pricing.fields import SEED_UNIT_NAMES
from budget_proxy.pricing.sources import from_per_mtok, from_per_token, from_usd
from budget_proxy.pricing.update import book_of, updater_for

TAG = "prices"
_running: set[asyncio.Task[Any]] = set()  # updates outliving a client that hung up


class PricesQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    provider: str | None = Field(None, description="Only this provider's prices.")
    model: str | None = Field(
        None, description="The price a model name resolves to (aliases, snapshots).")


class PriceView(BaseModel):
    """One price (seed ProviderPricing shape plus exact per-Mtok decimal strings)."""

    model_config = ConfigDict(extra="allow")

    pricing_id: str
    provider: str
    model: str
    aliases: list[str] = []
    price_type: str = "token"
    input_usd_per_mtok: str
    output_usd_per_mtok: str
    cache_read_usd_per_mtok: str | None = None
    cache_write_usd_per_mtok: str | None = None
    reasoning_usd_per_mtok: str | None = None
    input_cost_per_token: float
    output_cost_per_token: float
    context_window_tokens: int | None = None
    max_output_tokens: int | None = None
    tier: str
    mode: str
    effective_date: datetime
    end_date: datetime | None = None
    source: str
    verified: bool
    created_at: datetime


PriceValue = Decimal | int | float | str
# A rate above this many USD per million tokens is a typo or an attack, not a price: with it,
# a call of MAX_CALL_TOKENS tokens still costs less than MAX_USD.
MAX_USD_PER_MTOK = Decimal(1_000_000)
MAX_USD_PER_UNIT = Decimal(1_000)  # a character, an image, a second, a call, a tool call
UNIT_MAP_FIELDS = ("usd_per_image_by_size", "usd_per_tool_call")
MAX_UNIT_MAP_KEYS = 64
TokenCount = Annotated[int, Bound(1, MAX_CALL_TOKENS)]


class SetPriceRequest(BaseModel):
    """A manual price: becomes a new version of the model (a new model if the catalog has no
    such name or alias). Give each rate in USD per million tokens (`*_usd_per_mtok`) or per
    token (`*_cost_per_token`, the seed's names); rates left out keep their current value, a
    cache or reasoning rate set to null falls back to the input/output rate."""

    model_config = ConfigDict(extra="forbid")

    provider: str = Field(min_length=1)
    model: str = Field(min_length=1)
    input_usd_per_mtok: PriceValue | None = None
    output_usd_per_mtok: PriceValue | None = None
    cache_read_usd_per_mtok: PriceValue | None = None
    cache_write_usd_per_mtok: PriceValue | None = None
    reasoning_usd_per_mtok: PriceValue | None = None
    input_cost_per_token: PriceValue | None = None
    output_cost_per_token: PriceValue | None = None
    cache_read_cost_per_token: PriceValue | None = None
    cache_write_cost_per_token: PriceValue | None = None
    reasoning_cost_per_token: PriceValue | None = None
    context_window_tokens: TokenCount | None = None
    max_output_tokens: TokenCount | None = None
    input_usd_per_char: PriceValue | None = None
    usd_per_image: PriceValue | None = None
    usd_per_second: PriceValue | None = None
    usd_per_request: PriceValue | None = None
    input_cost_per_char: PriceValue | None = None
    cost_per_image: PriceValue | None = None
    cost_per_second: PriceValue | None = None
    fixed_cost_per_request: PriceValue | None = None
    usd_per_image_by_size: dict[Annotated[str, Field(min_length=1, max_length=64)],
                                PriceValue] | None = None
    usd_per_tool_call: dict[Annotated[str, Field(min_length=1, max_length=64)],
                            PriceValue] | None = None
    tier: Tier | None = None
    mode: Mode | None = None
    effective_date: Timestamp | None = Field(
        None, description="When the price takes effect (default now; may be in the future).")
    source: str = Field("manual", min_length=1)
    verified: bool = True
    note: str | None = None

    @field_validator("*", mode="before")
    @classmethod
    def _rate_not_a_bool(cls, value: Any, info: ValidationInfo) -> Any:
        unit_names = (*UNIT_PRICE_FIELDS, *SEED_UNIT_NAMES.values())
        if isinstance(value, bool) and info.field_name and (info.field_name.endswith(
                ("_usd_per_mtok", "_cost_per_token")) or info.field_name in unit_names):
            raise ValueError("a rate is a number, not a boolean")
        if isinstance(value, dict) and info.field_name in UNIT_MAP_FIELDS:
            if len(value) > MAX_UNIT_MAP_KEYS:
                raise ValueError(f"at most {MAX_UNIT_MAP_KEYS} prices")
            if any(isinstance(v, bool) for v in value.values()):
                raise ValueError("a price is a number, not a boolean")
        return value

    @model_validator(mode="after")
    def _one_unit_per_rate(self) -> SetPriceRequest:
        for name in PRICE_FIELDS:
            per_token = name.replace("_usd_per_mtok", "_cost_per_token")
            if name in self.model_fields_set and per_token in self.model_fields_set:
                raise ValueError(f"give {name} or {per_token}, not both")
            for field in (name, per_token):
                value = getattr(self, field)
                if field not in self.model_fields_set or value is None:
                    continue
                rate = self._rate(field, value)
                if rate is None:
                    raise ValueError(f"{field}: not a non-negative number")
                if rate > MAX_USD_PER_MTOK:
                    raise ValueError(f"{field}: more than {MAX_USD_PER_MTOK} USD per million "
                                     "tokens")
        for name, seed in SEED_UNIT_NAMES.items():
            if name in self.model_fields_set and seed in self.model_fields_set:
                raise ValueError(f"give {name} or {seed}, not both")
            for field in (name, seed):
                value = getattr(self, field)
                if field in self.model_fields_set and value is not None:
                    _unit_price(field, value)
        for name in UNIT_MAP_FIELDS:
            for key, value in (getattr(self, name) or {}).items():
                _unit_price(f"{name}.{key}", value)
        for name in ("input_usd_per_mtok", "output_usd_per_mtok"):
            per_token = name.replace("_usd_per_mtok", "_cost_per_token")
            if (getattr(self, name) is None and name in self.model_fields_set) or (
                    getattr(self, per_token) is None and per_token in self.model_fields_set):
                raise ValueError(f"{name.split('_')[0]} price cannot be null")
        return self

    @staticmethod
    def _rate(field: str, value: PriceValue) -> Decimal | None:
        """USD per million tokens; infinite when the value is too large to quantize."""
        try:
            if field.endswith("_cost_per_token"):
                return from_per_token(value)
            return from_per_mtok(value)
        except ArithmeticError:
            return Decimal("Infinity")

    def changes(self) -> dict[str, Any]:
        """The version fields this request sets."""
        out: dict[str, Any] = {}
        for name in PRICE_FIELDS:
            per_token = name.replace("_usd_per_mtok", "_cost_per_token")
            for field in (name, per_token):
                if field in self.model_fields_set:
                    value = getattr(self, field)
                    out[name] = None if value is None else self._rate(field, value)
        for name, seed in SEED_UNIT_NAMES.items():
            for field in (name, seed):
                if field in self.model_fields_set:
                    value = getattr(self, field)
                    out[name] = None if value is None else _unit_price(field, value)
        for name in UNIT_MAP_FIELDS:
            if name in self.model_fields_set:
                out[name] = {k: _unit_price(f"{name}.{k}", v)
                             for k, v in (getattr(self, name) or {}).items()}
        for name in ("context_window_tokens", "max_output_tokens", "tier", "mode"):
            if name in self.model_fields_set:
                out[name] = getattr(self, name)
        return out


def _unit_price(field: str, value: PriceValue) -> Decimal:
    """Exact USD per unit, or a ValueError naming the field."""
    price = from_usd(value)
    if price is None:
        raise ValueError(f"{field}: not a non-negative number")
    if price > MAX_USD_PER_UNIT:
        raise ValueError(f"{field}: more than {MAX_USD_PER_UNIT} USD per unit")
    return price


class CalculateRequest(BaseModel):
    """Token counts of one call. `input_tokens` counts every input token, cached and
    cache-written ones included (like OpenAI's prompt_tokens); `output_tokens` includes
    reasoning tokens."""

    model_config = ConfigDict(extra="forbid")

    provider: str = Field("", description="Provider (optional: resolved from the model).")
    model: str = Field(min_length=1)
    input_tokens: CallTokens = 0
    output_tokens: CallTokens = 0
    cached_tokens: CallTokens = Field(0, description="Part of input_tokens read from cache.")
    cache_write_tokens: CallTokens = Field(0, description="Part of input_tokens written to "
                                           "the cache.")
    reasoning_tokens: CallTokens = Field(0, description="Part of output_tokens.")


class UpdateQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    stream: bool = Field(False, description="Answer NDJSON: progress lines, then the report.")


# handlers ---------------------------------------------------------------------------------
async def list_prices(request: web.Request) -> web.Response:
    """The prices in force: the packaged catalog overlaid with stored price versions."""
    q = read_query(request, PricesQuery)
    if isinstance(q, web.Response):
        return q
    book = book_of(request.config_dict)
    await book.refresh()
    return json_response(book.current_prices(q.provider, q.model))


async def price_history(request: web.Request) -> web.Response:
    """Every price a model has had, oldest first, with effective and end dates; the one in
    force has `current: true`."""
    book = book_of(request.config_dict)
    await book.refresh()
    provider, model = request.match_info["provider"], request.match_info["model"]
    rows = book.history(provider, model)
    if rows is None:
        return api_error(404, "not_found", f"no price for {provider}/{model}")
    return json_response(rows)


async def set_price(request: web.Request) -> web.Response:
    """Set a model's price by hand: a new price version (201), or 200 with `changed: false`
    when it equals the latest one. 409 when another writer changed the model first or the
    effective date is before the latest version's."""
    req = await read_model(request, SetPriceRequest)
    if isinstance(req, web.Response):
        return req
    book = book_of(request.config_dict)
    try:
        version = await book.set_price(
            req.provider, req.model, req.changes(), source=req.source, verified=req.verified,
            effective_date=req.effective_date, note=req.note)
    except PriceWriteError as exc:
        return api_error(409, "conflict", str(exc))
    except (ValueError, ValidationError) as exc:
        reason = str(exc)
        return api_error(422, "validation_error", reason, [{"field": "body", "reason": reason}])
    key, _ = book.target(req.provider, req.model)
    head = book.head(key)
    assert head is not None
    view = book.view(head, aliases=_aliases(book.lookup(req.provider, req.model), key))
    return json_response({**view, "changed": version is not None},
                         201 if version is not None else 200)


def _aliases(entry: ModelPrice | None, key: tuple[str, str]) -> tuple[str, ...]:
    if entry is None or (entry.provider, entry.model.lower()) != key:
        return ()
    return entry.aliases


async def update_prices(request: web.Request) -> web.StreamResponse:
    """Run a price update now from the configured sources and answer its report (409 when
    one is already running). With `?stream=true` (or `Accept: application/x-ndjson`) the
    answer is NDJSON: `{"type": "progress", ...}` lines as sources are read and models
    judged, then `{"type": "report", "report": {...}}`."""
    q = read_query(request, UpdateQuery)
    if isinstance(q, web.Response):
        return q
    try:
        updater = updater_for(request.config_dict)
    except (ValueError, TypeError) as exc:
        return api_error(422, "invalid_config", f"price sources: {exc}")
    streamed = q.stream or "application/x-ndjson" in request.headers.get("Accept", "")
    if not streamed:
        report = await _shielded(updater.run())
        return json_response(report, 409 if report["status"] == "busy" else 200)
    response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    await response.prepare(request)

    async def progress(event: dict[str, Any]) -> None:
        try:
            await response.write(orjson.dumps({"type": "progress", **event}) + b"\n")
        except (ConnectionResetError, RuntimeError):
            pass  # the client left; the update carries on

    report = await _shielded(updater.run(progress))
    try:
        await response.write(orjson.dumps({"type": "report", "report": report}) + b"\n")
        await response.write_eof()
    except (ConnectionResetError, RuntimeError):
        pass
    return response


async def _shielded(coro: Any) -> dict[str, Any]:
    """A client hanging up must not abandon an update half applied."""
    task = asyncio.ensure_future(coro)
    _running.add(task)
    task.add_done_callback(_running.discard)
    return await asyncio.shield(task)


async def _calculate(request: web.Request, req: CalculateRequest) -> web.Response:
    try:
        result = await cost_of_call(request.config_dict, req)
    except LookupError as exc:
        return api_error(404, "unknown_model_price", str(exc))
    except ValueError as exc:
        return api_error(422, "validation_error", str(exc),
                         [{"field": "body", "reason": str(exc)}])
    return json_response(result)


async def cost_of_call(app: web.Application | ChainMapProxy,
                       req: CalculateRequest) -> dict[str, Any]:
    """The cost breakdown of a call. Raises LookupError when the model's price is refused
    (BUDGET_UNKNOWN_PRICE=refuse), ValueError when the token counts contradict each other."""
    book = book_of(app)
    await book.refresh()
    rule = app[SETTINGS].unknown_price
    # `alert` prices like `ceiling`; a cost question is not a sighting worth an alert
    price = book.resolve_price(req.provider, req.model, "refuse" if rule == "refuse"
                               else "ceiling")
    if price is None:
        raise LookupError(f"model {req.model!r} has no price; the proxy refuses it "
                          "(BUDGET_UNKNOWN_PRICE=refuse)")
    result = cost_breakdown(
        price, input_tokens=req.input_tokens, output_tokens=req.output_tokens,
        cached_tokens=req.cached_tokens, cache_write_tokens=req.cache_write_tokens,
        reasoning_tokens=req.reasoning_tokens)
    known = book.lookup(req.provider, req.model) is not None
    result.update(requested_model=req.model, priced_at="catalog" if known else "ceiling")
    return result


async def calculate(request: web.Request) -> web.Response:
    """The cost of a call with these token counts, line by line, exactly as the proxy would
    charge it (a model with no price: the unknown-price rule)."""
    req = await read_model(request, CalculateRequest)
    if isinstance(req, web.Response):
        return req
    return await _calculate(request, req)


async def calculate_get(request: web.Request) -> web.Response:
    """`POST /api/prices/calculate` as a query (for read-only tokens)."""
    req = read_query(request, CalculateRequest)
    if isinstance(req, web.Response):
        return req
    return await _calculate(request, req)


def routes() -> list[web.RouteDef]:
    return [
        api_route("GET", "/api/prices", list_prices, summary="Prices in force", tag=TAG,
                  query=PricesQuery, response=list[PriceView]),
        api_route("POST", "/api/prices", set_price, summary="Set a price (new version)",
                  tag=TAG, body=SetPriceRequest, response=PriceView, status=201),
        api_route("POST", "/api/prices/update", update_prices, summary="Run a price update "
                  "now", tag=TAG, query=UpdateQuery),
        api_route("POST", "/api/prices/calculate", calculate, summary="Cost of a call",
                  tag=TAG, body=CalculateRequest, access="read"),
        api_route("GET", "/api/prices/calculate", calculate_get, summary="Cost of a call",
                  tag=TAG, query=CalculateRequest),
        api_route("GET", "/api/prices/{provider}/{model:.+}/history", price_history,
                  summary="A model's price history", tag=TAG, response=list[PriceView]),
    ]

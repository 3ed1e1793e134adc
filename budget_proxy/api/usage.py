"""Usage: summaries (`/api/usage`), raw records (`/api/usage/records`), direct recording
(`POST /api/usage/record`) and the pre-flight question (`POST /api/usage/check`).

`record` and `check` resolve a request to counter lines exactly as the proxy does (same
policies, windows and allocation draw), so their answers match what the proxy would do.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from zoneinfo import ZoneInfo

from aiohttp import ChainMapProxy, web

from budget_proxy import allocations, planning, tokens
from budget_proxy.api.common import api_error, json_response, read_model, read_query
from budget_proxy.api.openapi import api_route
from budget_proxy.appkeys import ALERTS, EVENTS, POLICIES, PROXY, SETTINGS, STORE
from budget_proxy.enforcement import (
    CounterLine,
    RequestScope,
    Totals,
    tightest_remaining,
    warnings,
    would_refuse,
)
from budget_proxy.models import UsageRecord, nusd_to_usd, usd_to_nusd
from budget_proxy.pricing import ModelPrice
from budget_proxy.reporting import aggregate_usage, time_range
from budget_proxy.schemas import (
    CheckedLine,
    RecordedUsage,
    UsageCheckRequest,
    UsageCheckResult,
    UsageRecordRequest,
    UsageRecordsQuery,
    UsageSummary,
    UsageSummaryQuery,
)
from budget_proxy.store.base import Reservation, UsageQuery
from budget_proxy.usage import Cost, Usage, cost_of

INLINE_COUNT_CHARS = 16_384  # longer texts are counted in a thread, off the event loop


async def count_tokens(text: str | None, model: str) -> int:
    if not text:
        return 0
    if len(text) <= INLINE_COUNT_CHARS:
        return tokens.count_text(text, model)
    return await asyncio.to_thread(tokens.count_text, text, model)


def no_price(model: str, hint: str) -> web.Response:
    reason = f"model {model!r} has no price in the catalog{hint}"
    return api_error(422, "validation_error", f"model: {reason}",
                     [{"field": "model", "reason": reason}])


async def list_usage_records(request: web.Request) -> web.Response:
    """Raw usage records, newest first, filtered and paged."""
    q = read_query(request, UsageRecordsQuery)
    if isinstance(q, web.Response):
        return q
    query = UsageQuery(
        component=q.component, provider=q.provider, model=q.model, context_id=q.context_id,
        session_id=q.session_id, since=q.since, until=q.until, limit=q.limit, offset=q.offset,
    )
    return json_response(await request.config_dict[STORE].list_usage(query))


async def usage_summary(request: web.Request) -> web.Response:
    """Usage of a period: totals, one row per window, and groups by provider, model or
    component (`group_by`). Without `days`, the current window of the period."""
    q = read_query(request, UsageSummaryQuery)
    if isinstance(q, web.Response):
        return q
    return json_response(await summarize(request.config_dict, q))


async def summarize(app: web.Application | ChainMapProxy, q: UsageSummaryQuery) -> UsageSummary:
    """The usage summary of `q` (`app`: the application's state, `request.config_dict`)."""
    store = app[STORE]
    tz = ZoneInfo(app[SETTINGS].timezone)
    since, until = time_range(q.period, q.days, store.now(), tz)
    (agg,) = await aggregate_usage(store, q.period, tz, since, until, q.group_by,
                                   provider=q.provider, component=q.component, model=q.model)
    return UsageSummary(
        period=q.period, since=since, until=until, provider=q.provider, component=q.component,
        model=q.model, group_by=q.group_by, totals=agg.all.totals(),
        windows=agg.window_rows(), groups=agg.group_rows(),
    )


@dataclass
class Resolved:
    """A request resolved the way the proxy resolves it."""

    model: str
    price: ModelPrice
    component: str
    lines: list[CounterLine]
    allocation_id: str | None
    context_id: str | None
    refusal: str | None
    notes: list[str]


async def resolve(
    app: web.Application | ChainMapProxy, provider: str, model: str, price: ModelPrice,
    component: str | None,
    task_type: str | None, session: str | None, task: str | None, allocation_id: str | None,
    context_id: str | None, *, follow_soft_limits: bool,
) -> Resolved:
    """Counter lines as the proxy builds them (`budget_proxy.planning`): policies matching
    the scope, a soft limit's model move, and the allocation drawn on (whose component is
    charged when none is named)."""
    store = app[STORE]
    cache = app[POLICIES]
    await cache.refresh()
    tz = ZoneInfo(app[SETTINGS].timezone)
    now = store.now()
    alloc, refusal = await allocations.lookup(store, allocation_id, context_id)
    drawing = alloc if refusal is None else None
    named = component is not None

    def windows_for(model: str, price: ModelPrice) -> planning.Windows:
        scope = RequestScope(provider=provider, model=model,
                             component=component or app[SETTINGS].component, tier=price.tier,
                             task_type=task_type, session=session, task=task)
        return planning.windows(cache.policies, scope, now, tz, drawing, component_named=named)

    found = windows_for(model, price)
    notes: list[str] = []
    if follow_soft_limits and planning.soft_limited(cache.by_id, found.lines):
        moved, notes = planning.moved_model(cache.by_id, found.lines, await store.totals(
            [ln.key for ln in found.lines]), model)
        moved_price = app[PROXY].price_for(provider, moved) if moved else None
        if moved and moved_price is not None:
            model, price = moved, moved_price
            found = windows_for(model, price)
    drawn = found.allocation
    return Resolved(
        model=model, price=price, component=found.component, lines=found.lines,
        allocation_id=drawn.allocation_id if drawn else (
            alloc.allocation_id if alloc else allocation_id),
        context_id=context_id or (drawn.context_id if drawn else None),
        refusal=refusal, notes=notes,
    )


class NoPrice(LookupError):
    """The model has no price and the unknown-price rule refuses it."""


async def check_usage(request: web.Request) -> web.Response:
    """Would this request be allowed, and what would remain? Nothing is reserved."""
    req = await read_model(request, UsageCheckRequest)
    if isinstance(req, web.Response):
        return req
    try:
        return json_response(await check(request.config_dict, req))
    except NoPrice:
        return no_price(req.model, "; the proxy would refuse this request")


async def check(app: web.Application | ChainMapProxy, req: UsageCheckRequest) -> UsageCheckResult:
    """Would `req` be allowed, and what would remain? Nothing is reserved. Planned as the
    proxy plans a non-streamed call (`budget_proxy.planning`): its worst case, fitted under
    BUDGET_ON_INSUFFICIENT=fit, and the proxy's refusal message. Raises `NoPrice`."""
    price = app[PROXY].price_for(req.provider, req.model)
    if price is None:
        raise NoPrice(req.model)
    r = await resolve(app, req.provider, req.model, price, req.component, req.task_type,
                      req.session, req.task, req.allocation_id, req.context_id,
                      follow_soft_limits=True)
    input_tokens = req.input_tokens if req.input_tokens is not None else await count_tokens(
        req.input_text, r.model)
    held = planning.hold(input_tokens, planning.output_cap(req.max_output_tokens, 1, r.price),
                         r.price)
    result = UsageCheckResult(
        allowed=True, provider=req.provider, model=r.model, component=r.component,
        input_tokens=input_tokens, max_output_tokens=held.output_tokens,
        estimated_cost=nusd_to_usd(held.cost_nusd),
        suggested_model=r.model if r.model != req.model else None,
        allocation_id=r.allocation_id,
    )
    if r.refusal is not None:
        result.allowed, result.reason, result.refused_by = False, r.refusal, r.allocation_id
        return result
    totals = await app[STORE].totals([ln.key for ln in r.lines])
    refused = planning.refused_index(r.lines, totals, held)
    if refused is not None and app[SETTINGS].on_insufficient == "fit":
        fitted = planning.fitting_output(r.lines, totals, held.input_tokens, held.output_tokens,
                                         r.price)
        if fitted:
            held = planning.hold(held.input_tokens, fitted, r.price)
            result.max_output_tokens = fitted
            result.estimated_cost = nusd_to_usd(held.cost_nusd)
            refused = planning.refused_index(r.lines, totals, held)
    cost, n = held.cost_nusd, held.tokens
    after = [Totals(t.spent_nusd, t.reserved_nusd + cost, t.spent_tokens, t.reserved_tokens + n,
                    t.requests + 1) for t in totals]
    by_id = app[POLICIES].by_id
    for line, tot in zip(r.lines, totals, strict=True):
        policy = by_id.get(line.policy_id)
        result.lines.append(CheckedLine(
            policy_id=line.policy_id, name=policy.name if policy else "allocation",
            type=policy.type.value if policy else "allocation",
            period=policy.period.value if policy else None, window=line.key,
            enforced=line.enforce, limit_cost=None if line.limit_nusd is None else nusd_to_usd(
                line.limit_nusd), limit_tokens=line.limit_tokens,
            used_cost=nusd_to_usd(tot.used_nusd), used_tokens=tot.used_tokens,
            would_exceed=would_refuse(line, tot, cost, n),
        ))
    if refused is not None:
        line = r.lines[refused]
        result.allowed, result.refused_by = False, line.policy_id
        result.reason = planning.refusal_message(line, totals[refused], held,
                                                 by_id.get(line.policy_id))
    remaining = tightest_remaining(r.lines, after if result.allowed else totals)
    result.remaining_cost, result.remaining_tokens = remaining.cost_usd, remaining.tokens
    result.warnings = r.notes + warnings(by_id, r.lines, after)
    return result


async def record_usage(request: web.Request) -> web.Response:
    """Record a call a component made to a provider directly: priced from the catalog
    (unless `input_cost`/`output_cost` are given), charged to the matching policies' current
    windows and to its allocation. The call already happened, so it is never refused."""
    req = await read_model(request, UsageRecordRequest)
    if isinstance(req, web.Response):
        return req
    app = request.config_dict
    store = app[STORE]
    price = app[PROXY].price_for(req.provider, req.model)
    if price is None and (req.input_cost is None or req.output_cost is None):
        return no_price(req.model, "; send input_cost and output_cost")
    usage = Usage(
        input_tokens=req.input_tokens if req.input_tokens is not None
        else await count_tokens(req.input_text, req.model),
        cached_input_tokens=req.cached_input_tokens, cache_write_tokens=req.cache_write_tokens,
        output_tokens=req.output_tokens if req.output_tokens is not None
        else await count_tokens(req.output_text, req.model),
        reasoning_tokens=req.reasoning_tokens,
    )
    priced = cost_of(usage, price) if price is not None else Cost(0, 0)
    input_nusd = usd_to_nusd(req.input_cost)
    output_nusd = usd_to_nusd(req.output_cost)
    cost = Cost(priced.input_nusd if input_nusd is None else input_nusd,
                priced.output_nusd if output_nusd is None else output_nusd)
    lines: list[CounterLine] = []
    r = None
    component = req.component or app[SETTINGS].component
    if price is not None:
        r = await resolve(app, req.provider, req.model, price, req.component, req.task_type,
                          req.session_id, req.task_id, req.allocation_id, req.context_id,
                          follow_soft_limits=False)
        lines, component = r.lines, r.component
    record = planning.usage_record(
        record_id=None, payer=planning.Payer(
            component, r.allocation_id if r else req.allocation_id,
            r.context_id if r else req.context_id, req.session_id, req.task_id, req.task_type),
        provider=req.provider, model=req.model, requested_model=None, route="record",
        usage=usage, cost=cost,
        pricing_id=price.pricing_id if price is not None and req.input_cost is None else None,
        metadata=req.metadata, timestamp=req.timestamp,
    )
    # settle without a prior reservation: spend lands on every line, never refused
    charge = Reservation(record.record_id, tuple(ln.key for ln in lines), 0, 0)
    await store.settle(charge, cost.total_nusd, usage.total_tokens, record)
    app[ALERTS].check(lines)
    totals = await store.totals([ln.key for ln in lines])
    remaining = tightest_remaining(lines, totals)
    over = [ln.policy_id for ln, t in zip(lines, totals, strict=True)
            if ln.enforce and would_refuse(ln, t, 0, 0)]
    app[EVENTS].publish("updates", "usage_recorded", record.model_dump(mode="json"))
    return json_response(RecordedUsage(
        record=record, remaining_cost=remaining.cost_usd, remaining_tokens=remaining.tokens,
        warnings=warnings(app[POLICIES].by_id, lines, totals), over_limit=over,
    ), 201)


def routes() -> list[web.RouteDef]:
    tag = "usage"
    return [
        api_route("GET", "/api/usage", usage_summary, summary="Usage summary of a period",
                  tag=tag, query=UsageSummaryQuery, response=UsageSummary),
        api_route("GET", "/api/usage/records", list_usage_records, summary="Raw usage records",
                  tag=tag, query=UsageRecordsQuery, response=list[UsageRecord]),
        api_route("POST", "/api/usage/record", record_usage, summary="Record a direct "
                  "provider call", tag=tag, body=UsageRecordRequest, response=RecordedUsage,
                  status=201),
        api_route("POST", "/api/usage/check", check_usage, summary="Would this request be "
                  "allowed?", tag=tag, body=UsageCheckRequest, response=UsageCheckResult,
                  access="read"),
    ]

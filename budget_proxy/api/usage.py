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

from budget_proxy import allocations, tokens
from budget_proxy.api.common import api_error, json_response, read_model, read_query
from budget_proxy.api.openapi import api_route
from budget_proxy.appkeys import ALERTS, EVENTS, POLICIES, PROXY, SETTINGS, STORE
from budget_proxy.enforcement import (
    CounterLine,
    RequestScope,
    Totals,
    counter_lines,
    soft_limit_move,
    tightest_remaining,
    warnings,
    would_refuse,
)
from budget_proxy.models import PolicyType, UsageRecord, nusd_to_usd, usd_to_nusd
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
from budget_proxy.usage import Cost, Usage, cost_of, worst_case_nusd
from budget_proxy.wire import DEFAULT_MAX_OUTPUT_TOKENS

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
    """Counter lines as the proxy builds them: policies matching the scope, a soft limit's
    model move, and the allocation drawn on (whose component is charged when none is named)."""
    store = app[STORE]
    cache = app[POLICIES]
    await cache.refresh()
    tz = ZoneInfo(app[SETTINGS].timezone)
    now = store.now()
    alloc, refusal = await allocations.lookup(store, allocation_id, context_id)
    drawing = alloc if refusal is None else None
    component = component or (drawing.component if drawing else app[SETTINGS].component)

    def lines_for(model: str, price: ModelPrice) -> list[CounterLine]:
        scope = RequestScope(provider=provider, model=model, component=component,
                             tier=price.tier, task_type=task_type, session=session, task=task)
        return counter_lines(cache.policies, scope, now, tz)

    lines = lines_for(model, price)
    notes: list[str] = []
    if follow_soft_limits and any(
            cache.by_id[ln.policy_id].type is PolicyType.SOFT_LIMIT for ln in lines):
        moved, notes = soft_limit_move(cache.by_id, lines, await store.totals(
            [ln.key for ln in lines]))
        moved_price = app[PROXY].price_for(provider, moved) if moved and moved != model else None
        if moved and moved_price is not None:
            model, price = moved, moved_price
            lines = lines_for(model, price)
    return Resolved(
        model=model, price=price, component=component,
        lines=allocations.drawn_lines(drawing, lines) if drawing else lines,
        allocation_id=alloc.allocation_id if alloc else allocation_id,
        context_id=context_id or (alloc.context_id if alloc else None),
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
    """Would `req` be allowed, and what would remain? Nothing is reserved. Raises `NoPrice`."""
    price = app[PROXY].price_for(req.provider, req.model)
    if price is None:
        raise NoPrice(req.model)
    r = await resolve(app, req.provider, req.model, price, req.component, req.task_type,
                      req.session, req.task, req.allocation_id, req.context_id,
                      follow_soft_limits=True)
    input_tokens = req.input_tokens if req.input_tokens is not None else await count_tokens(
        req.input_text, r.model)
    max_out = req.max_output_tokens
    if max_out is None:
        max_out = r.price.max_output_tokens or DEFAULT_MAX_OUTPUT_TOKENS
    cost = worst_case_nusd(input_tokens, max_out, r.price)
    n = input_tokens + max_out
    result = UsageCheckResult(
        allowed=True, provider=req.provider, model=r.model, component=r.component,
        input_tokens=input_tokens, max_output_tokens=max_out, estimated_cost=nusd_to_usd(cost),
        suggested_model=r.model if r.model != req.model else None,
        allocation_id=r.allocation_id,
    )
    if r.refusal is not None:
        result.allowed, result.reason, result.refused_by = False, r.refusal, r.allocation_id
        return result
    totals = await app[STORE].totals([ln.key for ln in r.lines])
    after = [Totals(t.spent_nusd, t.reserved_nusd + cost, t.spent_tokens, t.reserved_tokens + n)
             for t in totals]
    by_id = app[POLICIES].by_id
    for line, tot in zip(r.lines, totals, strict=True):
        exceeds = would_refuse(line, tot, cost, n)
        policy = by_id.get(line.policy_id)
        result.lines.append(CheckedLine(
            policy_id=line.policy_id, name=policy.name if policy else "allocation",
            type=policy.type.value if policy else "allocation",
            period=policy.period.value if policy else None, window=line.key,
            enforced=line.enforce, limit_cost=None if line.limit_nusd is None else nusd_to_usd(
                line.limit_nusd), limit_tokens=line.limit_tokens,
            used_cost=nusd_to_usd(tot.used_nusd), used_tokens=tot.used_tokens,
            would_exceed=exceeds,
        ))
        if exceeds and result.allowed:
            result.allowed, result.refused_by = False, line.policy_id
            result.reason = _refusal_reason(line, tot, cost, n, policy.name if policy else None)
    remaining = tightest_remaining(r.lines, after if result.allowed else totals)
    result.remaining_cost, result.remaining_tokens = remaining.cost_usd, remaining.tokens
    result.warnings = r.notes + warnings(by_id, r.lines, after)
    return result


def _refusal_reason(line: CounterLine, tot: Totals, cost: int, n: int, name: str | None) -> str:
    label = name or line.policy_id
    parts = []
    if line.limit_nusd is not None and tot.used_nusd + cost > line.limit_nusd:
        left = nusd_to_usd(max(0, line.limit_nusd - tot.used_nusd))
        parts.append(f"${left:.6f} left, this request may cost up to ${nusd_to_usd(cost):.6f}")
    if line.limit_tokens is not None and tot.used_tokens + n > line.limit_tokens:
        left_t = max(0, line.limit_tokens - tot.used_tokens)
        parts.append(f"{left_t} tokens left, this request may use up to {n}")
    return f"hard limit {label}: " + "; ".join(parts)


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
    record = UsageRecord(
        allocation_id=r.allocation_id if r else req.allocation_id,
        context_id=r.context_id if r else req.context_id, component=component,
        session_id=req.session_id, task_id=req.task_id, task_type=req.task_type,
        provider=req.provider, model=req.model, route="record",
        input_tokens=usage.input_tokens, cached_input_tokens=usage.cached_input_tokens,
        cache_write_tokens=usage.cache_write_tokens, output_tokens=usage.output_tokens,
        reasoning_tokens=usage.reasoning_tokens, total_tokens=usage.total_tokens,
        input_cost=nusd_to_usd(cost.input_nusd), output_cost=nusd_to_usd(cost.output_nusd),
        total_cost=nusd_to_usd(cost.total_nusd),
        pricing_id=price.pricing_id if price is not None and req.input_cost is None else None,
        metadata=req.metadata, **({"timestamp": req.timestamp} if req.timestamp else {}),
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

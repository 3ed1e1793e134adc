"""The budget assistant: `/api/assistant/analyze`, `/optimize`, `/recommend-model`.

The seed documents call this an "LLM assistant". Every figure here is computed from this
proxy's usage records, policies and price catalog by the fixed rules below, so the same data
always gives the same figures (`engine: "deterministic"`). The rules are simple on purpose;
they are stated in each recommendation's text so an operator can judge them.

With `BUDGET_ASSISTANT_MODEL` set, `analyze` and `optimize` also ask that model for a short
`narrative` over their figures (given to it as data, never taken back from it: the figures
in the answer are the computed ones), through the proxy's metered route as component
budget-assistant (`budget_proxy.tools.chat.narrate`), with `llm_used: true`. When that call
fails or a budget refuses it, the answer is the computed one with a note saying why. Unset,
no model is called (`llm_used: false`).
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

import orjson
from aiohttp import web

from budget_proxy import tools
from budget_proxy.api.common import json_response, read_model
from budget_proxy.api.openapi import api_route
from budget_proxy.appkeys import CATALOG, POLICIES, SETTINGS, STORE
from budget_proxy.enforcement import RequestScope, policy_matches
from budget_proxy.models import PolicyType, UsageRecord
from budget_proxy.pricing import ModelPrice, PriceCatalog
from budget_proxy.recommend import RecommendQuery, recommend_models
from budget_proxy.reporting import (
    Aggregate,
    aggregate,
    collect_usage,
    time_range,
    window_label,
    window_start,
    window_starts,
)
from budget_proxy.schemas import (
    Analysis,
    AnalyzeRequest,
    Anomaly,
    AssistantAnswer,
    ModelRecommendation,
    Optimization,
    PolicyRisk,
    Recommendation,
    RecommendModelRequest,
    Trend,
    UsageGroup,
)
from budget_proxy.tools.chat import ChatAnswer, ChatRequest, Narration, narrate

if TYPE_CHECKING:
    from budget_proxy.tools import State

TREND_FLAT_PCT = 10.0  # a change smaller than this between halves reads as flat
ANOMALY_RATIO = 2.0  # a window costing this many times the median is an anomaly
ANOMALY_MIN_WINDOWS = 3  # windows with usage needed before anomalies are looked for
CHEAPER_MODEL_MAX_RATIO = 0.5  # an alternative must cost at most half as much for the mix
CACHE_SHARE_ASSUMED = 0.5  # cache savings are estimated as if half the input were cached
TOP_N = 5
_SNAPSHOT = re.compile(r"(-\d{4}-\d{2}-\d{2}|-\d{8}|-\d{4}|-latest|-preview.*|-exp.*)$")



def _usd(value: float) -> str:
    return f"${value:,.4f}" if value < 1 else f"${value:,.2f}"


async def _records(app: State, req: AnalyzeRequest) -> tuple[
        list[UsageRecord], datetime, datetime, ZoneInfo]:
    store = app[STORE]
    tz = ZoneInfo(app[SETTINGS].timezone)
    since, until = time_range(req.period, req.days, store.now(), tz)
    records = await collect_usage(store, since=since, provider=req.provider,
                                  component=req.component)
    return records, since, until, tz


def trend_of(costs: Sequence[float]) -> Trend:
    """First half of the windows against the second half (the middle one, if odd, skipped)."""
    half = len(costs) // 2
    first, second = sum(costs[:half]), sum(costs[len(costs) - half:])
    if not any(costs):
        return Trend(first_half_cost=0, second_half_cost=0, change_pct=None, direction="no data")
    change = None if first == 0 else round((second - first) / first * 100, 1)
    if change is None:
        direction = "rising" if second > 0 else "flat"
    elif change > TREND_FLAT_PCT:
        direction = "rising"
    elif change < -TREND_FLAT_PCT:
        direction = "falling"
    else:
        direction = "flat"
    return Trend(first_half_cost=first, second_half_cost=second, change_pct=change,
                 direction=direction)


def anomalies_of(agg: Aggregate, labels: dict[datetime, str]) -> list[Anomaly]:
    costs = {start: t.totals().total_cost for start, t in agg.windows.items()}
    used = [c for c in costs.values() if c > 0]
    if len(used) < ANOMALY_MIN_WINDOWS:
        return []
    median = statistics.median(used)
    return [Anomaly(window=labels.get(start, str(start)), total_cost=cost, median_cost=median,
                    ratio=round(cost / median, 2))
            for start, cost in sorted(costs.items())
            if median > 0 and cost >= ANOMALY_RATIO * median]


async def analyze(request: web.Request) -> web.Response:
    """Spend, trend, top providers/models/components, policies at risk and anomalous windows
    over the last `days` days, with findings in plain sentences."""
    req = await read_model(request, AnalyzeRequest, optional=True)
    if isinstance(req, web.Response):
        return req
    answer = await analysis(request.config_dict, req)
    return json_response(await _narrated(request, "usage analysis", answer, NarratedAnalysis))


async def analysis(app: State, req: AnalyzeRequest) -> Analysis:
    """The figures and findings of `analyze` (and of the assistant's deterministic answers)."""
    records, since, until, tz = await _records(app, req)
    by_provider, by_model, by_component = aggregate(
        records, req.period, tz, ("provider",), ("provider", "model"), ("component",))
    starts = window_starts(req.period, since, until, tz)
    labels = {s: window_label(req.period, s) for s in starts}
    costs = [by_provider.windows[s].totals().total_cost if s in by_provider.windows else 0.0
             for s in starts]
    totals = by_provider.all.totals()
    trend = trend_of(costs)
    risks = await policies_at_risk(app, until, tz)
    anomalies = anomalies_of(by_provider, labels)
    avg = totals.total_cost / len(starts) if starts else 0.0
    findings = _findings(req, totals.total_cost, totals.requests, len(starts), avg, trend,
                         by_model.group_rows(), by_component.group_rows(), risks, anomalies)
    return Analysis(
        period=req.period, since=since, until=until, totals=totals,
        average_cost_per_window=avg, trend=trend,
        top_providers=by_provider.group_rows()[:TOP_N], top_models=by_model.group_rows()[:TOP_N],
        top_components=by_component.group_rows()[:TOP_N], policies_at_risk=risks,
        anomalies=anomalies, findings=findings,
    )


async def policies_at_risk(app: State, now: datetime, tz: ZoneInfo) -> list[PolicyRisk]:
    """Policies past their warning threshold, or on course to pass their limit by the end of
    the window at the current window's burn rate."""
    await app[POLICIES].refresh()
    by_id = app[POLICIES].by_id
    risks = []
    for row in await tools.status_rows(app):
        policy = by_id.get(str(row["policy_id"]))
        if policy is None or policy.type is PolicyType.IGNORE or row["limit"] is None:
            continue
        used = float(row["utilisation"])  # type: ignore[arg-type]
        projected = None
        resets_at = row.get("resets_at")
        if resets_at and policy.period.value in ("hourly", "daily", "weekly", "monthly"):
            start = window_start(policy.period.value, now, tz)  # type: ignore[arg-type]
            length = (datetime.fromisoformat(str(resets_at)) - start).total_seconds()
            elapsed = (now - start).total_seconds()
            if length > 0 and elapsed / length >= 0.05:
                projected = round(used * length / elapsed, 4)
        if used >= policy.warning_threshold or (projected is not None and projected >= 1.0):
            risks.append(PolicyRisk(
                policy_id=policy.policy_id, name=policy.name, type=policy.type.value,
                period=policy.period.value, unit=str(row["unit"]),
                limit=row["limit"],  # type: ignore[arg-type]
                utilisation=used, projected_utilisation=projected))
    risks.sort(key=lambda r: -r.utilisation)
    return risks


def _findings(
    req: AnalyzeRequest, total: float, requests: int, windows: int, avg: float, trend: Trend,
    models: list[UsageGroup], components: list[UsageGroup], risks: list[PolicyRisk],
    anomalies: list[Anomaly],
) -> list[str]:
    if requests == 0:
        return [f"No usage recorded in the last {req.days} days."]
    out = [f"{requests} requests cost {_usd(total)} over {windows} {req.period} windows "
           f"({_usd(avg)} per window on average)."]
    if trend.direction in ("rising", "falling") and trend.change_pct is not None:
        out.append(f"Spend is {trend.direction}: {trend.change_pct:+.1f}% from the first half "
                   "of the range to the second.")
    if models and total > 0:
        top = models[0]
        out.append(f"{top.provider}/{top.model} is the largest cost: {_usd(top.total_cost)} "
                   f"({top.total_cost / total:.0%} of the total).")
    if len(components) > 1 and total > 0:
        top_c = components[0]
        out.append(f"Component {top_c.component} accounts for "
                   f"{top_c.total_cost / total:.0%} of the cost.")
    for risk in risks:
        label = risk.name or risk.policy_id
        text = (f"Policy {label} ({risk.type}) is at {risk.utilisation:.0%} of its "
                f"{risk.period} limit")
        if risk.projected_utilisation is not None:
            text += f"; at this rate it reaches {risk.projected_utilisation:.0%} by the reset"
        out.append(text + ".")
    for anomaly in anomalies:
        out.append(f"Window {anomaly.window} cost {anomaly.ratio:.1f}x the median window.")
    return out


class NarratedAnalysis(Narration, Analysis):
    """`analyze` with BUDGET_ASSISTANT_MODEL set: the same figures, and a narrative."""


class NarratedOptimization(Narration, Optimization):
    """`optimize` with BUDGET_ASSISTANT_MODEL set: the same figures, and a narrative."""


async def _narrated(
    request: web.Request, kind: str, answer: AssistantAnswer,
    narrated: type[NarratedAnalysis] | type[NarratedOptimization],
) -> AssistantAnswer:
    """`answer` as computed; with a model configured, plus its narrative over the figures
    (or, when the model call fails or a budget refuses it, a note saying so)."""
    app = request.config_dict
    if not app[SETTINGS].assistant_model:
        return answer
    figures = answer.model_dump(mode="json", exclude={"engine", "llm_used", "note"})
    narration = await narrate(app, own_url(request), kind, figures, answer.note)
    return narrated.model_validate({**dict(answer), **narration.model_dump()})


# optimize -------------------------------------------------------------------------------
def _plain_name(model: str) -> bool:
    return not (model.startswith(("ft:", "*")) or _SNAPSHOT.search(model))


def _mix_cost(price: ModelPrice, input_tokens: int, output_tokens: int) -> float:
    return float((input_tokens * price.input_usd_per_mtok
                  + output_tokens * price.output_usd_per_mtok) / Decimal(1_000_000))


def cheaper_alternative(
    catalog: PriceCatalog, current: ModelPrice, input_tokens: int, output_tokens: int
) -> tuple[ModelPrice, float] | None:
    """The dearest model of the same provider (so the smallest step down) costing at most
    `CHEAPER_MODEL_MAX_RATIO` of the current one for this token mix; `{model}-mini` first."""
    now = _mix_cost(current, input_tokens, output_tokens)
    if now <= 0:
        return None
    candidates = [p for p in catalog if p.provider == current.provider and p.mode == current.mode
                  and p.model != current.model and _plain_name(p.model)]
    priced = [(p, _mix_cost(p, input_tokens, output_tokens)) for p in candidates]
    cheap = [(p, c) for p, c in priced if 0 < c <= CHEAPER_MODEL_MAX_RATIO * now]
    if not cheap:
        return None
    for p, c in cheap:
        if p.model == f"{current.model}-mini":
            return p, c
    return max(cheap, key=lambda pc: (pc[1], pc[0].model))


async def optimize(request: web.Request) -> web.Response:
    """Concrete ways to spend less: cheaper models for the same traffic, soft limits where
    hard limits are close, prompt caching, and components no policy covers."""
    req = await read_model(request, AnalyzeRequest, optional=True)
    if isinstance(req, web.Response):
        return req
    answer = await optimization(request.config_dict, req)
    return json_response(await _narrated(request, "cost optimisation recommendations", answer,
                                         NarratedOptimization))


async def optimization(app: State, req: AnalyzeRequest) -> Optimization:
    """The recommendations of `optimize` (and of the assistant's deterministic answers)."""
    records, since, until, tz = await _records(app, req)
    catalog = app[CATALOG]
    (by_model,) = aggregate(records, req.period, tz, ("provider", "model"))
    recs: list[Recommendation] = []
    cached: dict[tuple[str, str], int] = {}
    for rec in records:
        key = (rec.provider, rec.model)
        cached[key] = cached.get(key, 0) + rec.cached_input_tokens
    for group in by_model.group_rows():
        price = catalog.lookup(group.provider or "", group.model or "")
        if price is None or group.total_cost <= 0:
            continue
        alt = cheaper_alternative(catalog, price, group.input_tokens, group.output_tokens)
        if alt is not None:
            alt_price, alt_cost = alt
            saving = round(group.total_cost - alt_cost, 6)
            recs.append(Recommendation(
                kind="cheaper_model",
                title=f"Move {group.model} traffic to {alt_price.model}",
                detail=(f"The {group.requests} {group.model} requests of this range "
                        f"({group.input_tokens} input, {group.output_tokens} output tokens) "
                        f"cost {_usd(group.total_cost)}; at {alt_price.model}'s list prices "
                        f"they would cost {_usd(alt_cost)}. Check quality first; a soft_limit "
                        f"policy with fallback_model={alt_price.model} makes the move only "
                        "when the budget runs short."),
                estimated_savings_usd=saving, provider=group.provider, model=group.model,
                alternative_model=alt_price.model))
        cache_rate = price.cache_read_usd_per_mtok
        if (cache_rate is not None and cache_rate < price.input_usd_per_mtok
                and group.input_tokens > 0
                and not cached.get((price.provider, group.model or ""))):
            saving = (group.input_tokens * CACHE_SHARE_ASSUMED
                      * float(price.input_usd_per_mtok - cache_rate) / 1_000_000)
            recs.append(Recommendation(
                kind="cache", title=f"Use prompt caching for {group.model}",
                detail=(f"No {group.model} input was served from the provider's cache. If half "
                        f"of its {group.input_tokens} input tokens were (stable system prompts, "
                        "shared context), they would bill at the cached rate."),
                estimated_savings_usd=round(saving, 6), provider=group.provider,
                model=group.model))
    for risk in await policies_at_risk(app, until, tz):
        if risk.type == "hard_limit":
            recs.append(Recommendation(
                kind="soft_limit", title=f"Add a soft limit before hard limit "
                f"{risk.name or risk.policy_id}",
                detail=(f"It is at {risk.utilisation:.0%} of its {risk.period} limit; requests "
                        "will be refused when it is reached. A soft_limit policy on the same "
                        "scope with a cheaper fallback_model keeps work going for less."),
                estimated_savings_usd=None))
    recs.extend(await _unbudgeted(app, records))
    recs.sort(key=lambda r: -(r.estimated_savings_usd or 0))
    total = sum(r.total_cost for r in records)
    savings = sum(r.estimated_savings_usd or 0 for r in recs if r.kind == "cheaper_model")
    return Optimization(
        period=req.period, since=since, until=until, total_cost=total,
        potential_savings_usd=round(savings, 6), recommendations=recs)


async def _unbudgeted(app: State, records: list[UsageRecord]) -> list[Recommendation]:
    policies = [p for p in app[POLICIES].policies
                if p.type is not PolicyType.IGNORE and p.period.value not in (
                    "per_session", "per_task")]
    seen: dict[str, UsageRecord] = {}
    spent: dict[str, float] = {}
    for rec in records:
        seen.setdefault(rec.component, rec)
        spent[rec.component] = spent.get(rec.component, 0.0) + rec.total_cost
    out = []
    for component, rec in sorted(seen.items()):
        scope = RequestScope(provider=rec.provider, model=rec.model, component=component)
        if not any(policy_matches(p, scope) for p in policies):
            out.append(Recommendation(
                kind="unbudgeted_component", title=f"Set a budget for {component}",
                detail=(f"No limit applies to {component}'s {rec.provider}/{rec.model} "
                        f"requests ({_usd(spent[component])} in this range). For example: "
                        f"budget set-limit daily 10 --component {component} "
                        "--policy-type warn"),
                component=component))
    return out


# recommend-model ------------------------------------------------------------------------
async def recommend_model(request: web.Request) -> web.Response:
    """Models for a task, ranked by how well their price level fits the task's complexity
    (a price percentile band: simple tasks low, complex tasks high), within the budget."""
    req = await read_model(request, RecommendQuery, optional=True)
    if isinstance(req, web.Response):
        return req
    return json_response(recommend(request.config_dict, req))


def recommend(app: State, req: RecommendModelRequest) -> ModelRecommendation:
    """`budget_proxy.recommend` over the prices in force: the answer of `recommend-model`,
    the `recommend_model` tool and the CLI's `recommend`."""
    catalog = app[CATALOG]
    return recommend_models(catalog, req)


# chat -----------------------------------------------------------------------------------
def own_url(request: web.Request) -> str:
    """This server's base URL as seen on the socket the request came in on (the assistant's
    own LLM calls go through the proxy's metered routes there)."""
    sockname = request.transport.get_extra_info("sockname") if request.transport else None
    if not isinstance(sockname, tuple):
        raise RuntimeError("no socket address for the chat request")
    host, port = str(sockname[0]), int(sockname[1])
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


async def chat(request: web.Request) -> web.StreamResponse:
    """Budget Chat: answered by the tools through `BUDGET_ASSISTANT_MODEL` when set (its
    calls metered as component budget-assistant), deterministically otherwise. With
    `stream`, SSE events `status`, `tool_call`, `chunk`, `done`; the tools that change
    budgets are offered to the admin token only."""
    from budget_proxy.mcp.endpoint import caller_role
    from budget_proxy.tools.chat import converse

    req = await read_model(request, ChatRequest)
    if isinstance(req, web.Response):
        return req
    events = converse(request.config_dict, req, caller_role(request), own_url(request))
    if not req.stream:
        done: dict[str, object] = {}
        async for name, data in events:
            if name == "done":
                done = data
        return json_response(done)
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                           "Cache-Control": "no-cache"})
    await response.prepare(request)
    async for name, data in events:
        await response.write(f"event: {name}\ndata: ".encode() + orjson.dumps(data) + b"\n\n")
    await response.write_eof()
    return response


def routes() -> list[web.RouteDef]:
    tag = "assistant"
    return [
        api_route("POST", "/api/assistant/chat", chat, summary="Budget Chat (an LLM over the "
                  "budget tools when BUDGET_ASSISTANT_MODEL is set)", tag=tag, body=ChatRequest,
                  response=ChatAnswer, access="read"),
        api_route("POST", "/api/assistant/analyze", analyze, summary="Analyse usage "
                  "(computed figures; a narrative by BUDGET_ASSISTANT_MODEL when set)",
                  tag=tag, body=AnalyzeRequest, body_required=False,
                  response=NarratedAnalysis, access="read"),
        api_route("POST", "/api/assistant/optimize", optimize, summary="Cost optimisation "
                  "recommendations (computed; a narrative by BUDGET_ASSISTANT_MODEL when set)",
                  tag=tag, body=AnalyzeRequest, body_required=False,
                  response=NarratedOptimization, access="read"),
        api_route("POST", "/api/assistant/recommend-model", recommend_model,
                  summary="Model recommendations (deterministic, no LLM)", tag=tag,
                  body=RecommendQuery, body_required=False,
                  response=ModelRecommendation, access="read"),
    ]

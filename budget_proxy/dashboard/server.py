"""The dashboard's routes on the main application: the page at `/ui/` (and `/` redirecting
there), its static files, and three read-only JSON answers under `/ui/api/` for what the admin
API does not serve (who the token makes the reader, the live summary, the spend chart).

The page is public static content; every figure comes from the admin API or `/ui/api/*`
with the token the user entered, checked by the admin API's rules (`data.role_of`). Every
answer here carries the security headers: a Content-Security-Policy with no inline script or
style, no framing, no MIME sniffing, no referrer.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal
from zoneinfo import ZoneInfo

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from budget_proxy import __version__
from budget_proxy.api.common import json_response, presented_token, validation_error
from budget_proxy.appkeys import METRICS, PROXY, SETTINGS, STORE
from budget_proxy.dashboard.data import (
    REFUSAL_WINDOW_S,
    RefusalLog,
    Role,
    histogram_quantile,
    merge_buckets,
    role_of,
    spend_of,
    spend_series,
)
from budget_proxy.models import Period, UsageRecord
from budget_proxy.periods import window_for
from budget_proxy.reporting import collect_usage, time_range, window_start, window_starts
from budget_proxy.status import projection, status_keys, window_statuses
from budget_proxy.store.base import StoreError

STATIC_DIR = Path(__file__).parent / "static"
REFUSALS = web.AppKey("dashboard_refusals", RefusalLog)
STORE_CHECK_TIMEOUT_S = 2.0  # the summary never waits longer than this on a sick store
CHART_RECORDS_MAX = 200_000  # records read for one chart; a longer range is cut short
CONTENT_TYPES = {
    ".html": "text/html", ".js": "text/javascript", ".css": "text/css",
    ".svg": "image/svg+xml", ".png": "image/png", ".md": "text/plain", ".txt": "text/plain",
}
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "font-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'self'; "
        "frame-ancestors 'none'"),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cache-Control": "no-cache",  # revalidate: an upgraded proxy serves its own page
}


def _secure(resp: web.StreamResponse) -> web.StreamResponse:
    resp.headers.update(SECURITY_HEADERS)
    return resp


def _role(request: web.Request) -> Role:
    return role_of(presented_token(request), request.app[SETTINGS])


def _unauthorised() -> web.StreamResponse:
    return _secure(json_response({"error": {
        "type": "unauthorized", "message": "a viewer or admin token is required"}}, 401))


# page and files ---------------------------------------------------------------------------
async def redirect_to_ui(request: web.Request) -> web.StreamResponse:
    return _secure(web.Response(status=302, headers={"Location": "/ui/"}))


async def index(request: web.Request) -> web.StreamResponse:
    return _secure(web.FileResponse(STATIC_DIR / "index.html",
                                    headers={"Content-Type": CONTENT_TYPES[".html"]}))


async def static_file(request: web.Request) -> web.StreamResponse:
    """A file under `static/` with a known type; anything else (or outside) is 404."""
    root = STATIC_DIR.resolve()
    path = (root / request.match_info["path"]).resolve()
    content_type = CONTENT_TYPES.get(path.suffix)
    if content_type is None or not path.is_relative_to(root) or not path.is_file():
        return _secure(web.Response(status=404, text="404: Not Found"))
    return _secure(web.FileResponse(path, headers={"Content-Type": content_type}))


# JSON ---------------------------------------------------------------------------------------
async def session(request: web.Request) -> web.StreamResponse:
    """What the presented token allows (`role`: admin, viewer or none) and whether a token can
    raise it (`login`), with the settings the page formats by. Always 200: the page asks this
    before it knows whether it needs a token."""
    settings = request.app[SETTINGS]
    return _secure(json_response({
        "role": _role(request),
        "login": settings.admin_token is not None or settings.viewer_token is not None,
        "timezone": settings.timezone, "version": __version__,
        "fail_mode": settings.fail_mode, "store": request.app[STORE].kind,
    }))


def _overhead_ms(request: web.Request) -> dict[str, float | int | None]:
    """p50/p99 of the proxy's own time per metered call since start, from its histogram."""
    metrics = request.app.get(METRICS)
    if metrics is None:
        return {"p50": None, "p99": None, "calls": 0}
    samples = [(s.name, s.labels, s.value) for m in metrics.overhead.collect() for s in m.samples]
    buckets = merge_buckets(samples)
    p50, p99 = histogram_quantile(buckets, 0.5), histogram_quantile(buckets, 0.99)
    return {"p50": None if p50 is None else p50 * 1000, "p99": None if p99 is None else p99 * 1000,
            "calls": int(buckets[-1][1]) if buckets else 0}


async def summary(request: web.Request) -> web.StreamResponse:
    """The Dashboard tab in one read: spend today and this month, the month-end projection,
    every policy's window status (`budget_proxy.status`, as `/api/status`), refusals of the
    last hour, the proxy's overhead, store health and the fail mode in force."""
    if _role(request) == "none":
        return _unauthorised()
    app = request.app
    settings, store = app[SETTINGS], app[STORE]
    if PROXY in app:  # read your writes: settlements of answered calls land first
        await app[PROXY].settled()
    tz = ZoneInfo(settings.timezone)
    now = store.now()
    month_start = window_start("monthly", now, tz)
    month = window_for(Period.MONTHLY, now, tz)
    body: dict[str, object] = {
        "time": now.isoformat(), "timezone": settings.timezone, "fail_mode": settings.fail_mode,
        "store": store.kind, "store_status": "ok", "overhead_ms": _overhead_ms(request),
    }
    refusals = app[REFUSALS].since(time.monotonic() - REFUSAL_WINDOW_S) if REFUSALS in app else {}
    body["refusals_last_hour"] = {"total": sum(refusals.values()), "by_policy": refusals}
    try:
        async with asyncio.timeout(STORE_CHECK_TIMEOUT_S):
            policies = await store.list_policies()
            keys = status_keys(policies, now, tz)
            totals = dict(zip(keys, await store.totals(keys), strict=True))
            records = await collect_usage(store, since=month_start)
    except (StoreError, TimeoutError) as exc:
        body.update(store_status="unavailable", store_error=str(exc)[:200], policies=[])
        body["fail_state"] = ("open: forwarding, usage kept to replay" if settings.fail_mode
                              == "open" else "closed: metered calls answered 503")
        return _secure(json_response(body))
    month_usd = spend_of(records, month_start)
    assert month is not None and month.resets_at is not None  # calendar period
    body.update(
        fail_state="normal",
        spend={"today": spend_of(records, window_start("daily", now, tz)), "month": month_usd,
               "month_projection": projection(month_usd, month_start, month.resets_at, now),
               "month_resets_at": month.resets_at.isoformat(), "requests_month": len(records)},
        policies=[st.to_json() for st in window_statuses(policies, totals, now, tz)],
    )
    return _secure(json_response(body))


class SpendQuery(BaseModel):
    """Query of `/ui/api/spend`: the Usage tab's filters, its chart's period and grouping."""

    model_config = ConfigDict(extra="forbid")

    period: Literal["hourly", "daily"] = "hourly"
    days: int = Field(1, ge=1, le=92)
    by: Literal["model", "component", "provider"] = "model"
    provider: str | None = None
    model: str | None = None
    component: str | None = None
    session_id: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    @field_validator("provider", "model", "component", "session_id", "since", "until",
                     mode="before")
    @classmethod
    def _blank_is_none(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("since", "until")
    @classmethod
    def _utc(cls, value: datetime | None) -> datetime | None:
        return value.replace(tzinfo=UTC) if value and value.tzinfo is None else value


async def spend(request: web.Request) -> web.StreamResponse:
    """Spend per hour or day split by model, component or provider, and the totals of the
    same filtered records (the Usage tab's chart and totals row)."""
    if _role(request) == "none":
        return _unauthorised()
    try:
        q = SpendQuery.model_validate(dict(request.query))
    except ValidationError as exc:
        return _secure(validation_error(exc))
    store, tz = request.app[STORE], ZoneInfo(request.app[SETTINGS].timezone)
    now = store.now()
    since = q.since or time_range(q.period, q.days, now, tz)[0]
    until = q.until or now
    records: list[UsageRecord] = await collect_usage(
        store, since=since, until=q.until, provider=q.provider, model=q.model,
        component=q.component, session_id=q.session_id, limit=CHART_RECORDS_MAX)
    starts = window_starts(q.period, since, until, tz)[-24 * 92:]  # at most 92 days of hours
    chart = spend_series(records, starts, q.period, tz, q.by)
    totals = {
        "requests": len(records), "total_tokens": sum(r.total_tokens for r in records),
        "total_cost": spend_of(records, since), "truncated": len(records) >= CHART_RECORDS_MAX,
    }
    return _secure(json_response({"period": q.period, "by": q.by, "since": since.isoformat(),
                                  "until": until.isoformat(), **chart, "totals": totals}))


# wiring -------------------------------------------------------------------------------------
async def _refusals_ctx(app: web.Application) -> AsyncIterator[None]:
    """Remember refusal times for "refusals in the last hour" (needs the proxy, so this runs
    after the context that builds it)."""
    log = app[REFUSALS]
    if PROXY in app:
        app[PROXY].on_refuse.append(
            lambda provider, policy_id, reason: log.add(time.monotonic(), policy_id))
    yield


def routes() -> list[web.RouteDef]:
    return [
        web.get("/", redirect_to_ui),
        web.get("/ui", redirect_to_ui),
        web.get("/ui/", index),
        web.get("/ui/static/{path:.+}", static_file),
        web.get("/ui/api/session", session),
        web.get("/ui/api/summary", summary),
        web.get("/ui/api/spend", spend),
    ]


def setup(app: web.Application) -> None:
    """Add the dashboard to `app`: call after the proxy's cleanup contexts are registered and
    before the proxy's catch-all route (`/ui/...` would match `/{provider}/...`)."""
    app[REFUSALS] = RefusalLog()
    app.cleanup_ctx.append(_refusals_ctx)
    app.router.add_routes(routes())

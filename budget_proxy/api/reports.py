"""Reports: `/api/reports` (a period's report, JSON or CSV) and `/api/reports/export` (the
raw usage records of a time range, CSV or JSON)."""

from __future__ import annotations

from zoneinfo import ZoneInfo

from aiohttp import web

from budget_proxy.alerts import ALERT_KIND
from budget_proxy.api.common import json_response, read_query
from budget_proxy.api.openapi import api_route
from budget_proxy.api.policies import policy_status_rows
from budget_proxy.appkeys import ALLOCATIONS, SETTINGS, STORE
from budget_proxy.models import Alert, utcnow
from budget_proxy.reporting import (
    RECORD_COLUMNS,
    aggregate_usage,
    collect_usage,
    time_range,
    to_csv,
)
from budget_proxy.schemas import AllocationTotals, ExportQuery, Report, ReportQuery

REPORT_CSV_COLUMNS = ("section", "window", "provider", "model", "component", "requests",
                      "input_tokens", "output_tokens", "total_tokens", "input_cost",
                      "output_cost", "total_cost")


def _csv_response(text: str, filename: str) -> web.Response:
    return web.Response(text=text, content_type="text/csv", headers={
        "Content-Disposition": f'attachment; filename="{filename}"'})


async def report(request: web.Request) -> web.Response:
    """A period's report: totals, one row per window, breakdowns by provider, model and
    component, each policy's current window, allocations and open alerts. `format=csv`
    gives the windows and breakdowns as CSV rows (one `section` column tells them apart)."""
    q = read_query(request, ReportQuery)
    if isinstance(q, web.Response):
        return q
    app = request.config_dict
    store = app[STORE]
    tz = ZoneInfo(app[SETTINGS].timezone)
    since, until = time_range(q.period, q.days, store.now(), tz)
    by_provider, by_model, by_component = await aggregate_usage(
        store, q.period, tz, since, until, ("provider",), ("provider", "model"),
        ("component",), provider=q.provider, component=q.component, model=q.model)
    allocs = await app[ALLOCATIONS].find(active=True)
    alerts = [Alert.model_validate_json(b) for b in await store.list_docs(ALERT_KIND)]
    data = Report(
        generated_at=utcnow(), period=q.period, since=since, until=until,
        totals=by_provider.all.totals(), windows=by_provider.window_rows(),
        by_provider=by_provider.group_rows(), by_model=by_model.group_rows(),
        by_component=by_component.group_rows(),
        policies=await policy_status_rows(request),  # type: ignore[arg-type]  # validated
        allocations=AllocationTotals(
            active=len(allocs), tokens_allocated=sum(a.tokens_allocated for a in allocs),
            tokens_used=sum(a.tokens_used for a in allocs)),
        open_alerts=sum(not a.acknowledged for a in alerts),
    )
    if q.format == "json":
        return json_response(data)
    rows = [{"section": "total", **data.totals.model_dump()}]
    rows += [{"section": "window", **w.model_dump()} for w in data.windows]
    for section, groups in (("provider", data.by_provider), ("model", data.by_model),
                            ("component", data.by_component)):
        rows += [{"section": section, **g.model_dump()} for g in groups]
    return _csv_response(to_csv(rows, REPORT_CSV_COLUMNS),
                         f"budget-report-{q.period}-{since:%Y%m%d}.csv")


async def export(request: web.Request) -> web.Response:
    """The usage records of a time range, oldest first: CSV (default) or JSON."""
    q = read_query(request, ExportQuery)
    if isinstance(q, web.Response):
        return q
    records = await collect_usage(
        request.config_dict[STORE], since=q.since, until=q.until, provider=q.provider,
        component=q.component, model=q.model, context_id=q.context_id, session_id=q.session_id,
        limit=q.offset + q.limit)
    records = records[q.offset:]
    if q.format == "json":
        return json_response(records)
    return _csv_response(to_csv((r.model_dump() for r in records), RECORD_COLUMNS),
                         "budget-usage.csv")


def routes() -> list[web.RouteDef]:
    return [
        api_route("GET", "/api/reports", report, summary="Period report (JSON or CSV)",
                  tag="reports", query=ReportQuery, response=Report),
        api_route("GET", "/api/reports/export", export, summary="Export usage records",
                  tag="reports", query=ExportQuery, media_type="text/csv"),
    ]

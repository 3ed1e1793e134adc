"""Usage: raw records (`/api/usage/records`)."""

from __future__ import annotations

from datetime import datetime

from aiohttp import web

from budget_proxy.api.common import api_error, json_response
from budget_proxy.appkeys import STORE
from budget_proxy.store.base import UsageQuery


def _query_datetime(request: web.Request, name: str) -> datetime | None:
    value = request.query.get(name)
    return datetime.fromisoformat(value) if value else None


def usage_query(request: web.Request) -> UsageQuery:
    q = request.query
    return UsageQuery(
        component=q.get("component"), provider=q.get("provider"), model=q.get("model"),
        context_id=q.get("context_id"), session_id=q.get("session_id"),
        since=_query_datetime(request, "since"), until=_query_datetime(request, "until"),
        limit=min(int(q.get("limit", 100)), 10_000), offset=int(q.get("offset", 0)),
    )


async def list_usage_records(request: web.Request) -> web.Response:
    try:
        query = usage_query(request)
    except ValueError as exc:
        return api_error(400, "invalid_query", str(exc))
    return json_response(await request.app[STORE].list_usage(query))


def routes() -> list[web.RouteDef]:
    return [web.get("/api/usage/records", list_usage_records)]

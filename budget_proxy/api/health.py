"""Liveness and store health: `/health` and `/api/health`."""

from __future__ import annotations

from aiohttp import web

from budget_proxy.api.common import json_response
from budget_proxy.appkeys import STORE
from budget_proxy.models import utcnow
from budget_proxy.store.base import StoreError


async def health(request: web.Request) -> web.Response:
    store = request.app[STORE]
    try:
        await store.config_version()
        status, code = "ok", 200
    except StoreError:
        status, code = "degraded", 503
    return json_response({"status": status, "store": store.kind,
                          "time": utcnow().isoformat()}, code)


def routes() -> list[web.RouteDef]:
    return [web.get("/health", health), web.get("/api/health", health)]

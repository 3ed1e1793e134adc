"""Liveness (`/health`: the process answers) and readiness (`/api/health`: the store does too).

`/health` stays 200 while the store is down, so an orchestrator does not restart every
sidecar during a Redis outage; `/api/health` answers 503 then, for readiness probes.
"""

from __future__ import annotations

from aiohttp import web

from budget_proxy.api.common import json_response
from budget_proxy.appkeys import STORE, STORE_SEEDED
from budget_proxy.models import utcnow
from budget_proxy.store.base import StoreError


async def _check(request: web.Request) -> tuple[dict[str, str], bool]:
    """Ready when the store answers and start-up's store work (default budget, policy files)
    is done: a proxy started while its store was down is not ready until both hold."""
    store = request.config_dict[STORE]
    try:
        await store.config_version()
        reachable = True
    except StoreError:
        reachable = False
    seeded = request.config_dict.get(STORE_SEEDED)
    ok = reachable and (seeded is None or seeded.is_set())
    body = {"status": "ok" if ok else "degraded", "store": store.kind,
            "store_status": "ok" if ok else "unavailable" if not reachable else "starting",
            "time": utcnow().isoformat()}
    return body, ok


async def liveness(request: web.Request) -> web.Response:
    body, _ = await _check(request)
    return json_response(body, 200)


async def readiness(request: web.Request) -> web.Response:
    body, ok = await _check(request)
    return json_response(body, 200 if ok else 503)


def routes() -> list[web.RouteDef]:
    return [web.get("/health", liveness), web.get("/api/health", readiness)]

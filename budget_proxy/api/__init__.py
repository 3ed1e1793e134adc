"""The admin API: one module per area, each exposing `routes()`; `all_routes` collects them."""

from __future__ import annotations

from aiohttp import web

from budget_proxy.api import (
    alerts,
    allocations,
    assistant,
    budgets,
    health,
    keys,
    openapi,
    policies,
    prices,
    reports,
    usage,
)


def all_routes() -> list[web.RouteDef]:
    modules = [health, policies, budgets, allocations, usage, reports, alerts, keys, assistant,
               openapi, prices]
    return [route for module in modules for route in module.routes()]

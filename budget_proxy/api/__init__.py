"""The admin API: one module per area, each exposing `routes()` with their full `/api/...`
paths; `admin_app` mounts them as their own sub-application under `/api`, behind its own
middlewares (error boundary, access check, read-your-writes). Application keys live on the
main application: handlers read them through `request.config_dict`, which sees both."""

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
from budget_proxy.api.common import auth_middleware, error_middleware, read_your_writes
from budget_proxy.mcp import endpoint as mcp

PREFIX = "/api"


def all_routes() -> list[web.RouteDef]:
    modules = [health, policies, budgets, allocations, usage, reports, alerts, keys, assistant,
               openapi, prices, mcp]
    return [route for module in modules for route in module.routes()]


def admin_app() -> web.Application:
    """The `/api` sub-application (mount with `app.add_subapp(PREFIX, admin_app())`). Routes
    outside `/api` (the liveness probe `/health`) stay on the main application: see
    `root_routes`."""
    sub = web.Application(middlewares=[error_middleware, auth_middleware, read_your_writes])
    sub.router.add_routes([
        web.RouteDef(route.method, route.path.removeprefix(PREFIX), route.handler, route.kwargs)
        for route in all_routes() if route.path.startswith(PREFIX + "/")])
    return sub


def root_routes() -> list[web.RouteDef]:
    """Admin-module routes that live outside `/api`."""
    return [route for route in all_routes() if not route.path.startswith(PREFIX + "/")]

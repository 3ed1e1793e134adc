"""The admin API: one module per area, each exposing `routes()`; `all_routes` collects them."""

from __future__ import annotations

from aiohttp import web

from budget_proxy.api import health, policies, usage


def all_routes() -> list[web.RouteDef]:
    modules = [health, policies, usage]
    return [route for module in modules for route in module.routes()]

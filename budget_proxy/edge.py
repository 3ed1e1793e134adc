"""The first middleware of the application: request headers are checked before any handler.

A header value that is not UTF-8, or an attribution header that is too long or not printable,
answers 400 in the caller's format: the provider's error envelope under a provider prefix (its
SDK raises its usual exception), the admin API's `{"error": {"type", "message"}}` elsewhere.
Registered on the main application, it also covers sub-applications' routes.
"""

from __future__ import annotations

from aiohttp import web

from budget_proxy.api.common import Handler, api_error
from budget_proxy.appkeys import PROXY, SETTINGS
from budget_proxy.routing import api_for_path, header_problem
from budget_proxy.wire import error_body


@web.middleware
async def edge_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    problem = header_problem(request.headers)
    if problem is None:
        return await handler(request)
    name, why = problem
    message = f"header {name} {why}"
    config = request.config_dict
    providers = config[PROXY].providers if PROXY in config else config[SETTINGS].all_providers()
    api = api_for_path(providers, request.rel_url.raw_path)
    if api is None:
        return api_error(400, "invalid_header", message)
    return web.Response(status=400, body=error_body(api, 400, message, code="invalid_header"),
                        content_type="application/json")

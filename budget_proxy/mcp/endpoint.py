"""`/api/mcp` on the proxy's port: the route, the caller's role, and the SDK's session
manager started by the first request that needs it.

The routes are registered at start-up like any admin route (same access middleware, same
OpenAPI entries), but the MCP SDK (`budget_proxy.mcp.server`) is imported, and its session
manager started, only when a request reaches the handler: an idle proxy, or one never asked
for MCP, holds none of it. Concurrent first requests share one start; the manager is stopped
at shutdown only if it was started.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

from aiohttp import web

from budget_proxy.api.common import Role, api_error, presented_token, token_role
from budget_proxy.api.openapi import api_route
from budget_proxy.appkeys import SETTINGS
from budget_proxy.config import Settings
from budget_proxy.mcp import PATH, ROLE_KEY
from budget_proxy.mcp.asgi import ASGIApp, serve_asgi

if TYPE_CHECKING:
    from mcp.server.streamable_http_manager import StreamableHTTPSessionManager

    SessionManagerFactory = Callable[[web.Application], StreamableHTTPSessionManager]


def caller_role(request: web.Request) -> Role:
    """The role the admin API gives this request: with no admin token configured every
    caller administers (the API is open); otherwise the token presented decides, and a caller
    with no token reads when no viewer token is set (the access middleware refused it
    otherwise)."""
    settings = request.config_dict[SETTINGS]
    if settings.admin_token is None:
        return "admin"
    role = token_role(presented_token(request), settings)
    return "viewer" if role == "none" else role


def load_sdk(settings: Settings) -> SessionManagerFactory:
    """Import the MCP SDK side (`budget_proxy.mcp.server`) and settle the host names MCP
    answers on (they may need a DNS lookup): both block, so run this in a thread."""
    from budget_proxy.mcp.server import security_settings, session_manager

    return functools.partial(session_manager, security=security_settings(settings))


class SessionManagerRunner:
    """The SDK's session manager for one application, started on first use.

    The manager's task group must be entered and left by one task, so a task of its own
    holds it from start to shutdown; no request's cancellation can cut it. The SDK is
    imported in a worker thread: its import takes a noticeable fraction of a second, which
    must not stall the proxy traffic sharing the event loop.
    """

    def __init__(self, app: web.Application) -> None:
        self._app = app
        self._ready: asyncio.Future[ASGIApp] | None = None
        self._handler: ASGIApp | None = None  # once started
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()

    async def handler(self) -> ASGIApp | None:
        """The manager's ASGI handler, starting the manager if no start is running or done
        (None once the application is stopping). A failed start is retried by the next
        request."""
        if self._stopping.is_set():
            return None
        if self._handler is not None:
            return self._handler
        ready = self._ready
        if ready is None or ready.done():  # never started, or the last start failed
            # no await between the check and here: concurrent first requests share one start
            ready = self._ready = asyncio.get_running_loop().create_future()
            self._task = asyncio.create_task(self._hold(ready), name="mcp-session-manager")
        return await asyncio.shield(ready)

    async def _hold(self, ready: asyncio.Future[ASGIApp]) -> None:
        try:
            session_manager = await asyncio.to_thread(load_sdk, self._app[SETTINGS])
            manager = session_manager(self._app)
            async with manager.run():
                self._handler = manager.handle_request
                ready.set_result(manager.handle_request)
                await self._stopping.wait()
        except BaseException as exc:
            if ready.done():
                raise
            if isinstance(exc, Exception):  # the requests waiting for the start report it
                ready.set_exception(exc)
                return
            ready.cancel()
            raise

    async def stop(self) -> None:
        """Stop the manager if it was started (or is starting); a no-op otherwise."""
        self._stopping.set()
        if self._task is not None:
            await self._task


RUNNER = web.AppKey("mcp_session_manager", SessionManagerRunner)


async def mcp_ctx(app: web.Application) -> AsyncIterator[None]:
    """Nothing is started here: the first MCP request starts the SDK's session manager."""
    runner = SessionManagerRunner(app)
    app[RUNNER] = runner
    yield
    await runner.stop()


async def handle(request: web.Request) -> web.StreamResponse:
    """MCP over streamable HTTP (JSON-RPC in a POST; answers as JSON or an SSE stream)."""
    if request.method == "GET":  # stateless: nothing to push, so no standing stream (spec: 405)
        return api_error(405, "method_not_allowed", "this MCP endpoint keeps no sessions and "
                         "offers no server stream: POST JSON-RPC messages",
                         headers={"Allow": "POST, DELETE"})
    handler = await request.config_dict[RUNNER].handler()
    if handler is None:
        return api_error(503, "shutting_down", "the proxy is shutting down; retry later")
    return await serve_asgi(handler, request, {ROLE_KEY: caller_role(request)})


def routes() -> list[web.RouteDef]:
    doc = {"tag": "mcp", "access": "read", "media_type": "text/event-stream",
           "description": "Model Context Protocol, streamable HTTP transport (stateless). "
           "Tools that change budgets need the admin token."}
    return [
        api_route("POST", PATH, handle, summary="MCP: a JSON-RPC message", **doc),
        api_route("GET", PATH, handle, summary="MCP server stream (none: 405)", **doc),
        api_route("DELETE", PATH, handle, summary="MCP: end a session (none are kept)", **doc),
    ]

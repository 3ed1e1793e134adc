"""The budget tools as an MCP server (official `mcp` SDK), served at `/api/mcp`.

Streamable HTTP, stateless: every POST is a complete exchange (no session kept on this
replica), so any replica behind a load balancer can answer it, and each request is judged by
the token it carries. The admin sub-application's access middleware lets the admin and viewer
tokens through (as for any read); the role of the token then decides what `tools/list` shows
and what `tools/call` runs: tools that change budgets need the admin token.

The SDK's DNS-rebinding protection stays on: a request whose Host is not a name of this
proxy (loopback names, the listen address, this machine's host names), or whose Origin is not
one of them, is refused by the SDK (421 / 403) before any tool runs.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator
from typing import Any

import orjson
from aiohttp import web
from mcp import types
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import Server
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings

from budget_proxy import __version__, tools
from budget_proxy.api.common import Role, api_error, presented_token, token_role
from budget_proxy.api.openapi import api_route
from budget_proxy.appkeys import SETTINGS
from budget_proxy.config import Settings, is_loopback
from budget_proxy.mcp import INSTRUCTIONS, PATH, tool_error
from budget_proxy.mcp.asgi import serve_asgi
from budget_proxy.store.base import StoreError

log = logging.getLogger(__name__)

ROLE_KEY = "budget_proxy.role"  # ASGI scope key: the caller's role, set per request
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")
WILDCARD_HOSTS = ("", "0.0.0.0", "::", "[::]")
MANAGER = web.AppKey("mcp_manager", StreamableHTTPSessionManager)


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


def tool_list(role: Role) -> list[types.Tool]:
    return [
        types.Tool(name=t.name, description=t.description, input_schema=t.input_schema(),
                   annotations=types.ToolAnnotations(read_only_hint=not t.mutating,
                                                     destructive_hint=False))
        for t in tools.tools_for(role)
    ]


def tool_result(value: Any) -> types.CallToolResult:
    structured = value if isinstance(value, dict) else {"result": value}
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=orjson.dumps(value).decode())],
        structured_content=structured)


async def run_tool(app: tools.State, name: str, arguments: dict[str, Any] | None,
                   role: Role) -> types.CallToolResult:
    """One tool call as MCP answers it: the result, or an error result the agent can read."""
    try:
        return tool_result(await tools.call(app, name, arguments, role))
    except tools.ToolError as exc:
        return tool_error(str(exc))
    except StoreError:
        return tool_error("the budget store is unavailable; retry later")
    except Exception:
        log.exception("MCP tool %s failed", name)
        return tool_error("internal error; the proxy's log has the details")


def build_server(app: web.Application) -> Server[Any]:
    """An MCP server over `app`'s budget tools; the role comes from each request's scope."""

    def role_of(ctx: ServerRequestContext[Any, Any]) -> Role:
        scope = getattr(ctx.request, "scope", None) or {}
        role = scope.get(ROLE_KEY)
        return role if role in ("admin", "viewer") else "none"

    async def list_tools(ctx: ServerRequestContext[Any, Any],
                         params: types.PaginatedRequestParams | None) -> types.ListToolsResult:
        return types.ListToolsResult(tools=tool_list(role_of(ctx)))

    async def call_tool(ctx: ServerRequestContext[Any, Any],
                        params: types.CallToolRequestParams) -> types.CallToolResult:
        return await run_tool(app, params.name, params.arguments, role_of(ctx))

    return Server("budget-proxy", version=__version__, instructions=INSTRUCTIONS,
                  on_list_tools=list_tools, on_call_tool=call_tool)


def allowed_hosts(settings: Settings) -> list[str]:
    """Host names this proxy answers MCP on: loopback names, the listen address when it is a
    specific one, and this machine's names when it listens beyond loopback."""
    names = list(LOOPBACK_NAMES)
    host = settings.host.strip()
    if host not in WILDCARD_HOSTS and not is_loopback(host):
        names.append(f"[{host}]" if ":" in host else host)
    if not is_loopback(host):
        names.extend({socket.gethostname(), socket.getfqdn()} - {""})
    return list(dict.fromkeys(names))


def security_settings(settings: Settings) -> TransportSecuritySettings:
    names = allowed_hosts(settings)
    return TransportSecuritySettings(
        enable_dns_rebinding_protection=True,
        allowed_hosts=[h for n in names for h in (n, f"{n}:*")],
        allowed_origins=[o for n in names for scheme in ("http", "https")
                         for o in (f"{scheme}://{n}", f"{scheme}://{n}:*")],
    )


async def mcp_ctx(app: web.Application) -> AsyncIterator[None]:
    """The SDK's session manager, run by a task of its own (its task group must be entered
    and left by one task, whoever starts and stops the application)."""
    manager = StreamableHTTPSessionManager(
        build_server(app), stateless=True, security_settings=security_settings(app[SETTINGS]))
    app[MANAGER] = manager
    started, stopping = asyncio.Event(), asyncio.Event()

    async def hold() -> None:
        async with manager.run():
            started.set()
            await stopping.wait()

    task = asyncio.create_task(hold(), name="mcp-session-manager")
    waiter = asyncio.create_task(started.wait())
    await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        waiter.cancel()
        task.result()  # raises why it could not start
    yield
    stopping.set()
    await task


async def handle(request: web.Request) -> web.StreamResponse:
    """MCP over streamable HTTP (JSON-RPC in a POST; answers as JSON or an SSE stream)."""
    if request.method == "GET":  # stateless: nothing to push, so no standing stream (spec: 405)
        return api_error(405, "method_not_allowed", "this MCP endpoint keeps no sessions and "
                         "offers no server stream: POST JSON-RPC messages",
                         headers={"Allow": "POST, DELETE"})
    manager = request.config_dict[MANAGER]
    return await serve_asgi(manager.handle_request, request,
                            {ROLE_KEY: caller_role(request)})


def routes() -> list[web.RouteDef]:
    doc = {"tag": "mcp", "access": "read", "media_type": "text/event-stream",
           "description": "Model Context Protocol, streamable HTTP transport (stateless). "
           "Tools that change budgets need the admin token."}
    return [
        api_route("POST", PATH, handle, summary="MCP: a JSON-RPC message", **doc),
        api_route("GET", PATH, handle, summary="MCP server stream (none: 405)", **doc),
        api_route("DELETE", PATH, handle, summary="MCP: end a session (none are kept)", **doc),
    ]

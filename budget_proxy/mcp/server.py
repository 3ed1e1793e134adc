"""The budget tools as an MCP server (official `mcp` SDK), served at `/api/mcp`
(`budget_proxy.mcp.endpoint` imports this module on the first MCP request).

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

import logging
import socket
from typing import Any

import orjson
from aiohttp import web
from mcp import types
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import Server
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings

from budget_proxy import __version__, tools
from budget_proxy.api.common import Role
from budget_proxy.config import Settings, is_loopback
from budget_proxy.mcp import INSTRUCTIONS, ROLE_KEY, tool_error
from budget_proxy.store.base import StoreError

log = logging.getLogger(__name__)

LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")
WILDCARD_HOSTS = ("", "0.0.0.0", "::", "[::]")


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


def session_manager(app: web.Application,
                    security: TransportSecuritySettings) -> StreamableHTTPSessionManager:
    """The SDK's session manager over `app`'s tools (run it with `run()`, in one task)."""
    return StreamableHTTPSessionManager(build_server(app), stateless=True,
                                        security_settings=security)

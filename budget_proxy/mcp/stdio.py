"""`budget mcp`: the budget tools over MCP stdio, for desktop agents that launch a command
(the command's options are in `budget_proxy.mcp.command`, which imports this module when run).

The command relays to the running proxy's `/api/mcp` (`--url` / `BUDGET_URL`, with
`--token` / `BUDGET_ADMIN_TOKEN`): the tools, their figures and the access rules are the
proxy's own, and every change goes through the process that enforces the budgets. It does
not open the store itself: a second process on the store would see none of the proxy's live
holds, policy cache or alerts, and the embedded store's start-up would charge the running
proxy's holds as those of a dead process.

Each tool call is one stateless exchange with the proxy, so a proxy restarted meanwhile is
simply reached again. stdout carries the protocol only; diagnostics go to stderr.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx2
from mcp import ClientSession, types
from mcp.client.streamable_http import streamable_http_client
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import Server
from mcp.server.stdio import stdio_server

from budget_proxy import __version__
from budget_proxy.mcp import INSTRUCTIONS, PATH, tool_error

CALL_TIMEOUT_S = 60.0


@asynccontextmanager
async def remote(url: str, token: str | None) -> AsyncIterator[ClientSession]:
    """An initialised MCP session with the proxy's `/api/mcp`."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with (
        httpx2.AsyncClient(headers=headers, timeout=CALL_TIMEOUT_S) as http,
        streamable_http_client(url.rstrip("/") + PATH, http_client=http) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        yield session


def relay_server(url: str, token: str | None) -> Server[Any]:
    """An MCP server whose tools are the proxy's: listed and called over HTTP."""

    def unreachable(exc: BaseException) -> str:
        return (f"cannot reach budget-proxy at {url}: {exc} (is it running? set --url or "
                "BUDGET_URL)")

    async def list_tools(ctx: ServerRequestContext[Any, Any],
                         params: types.PaginatedRequestParams | None) -> types.ListToolsResult:
        async with remote(url, token) as session:
            return await session.list_tools()

    async def call_tool(ctx: ServerRequestContext[Any, Any],
                        params: types.CallToolRequestParams) -> types.CallToolResult:
        try:
            async with remote(url, token) as session:
                return await session.call_tool(params.name, params.arguments)
        except Exception as exc:  # transport failures, wrapped by the SDK in exception groups
            return tool_error(unreachable(exc))

    return Server("budget-proxy", version=__version__, instructions=INSTRUCTIONS,
                  on_list_tools=list_tools, on_call_tool=call_tool)


async def serve(url: str, token: str | None) -> None:
    server = relay_server(url, token)
    async with stdio_server() as (read, write):
        await server.run(read, write, server.create_initialization_options())

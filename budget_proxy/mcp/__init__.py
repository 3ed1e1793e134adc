"""MCP: the budget tools (`budget_proxy.tools`) over the Model Context Protocol, at
`/api/mcp` on the proxy's port (`endpoint`, with the SDK side in `server`) and over stdio as
`budget mcp` (`command`, with the SDK side in `stdio`).

The MCP SDK and its dependencies (starlette, anyio, httpx, its protocol models) weigh tens of
megabytes: this package and `endpoint` and `command` do not import them, so a proxy that is
never asked for MCP never loads them. `server` and `stdio` do, and are imported on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mcp import types

PATH = "/api/mcp"
ROLE_KEY = "budget_proxy.role"  # ASGI scope key: the caller's role, set per request
INSTRUCTIONS = (
    "Budgets of the budget-proxy in front of your LLM calls. Check the budget before an "
    "expensive step (check_budget, budget_status), hold tokens for it (create_allocation, "
    "then send X-Budget-Context with your calls) and release what is left afterwards.")


def tool_error(message: str) -> types.CallToolResult:
    """A tool call's failure as MCP reports it: a result the agent reads, not a protocol error."""
    from mcp import types

    return types.CallToolResult(content=[types.TextContent(type="text", text=message)],
                                is_error=True)

"""MCP: the budget tools (`budget_proxy.tools`) over the Model Context Protocol, at
`/api/mcp` on the proxy's port (`server`) and over stdio as `budget mcp` (`stdio`)."""

from __future__ import annotations

from mcp import types

PATH = "/api/mcp"
INSTRUCTIONS = (
    "Budgets of the budget-proxy in front of your LLM calls. Check the budget before an "
    "expensive step (check_budget, budget_status), hold tokens for it (create_allocation, "
    "then send X-Budget-Context with your calls) and release what is left afterwards.")


def tool_error(message: str) -> types.CallToolResult:
    """A tool call's failure as MCP reports it: a result the agent reads, not a protocol error."""
    return types.CallToolResult(content=[types.TextContent(type="text", text=message)],
                                is_error=True)

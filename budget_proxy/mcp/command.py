"""`budget mcp`: the command that serves the budget tools over MCP stdio (`stdio`).

Only the options are declared here; the MCP SDK is imported when the command runs, so the
rest of the command line (and `serve`) never loads it.
"""

from __future__ import annotations

import os

import click

DEFAULT_URL = "http://localhost:8013"
HELP = ("Serve the budget tools over MCP stdio (for desktop agents), relayed to the running "
        "proxy's /api/mcp.")
HELP_URL = "Base URL of the running proxy (env BUDGET_URL)."
HELP_TOKEN = "Admin token for tools that change budgets; a viewer token reads only " \
    "(env BUDGET_ADMIN_TOKEN)."


@click.command("mcp", help=HELP)
@click.option("--url", default=None, help=HELP_URL)
@click.option("--token", default=None, help=HELP_TOKEN)
@click.pass_context
def mcp_command(ctx: click.Context, url: str | None, token: str | None) -> None:
    """Options given here win; then the `budget --url/--token` ones; then the environment."""
    import anyio

    from budget_proxy.mcp.stdio import serve

    root = ctx.find_root().params
    url = url or root.get("url") or os.environ.get("BUDGET_URL") or DEFAULT_URL
    token = token or root.get("token") or os.environ.get("BUDGET_ADMIN_TOKEN") or None
    anyio.run(serve, url, token)

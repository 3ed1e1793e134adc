"""What a proxy imports at start-up: the MCP SDK (tens of megabytes with its dependencies)
only when `/api/mcp` is first asked for, and the command line only when `budget mcp` runs.

Each check runs in a fresh interpreter: the test process has imported everything already.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

SDK_MODULES = ("mcp", "starlette", "sse_starlette", "uvicorn", "httpx2")
TIMEOUT_S = 120  # a hung interpreter fails the test; the work itself takes a few seconds

SERVE_THEN_ASK_MCP = """
import asyncio, json, sys, tempfile
from pathlib import Path

import aiohttp
from aiohttp.test_utils import TestServer

import budget_proxy.cli  # the `budget-proxy serve` entry point imports the command line too
from budget_proxy.app import create_app
from budget_proxy.config import Settings

SDK = {sdk!r}
INIT = {{"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {{
    "protocolVersion": "2025-06-18", "capabilities": {{}},
    "clientInfo": {{"name": "t", "version": "1"}}}}}}


def loaded():
    return sorted(m for m in SDK if m in sys.modules)


async def main():
    out = {{}}
    with tempfile.TemporaryDirectory() as data_dir:
        app = create_app(Settings(data_dir=Path(data_dir)))
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        out["after_start"] = loaded()
        async with aiohttp.ClientSession() as client:
            async with client.get(server.make_url("/health")) as resp:
                out["health"] = resp.status
            out["after_health"] = loaded()
            async with client.post(server.make_url("/api/mcp"), json=INIT, headers={{
                    "Accept": "application/json, text/event-stream"}}) as resp:
                out["mcp_status"] = resp.status
                out["mcp_body"] = await resp.text()
        out["after_mcp"] = loaded()
        await server.close()
    print(json.dumps(out))


asyncio.run(main())
"""


def run_python(script: str) -> dict[str, object]:
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True,
                          text=True, timeout=TIMEOUT_S, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_serving_loads_no_mcp_sdk_until_the_first_mcp_request():
    out = run_python(SERVE_THEN_ASK_MCP.format(sdk=SDK_MODULES))
    assert out["after_start"] == [] and out["after_health"] == []
    assert out["health"] == 200
    assert out["mcp_status"] == 200, out["mcp_body"]
    assert '"serverInfo"' in str(out["mcp_body"])
    assert "mcp" in out["after_mcp"]  # type: ignore[operator]


def test_the_command_line_loads_the_mcp_sdk_only_for_budget_mcp():
    out = run_python(f"""
        import json, sys
        from click.testing import CliRunner
        from budget_proxy.cli import main
        SDK = {SDK_MODULES!r}
        help_text = CliRunner().invoke(main, ["mcp", "--help"]).output
        print(json.dumps({{"loaded": sorted(m for m in SDK if m in sys.modules),
                          "help": help_text}}))
    """)
    assert out["loaded"] == []
    assert "--url" in str(out["help"]) and "--token" in str(out["help"])

"""`budget mcp` as a subprocess, driven by the SDK's stdio client, against a real proxy."""

from __future__ import annotations

import asyncio
import sys

import orjson
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client

from tests.api.conftest import ADMIN_TOKEN, VIEWER_TOKEN

TIMEOUT_S = 60


def budget_mcp(url: str, token: str | None) -> StdioServerParameters:
    args = ["-m", "budget_proxy", "mcp", "--url", url]
    if token:
        args += ["--token", token]
    return StdioServerParameters(command=sys.executable, args=args, env={"PYTHONUNBUFFERED": "1"})


async def test_stdio_lists_and_calls_the_proxys_tools(proxy_factory):
    proxy = await proxy_factory(admin_token=ADMIN_TOKEN, viewer_token=VIEWER_TOKEN)
    async with (
        asyncio.timeout(TIMEOUT_S),
        stdio_client(budget_mcp(proxy.url, ADMIN_TOKEN)) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        names = {t.name for t in (await session.list_tools()).tools}
        assert {"budget_status", "check_budget", "create_allocation", "set_limit"} <= names
        res = await session.call_tool("set_limit", {"period": "daily", "limit": 3})
        assert not res.is_error, res.content
        status = orjson.loads((await session.call_tool("budget_status", {})).content[0].text)
        assert [row["limit"] for row in status["policies"]] == [3]
        check = orjson.loads((await session.call_tool("check_budget", {
            "provider": "openai", "model": "gpt-4o-mini", "input_tokens": 10})).content[0].text)
        assert check["allowed"] is True
        alloc = await session.call_tool("create_allocation", {
            "context_id": "desk", "component": "agent", "tokens_allocated": 100})
        assert not alloc.is_error, alloc.content
        assert orjson.loads(alloc.content[0].text)["context_id"] == "desk"


async def test_stdio_with_the_viewer_token_cannot_set_limits(proxy_factory):
    proxy = await proxy_factory(admin_token=ADMIN_TOKEN, viewer_token=VIEWER_TOKEN)
    async with (
        asyncio.timeout(TIMEOUT_S),
        stdio_client(budget_mcp(proxy.url, VIEWER_TOKEN)) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        assert "set_limit" not in {t.name for t in (await session.list_tools()).tools}
        res = await session.call_tool("set_limit", {"period": "daily", "limit": 3})
        assert res.is_error and "admin token" in res.content[0].text
    policies = (await proxy.api("GET", "/api/policies",
                                headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})).json()
    assert policies == []


async def test_stdio_says_when_the_proxy_is_unreachable():
    async with (
        asyncio.timeout(TIMEOUT_S),
        stdio_client(budget_mcp("http://127.0.0.1:9", None)) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        res = await session.call_tool("budget_status", {})
        assert res.is_error and "cannot reach budget-proxy" in res.content[0].text

"""MCP over streamable HTTP at `/api/mcp`, with the SDK's own client against the real server:
tool listing and calls as admin, viewer and no token; DNS-rebinding protection on."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import httpx2
import orjson
import pytest
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

from budget_proxy.mcp import endpoint
from tests.api.conftest import ADMIN_TOKEN, VIEWER_TOKEN

READS = {"budget_status", "check_budget", "get_usage", "calc_cost", "recommend_model",
         "list_allocations", "list_alerts"}
WRITES = {"create_allocation", "release_allocation", "acknowledge_alert", "set_limit"}
TIMEOUT_S = 20


@asynccontextmanager
async def mcp_session(url: str, token: str | None) -> AsyncIterator[ClientSession]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with (
        httpx2.AsyncClient(headers=headers, timeout=TIMEOUT_S) as http,
        streamable_http_client(f"{url}/api/mcp", http_client=http) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        yield session


def result_of(res: Any) -> Any:
    assert not res.is_error, res.content
    return orjson.loads(res.content[0].text)


@pytest.fixture
async def tokens_proxy(proxy_factory):
    return await proxy_factory(admin_token=ADMIN_TOKEN, viewer_token=VIEWER_TOKEN)


async def test_admin_lists_every_tool_and_calls_them(tokens_proxy):
    async with asyncio.timeout(TIMEOUT_S), mcp_session(tokens_proxy.url, ADMIN_TOKEN) as s:
        listed = {t.name: t for t in (await s.list_tools()).tools}
        assert set(listed) == READS | WRITES
        assert listed["set_limit"].annotations.read_only_hint is False
        assert "period" in listed["set_limit"].input_schema["properties"]

        made = result_of(await s.call_tool("set_limit", {"period": "daily", "limit": 5}))
        assert made["action"] == "created" and made["policy"]["cost_limit"] == 5
        again = result_of(await s.call_tool("set_limit", {"period": "daily", "limit": 7}))
        assert again["action"] == "updated"
        assert again["policy"]["policy_id"] == made["policy"]["policy_id"]

        status = result_of(await s.call_tool("budget_status", {}))
        (row,) = status["policies"]
        assert row["policy_id"] == made["policy"]["policy_id"] and row["limit"] == 7

        check = result_of(await s.call_tool("check_budget", {
            "provider": "openai", "model": "gpt-4o-mini", "input_tokens": 1000,
            "max_output_tokens": 100}))
        assert check["allowed"] is True and check["lines"][0]["policy_id"] == row["policy_id"]

        alloc = result_of(await s.call_tool("create_allocation", {
            "context_id": "ctx-1", "component": "agent", "tokens_allocated": 5000}))
        assert alloc["tokens_allocated"] == 5000
        listed_allocs = result_of(await s.call_tool("list_allocations", {"context_id": "ctx-1"}))
        assert [a["allocation_id"] for a in listed_allocs] == [alloc["allocation_id"]]
        released = result_of(await s.call_tool("release_allocation",
                                               {"allocation_id": alloc["allocation_id"]}))
        assert released["state"] != "active"
    # the admin API sees what the tools did: one home for each figure
    resp = await tokens_proxy.api("GET", "/api/policies",
                                  headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert [p["cost_limit"] for p in resp.json()] == [7]


async def test_viewer_reads_but_cannot_change_budgets(tokens_proxy):
    async with asyncio.timeout(TIMEOUT_S), mcp_session(tokens_proxy.url, VIEWER_TOKEN) as s:
        assert {t.name for t in (await s.list_tools()).tools} == READS
        status = result_of(await s.call_tool("budget_status", {}))
        assert status["policies"] == []
        refused = await s.call_tool("set_limit", {"period": "daily", "limit": 5})
        assert refused.is_error and "admin token" in refused.content[0].text
        refused = await s.call_tool("create_allocation", {
            "context_id": "c", "component": "x", "tokens_allocated": 10})
        assert refused.is_error
    resp = await tokens_proxy.api("GET", "/api/policies",
                                  headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert resp.json() == []


async def test_no_token_is_refused_when_tokens_are_set(tokens_proxy):
    async with httpx.AsyncClient(timeout=TIMEOUT_S) as client:
        resp = await client.post(f"{tokens_proxy.url}/api/mcp", json={
            "jsonrpc": "2.0", "id": 1, "method": "tools/list"},
            headers={"Accept": "application/json, text/event-stream"})
        assert resp.status_code == 401
        assert resp.json()["error"]["type"] == "unauthorized"
        resp = await client.post(f"{tokens_proxy.url}/api/mcp", json={},
                                 headers={"Authorization": "Bearer wrong"})
        assert resp.status_code == 401


async def test_no_token_reads_when_only_the_admin_token_is_set(proxy_factory):
    proxy = await proxy_factory(admin_token=ADMIN_TOKEN)
    async with asyncio.timeout(TIMEOUT_S), mcp_session(proxy.url, None) as s:
        assert {t.name for t in (await s.list_tools()).tools} == READS
        assert (await s.call_tool("set_limit", {"period": "daily", "limit": 1})).is_error


async def test_open_admin_api_opens_every_tool(proxy):
    async with asyncio.timeout(TIMEOUT_S), mcp_session(proxy.url, None) as s:
        assert {t.name for t in (await s.list_tools()).tools} == READS | WRITES


@pytest.mark.parametrize(("arguments", "named"), [
    ({"period": "daily", "limit": -5}, "limit"),
    ({"period": "daily", "limit": 1e300}, "limit"),
    ({"period": "daily", "limit": "five"}, "limit"),
    ({"period": "fortnightly", "limit": 5}, "period"),
    ({"period": "daily", "limit": 5, "surprise": 1}, "surprise"),
    ({}, "period"),
])
async def test_bad_arguments_are_tool_errors_naming_the_field(proxy, arguments, named):
    async with asyncio.timeout(TIMEOUT_S), mcp_session(proxy.url, None) as s:
        res = await s.call_tool("set_limit", arguments)
        assert res.is_error and named in res.content[0].text
        res = await s.call_tool("no_such_tool", {})
        assert res.is_error and "no tool" in res.content[0].text
    resp = await proxy.api("GET", "/api/policies")
    assert resp.json() == []


async def test_tool_refusals_are_readable_errors(proxy):
    async with asyncio.timeout(TIMEOUT_S), mcp_session(proxy.url, None) as s:
        res = await s.call_tool("release_allocation", {"allocation_id": "alloc-missing"})
        assert res.is_error and "no allocation" in res.content[0].text
        await s.call_tool("set_limit", {"period": "daily", "limit": 100, "tokens": True})
        res = await s.call_tool("create_allocation", {
            "context_id": "c", "component": "x", "tokens_allocated": 1000})
        assert res.is_error, res.content
        huge = "x" * 200_000
        # an unknown model is priced at the provider's ceiling (BUDGET_UNKNOWN_PRICE=ceiling)
        checked = result_of(await s.call_tool("check_budget",
                                              {"provider": "openai", "model": huge}))
        assert checked["model"] == huge and checked["estimated_cost"] > 0
        res = await s.call_tool("check_budget", {"provider": "openai", "model": "gpt-4o",
                                                 "input_tokens": -1})
        assert res.is_error and "input_tokens" in res.content[0].text


@pytest.mark.parametrize(("headers", "status"), [
    ({"Host": "evil.example"}, 421),
    ({"Host": "evil.example:8013"}, 421),
    ({"Origin": "http://evil.example"}, 403),
    ({"Origin": "http://localhost.evil.example:80"}, 403),
])
async def test_dns_rebinding_protection_refuses_foreign_host_or_origin(proxy, headers, status):
    body = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {},
        "clientInfo": {"name": "t", "version": "1"}}}
    async with httpx.AsyncClient(timeout=TIMEOUT_S) as client:
        resp = await client.post(f"{proxy.url}/api/mcp", json=body, headers={
            "Accept": "application/json, text/event-stream", **headers})
        assert resp.status_code == status, resp.text
        ok = await client.post(f"{proxy.url}/api/mcp", json=body, headers={
            "Accept": "application/json, text/event-stream"})
        assert ok.status_code == 200, ok.text


async def test_mcp_routes_are_in_the_openapi_document(proxy):
    doc = (await proxy.api("GET", "/api/openapi.json")).json()
    assert {"post", "get", "delete"} <= set(doc["paths"]["/api/mcp"])


async def test_get_offers_no_server_stream_and_bad_posts_are_4xx(proxy):
    async with httpx.AsyncClient(timeout=TIMEOUT_S) as client:
        resp = await client.get(f"{proxy.url}/api/mcp",
                                headers={"Accept": "text/event-stream"})
        assert resp.status_code == 405 and "POST" in resp.headers["Allow"]
        for body, headers in [
            (b"{not json", {"Content-Type": "application/json"}),
            (b"[]", {"Content-Type": "application/json"}),
            (b'{"jsonrpc": "2.0", "id": 1, "method": 5}', {"Content-Type": "application/json"}),
            (b"x" * (5 * 1024 * 1024), {"Content-Type": "application/json"}),
            (b"{}", {"Content-Type": "text/plain"}),
        ]:
            resp = await client.post(f"{proxy.url}/api/mcp", content=body, headers={
                "Accept": "application/json, text/event-stream", **headers})
            assert 400 <= resp.status_code < 500, (body[:40], resp.status_code, resp.text)


INITIALIZE = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
    "protocolVersion": "2025-06-18", "capabilities": {},
    "clientInfo": {"name": "t", "version": "1"}}}
MCP_HEADERS = {"Accept": "application/json, text/event-stream"}


def manager_tasks() -> list[asyncio.Task[Any]]:
    return [t for t in asyncio.all_tasks() if t.get_name() == "mcp-session-manager"]


async def test_concurrent_first_requests_start_the_session_manager_once(proxy, monkeypatch):
    real, loads = endpoint.load_sdk, []

    def counted(settings):
        loads.append(settings)
        return real(settings)

    monkeypatch.setattr(endpoint, "load_sdk", counted)
    async with httpx.AsyncClient(timeout=TIMEOUT_S) as client:
        answers = await asyncio.gather(*(
            client.post(f"{proxy.url}/api/mcp", json=INITIALIZE, headers=MCP_HEADERS)
            for _ in range(8)))
    assert [a.status_code for a in answers] == [200] * 8
    assert len(loads) == 1 and len(manager_tasks()) == 1


async def test_a_failed_start_is_an_error_answer_and_the_next_request_starts_it(
        proxy, monkeypatch):
    real, failures = endpoint.load_sdk, []

    def fails_once(settings):
        if not failures:
            failures.append(settings)
            raise RuntimeError("cannot start")
        return real(settings)

    monkeypatch.setattr(endpoint, "load_sdk", fails_once)
    async with httpx.AsyncClient(timeout=TIMEOUT_S) as client:
        first = await client.post(f"{proxy.url}/api/mcp", json=INITIALIZE, headers=MCP_HEADERS)
        assert first.status_code == 500 and first.json()["error"]["type"] == "internal_error"
        again = await client.post(f"{proxy.url}/api/mcp", json=INITIALIZE, headers=MCP_HEADERS)
        assert again.status_code == 200, again.text


async def test_shutdown_stops_the_session_manager_only_if_it_was_started(proxy_factory,
                                                                         tmp_path):
    idle = await proxy_factory(data_dir=tmp_path / "idle")
    used = await proxy_factory(data_dir=tmp_path / "used")
    assert manager_tasks() == []
    async with httpx.AsyncClient(timeout=TIMEOUT_S) as client:
        resp = await client.post(f"{used.url}/api/mcp", json=INITIALIZE, headers=MCP_HEADERS)
        assert resp.status_code == 200, resp.text
    assert len(manager_tasks()) == 1
    await idle.server.close()  # never asked for MCP: nothing to stop
    assert len(manager_tasks()) == 1
    await used.server.close()
    assert manager_tasks() == []

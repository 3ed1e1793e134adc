"""WebSocket event streams seen by a real aiohttp WebSocket client."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import openai
import pytest

from budget_proxy import events, ws
from budget_proxy.appkeys import EVENTS, POLICIES

SUBSCRIBE = {"type": "subscription", "topic": "subscription",
             "payload": {"topic": "budget_events"}}


def ws_url(proxy, topic: str) -> str:
    return f"{proxy.url.replace('http://', 'ws://')}/ws/budget/{topic}"


async def next_event(sock: aiohttp.ClientWebSocketResponse, event_type: str,
                     timeout_s: float = 5.0) -> dict[str, Any]:
    """The next event of `event_type`, skipping others."""
    deadline = time.monotonic() + timeout_s
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no {event_type} event within {timeout_s}s")
        msg = await sock.receive(timeout=left)
        assert msg.type is aiohttp.WSMsgType.TEXT, msg
        event = msg.json()
        assert {"topic", "type", "timestamp", "payload"} <= set(event)
        if event["type"] == event_type:
            return event


async def connect(session: aiohttp.ClientSession, proxy, topic: str,
                  **kw: Any) -> aiohttp.ClientWebSocketResponse:
    sock = await session.ws_connect(ws_url(proxy, topic), **kw)
    hello = await next_event(sock, "connected")
    assert hello["payload"]["topics"] == [topic]
    return sock


async def chat(proxy, **headers: str) -> None:
    async with openai.AsyncOpenAI(base_url=f"{proxy.url}/v1", api_key="x", max_retries=0) as c:
        await c.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], max_tokens=50,
            extra_headers=headers)


async def test_subscription_message_is_acknowledged(proxy):
    async with aiohttp.ClientSession() as session:
        sock = await connect(session, proxy, "updates")
        await sock.send_json(SUBSCRIBE)
        ack = await next_event(sock, "subscription_ack")
        assert ack["payload"] == {"topic": "budget_events", "topics": ["updates"]}
        await sock.send_json({**SUBSCRIBE, "payload": {"topic": "prices"}})
        ack = await next_event(sock, "subscription_ack")
        assert ack["payload"]["topics"] == ["prices", "updates"]
        await sock.send_json({**SUBSCRIBE, "payload": {"topic": "nonsense"}})
        error = await next_event(sock, "error")
        assert "nonsense" in error["payload"]["message"]
        await sock.send_str("not json")
        await next_event(sock, "error")
        await sock.close()


async def test_usage_policy_alert_and_allocation_events(proxy, fake):
    fake.prompt_tokens, fake.completion_tokens = 1000, 100
    async with aiohttp.ClientSession() as session:
        updates = await connect(session, proxy, "updates")
        alerts = await connect(session, proxy, "alerts")
        allocations = await connect(session, proxy, "allocations")
        for sock in (updates, alerts, allocations):
            await sock.send_json(SUBSCRIBE)
            await next_event(sock, "subscription_ack")

        created = await proxy.api("POST", "/api/policies", json={
            "period": "daily", "type": "warn", "cost_limit": 0.0002, "name": "ws-test"})
        assert created.status_code == 201
        event = await next_event(updates, "policy_created")
        assert event["topic"] == "updates"
        assert event["payload"]["policy_id"] == created.json()["policy_id"]

        alloc = await proxy.api("POST", "/api/allocations", json={
            "context_id": "ctx-ws", "component": "agent", "tokens_allocated": 50_000})
        assert alloc.status_code == 201, alloc.text
        event = await next_event(allocations, "allocation_created")
        assert event["payload"]["context_id"] == "ctx-ws"

        await chat(proxy, **{"X-Budget-Context": "ctx-ws", "X-Budget-Component": "agent"})
        usage = await next_event(updates, "usage_recorded")
        assert usage["payload"]["input_tokens"] == 1000
        assert usage["payload"]["component"] == "agent"
        assert usage["payload"]["total_cost"] > 0
        drawn = await next_event(allocations, "allocation_usage")
        assert drawn["payload"]["context_id"] == "ctx-ws"
        alert = await next_event(alerts, "alert_raised")  # 1000 in + 100 out > 80% of $0.0002
        assert alert["topic"] == "alerts"
        assert alert["payload"]["type"] == "warning_threshold"
        assert alert["payload"]["policy_id"] == created.json()["policy_id"]

        deleted = await proxy.api("DELETE", f"/api/policies/{created.json()['policy_id']}")
        assert deleted.status_code == 200
        await next_event(updates, "policy_deleted")
        for sock in (updates, alerts, allocations):
            await sock.close()


async def test_a_slow_client_is_dropped_and_the_proxy_keeps_going(proxy, fake, monkeypatch):
    """A client that never reads: once its socket buffers and its queue are full it is cut
    off; a second client and the proxy path are not held up meanwhile."""
    monkeypatch.setattr(events, "SUBSCRIBER_QUEUE_SIZE", 50)
    monkeypatch.setattr(ws, "WS_SEND_TIMEOUT_S", 1.0)
    bus = proxy.app[EVENTS]
    blob = "x" * 65536
    async with aiohttp.ClientSession() as session:
        slow = await connect(session, proxy, "updates")  # never reads again
        fast = await connect(session, proxy, "alerts")
        assert bus.subscriber_count == 2
        started = time.monotonic()
        for batch in range(100):  # up to 100 x 10 x 64 KiB, until the slow client is dropped
            publish_started = time.perf_counter()
            for i in range(10):
                bus.publish("updates", "flood", {"n": batch * 10 + i, "blob": blob})
            assert time.perf_counter() - publish_started < 0.5  # publishing never waits
            await asyncio.sleep(0.005)
            if bus.subscriber_count == 1:
                break
        assert bus.subscriber_count == 1, "the slow client was not dropped"
        # the proxy path and the other client carry on at once
        call_started = time.monotonic()
        await chat(proxy)
        assert time.monotonic() - call_started < 2.0
        bus.publish("alerts", "alert_raised", {"alert_id": "x"})
        assert (await next_event(fast, "alert_raised", timeout_s=2.0))["payload"] == {
            "alert_id": "x"}
        assert time.monotonic() - started < 30
        # the slow client's connection is closed by the server
        closed = False
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not closed:
            msg = await slow.receive(timeout=10)
            closed = msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED,
                                  aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.ERROR)
        assert closed
        await fast.close()
    metrics = (await proxy.api("GET", "/metrics")).text
    assert "budget_proxy_websocket_dropped_total 1.0" in metrics


async def test_viewer_token_guards_the_streams(proxy_factory):
    proxy = await proxy_factory(admin_token="admin-t", viewer_token="viewer-t")
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.WSServerHandshakeError) as err:
            await session.ws_connect(ws_url(proxy, "updates"))
        assert err.value.status == 401
        sock = await connect(session, proxy, "updates",
                             headers={"Authorization": "Bearer viewer-t"})
        await sock.close()
        sock = await session.ws_connect(ws_url(proxy, "alerts") + "?token=admin-t")
        await next_event(sock, "connected")
        await sock.close()


async def test_events_from_one_replica_reach_subscribers_of_another(proxy_factory, fake,
                                                                    redis_url, tmp_path):
    first = await proxy_factory(redis_url=redis_url, data_dir=tmp_path / "a")
    second = await proxy_factory(redis_url=redis_url, data_dir=tmp_path / "b")
    async with aiohttp.ClientSession() as session:
        updates = await connect(session, first, "updates")
        alerts = await connect(session, first, "alerts")
        await asyncio.sleep(0.3)  # both replicas' pub/sub listeners are up
        created = await second.api("POST", "/api/policies", json={
            "period": "daily", "type": "warn", "cost_limit": 0.000001})
        assert created.status_code == 201
        event = await next_event(updates, "policy_created")
        assert event["payload"]["policy_id"] == created.json()["policy_id"]
        await second.app[POLICIES].refresh()
        await chat(second, **{"X-Budget-Component": "other-replica"})
        usage = await next_event(updates, "usage_recorded")
        assert usage["payload"]["component"] == "other-replica"
        alert = await next_event(alerts, "alert_raised")
        assert alert["payload"]["policy_id"] == created.json()["policy_id"]
        await updates.close()
        await alerts.close()


async def test_clients_are_closed_at_shutdown(proxy):
    async with aiohttp.ClientSession() as session:
        sock = await connect(session, proxy, "updates")
        started = time.monotonic()
        await proxy.server.close()
        msg = await sock.receive(timeout=10)
        assert msg.type is aiohttp.WSMsgType.CLOSE and msg.data == 1001
        assert time.monotonic() - started < 5

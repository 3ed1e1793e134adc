"""WebSocket event streams: `/ws/budget/{updates,alerts,allocations,prices}`.

A client connected to `/ws/budget/TOPIC` receives that topic's events as JSON text frames,
each `{"topic", "type", "timestamp", "payload"}`. It may send the contract's subscription
message `{"type": "subscription", "topic": "subscription", "payload": {"topic": T}}`, acked with
`{"type": "subscription_ack", ...}`: T = `budget_events` confirms the path's own topic, a topic
name (`updates`, `alerts`, `allocations`, `prices`) adds that topic, `all` adds every topic.

A client that does not keep up is dropped, never waited for: its queue in the `EventBus` is
bounded, and one frame that cannot be written within `WS_SEND_TIMEOUT_S` closes it. With the
Redis store, the bus relays events between replicas, so every subscriber sees every event.

The proxy hooks that publish usage events live here too (`install_event_hooks`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import WSCloseCode, WSMsgType, web

from budget_proxy.api.common import presented_token, token_role
from budget_proxy.appkeys import EVENTS, METRICS, SETTINGS
from budget_proxy.events import TOPICS, EventBus, Subscription
from budget_proxy.models import UsageRecord, utcnow
from budget_proxy.proxy import Metered, Proxy

log = logging.getLogger(__name__)

WS_HEARTBEAT_S = 30.0  # ping interval; a client that misses a pong is closed
WS_SEND_TIMEOUT_S = 5.0  # one frame not written within this: the client is too slow
WS_CLOSE_TIMEOUT_S = 2.0  # how long to wait for the client's close frame
# open WebSocketResponses, closed at shutdown
CLIENTS: web.AppKey[set[Any]] = web.AppKey("ws_clients", set)
ALL_TOPICS = "all"
PATH_TOPIC = "budget_events"  # the contract's subscription topic: this path's events


def _message(type_: str, topic: str, payload: dict[str, Any]) -> dict[str, Any]:
    return {"topic": topic, "type": type_, "timestamp": utcnow().isoformat(), "payload": payload}


async def _send(ws: web.WebSocketResponse, message: dict[str, Any]) -> None:
    """One JSON text frame (text, so a browser's `JSON.parse(event.data)` works)."""
    await ws.send_frame(orjson.dumps(message), WSMsgType.TEXT)


def _authorised(request: web.Request) -> bool:
    """With any token configured (admin or viewer), reading events needs one of them, as a
    bearer header or `?token=` (browsers cannot set headers on a WebSocket). With none
    configured, the admin API is open and so are its events."""
    settings = request.app[SETTINGS]
    if settings.viewer_token is None and settings.admin_token is None:
        return True
    return token_role(presented_token(request, query=True), settings) != "none"


def subscription_topics(current: frozenset[str], path_topic: str,
                        message: dict[str, Any]) -> frozenset[str] | str:
    """The topics after a subscription message, or an error text."""
    payload = message.get("payload")
    wanted = payload.get("topic") if isinstance(payload, dict) else None
    if wanted in (None, PATH_TOPIC, path_topic):
        return current | {path_topic}
    if wanted == ALL_TOPICS:
        return frozenset(TOPICS)
    if wanted in TOPICS:
        return current | {wanted}
    return f"unknown topic {wanted!r}; use {PATH_TOPIC}, {ALL_TOPICS} or one of {list(TOPICS)}"


async def _send_events(ws: web.WebSocketResponse, sub: Subscription, bus: EventBus,
                       request: web.Request) -> None:
    """Copy the subscription's queue to the socket; cut the client off if it falls behind."""
    while True:
        event = await sub.queue.get()
        if event is None:  # the bus dropped this subscriber: its queue overflowed
            break
        try:
            await asyncio.wait_for(_send(ws, event), WS_SEND_TIMEOUT_S)
        except TimeoutError:
            bus.unsubscribe(sub)
            sub.dropped = True
            break
        except (ConnectionResetError, RuntimeError):
            return
    metrics = request.app.get(METRICS)
    if metrics is not None:
        metrics.websocket_dropped.inc()
    log.warning("WebSocket client %s dropped: too slow", request.remote)
    with contextlib.suppress(Exception):
        await asyncio.wait_for(
            ws.close(code=WSCloseCode.TRY_AGAIN_LATER, message=b"too slow", drain=False),
            WS_CLOSE_TIMEOUT_S)
    if request.transport is not None:  # frames stuck behind a full buffer: drop the socket
        request.transport.abort()


async def _handle(request: web.Request, path_topic: str) -> web.StreamResponse:
    if not _authorised(request):
        raise web.HTTPUnauthorized(
            text='{"error": {"type": "unauthorized", "message": "a viewer or admin token is '
                 'required (Authorization: Bearer, or ?token=)"}}',
            content_type="application/json")
    ws = web.WebSocketResponse(heartbeat=WS_HEARTBEAT_S, timeout=WS_CLOSE_TIMEOUT_S)
    await ws.prepare(request)
    bus = request.app[EVENTS]
    metrics = request.app.get(METRICS)
    sub = bus.subscribe(frozenset({path_topic}))
    sender = asyncio.create_task(_send_events(ws, sub, bus, request))
    clients = request.app.get(CLIENTS, set())
    clients.add(ws)
    if metrics is not None:
        metrics.websocket_clients.labels(path_topic).inc()
    try:
        await _send(ws, _message("connected", path_topic, {"topics": sorted(sub.topics)}))
        async for msg in ws:
            if msg.type is not WSMsgType.TEXT:
                continue
            try:
                data = orjson.loads(msg.data)
            except orjson.JSONDecodeError:
                data = None
            if not isinstance(data, dict):
                await _send(ws, _message("error", "subscription",
                                             {"message": "messages must be JSON objects"}))
                continue
            if data.get("type") == "ping":
                await _send(ws, _message("pong", "subscription", {}))
                continue
            if data.get("type") != "subscription":
                await _send(ws, _message("error", "subscription", {
                    "message": f"unknown message type {data.get('type')!r}"}))
                continue
            topics = subscription_topics(sub.topics, path_topic, data)
            if isinstance(topics, str):
                await _send(ws, _message("error", "subscription", {"message": topics}))
                continue
            sub.topics = topics
            wanted = data.get("payload", {}).get("topic", PATH_TOPIC)
            await _send(ws, _message("subscription_ack", "subscription",
                                         {"topic": wanted, "topics": sorted(topics)}))
    except (ConnectionResetError, RuntimeError):
        pass
    finally:
        clients.discard(ws)
        bus.unsubscribe(sub)
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sender
        if metrics is not None:
            metrics.websocket_clients.labels(path_topic).dec()
    return ws


def _handler(topic: str) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handle(request: web.Request) -> web.StreamResponse:
        return await _handle(request, topic)

    handle.__name__ = f"ws_{topic}"
    return handle


def routes() -> list[web.RouteDef]:
    return [web.get(f"/ws/budget/{topic}", _handler(topic)) for topic in TOPICS]


async def close_all(app: web.Application) -> None:
    """Shutdown: close every client with 1001 (going away), so the server does not wait for
    long-lived connections before draining settlements."""
    clients: set[Any] = app[CLIENTS]
    for sock in list(clients):
        with contextlib.suppress(Exception):
            await asyncio.wait_for(
                sock.close(code=WSCloseCode.GOING_AWAY, message=b"server shutdown"),
                WS_CLOSE_TIMEOUT_S)


def setup(app: web.Application) -> None:
    """The WebSocket routes, and their closing at shutdown."""
    app[CLIENTS] = set()
    app.router.add_routes(routes())
    app.on_shutdown.append(close_all)


# usage events ---------------------------------------------------------------------------
def usage_payload(meta: Metered, record: UsageRecord) -> dict[str, Any]:
    """The usage record (as `/api/usage/records` shows it) and the policies it was charged to."""
    return {**record.model_dump(mode="json"), "policies": [ln.policy_id for ln in meta.lines]}


def install_event_hooks(proxy: Proxy, bus: EventBus) -> None:
    """Publish `usage_recorded` (updates), `allocation_usage` (allocations, for calls that
    carry an allocation or context) and `budget_exceeded` (updates) from the proxy's hooks."""

    def on_finish(meta: Metered, record: UsageRecord | None) -> None:
        if record is None or (bus.subscriber_count == 0 and bus.relay is None):
            return  # nobody listens here or on another replica: skip building the event
        payload = usage_payload(meta, record)
        bus.publish("updates", "usage_recorded", payload)
        if record.allocation_id or record.context_id:
            bus.publish("allocations", "allocation_usage", payload)

    def on_refuse(provider: str, policy_id: str, reason: str) -> None:
        bus.publish("updates", "budget_exceeded",
                    {"provider": provider, "policy_id": policy_id, "reason": reason})

    proxy.on_finish.append(on_finish)
    proxy.on_refuse.append(on_refuse)

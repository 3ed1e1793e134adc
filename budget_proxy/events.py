"""In-process event fan-out for WebSocket subscribers (and, with Redis, other replicas).

`publish` never blocks and never raises: each subscriber has a bounded queue, and a
subscriber whose queue is full is dropped (closed) rather than slowing the proxy. A `relay`
(set by the Redis store) forwards locally published events to every other replica, which hand
them to `deliver` on their side.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from budget_proxy.models import utcnow

log = logging.getLogger(__name__)

# topic -> WebSocket path `/ws/budget/{topic}`
TOPICS = ("updates", "alerts", "allocations", "prices")
SUBSCRIBER_QUEUE_SIZE = 1000


@dataclass(eq=False)
class Subscription:
    topics: frozenset[str]
    queue: asyncio.Queue[dict[str, Any] | None] = field(
        default_factory=lambda: asyncio.Queue(SUBSCRIBER_QUEUE_SIZE)
    )
    dropped: bool = False


class EventBus:
    def __init__(self) -> None:
        self._subscriptions: set[Subscription] = set()
        self.relay: Callable[[dict[str, Any]], None] | None = None

    def publish(self, topic: str, event_type: str, payload: dict[str, Any]) -> dict[str, Any]:
        """Deliver locally and hand to the relay; returns the event as sent."""
        event = {"topic": topic, "type": event_type, "timestamp": utcnow().isoformat(),
                 "payload": payload}
        self.deliver(event)
        if self.relay is not None:
            try:
                self.relay(event)
            except Exception:  # a broken relay must not break the caller
                log.exception("event relay failed")
        return event

    def deliver(self, event: dict[str, Any]) -> None:
        for sub in list(self._subscriptions):
            if event["topic"] not in sub.topics:
                continue
            try:
                sub.queue.put_nowait(event)
            except asyncio.QueueFull:
                self._drop(sub)

    def subscribe(self, topics: frozenset[str]) -> Subscription:
        sub = Subscription(topics)
        self._subscriptions.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        self._subscriptions.discard(sub)

    def _drop(self, sub: Subscription) -> None:
        """A subscriber too slow to keep up is cut off; its reader sees `None` and closes."""
        sub.dropped = True
        self._subscriptions.discard(sub)
        while not sub.queue.empty():
            sub.queue.get_nowait()
        sub.queue.put_nowait(None)

    @property
    def subscriber_count(self) -> int:
        return len(self._subscriptions)

"""The WebSocket subscription message: which topics a connection follows."""

from __future__ import annotations

import pytest

from budget_proxy.ws import subscription_topics


def message(topic):
    return {"type": "subscription", "topic": "subscription", "payload": {"topic": topic}}


@pytest.mark.parametrize(("topic", "expected"), [
    ("budget_events", {"updates"}),
    ("updates", {"updates"}),
    ("alerts", {"updates", "alerts"}),
    ("all", {"updates", "alerts", "allocations", "prices"}),
])
def test_subscription_topics(topic, expected):
    assert subscription_topics(frozenset({"updates"}), "updates", message(topic)) == expected


def test_a_message_without_payload_confirms_the_path_topic():
    assert subscription_topics(frozenset(), "alerts", {"type": "subscription"}) == {"alerts"}


def test_unknown_topic_is_an_error():
    result = subscription_topics(frozenset({"updates"}), "updates", message("stock_prices"))
    assert isinstance(result, str) and "stock_prices" in result

"""A finished call is counted at once and settled after the next call has gone upstream:
the client's next call is judged on the last one's spend, never kept waiting behind its
bookkeeping, and reads through the admin API still see every answered call."""

from __future__ import annotations

import openai
import pytest

from budget_proxy import proxy as proxy_module
from budget_proxy.store.base import UsageQuery
from budget_proxy.testing.waiting import eventually


def oai(proxy) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{proxy.url}/v1", api_key="sk-client-key",
                              max_retries=0)


async def test_the_next_call_is_judged_on_the_last_ones_spend_before_it_settles(
        proxy, fake, monkeypatch):
    monkeypatch.setattr(proxy_module, "SETTLE_AFTER_S", 3600.0)  # only a call or a read
    resp = await proxy.api("POST", "/api/policies", json={
        "period": "daily", "type": "hard_limit", "token_limit": 10_000})
    assert resp.status_code == 201, resp.text
    fake.prompt_tokens, fake.completion_tokens = 1200, 300
    async with oai(proxy) as client:
        await client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}],
            max_tokens=9_000)  # held: about 9,010 tokens; spent: 1,500
        assert len(proxy.proxy._to_settle) == 1  # not settled, not even started
        assert await proxy.store.list_usage(UsageQuery()) == []
        # fits after 1,500 spent, not after 9,010 held: judged on the spend
        await client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}],
            max_tokens=8_000)

        async def first_settled() -> bool:  # started when the second call went upstream
            return len(await proxy.store.list_usage(UsageQuery())) == 1

        assert await eventually(first_settled)
        assert len(proxy.proxy._to_settle) == 1  # the second's waits for a call or a read
        resp = await proxy.api("GET", "/api/usage/records")
        assert resp.status_code == 200 and len(resp.json()) == 2  # a read settles all first
        assert proxy.proxy._to_settle == []
        with pytest.raises(openai.RateLimitError):  # 3,000 spent: 7,010 more is refused
            await client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}],
                max_tokens=7_000)


async def test_a_call_with_no_call_after_it_settles_by_itself(proxy, fake):
    async with oai(proxy) as client:
        await client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])

    async def settled() -> bool:
        return len(await proxy.store.list_usage(UsageQuery())) == 1

    assert await eventually(settled)
    assert proxy.proxy._to_settle == []


async def test_on_redis_a_call_is_settled_at_once(proxy_factory, fake, redis_url,
                                                  monkeypatch):
    """Redis counts by the settlement itself (`account` counts nothing): a call waits for
    no later one, or the next call would be judged on its hold."""
    monkeypatch.setattr(proxy_module, "SETTLE_AFTER_S", 3600.0)
    proxy = await proxy_factory(redis_url=redis_url)
    async with oai(proxy) as client:
        await client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
        assert proxy.proxy._to_settle == []

    async def settled() -> bool:
        return len(await proxy.store.list_usage(UsageQuery())) == 1

    assert await eventually(settled)


async def test_a_call_is_settled_even_if_counting_it_at_once_fails(proxy, fake, monkeypatch):
    def broken(*args: object) -> bool:
        raise RuntimeError("account failed")

    resp = await proxy.api("POST", "/api/policies", json={
        "period": "daily", "type": "hard_limit", "token_limit": 100_000})
    assert resp.status_code == 201, resp.text
    monkeypatch.setattr(proxy.store, "account", broken)
    async with oai(proxy) as client:
        await client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])

    async def settled() -> bool:
        return len(await proxy.store.list_usage(UsageQuery())) == 1

    assert await eventually(settled)
    (t,) = [t for t in await proxy.store.totals(list(proxy.store._counters)) if t.requests]
    assert t.reserved_nusd == 0 and t.spent_nusd > 0  # settled from its hold, once

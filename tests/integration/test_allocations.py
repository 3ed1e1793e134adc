"""Allocations end to end: a real proxy server, the fake provider, the official OpenAI SDK.

An allocation of N tokens holds N on the budgets; requests drawing on it stop at N (refused
in the contract's 429 format); release hands the unused tokens back, visible in the status.
"""

from __future__ import annotations

import asyncio

import aiohttp
import openai
import pytest

from tests.integration.conftest import HAVE_REDIS, WHY_NOT
from tests.integration.test_websockets import connect, next_event

TOKEN_LIMIT = 100_000


def oai(proxy, **headers: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{proxy.url}/v1", api_key="sk-client", max_retries=0,
                              default_headers=headers)


async def chat(client: openai.AsyncOpenAI, max_tokens: int = 100):
    return await client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], max_tokens=max_tokens)


async def post(proxy, path: str, body: dict, status: int = 201) -> dict:
    resp = await proxy.api("POST", path, json=body)
    assert resp.status_code == status, resp.text
    return resp.json()


async def policy_row(proxy, policy_id: str) -> dict:
    resp = await proxy.api("GET", "/api/status")
    return next(p for p in resp.json()["policies"] if p["policy_id"] == policy_id)


async def token_policy(proxy, limit: int = TOKEN_LIMIT, **scope) -> dict:
    return await post(proxy, "/api/policies", {"period": "daily", "type": "hard_limit",
                                               "token_limit": limit, **scope})


async def allocate(proxy, tokens: int, status: int = 201, **extra) -> dict:
    body = {"context_id": "task-123", "component": "rhetor", "tokens_allocated": tokens, **extra}
    return await post(proxy, "/api/allocations", body, status)


async def test_requests_stop_at_the_allocation_and_release_returns_the_rest(proxy, fake):
    fake.prompt_tokens, fake.completion_tokens = 50, 100  # 150 tokens per call
    policy = await token_policy(proxy)
    alloc = await allocate(proxy, 1000)
    aid = alloc["allocation_id"]
    assert alloc["remaining_tokens"] == 1000 and alloc["state"] == "active"
    row = await policy_row(proxy, policy["policy_id"])
    assert (row["reserved"], row["spent"]) == (1000, 0)  # the hold

    client = oai(proxy, **{"X-Budget-Allocation": aid})
    served = 0
    with pytest.raises(openai.RateLimitError) as refused:
        for _ in range(20):
            await chat(client)
            served += 1
    # each call reserves its worst case (input estimate + 100), so 6 calls fit in 1000
    assert served == 6
    err = refused.value
    assert err.status_code == 429
    assert err.body["code"] == "budget_exceeded" and err.body["type"] == "insufficient_quota"
    assert err.response.headers["x-should-retry"] == "false"
    assert err.response.headers["X-Budget-Policy"] == aid
    assert len(fake.requests) == 6  # the refused one never reached the provider

    live = (await proxy.api("GET", f"/api/allocations/{aid}")).json()
    assert live["tokens_used"] == 900 and live["remaining_tokens"] == 100
    row = await policy_row(proxy, policy["policy_id"])
    assert (row["reserved"], row["spent"]) == (1000, 0)  # no double counting while active

    records = (await proxy.api("GET", "/api/usage/records")).json()
    assert {r["allocation_id"] for r in records} == {aid}
    assert {r["context_id"] for r in records} == {"task-123"}

    released = await post(proxy, f"/api/allocations/{aid}/release", {}, 200)
    assert released["state"] == "released" and released["tokens_used"] == 900
    assert released["finalized"] is True and released["remaining_tokens"] == 0
    row = await policy_row(proxy, policy["policy_id"])
    assert (row["reserved"], row["spent"]) == (0, 900)  # 100 unused tokens handed back
    assert row["remaining"] == TOKEN_LIMIT - 900

    with pytest.raises(openai.RateLimitError) as after:
        await chat(client)
    assert "released" in after.value.body["message"]
    # releasing again changes nothing
    again = await post(proxy, f"/api/allocations/{aid}/release", {}, 200)
    assert again["tokens_used"] == 900
    assert (await policy_row(proxy, policy["policy_id"]))["spent"] == 900


async def test_the_context_header_draws_on_the_active_allocation(proxy, fake):
    fake.prompt_tokens, fake.completion_tokens = 10, 20
    await token_policy(proxy)
    alloc = await allocate(proxy, 500)
    await chat(oai(proxy, **{"X-Budget-Context": "task-123"}), max_tokens=50)
    live = (await proxy.api("GET", f"/api/allocations/{alloc['allocation_id']}")).json()
    assert live["tokens_used"] == 30
    (rec,) = (await proxy.api("GET", "/api/usage/records")).json()
    assert rec["allocation_id"] == alloc["allocation_id"]
    # once released, the context is only attribution: charged to the budget as usual
    await post(proxy, f"/api/allocations/{alloc['allocation_id']}/release", {}, 200)
    await chat(oai(proxy, **{"X-Budget-Context": "task-123"}), max_tokens=50)
    recs = (await proxy.api("GET", "/api/usage/records")).json()
    assert recs[0]["allocation_id"] is None and recs[0]["context_id"] == "task-123"


async def test_concurrent_requests_never_overdraw_the_allocation(proxy, fake):
    # actual usage within the worst case each request reserves (as with a real provider)
    fake.prompt_tokens, fake.completion_tokens = 1, 60
    await token_policy(proxy)
    alloc = await allocate(proxy, 1000)
    client = oai(proxy, **{"X-Budget-Allocation": alloc["allocation_id"]})

    async def one() -> bool:
        try:
            await chat(client, max_tokens=60)
            return True
        except openai.RateLimitError:
            return False

    outcomes = await asyncio.gather(*(one() for _ in range(40)))
    live = (await proxy.api("GET", f"/api/allocations/{alloc['allocation_id']}")).json()
    assert 1 <= sum(outcomes) < 40
    assert live["tokens_used"] == 61 * sum(outcomes) <= 1000


async def test_an_allocation_the_budget_cannot_cover_is_refused(proxy):
    policy = await token_policy(proxy, limit=800)
    refused = await allocate(proxy, 1000, status=409)
    assert refused["error"]["type"] == "budget_exceeded"
    assert policy["policy_id"] in refused["error"]["message"]
    assert (await policy_row(proxy, policy["policy_id"]))["reserved"] == 0
    ok = await allocate(proxy, 800)
    assert ok["holds"][0]["policy_id"] == policy["policy_id"]
    await allocate(proxy, 1, status=409)  # the hold took the whole budget


async def test_a_hold_is_placed_on_every_covering_policy_and_only_those(proxy, fake):
    fake.prompt_tokens, fake.completion_tokens = 10, 10
    everyone = await token_policy(proxy)
    mine = await token_policy(proxy, component="rhetor")
    other = await token_policy(proxy, component="codex")
    openai_only = await token_policy(proxy, provider="openai")
    alloc = await allocate(proxy, 300)
    held = {h["policy_id"] for h in alloc["holds"]}
    # an allocation naming no provider cannot say its requests go to openai: not held there
    assert held == {everyone["policy_id"], mine["policy_id"]}
    client = oai(proxy, **{"X-Budget-Allocation": alloc["allocation_id"],
                           "X-Budget-Component": "rhetor"})
    await chat(client, max_tokens=20)
    assert (await policy_row(proxy, other["policy_id"]))["reserved"] == 0
    assert (await policy_row(proxy, openai_only["policy_id"]))["spent"] == 20  # charged as usual
    assert (await policy_row(proxy, mine["policy_id"]))["spent"] == 0  # prepaid by the hold
    await post(proxy, f"/api/allocations/{alloc['allocation_id']}/release", {}, 200)
    assert (await policy_row(proxy, mine["policy_id"]))["spent"] == 20
    assert (await policy_row(proxy, everyone["policy_id"]))["spent"] == 20
    assert (await policy_row(proxy, openai_only["policy_id"]))["spent"] == 20


async def test_a_priced_allocation_holds_cost_and_caps_it(proxy, fake):
    fake.prompt_tokens, fake.completion_tokens = 10, 10
    cost_policy = await post(proxy, "/api/policies", {"period": "daily", "cost_limit": 1.0})
    alloc = await allocate(proxy, 10_000, provider="openai", model="gpt-4o-mini",
                           tier="REMOTE_HEAVYWEIGHT", priority=9)
    assert alloc["tier"] == "remote_heavyweight" and alloc["priority"] == 9
    assert alloc["cost_allocated"] == pytest.approx(10_000 * 0.60 / 1e6)
    row = await policy_row(proxy, cost_policy["policy_id"])
    assert row["reserved"] == pytest.approx(0.006)


async def test_an_allocation_without_a_price_does_not_hold_on_cost_limits(proxy, fake):
    fake.prompt_tokens, fake.completion_tokens = 10, 10
    cost_policy = await post(proxy, "/api/policies", {"period": "daily", "cost_limit": 1.0})
    alloc = await allocate(proxy, 1000)
    assert alloc["holds"] == [] and alloc["cost_allocated"] is None
    await chat(oai(proxy, **{"X-Budget-Allocation": alloc["allocation_id"]}), max_tokens=10)
    row = await policy_row(proxy, cost_policy["policy_id"])
    assert row["spent"] == pytest.approx((10 * 0.15 + 10 * 0.60) / 1e6)  # checked as usual


async def test_unknown_and_expired_allocations_are_refused_in_the_provider_format(
        proxy_factory, fake):
    proxy = await proxy_factory(reaper_interval_s=0.1)
    await token_policy(proxy)
    with pytest.raises(openai.RateLimitError) as unknown:
        await chat(oai(proxy, **{"X-Budget-Allocation": "alloc_nope"}))
    assert "does not exist" in unknown.value.body["message"]
    assert fake.requests == []
    alloc = await allocate(proxy, 1000, ttl_s=0.3)
    await asyncio.sleep(0.8)
    live = (await proxy.api("GET", f"/api/allocations/{alloc['allocation_id']}")).json()
    assert live["state"] == "expired" and live["finalized"] is True
    with pytest.raises(openai.RateLimitError) as expired:
        await chat(oai(proxy, **{"X-Budget-Allocation": alloc["allocation_id"]}))
    assert "expired" in expired.value.body["message"]
    status = (await proxy.api("GET", "/api/status")).json()
    assert status["policies"][0]["reserved"] == 0


async def test_usage_recorded_directly_draws_on_the_allocation(proxy):
    policy = await token_policy(proxy)
    alloc = await allocate(proxy, 1000, provider="anthropic", model="claude-3-opus-20240229")
    await post(proxy, "/api/usage/record", {
        "context_id": "task-123", "allocation_id": alloc["allocation_id"],
        "component": "rhetor", "provider": "anthropic", "model": "claude-3-opus-20240229",
        "input_tokens": 100, "output_tokens": 250})
    live = (await proxy.api("GET", f"/api/allocations/{alloc['allocation_id']}")).json()
    assert live["tokens_used"] == 350
    assert live["cost_used"] == pytest.approx((100 * 15 + 250 * 75) / 1e6)
    await post(proxy, f"/api/allocations/{alloc['allocation_id']}/release", {}, 200)
    row = await policy_row(proxy, policy["policy_id"])
    assert (row["spent"], row["reserved"]) == (350, 0)


async def test_allocations_survive_a_restart(proxy_factory, fake):
    fake.prompt_tokens, fake.completion_tokens = 10, 10
    first = await proxy_factory()
    policy = await token_policy(first)
    alloc = await allocate(first, 500)
    await chat(oai(first, **{"X-Budget-Allocation": alloc["allocation_id"]}), max_tokens=20)
    await first.server.close()
    second = await proxy_factory()
    live = (await second.api("GET", f"/api/allocations/{alloc['allocation_id']}")).json()
    assert live["tokens_used"] == 20 and live["state"] == "active"
    await post(second, f"/api/allocations/{alloc['allocation_id']}/release", {}, 200)
    row = await policy_row(second, policy["policy_id"])
    assert (row["spent"], row["reserved"]) == (20, 0)


# priority: who is served first ----------------------------------------------------------------
@pytest.fixture(params=["embedded", "redis"])
async def backend(request: pytest.FixtureRequest, proxy_factory):
    if request.param == "redis":
        if not HAVE_REDIS:
            pytest.skip(WHY_NOT)
        return await proxy_factory(redis_url=request.getfixturevalue("redis_url"))
    return await proxy_factory()


async def live(proxy, aid: str) -> dict:
    resp = await proxy.api("GET", f"/api/allocations/{aid}")
    assert resp.status_code == 200, resp.text
    return resp.json()


async def draw(proxy, alloc: dict, tokens: int) -> None:
    """Usage of `tokens` reported on the allocation (as a component doing its work would)."""
    await post(proxy, "/api/usage/record", {
        "context_id": alloc["context_id"], "allocation_id": alloc["allocation_id"],
        "component": alloc["component"], "provider": "openai", "model": "gpt-4o-mini",
        "input_tokens": tokens // 2, "output_tokens": tokens - tokens // 2})


async def test_a_higher_priority_allocation_takes_unused_tokens_from_the_lowest(backend, fake):
    proxy = backend
    policy = await token_policy(proxy, limit=1000)
    low = await allocate(proxy, 600, priority=1, context_id="low", component="batch")
    mid = await allocate(proxy, 300, priority=3, context_id="mid")
    await draw(proxy, low, 100)
    async with aiohttp.ClientSession() as session:
        allocations = await connect(session, proxy, "allocations")
        high = await allocate(proxy, 500, priority=5, context_id="high")
        event = await next_event(allocations, "allocation_preempted")
        await allocations.close()
    # 100 were free; the other 400 come from the lowest priority, which had 500 unused
    assert high["preempted"] == [{"allocation_id": low["allocation_id"],
                                  "by": high["allocation_id"], "tokens": 400, "cost_nusd": 0}]
    assert event["payload"]["allocation_id"] == low["allocation_id"]
    assert event["payload"]["component"] == "batch"
    assert event["payload"]["preemption"]["tokens"] == 400
    shrunk = await live(proxy, low["allocation_id"])
    assert shrunk["state"] == "active" and shrunk["tokens_allocated"] == 200
    assert (shrunk["tokens_used"], shrunk["remaining_tokens"]) == (100, 100)
    assert shrunk["tokens_yielded"] == 400
    assert (await live(proxy, mid["allocation_id"]))["tokens_allocated"] == 300
    row = await policy_row(proxy, policy["policy_id"])
    assert (row["reserved"], row["spent"]) == (200 + 300 + 500, 0)  # never past the limit
    alerts = (await proxy.api("GET", "/api/alerts")).json()
    (alert,) = [a for a in alerts if a["type"] == "allocation_preempted"]
    assert alert["data"]["component"] == "batch" and alert["data"]["tokens"] == 400
    # the shrunk allocation stops at its new size
    await draw(proxy, low, 100)
    with pytest.raises(openai.RateLimitError) as refused:
        await chat(oai(proxy, **{"X-Budget-Allocation": low["allocation_id"]}), max_tokens=10)
    assert refused.value.response.headers["X-Budget-Policy"] == low["allocation_id"]
    # released, each hands back what it did not use: only the low one's 200 were spent
    for alloc in (low, mid, high):
        await post(proxy, f"/api/allocations/{alloc['allocation_id']}/release", {}, 200)
    row = await policy_row(proxy, policy["policy_id"])
    assert (row["reserved"], row["spent"]) == (0, 200)
    assert (await live(proxy, low["allocation_id"]))["tokens_used"] == 200


async def test_equal_or_higher_priority_is_never_preempted_and_the_409_names_it(backend):
    proxy = backend
    policy = await token_policy(proxy, limit=1000)
    same = await allocate(proxy, 800, priority=5, context_id="same")
    refused = await allocate(proxy, 400, status=409, priority=5, context_id="new")
    message = refused["error"]["message"]
    assert policy["policy_id"] in message and same["allocation_id"] in message
    assert "equal or higher priority" in message
    assert {"field": "priority", "reason": f"held by allocation {same['allocation_id']} of "
            "equal or higher priority"} in refused["error"]["details"]
    assert (await live(proxy, same["allocation_id"]))["tokens_allocated"] == 800
    assert (await policy_row(proxy, policy["policy_id"]))["reserved"] == 800
    above = await allocate(proxy, 400, priority=6, context_id="above")
    assert above["preempted"][0]["tokens"] == 200  # only what was short
    assert (await live(proxy, same["allocation_id"]))["tokens_allocated"] == 600


async def test_nothing_is_taken_when_the_lower_priorities_cannot_cover_it(backend):
    proxy = backend
    policy = await token_policy(proxy, limit=1000)
    low = await allocate(proxy, 500, priority=1, context_id="low")
    top = await allocate(proxy, 500, priority=9, context_id="top")
    await draw(proxy, low, 400)  # 100 unused
    refused = await allocate(proxy, 300, status=409, priority=5, context_id="new")
    assert "not enough" in refused["error"]["message"]
    assert top["allocation_id"] in refused["error"]["message"]
    assert (await live(proxy, low["allocation_id"]))["tokens_allocated"] == 500
    assert (await policy_row(proxy, policy["policy_id"]))["reserved"] == 1000
    events = (await proxy.api("GET", "/api/alerts")).json()
    assert not [a for a in events if a["type"] == "allocation_preempted"]


async def test_a_priced_allocation_frees_cost_on_a_cost_limit(backend):
    proxy = backend
    cost_policy = await post(proxy, "/api/policies", {
        "period": "daily", "type": "hard_limit", "cost_limit": 0.001})
    priced = {"provider": "openai", "model": "gpt-4o-mini"}  # 0.60 USD per M output tokens
    low = await allocate(proxy, 1000, priority=1, context_id="low", **priced)  # $0.0006
    high = await allocate(proxy, 1000, priority=2, context_id="high", **priced)
    (taken,) = high["preempted"]
    assert taken["allocation_id"] == low["allocation_id"]
    assert taken["cost_nusd"] >= 200_000  # $0.0002 freed: 0.0004 left + 0.0002 = 0.0006
    row = await policy_row(proxy, cost_policy["policy_id"])
    assert row["reserved"] <= 0.001 + 1e-12


async def test_concurrent_higher_priority_allocations_never_overspend(backend):
    proxy = backend
    policy = await token_policy(proxy, limit=1000)
    low = await allocate(proxy, 1000, priority=1, context_id="low")
    results = await asyncio.gather(*(proxy.api("POST", "/api/allocations", json={
        "context_id": f"c{i}", "component": "rhetor", "tokens_allocated": 300, "priority": 5})
        for i in range(6)))
    created = [r for r in results if r.status_code == 201]
    assert len(created) == 3  # 3 x 300 of the 1000 low held, taken 300 at a time
    assert {r.status_code for r in results} == {201, 409}
    assert (await live(proxy, low["allocation_id"]))["tokens_allocated"] == 100
    assert (await policy_row(proxy, policy["policy_id"]))["reserved"] == 1000


@pytest.mark.parametrize("priority", [-1, 1001, "high", 2.5, None, 10**30])
async def test_hostile_priorities_are_refused(proxy, priority):
    resp = await proxy.api("POST", "/api/allocations", json={
        "context_id": "c", "component": "x", "tokens_allocated": 10, "priority": priority})
    assert resp.status_code == 422, resp.text
    assert "priority" in resp.text

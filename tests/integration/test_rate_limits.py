"""Rate limits, key budgets, shadow policies and top-ups through the real proxy: a
`request_limit` of 3 per minute lets exactly 3 of 20 concurrent calls through (one embedded
proxy, and two replicas on one Redis), refusals carry the provider's rate-limit headers."""

from __future__ import annotations

import asyncio
import re
import uuid
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from budget_proxy.appkeys import POLICIES
from budget_proxy.models import BudgetPolicy
from budget_proxy.testing.waiting import eventually
from tests.integration.conftest import HAVE_REDIS, WHY_NOT
from tests.integration.test_redis_replicas import put_policies, redis_factory
from tests.redis_servers import start_replicas

redis_factory = redis_factory  # fixture

ADMIN = {"Authorization": "Bearer admin-token"}
CONCURRENT = 20


def body(marker: str = "") -> dict:
    return {"model": "gpt-4o-mini", "max_tokens": 5,
            "messages": [{"role": "user", "content": marker or uuid.uuid4().hex}]}


async def chat(http: httpx.AsyncClient, url: str, component: str = "rl",
               auth: str = "Bearer sk-client", **headers: str) -> httpx.Response:
    return await http.post(f"{url}/v1/chat/completions", json=body(),
                           headers={"X-Budget-Component": component, "Authorization": auth,
                                    **headers})


def minute() -> str:
    return datetime.now(UTC).strftime("%Y%m%d%H%M")


async def burst_in_one_minute(http: httpx.AsyncClient, urls: list[str], component: str
                              ) -> list[httpx.Response]:
    """CONCURRENT calls at once over `urls`; tried again (at most twice more) when the burst
    straddled a minute boundary, so every call lands in one minutely window."""
    for _ in range(3):
        before = minute()
        results = await asyncio.gather(*[
            chat(http, urls[i % len(urls)], component) for i in range(CONCURRENT)])
        if minute() == before:
            return list(results)
        component += "-again"
    raise AssertionError("three bursts in a row straddled a minute")


def assert_rate_refusal(resp: httpx.Response, policy_id: str) -> None:
    assert resp.status_code == 429, resp.text
    error = resp.json()["error"]
    assert error["code"] == "budget_exceeded" and "3 of 3 calls" in error["message"]
    assert 1 <= int(resp.headers["Retry-After"]) <= 60
    assert resp.headers["x-ratelimit-remaining-requests"] == "0"
    assert resp.headers["x-should-retry"] == "false"
    assert resp.headers["X-Budget-Policy"] == policy_id


@pytest.fixture
async def http():
    async with httpx.AsyncClient(timeout=30) as client:
        yield client


async def test_three_calls_a_minute_twenty_concurrent_exactly_three_pass(proxy_factory, fake,
                                                                        http):
    proxy = await proxy_factory()
    await proxy.store.put_policy(BudgetPolicy(policy_id="rpm", period="minutely",
                                              request_limit=3, component="rl"))
    await proxy.app[POLICIES].refresh(force=True)
    results = await burst_in_one_minute(http, [proxy.url], "rl")
    passed = [r for r in results if r.status_code == 200]
    assert len(passed) == 3
    for resp in results:
        if resp.status_code != 200:
            assert_rate_refusal(resp, "rpm")
    assert {r.headers["x-ratelimit-remaining-requests"] for r in passed} == {"0", "1", "2"}
    assert sum(1 for r in fake.requests if r.body.get("model") == "gpt-4o-mini") == 3


@pytest.mark.skipif(not HAVE_REDIS, reason=WHY_NOT)
async def test_two_redis_replicas_let_exactly_three_of_twenty_through(fake, http, redis_factory,
                                                                     tmp_path: Path):
    server = redis_factory(aof=False)
    await put_policies(server.url, tmp_path, BudgetPolicy(
        policy_id="rpm", period="minutely", request_limit=3, component="rl"))
    replicas = await start_replicas(2, {"BUDGET_REDIS_URL": server.url,
                                        "BUDGET_OPENAI_BASE_URL": f"{fake.url}/v1"}, tmp_path)
    try:
        results = await burst_in_one_minute(http, [r.url for r in replicas], "rl")
        assert sum(r.status_code == 200 for r in results) == 3
        for resp in results:
            if resp.status_code != 200:
                assert_rate_refusal(resp, "rpm")
        assert len(fake.requests) == 3
    finally:
        for replica in replicas:
            replica.process.kill()
            replica.process.wait()


async def test_a_key_budget_refuses_past_its_limit_whatever_headers_it_sends(proxy_factory,
                                                                           http):
    proxy = await proxy_factory(admin_token="admin-token")
    made = await http.post(f"{proxy.url}/api/keys", headers=ADMIN, json={
        "component": "billing", "period": "daily", "request_limit": 2})
    assert made.status_code == 201, made.text
    secret, policy = made.json()["secret"], made.json()["policy"]
    assert policy["key_id"] == made.json()["key"]["key_id"] and policy["type"] == "hard_limit"
    for component in ("billing", "someone-else"):
        assert (await chat(http, proxy.url, component, auth=f"Bearer {secret}")).status_code \
            == 200
    for component in ("billing", "other", ""):
        refused = await chat(http, proxy.url, component, auth=f"Bearer {secret}",
                             **{"X-Budget-Session": "s9", "X-Budget-Task": "t"})
        assert refused.status_code == 429
        assert refused.headers["X-Budget-Policy"] == policy["policy_id"]
    # another key, and calls without a key, are not this key's budget
    assert (await chat(http, proxy.url, "billing")).status_code == 200


async def test_a_shadow_policy_never_refuses_and_says_what_it_would_have_done(proxy_factory,
                                                                            http):
    proxy = await proxy_factory(admin_token="admin-token")
    made = await http.post(f"{proxy.url}/api/policies", headers=ADMIN, json={
        "policy_id": "try-me", "type": "shadow", "period": "daily", "request_limit": 1})
    assert made.status_code == 201, made.text
    first = await chat(http, proxy.url)
    assert first.status_code == 200 and "X-Budget-Shadow" not in first.headers
    for _ in range(3):
        resp = await chat(http, proxy.url)
        assert resp.status_code == 200
        assert resp.headers["X-Budget-Shadow"] == "try-me would refuse"

    async def counted() -> list[str]:  # a new series is exposed at zero on its first scrape
        metrics = (await http.get(f"{proxy.url}/metrics")).text
        found = re.findall(r'budget_proxy_shadow_refusals_total\{[^}]*policy_id="try-me"'
                           r'[^}]*\} ([0-9.]+)', metrics)
        return found if found and float(found[0]) > 0 else []
    assert [float(v) for v in await eventually(counted)] == [3.0]


async def test_a_topup_lets_calls_through_until_it_expires_spend_is_kept(proxy_factory, http):
    proxy = await proxy_factory(admin_token="admin-token")
    await http.post(f"{proxy.url}/api/policies", headers=ADMIN, json={
        "policy_id": "cap", "period": "daily", "request_limit": 1})
    assert (await chat(http, proxy.url)).status_code == 200
    assert (await chat(http, proxy.url)).status_code == 429
    topup = await http.post(f"{proxy.url}/api/policies/cap/topups", headers=ADMIN,
                            json={"requests": 3, "ttl_s": 3600})
    assert topup.status_code == 201, topup.text
    assert (await chat(http, proxy.url)).status_code == 200
    assert (await chat(http, proxy.url)).status_code == 200
    # its expiry, made to have passed (the window rule itself is tested in the unit tables)
    policy = (await http.get(f"{proxy.url}/api/policies/cap", headers=ADMIN)).json()
    (live,) = policy["topups"]
    expired = {**live, "expires_at": "2000-01-01T00:00:00Z"}
    edited = await http.patch(f"{proxy.url}/api/policies/cap", headers=ADMIN,
                              json={"topups": [expired]})
    assert edited.status_code == 200, edited.text
    assert (await chat(http, proxy.url)).status_code == 429  # the limit is back: 3 calls > 1
    totals = await proxy.store.totals([k for k in proxy.store._counters if k.startswith("cap:")])
    assert [t.requests for t in totals] == [3]  # spend (calls) never reset

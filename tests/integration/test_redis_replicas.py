"""Many sidecars, one budget: real `budget-proxy serve` processes sharing one Redis (or a
3-master Redis Cluster), hit concurrently through all of them."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from budget_proxy.models import BudgetPolicy
from budget_proxy.store.redis import RedisStore
from tests import redis_servers
from tests.redis_servers import Replica, start_replicas

redis_cluster = redis_servers.redis_cluster  # fixtures
redis_factory = redis_servers.redis_factory

CONCURRENT = 180
# gpt-4o-mini: $0.15 in / $0.60 out per million; the fake reports 1 input token (fewer than
# the proxy's own count) and exactly max_tokens output, so actual cost ~= the reservation
MAX_TOKENS = 100
REQUEST_COST_USD = (1 * 0.15 + MAX_TOKENS * 0.60) / 1e6
ROOM_FOR = 40  # the limit admits about this many requests


@pytest.fixture
def replicas_cleanup() -> Iterator[list[Replica]]:
    started: list[Replica] = []
    yield started
    for replica in started:
        if replica.process.poll() is None:
            replica.process.kill()
            replica.process.wait()


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    limits = httpx.Limits(max_connections=CONCURRENT * 2, max_keepalive_connections=CONCURRENT)
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:
        yield client


async def chat(http: httpx.AsyncClient, url: str, component: str, session: str = "s",
               ) -> httpx.Response:
    marker = f"{component}:{uuid.uuid4().hex}"
    return await http.post(
        f"{url}/v1/chat/completions",
        json={"model": "gpt-4o-mini", "max_tokens": MAX_TOKENS,
              "messages": [{"role": "user", "content": marker}]},
        headers={"X-Budget-Component": component, "X-Budget-Session": session,
                 "Authorization": "Bearer sk-client"},
    )


async def records(http: httpx.AsyncClient, url: str, **params: str) -> list[dict]:
    resp = await http.get(f"{url}/api/usage/records", params={"limit": "5000", **params})
    assert resp.status_code == 200, resp.text
    return resp.json()


async def put_policies(redis_url: str, tmp_path: Path, *policies: BudgetPolicy) -> None:
    store = RedisStore(redis_url, data_dir=tmp_path / "setup")
    await store.start()
    try:
        for policy in policies:
            await store.put_policy(policy)
    finally:
        await store.close()


async def hammer(http: httpx.AsyncClient, replicas: list[Replica], component: str
                 ) -> list[int]:
    """CONCURRENT requests at once, spread round-robin over the replicas."""
    results = await asyncio.gather(*[
        chat(http, replicas[i % len(replicas)].url, component, session=f"replica{i % 3}")
        for i in range(CONCURRENT)
    ])
    statuses = [r.status_code for r in results]
    assert set(statuses) <= {200, 429}, [r.text for r in results if r.status_code not in (200, 429)]
    return statuses


def sent_to_provider(fake, component: str) -> int:
    return sum(1 for r in fake.requests
               if r.body["messages"][0]["content"].startswith(f"{component}:"))


async def overspend_scenario(fake, http, replicas, limit_usd: float) -> tuple[list[int], float]:
    fake.prompt_tokens, fake.completion_tokens = 1, MAX_TOKENS
    fake.response_delay_s = 0.05
    statuses = await hammer(http, replicas, "load")
    # a settlement finishes just after its response: wait for the last ones
    deadline = time.monotonic() + 10
    while len(recs := await records(http, replicas[0].url, component="load")) < statuses.count(200):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    assert len(recs) == statuses.count(200) == sent_to_provider(fake, "load")
    return statuses, sum(r["total_cost"] for r in recs)


async def test_three_replicas_never_overspend_and_share_everything(
        fake, http, redis_factory, tmp_path, replicas_cleanup):
    server = redis_factory(aof=False)
    limit = ROOM_FOR * REQUEST_COST_USD
    await put_policies(server.url, tmp_path, BudgetPolicy(
        policy_id="load-daily", component="load", period="daily", cost_limit=limit))
    replicas = await start_replicas(3, {"BUDGET_REDIS_URL": server.url,
                                        "BUDGET_OPENAI_BASE_URL": f"{fake.url}/v1"}, tmp_path)
    replicas_cleanup.extend(replicas)

    statuses, spent = await overspend_scenario(fake, http, replicas, limit)
    assert 0 < statuses.count(200) <= ROOM_FOR and 429 in statuses
    assert spent <= limit + 1e-12

    # usage recorded through each replica is visible through every replica
    for i, replica in enumerate(replicas):
        for _ in range(2):
            assert (await chat(http, replica.url, "visible", session=f"via{i}")).status_code == 200
    expected = {r["record_id"] for r in await records(http, replicas[0].url)}
    for replica in replicas:
        seen = await records(http, replica.url)
        assert {r["record_id"] for r in seen} == expected
        assert {r["session_id"] for r in seen if r["component"] == "visible"} == {
            "via0", "via1", "via2"}
        status = (await http.get(f"{replica.url}/api/status")).json()
        (row,) = [p for p in status["policies"] if p["policy_id"] == "load-daily"]
        assert row["spent"] == pytest.approx(spent, abs=1e-9)

    # a policy created through replica A is enforced by replica B within a second
    a, b = replicas[0], replicas[1]
    assert (await chat(http, b.url, "probe")).status_code == 200
    created = await http.post(f"{a.url}/api/policies", json={
        "period": "daily", "type": "hard_limit", "cost_limit": 1e-9, "component": "probe"})
    assert created.status_code == 201, created.text
    started = time.monotonic()
    while (await chat(http, b.url, "probe")).status_code != 429:
        assert time.monotonic() - started < 1.0, "replica B did not see the policy within 1 s"
        await asyncio.sleep(0.02)


async def test_the_concurrency_test_catches_a_non_atomic_store(
        fake, http, redis_factory, tmp_path, replicas_cleanup):
    """The same scenario against check-then-increment (tests.redis_servers.RacyRedisStore):
    it must overspend, or the test above proves nothing."""
    server = redis_factory(aof=False)
    limit = ROOM_FOR * REQUEST_COST_USD
    await put_policies(server.url, tmp_path, BudgetPolicy(
        policy_id="load-daily", component="load", period="daily", cost_limit=limit))
    replicas = await start_replicas(3, {"BUDGET_REDIS_URL": server.url,
                                        "BUDGET_OPENAI_BASE_URL": f"{fake.url}/v1"},
                                    tmp_path, racy=True)
    replicas_cleanup.extend(replicas)
    statuses, spent = await overspend_scenario(fake, http, replicas, limit)
    assert statuses.count(200) > ROOM_FOR
    assert spent > limit


async def test_three_replicas_on_a_cluster_never_overspend(
        fake, http, redis_cluster, tmp_path, replicas_cleanup):
    redis_cluster.flushall()
    daily = ROOM_FOR * REQUEST_COST_USD
    monthly = (ROOM_FOR // 2) * REQUEST_COST_USD  # the tighter one, in another hash slot
    await put_policies(redis_cluster.url, tmp_path,
                       BudgetPolicy(policy_id="load-daily", component="load", period="daily",
                                    cost_limit=daily),
                       BudgetPolicy(policy_id="load-monthly", component="load",
                                    period="monthly", cost_limit=monthly))
    replicas = await start_replicas(3, {"BUDGET_REDIS_URL": redis_cluster.url,
                                        "BUDGET_OPENAI_BASE_URL": f"{fake.url}/v1"}, tmp_path)
    replicas_cleanup.extend(replicas)
    statuses, spent = await overspend_scenario(fake, http, replicas, monthly)
    assert 0 < statuses.count(200) <= ROOM_FOR // 2 and 429 in statuses
    assert spent <= monthly + 1e-12
    for replica in replicas:
        status = (await http.get(f"{replica.url}/api/status")).json()
        rows = {p["policy_id"]: p for p in status["policies"]}
        for policy_id in ("load-daily", "load-monthly"):
            assert rows[policy_id]["spent"] == pytest.approx(spent, abs=1e-9)
            assert rows[policy_id]["reserved"] == 0

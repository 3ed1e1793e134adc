"""What only the Redis store has: NOSCRIPT recovery, cluster compensation, the journal,
fast failure, the one clock, pub/sub between replicas, the start-up configuration check."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

import pytest

from budget_proxy.enforcement import CounterLine
from budget_proxy.events import EventBus
from budget_proxy.models import BudgetPolicy, UsageRecord
from budget_proxy.store import keys as K
from budget_proxy.store.base import (
    Reservation,
    StoreError,
    UsageQuery,
    intent_json,
    record_id_of,
)
from budget_proxy.store.journal import SettlementJournaled
from budget_proxy.store.redis import RedisStore, parse_redis_url


def line(key: str, limit_nusd: int | None = None, enforce: bool = True) -> CounterLine:
    return CounterLine(key, limit_nusd, None, enforce, policy_id=key.split(":")[0])


def rec(rid: str) -> UsageRecord:
    return UsageRecord(record_id=rid, provider="openai", model="gpt-4o", component="c")


@pytest.fixture(params=["redis_server", "redis_cluster"])
def redis_url(request: pytest.FixtureRequest) -> str:
    target = request.getfixturevalue(request.param)
    target.flushall()
    return target.url


@pytest.fixture
async def make_store(tmp_path: Path):
    stores: list[RedisStore] = []

    async def make(url: str, name: str = "a", **kw) -> RedisStore:
        store = RedisStore(url, data_dir=tmp_path / name, **kw)
        await store.start()
        stores.append(store)
        return store

    yield make
    for store in stores:
        await store.close()


@pytest.mark.parametrize(
    ("url", "plain", "cluster"),
    [
        ("redis://h:1/0", "redis://h:1/0", False),
        ("redis+cluster://h:1", "redis://h:1", True),
        ("rediss+cluster://u:p@h:1", "rediss://u:p@h:1", True),
        ("redis://h:1?cluster=true&socket_timeout=2", "redis://h:1?socket_timeout=2", True),
        ("redis://h:1?cluster=no", "redis://h:1", False),
    ],
)
def test_parse_redis_url(url: str, plain: str, cluster: bool):
    assert parse_redis_url(url) == (plain, cluster)


@pytest.mark.parametrize(
    ("key", "group"),
    [("pol_1:d:20250101", "pol_1"), ("pol_1:s:abc:def", "pol_1"), ("alloc:a1", "alloc:a1"),
     ("alloc:a1:x", "alloc:a1"), ("weird}{:d:1", None)],
)
def test_counter_groups_are_valid_hash_tags(key: str, group: str | None):
    got = K.counter_group(key)
    if group is not None:
        assert got == group
    assert "{" not in got and "}" not in got
    assert K.counter(key).startswith(f"bp:{{c:{got}}}:")


async def test_script_flush_between_calls_fails_nothing(redis_url, make_store):
    store = await make_store(redis_url)
    a = line("a:d:1", 10_000)
    for i in range(20):
        await store.client.script_flush()  # every master on a cluster
        r = Reservation(f"r{i}", (a.key,), 10, 1)
        assert (await store.reserve(r, [a], 60)).ok
        assert await store.settle(r, 5, 1, rec(f"x{i}"))
    (t,) = await store.totals([a.key])
    assert (t.spent_nusd, t.reserved_nusd) == (100, 0)


async def test_editing_a_limit_never_resets_spend(redis_url, make_store):
    store = await make_store(redis_url)
    r = Reservation("1", ("p:d:1",), 50, 0)
    assert (await store.reserve(r, [line("p:d:1", 100)], 60)).ok
    await store.settle(r, 50, 0, rec("one"))
    # same policy window, new limit: the spend is still there and counts against it
    refused = await store.reserve(Reservation("2", ("p:d:1",), 20, 0), [line("p:d:1", 60)], 60)
    assert not refused.ok and refused.totals[0].spent_nusd == 50
    assert (await store.reserve(Reservation("3", ("p:d:1",), 20, 0),
                                [line("p:d:1", 200)], 60)).ok


async def test_a_retried_reserve_holds_once(redis_url, make_store):
    store = await make_store(redis_url)
    a = line("a:d:1", 100)
    r = Reservation("same", (a.key,), 60, 0)
    assert (await store.reserve(r, [a], 60)).ok
    again = await store.reserve(r, [a], 60)  # e.g. a reply lost to a timeout, then retried
    assert again.ok and again.totals[0].reserved_nusd == 60


async def test_cluster_refusal_on_a_later_group_releases_the_earlier_ones(
        redis_cluster, make_store):
    redis_cluster.flushall()
    store = await make_store(redis_cluster.url)
    lines = [line(f"g{i}:d:1", 100) for i in range(6)]  # six groups, spread over the masters
    slots = {store.client.keyslot(K.counter(ln.key)) for ln in lines}
    assert len(slots) > 1
    tight = [*lines[:5], line("g5:d:1", 10)]
    result = await store.reserve(Reservation("r", tuple(ln.key for ln in tight), 50, 0), tight, 60)
    assert not result.ok and result.refused_index == 5
    totals = await store.totals([ln.key for ln in tight])
    assert [t.reserved_nusd for t in totals] == [0] * 6
    assert [t.reserved_nusd for t in result.totals[:5]] == [0] * 5


async def test_concurrent_multi_group_reservations_never_overspend(redis_url, make_store):
    store = await make_store(redis_url)
    shared, own = line("shared:d:1", 1000), [line(f"own{i}:d:1", 300) for i in range(4)]

    async def one(i: int) -> bool:
        lines = [shared, own[i % 4]]
        r = Reservation(f"r{i}", tuple(ln.key for ln in lines), 30, 0)
        return (await store.reserve(r, lines, 60)).ok

    results = await asyncio.gather(*[one(i) for i in range(120)])
    totals = await store.totals([shared.key] + [ln.key for ln in own])
    assert totals[0].reserved_nusd == 30 * sum(results) <= 1000
    assert all(t.reserved_nusd <= 300 for t in totals[1:])
    assert sum(results) == 33  # each own line allows 10 (40 total), the shared one 33


async def test_concurrent_reapers_release_once(redis_url, make_store):
    a_store = await make_store(redis_url, "a")
    b_store = await make_store(redis_url, "b")
    a = line("a:d:1", 10_000)
    for i in range(50):
        await a_store.reserve(Reservation(f"r{i}", (a.key,), 10, 1), [a], 0.05)
    await asyncio.sleep(0.1)
    released = await asyncio.gather(a_store.reap_expired(), b_store.reap_expired(),
                                    a_store.reap_expired())
    assert sum(released) == 50
    (t,) = await a_store.totals([a.key])
    assert (t.reserved_nusd, t.reserved_tokens) == (0, 0)


async def test_settlement_replayed_after_partial_application_counts_once(redis_url, make_store):
    store = await make_store(redis_url)
    lines = [line("p1:d:1", 10_000), line("p2:d:1", 10_000)]
    r = Reservation("r", tuple(ln.key for ln in lines), 100, 10)
    await store.reserve(r, lines, 60)
    assert await store.settle(r, 40, 4, rec("u1"))
    # a replay (journal entry applied but not yet marked done when the proxy died)
    for _ in range(2):
        assert not await store.settle(r, 40, 4, rec("u1"))
    totals = await store.totals([ln.key for ln in lines])
    assert [(t.spent_nusd, t.reserved_nusd, t.spent_tokens) for t in totals] == [(40, 0, 4)] * 2
    assert [x.record_id for x in await store.list_usage(UsageQuery())] == ["u1"]


async def test_redis_down_settlement_is_journaled_then_replayed_once(
        redis_factory, make_store):
    server = redis_factory(aof=True)
    store = await make_store(server.url)
    a = line("a:d:1", 10_000)
    held = [Reservation(f"r{i}", (a.key,), 100, 10) for i in range(5)]
    for r in held:
        assert (await store.reserve(r, [a], 60)).ok
    server.kill()
    for i, r in enumerate(held):
        with pytest.raises(SettlementJournaled):
            await store.settle(r, 30, 3, rec(f"j{i}"))
    assert store.journal.count() == 5
    with pytest.raises(StoreError):
        await store.replay_journal()
    server.start()
    await asyncio.sleep(0.6)  # the circuit lets a probe through
    assert await store.replay_journal() == 5
    assert await store.replay_journal() == 0
    assert store.journal.count() == 0
    (t,) = await store.totals([a.key])
    assert (t.spent_nusd, t.reserved_nusd, t.spent_tokens, t.reserved_tokens) == (150, 0, 15, 0)
    records = await store.list_usage(UsageQuery(limit=100))
    assert sorted(x.record_id for x in records) == [f"j{i}" for i in range(5)]


async def test_journal_survives_the_store_and_is_replayed_by_the_next_one(
        redis_factory, tmp_path):
    server = redis_factory(aof=True)
    first = RedisStore(server.url, data_dir=tmp_path)
    await first.start()
    server.kill()
    r = Reservation("r", ("a:d:1",), 0, 0)
    with pytest.raises(SettlementJournaled):
        await first.settle(r, 7, 1, rec("kept"))
    first.journal._db.close()  # as if the process had been killed: no flush, no close
    first.journal._db = None
    await first.close()
    server.start()
    second = RedisStore(server.url, data_dir=tmp_path)
    await second.start()
    try:
        assert await second.replay_journal() == 1
        assert [x.record_id for x in await second.list_usage(UsageQuery())] == ["kept"]
    finally:
        await second.close()


async def test_unreachable_redis_fails_fast_and_recovers(redis_factory, make_store):
    server = redis_factory(aof=True)
    store = await make_store(server.url)
    a = line("a:d:1", 10_000)
    assert (await store.reserve(Reservation("ok", (a.key,), 1, 0), [a], 60)).ok
    server.kill()
    started = time.monotonic()
    for i in range(20):
        with pytest.raises(StoreError):
            await store.reserve(Reservation(f"down{i}", (a.key,), 1, 0), [a], 60)
    assert time.monotonic() - started < 1.0
    server.start()
    deadline = time.monotonic() + 3
    while True:
        try:
            assert (await store.reserve(Reservation("back", (a.key,), 1, 0), [a], 60)).ok
            break
        except StoreError:
            assert time.monotonic() < deadline, "did not recover"
            await asyncio.sleep(0.05)


async def test_blackholed_redis_fails_within_the_timeout(make_store):
    # a non-routable address: connect never completes, so only the timeout ends it
    store = await make_store("redis://10.255.255.1:6390", connect_timeout_s=0.2)
    a = line("a:d:1", 10_000)
    started = time.monotonic()
    for i in range(5):
        with pytest.raises(StoreError):
            await store.reserve(Reservation(f"x{i}", (a.key,), 1, 0), [a], 60)
    assert time.monotonic() - started < 1.5


async def test_now_follows_redis_time(redis_url, make_store):
    store = await make_store(redis_url)
    offset = await store.sync_clock()
    assert abs(offset) < 5
    assert abs(store.now().timestamp() - time.time() - offset) < 0.05


async def test_config_change_reaches_the_other_replica(redis_url, make_store):
    a = await make_store(redis_url, "a")
    b = await make_store(redis_url, "b")
    changed = asyncio.Event()

    async def on_change() -> None:
        changed.set()

    b.on_config_change.append(on_change)
    bus_a, bus_b = EventBus(), EventBus()
    sub_a = bus_a.subscribe(frozenset({"updates"}))
    sub_b = bus_b.subscribe(frozenset({"updates"}))
    async with a.background(bus_a), b.background(bus_b):
        await asyncio.sleep(0.3)  # subscribed (each replica refreshes once on subscribing)
        changed.clear()
        started = time.monotonic()
        await a.put_policy(BudgetPolicy(policy_id="p", cost_limit=1))
        await asyncio.wait_for(changed.wait(), 1.0)
        assert time.monotonic() - started < 1.0
        bus_a.publish("updates", "usage", {"n": 1})
        got = await asyncio.wait_for(sub_b.queue.get(), 1.0)
        assert got is not None and got["payload"] == {"n": 1}
        await asyncio.sleep(0.2)
        assert sub_a.queue.qsize() == 1  # its own event once, not echoed back


async def test_start_up_check_warns_about_risky_settings(redis_factory, make_store):
    risky = redis_factory(aof=False, extra=("--maxmemory-policy", "allkeys-lru"))
    problems = await (await make_store(risky.url, "risky")).check_server_config()
    assert any("appendonly" in p for p in problems)
    assert any("allkeys-lru" in p and "noeviction" in p for p in problems)
    safe = redis_factory(aof=True)
    assert await (await make_store(safe.url, "safe")).check_server_config() == []


def request_hold(rid: str, key: str, cost: int) -> Reservation:
    return Reservation(rid, (key,), cost, 10, intent=intent_json({
        "record_id": record_id_of(rid), "provider": "openai", "model": "gpt-4o",
        "component": "c"}))


async def test_fail_open_intent_is_replaced_by_its_settlement_or_dropped_by_release(
        redis_factory, make_store):
    server = redis_factory(aof=True)
    store = await make_store(server.url)
    a = line("a:d:1", 10_000)
    server.kill()
    settled, released = request_hold("res_s", a.key, 500), request_hold("res_r", a.key, 500)
    for r in (settled, released):  # Redis down: forwarded without a hold, intent journaled
        with pytest.raises(StoreError):
            await store.reserve(r, [a], 60)
        await store.keep_intent(r)
    assert store.journal.count() == 2
    assert await store.replay_journal() == 0  # intents of live calls are never replayed
    with pytest.raises(SettlementJournaled):
        await store.settle(settled, 120, 3, rec(record_id_of("res_s")))
    with pytest.raises(StoreError):
        await store.release(released)
    assert store.journal.count() == 1  # the settlement, in place of its intent
    server.start()
    await asyncio.sleep(0.6)  # the circuit lets a probe through
    assert await store.replay_journal() == 1
    (t,) = await store.totals([a.key])
    assert (t.spent_nusd, t.reserved_nusd) == (120, 0)
    records = await store.list_usage(UsageQuery())
    assert [(x.record_id, x.status) for x in records] == [(record_id_of("res_s"), "ok")]


async def test_fail_open_intent_of_a_dead_process_is_charged_unsettled(redis_factory, tmp_path):
    server = redis_factory(aof=True)
    first = RedisStore(server.url, data_dir=tmp_path)
    await first.start()
    server.kill()
    r = request_hold("res_gone", "a:d:1", 700)
    await first.keep_intent(r)
    first.journal._db.close()  # the process is killed mid-call: no settlement, no close
    first.journal._db = None
    await first.close()
    server.start()
    second = RedisStore(server.url, data_dir=tmp_path)
    await second.start()
    try:
        assert await second.replay_journal() == 1
        (t,) = await second.totals(["a:d:1"])
        assert (t.spent_nusd, t.spent_tokens, t.reserved_nusd) == (700, 10, 0)
        records = await second.list_usage(UsageQuery())
        assert [(x.record_id, x.status) for x in records] == [(record_id_of("res_gone"),
                                                               "unsettled")]
    finally:
        await second.close()


async def test_a_failed_release_is_retried_by_the_renewal_not_charged(redis_factory,
                                                                      make_store):
    server = redis_factory(aof=True)
    store = await make_store(server.url)
    a = line("a:d:1", 10_000)
    r = request_hold("res_rel", a.key, 300)
    assert (await store.reserve(r, [a], 60)).ok
    server.kill()
    with pytest.raises(StoreError):
        await store.release(r)
    server.start()
    deadline = time.monotonic() + 5
    while store.live_holds():
        with contextlib.suppress(StoreError):
            await store.renew_holds()
        assert time.monotonic() < deadline, "release not retried"
        await asyncio.sleep(0.05)
    (t,) = await store.totals([a.key])
    assert (t.spent_nusd, t.reserved_nusd) == (0, 0)

"""Usage records on Redis: spread over shards, read back merged, trimmed by retention, and
with a database handed off to the ledger through the shards' streams (acknowledged only after
the insert, claimed from a replica that died, recovered after Redis lost its groups)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from budget_proxy.ledger import redis_records
from budget_proxy.ledger.postgres import PostgresLedger
from budget_proxy.models import UsageRecord
from budget_proxy.store import keys as K
from budget_proxy.store.base import Reservation, UsageQuery
from budget_proxy.store.redis import RedisStore
from tests.redis_servers import RedisServer

T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)


def rec(i: int, at: datetime = T0, **kw: object) -> UsageRecord:
    return UsageRecord.model_validate({
        "record_id": f"use_r{i:05d}", "provider": "openai", "model": f"m{i % 3}",
        "component": f"c{i % 2}", "total_tokens": 10, "input_cost": 0.001, "total_cost": 0.001,
        "timestamp": at + timedelta(seconds=i), **kw})


async def settle(store: RedisStore, record: UsageRecord, keys: tuple[str, ...] = ()) -> bool:
    return await store.settle(Reservation("res_" + record.record_id, keys, 0, 0),
                              1_000_000, 10, record)


async def eventually(check: Callable[[], Awaitable[bool]], deadline_s: float = 20.0) -> None:
    end = asyncio.get_running_loop().time() + deadline_s
    while not await check():
        assert asyncio.get_running_loop().time() < end, "condition not reached in time"
        await asyncio.sleep(0.05)


@pytest.fixture
async def plain(redis_server: RedisServer, tmp_path: Path) -> AsyncIterator[RedisStore]:
    redis_server.flushall()
    store = RedisStore(redis_server.url, data_dir=tmp_path)
    await store.start()
    yield store
    await store.close()


async def test_records_are_spread_over_shards_and_merged_in_order(plain: RedisStore) -> None:
    records = [rec(i) for i in range(300)]
    for r in records:
        assert await settle(plain, r)
    assert not await settle(plain, records[0])  # exactly once
    used = [t for t in K.usage_tags() if await plain.client.hlen(K.usage_records(t))]
    assert len(used) == K.USAGE_SHARDS and K.LEGACY_USAGE_TAG not in used
    newest = await plain.list_usage(UsageQuery(limit=700))
    assert [r.record_id for r in newest] == [r.record_id for r in reversed(records)]
    page = await plain.list_usage(UsageQuery(limit=5, offset=10, newest_first=False))
    assert [r.record_id for r in page] == [f"use_r{i:05d}" for i in range(10, 15)]
    both = await plain.list_usage(UsageQuery(component="c1", model="m2", limit=1000))
    assert [r.record_id for r in both] == [
        r.record_id for r in reversed(records) if r.component == "c1" and r.model == "m2"]
    window = await plain.list_usage(UsageQuery(
        since=T0 + timedelta(seconds=3), until=T0 + timedelta(seconds=6), limit=100))
    assert sorted(r.record_id for r in window) == ["use_r00003", "use_r00004", "use_r00005"]


async def test_records_of_the_unsharded_layout_are_still_read(plain: RedisStore) -> None:
    old = rec(1, component="legacy")
    await plain.client.hset("bp:{u}:rec", old.record_id, old.model_dump_json())
    await plain.client.zadd("bp:{u}:idx:all", {old.record_id: old.timestamp.timestamp()})
    await plain.client.zadd("bp:{u}:idx:component:legacy",
                            {old.record_id: old.timestamp.timestamp()})
    await settle(plain, rec(2))
    assert [r.record_id for r in await plain.list_usage(UsageQuery())] == [
        "use_r00002", "use_r00001"]
    assert [r.record_id for r in await plain.list_usage(UsageQuery(component="legacy"))] == [
        "use_r00001"]


async def test_retention_drops_old_records_and_their_index_entries(
        redis_server: RedisServer, tmp_path: Path) -> None:
    redis_server.flushall()
    store = RedisStore(redis_server.url, data_dir=tmp_path, record_retention_days=1)
    await store.start()
    try:
        old = [rec(i, at=T0 - timedelta(days=2), session_id="s") for i in range(30)]
        new = [rec(100 + i, session_id="s") for i in range(5)]
        for r in old + new:
            await settle(store, r)
        assert await store.trim_records() == 30
        assert await store.trim_records() == 0
        kept = await store.list_usage(UsageQuery(limit=100))
        assert sorted(r.record_id for r in kept) == sorted(r.record_id for r in new)
        session = await store.list_usage(UsageQuery(session_id="s", limit=100))
        assert len(session) == 5
        members = 0
        for tag in K.usage_tags():
            members += await store.client.zcard(K.usage_index(tag, "session_id", "s"))
        assert members == 5  # no index entry left behind
    finally:
        await store.close()


@pytest.mark.parametrize("days", ["-1", "abc", "0", "1e9"])
def test_retention_setting_is_validated(days: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from budget_proxy.config import ConfigError, load_settings

    monkeypatch.setenv("BUDGET_RECORD_RETENTION_DAYS", days)
    with pytest.raises(ConfigError):
        load_settings()


async def test_records_flow_to_the_ledger_and_leave_redis(
        redis_server: RedisServer, database_url: str, tmp_path: Path) -> None:
    redis_server.flushall()
    store = RedisStore(redis_server.url, data_dir=tmp_path, ledger=PostgresLedger(database_url))
    await store.start()
    assert store.handoff is not None and store.ledger is not None
    try:
        records = [rec(i) for i in range(200)]
        for r in records:
            assert await settle(store, r, ("p1:w",))
        assert not await settle(store, records[0], ("p1:w",))  # the marker deduplicates
        assert await store.handoff.backlog() == 200
        while await store.handoff.move_once():
            pass
        assert await store.handoff.backlog() == 0
        assert await store.ledger.count() == 200
        assert await store.ledger.check_rollups() == []
        # Redis keeps no record: only the counters and the settle markers (with a TTL)
        for tag in K.usage_tags():
            assert not await store.client.exists(K.usage_records(tag))
        marker = K.usage_settled(records[0].record_id)
        assert 0 < await store.client.pttl(marker) <= K.LEDGER_SETTLED_TTL_S * 1000
        # readers read the ledger, rollups included
        assert len(await store.list_usage(UsageQuery(limit=1000))) == 200
        hours = await store.hourly(T0 - timedelta(hours=1), T0 + timedelta(hours=2))
        assert hours is not None and sum(h.requests for h in hours) == 200
        (totals,) = await store.totals(["p1:w"])
        assert totals.spent_nusd == 200 * 1_000_000
        # a replay of a settlement already applied is still a no-op
        assert not await settle(store, records[5], ("p1:w",))
    finally:
        await store.close()


async def test_a_dead_replicas_pending_entries_are_claimed(
        redis_server: RedisServer, database_url: str, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    redis_server.flushall()
    monkeypatch.setattr(redis_records, "CLAIM_IDLE_MS", 200)
    a = RedisStore(redis_server.url, data_dir=tmp_path / "a", ledger=PostgresLedger(database_url))
    b = RedisStore(redis_server.url, data_dir=tmp_path / "b", ledger=PostgresLedger(database_url))
    await a.start()
    await b.start()
    try:
        assert a.handoff is not None and b.handoff is not None and b.ledger is not None
        for i in range(50):
            await settle(a, rec(i))
        await a.handoff.ensure_groups()
        # replica a reads every entry and dies before its insert: they stay pending
        for tag in K.usage_tags(legacy=False):
            await a.client.xreadgroup(K.LEDGER_GROUP, a.replica_id,
                                      {K.ledger_stream(tag): ">"}, count=1000)
        assert await b.handoff.move_once() == 0  # new entries: none; pending: not idle yet
        ledger = b.ledger

        async def moved() -> bool:
            await b.handoff.move_once()  # type: ignore[union-attr]
            return await ledger.count() == 50
        await eventually(moved)
        assert await b.handoff.backlog() == 0
        assert await ledger.check_rollups() == []
    finally:
        await a.close()
        await b.close()


async def test_ledger_down_keeps_entries_until_it_is_back(
        redis_server: RedisServer, database_url: str, tmp_path: Path) -> None:
    redis_server.flushall()
    store = RedisStore(redis_server.url, data_dir=tmp_path, ledger=PostgresLedger(database_url))
    await store.start()
    try:
        assert store.handoff is not None and store.ledger is not None
        for i in range(20):
            await settle(store, rec(i))
        real = store.ledger.write

        async def failing(bodies: object) -> int:
            from budget_proxy.store.base import StoreError
            raise StoreError("ledger: down")
        store.ledger.write = failing  # type: ignore[method-assign]
        with pytest.raises(Exception, match="down"):
            await store.handoff.move_once()
        assert await store.handoff.backlog() == 20  # nothing acknowledged
        store.ledger.write = real  # type: ignore[method-assign]
        while await store.handoff.move_once():
            pass
        assert await store.ledger.count() == 20 and await store.handoff.backlog() == 0
    finally:
        await store.close()


async def test_flushall_loses_the_groups_and_the_hand_off_recreates_them(
        redis_server: RedisServer, database_url: str, tmp_path: Path) -> None:
    redis_server.flushall()
    store = RedisStore(redis_server.url, data_dir=tmp_path, ledger=PostgresLedger(database_url))
    await store.start()
    try:
        assert store.handoff is not None and store.ledger is not None
        await settle(store, rec(1))
        assert await store.handoff.move_once() == 1
        redis_server.flushall()
        await settle(store, rec(2))
        with pytest.raises(Exception, match="NOGROUP"):
            # the stream was recreated by XADD, without its group
            for tag in K.usage_tags(legacy=False):
                await store.client.xreadgroup(K.LEDGER_GROUP, "x", {K.ledger_stream(tag): ">"})
        moved = 0
        for _ in range(3):
            try:
                moved += await store.handoff.move_once()
            except Exception:
                continue
        assert await store.ledger.count() == 2
    finally:
        await store.close()


async def test_reports_from_rollups_equal_reports_from_records(
        redis_server: RedisServer, database_url: str, tmp_path: Path) -> None:
    from zoneinfo import ZoneInfo

    from budget_proxy.reporting import aggregate, aggregate_usage, collect_usage

    redis_server.flushall()
    store = RedisStore(redis_server.url, data_dir=tmp_path, ledger=PostgresLedger(database_url))
    await store.start()
    try:
        assert store.handoff is not None
        start = T0.replace(minute=0, second=0) - timedelta(hours=30)
        for i in range(100):  # over 28 hours, up to now
            await settle(store, rec(i, at=start + timedelta(minutes=17 * i),
                                    provider=("openai", "anthropic")[i % 2]))
        while await store.handoff.move_once():
            pass
        tz = ZoneInfo("Europe/Paris")
        since, until = start, store.now()
        groupings = (("provider",), ("provider", "model"), ("component",))
        fast = await aggregate_usage(store, "daily", tz, since, until, *groupings)
        records = await collect_usage(store, since=since)
        slow = aggregate(records, "daily", tz, *groupings)
        for a, b in zip(fast, slow, strict=True):
            assert a.all.totals() == b.all.totals() and a.all.requests == 100
            assert a.window_rows() == b.window_rows()
            assert sorted(map(repr, a.group_rows())) == sorted(map(repr, b.group_rows()))
        only = await aggregate_usage(store, "hourly", tz, since, until, provider="anthropic")
        assert only[0].all.requests == 50
    finally:
        await store.close()

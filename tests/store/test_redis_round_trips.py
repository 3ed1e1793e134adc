"""What one call costs Redis: one round trip for the reserve and one for the settlement, however
many windows the call counts against (on one server), and a window's expiry set once."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from redis import Redis as SyncRedis
from redis.asyncio.connection import AbstractConnection

from budget_proxy.enforcement import CounterLine
from budget_proxy.models import UsageRecord
from budget_proxy.store import keys as K
from budget_proxy.store.base import Reservation, UsageQuery, intent_json, record_id_of
from budget_proxy.store.redis import RedisStore
from tests.redis_servers import (  # noqa: F401 - fixtures
    RedisServer,
    redis_cluster,
    redis_factory,
)

LINES = 5


@pytest.fixture
def server(redis_factory) -> RedisServer:  # noqa: F811 - fixture
    """A server of this test's own: its command statistics count this test only."""
    return redis_factory(aof=False)


@pytest.fixture
async def store(server: RedisServer, tmp_path: Path):
    store = RedisStore(server.url, data_dir=tmp_path)
    await store.start()
    yield store
    await store.close()


@pytest.fixture
def round_trips(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """How many times the Redis client sent something (a command or a pipeline)."""
    sent = [0]
    original = AbstractConnection.send_packed_command

    async def counted(self: Any, command: Any, check_health: bool = True) -> None:
        sent[0] += 1
        await original(self, command, check_health)

    monkeypatch.setattr(AbstractConnection, "send_packed_command", counted)
    yield sent


def window_lines(ends: datetime | None, n: int = LINES) -> list[CounterLine]:
    """n matching policies, each its own counter group (as five policies are)."""
    return [CounterLine(f"pol{i}:w", 10**12, 10**9, True, f"pol{i}", resets_at=ends)
            for i in range(n)]


def call(lines: list[CounterLine], i: int) -> tuple[Reservation, UsageRecord]:
    rid = f"res_rt{i}"
    intent = intent_json({"record_id": record_id_of(rid), "provider": "openai",
                          "model": "gpt-4o", "component": "c"})
    record = UsageRecord(record_id=record_id_of(rid), provider="openai", model="gpt-4o",
                         component="c", session_id="s", total_tokens=7)
    return Reservation(rid, tuple(ln.key for ln in lines), 100, 10, intent=intent), record


def command_calls(server: RedisServer) -> dict[str, int]:
    client = SyncRedis(port=server.port, decode_responses=True)
    try:
        stats = client.info("commandstats")
    finally:
        client.close()
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()
            if name != "cmdstat_config|resetstat"}


def reset_stats(server: RedisServer) -> None:
    server.cli("CONFIG", "RESETSTAT")


async def test_reserve_and_settle_are_one_round_trip_each_whatever_the_windows(
        store: RedisStore, server: RedisServer, round_trips: list[int]):
    lines = window_lines(datetime.now(UTC) + timedelta(days=1))
    first, record = call(lines, 0)  # the first call registers the counter groups
    assert (await store.reserve(first, lines, 60)).ok
    await store.settle(first, 90, 7, record)

    reset_stats(server)
    for i in range(1, 4):
        reservation, record = call(lines, i)
        before = round_trips[0]
        result = await store.reserve(reservation, lines, 60)
        assert result.ok and len(result.totals) == LINES
        assert round_trips[0] - before == 1
        before = round_trips[0]
        assert await store.settle(reservation, 90, 7, record)
        assert round_trips[0] - before == 1

    calls = command_calls(server)
    assert calls.pop("evalsha") == 6  # two scripts a call, already loaded: no SCRIPT LOAD
    assert "eval" not in calls and "script|load" not in calls
    assert "sadd" not in calls  # the counter groups are registered once, not per call
    # a window's end is set as the counters' expiry by the first hold only
    assert "pexpireat" not in calls and "pexpire" not in calls
    totals = await store.totals([ln.key for ln in lines])
    assert {(t.spent_nusd, t.reserved_nusd, t.requests) for t in totals} == {(360, 0, 4)}


async def test_a_window_end_is_the_counters_expiry_and_moves_when_it_changes(
        store: RedisStore, server: RedisServer):
    ends = datetime.now(UTC).replace(microsecond=0) + timedelta(days=1)
    expected_ms = int((ends.timestamp() + K.COUNTER_AFTER_WINDOW_S) * 1000)
    lines = window_lines(ends, 2)
    reset_stats(server)
    for i in range(3):
        reservation, record = call(lines, i)
        assert (await store.reserve(reservation, lines, 60)).ok
        await store.settle(reservation, 1, 1, record)
    assert command_calls(server)["pexpireat"] == 2  # once per counter
    for ln in lines:
        assert await store.client.pexpiretime(K.counter(ln.key)) == expected_ms

    later = ends + timedelta(hours=1)  # the same counter with another window end
    moved = window_lines(later, 2)
    reservation, _ = call(moved, 9)
    assert (await store.reserve(reservation, moved, 60)).ok
    for ln in moved:
        assert await store.client.pexpiretime(K.counter(ln.key)) == int(
            (later.timestamp() + K.COUNTER_AFTER_WINDOW_S) * 1000)


async def test_a_counter_that_expired_gets_its_expiry_again(store: RedisStore):
    ends = datetime.now(UTC) + timedelta(days=1)
    lines = window_lines(ends, 1)
    reservation, record = call(lines, 0)
    assert (await store.reserve(reservation, lines, 60)).ok
    await store.settle(reservation, 1, 1, record)
    await store.client.delete(K.counter(lines[0].key))  # as if it had expired
    reservation, _ = call(lines, 1)
    assert (await store.reserve(reservation, lines, 60)).ok
    assert await store.client.pttl(K.counter(lines[0].key)) > 0


async def test_counters_without_a_window_end_keep_an_idle_ttl(store: RedisStore):
    lines = window_lines(None, 2)
    for i in range(2):
        reservation, record = call(lines, i)
        assert (await store.reserve(reservation, lines, 60)).ok
        await store.settle(reservation, 1, 1, record)
        for ln in lines:
            ttl_ms = await store.client.pttl(K.counter(ln.key))
            assert K.COUNTER_IDLE_S * 1000 - 60_000 < ttl_ms <= K.COUNTER_IDLE_S * 1000


async def test_a_settlement_on_a_cluster_settles_its_groups_at_once(
        redis_cluster, tmp_path: Path):  # noqa: F811 - fixture
    redis_cluster.flushall()
    store = RedisStore(redis_cluster.url, data_dir=tmp_path)
    await store.start()
    try:
        lines = window_lines(datetime.now(UTC) + timedelta(days=1))
        reservation, record = call(lines, 0)
        assert (await store.reserve(reservation, lines, 60)).ok
        in_flight, most = [0], [0]
        script = store._script

        async def watched(name: str, keys: Any, args: Any) -> Any:
            in_flight[0] += 1
            most[0] = max(most[0], in_flight[0])
            try:
                return await script(name, keys, args)
            finally:
                in_flight[0] -= 1

        store._script = watched  # type: ignore[method-assign]
        assert await store.settle(reservation, 90, 7, record)
        assert most[0] == LINES  # every group's script in flight together
        assert not await store.settle(reservation, 90, 7, record)  # still exactly once
        totals = await store.totals([ln.key for ln in lines])
        assert {(t.spent_nusd, t.reserved_nusd) for t in totals} == {(90, 0)}
        usage = await store.list_usage(UsageQuery())
        assert [r.record_id for r in usage] == [record.record_id]
    finally:
        await store.close()

"""The embedded store's commit policy: a hold commits at once, a settlement rides on the next
commit (or commits alone after `settle_delay_s`), the counters in memory take a settlement
when it is queued, and a process killed before a settlement commits has its hold charged as
`unsettled` exactly once."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

import pytest

from budget_proxy.enforcement import CounterLine
from budget_proxy.models import UsageRecord
from budget_proxy.store.base import (
    Reservation,
    StoreError,
    UsageQuery,
    intent_json,
    record_id_of,
)
from budget_proxy.store.sqlite import SqliteStore
from budget_proxy.testing.waiting import eventually

A = CounterLine("a:d:1", 1000, None, True, "a")
ROOMY = CounterLine(A.key, 10**12, None, True, "a")  # A's counter, for many calls
T = TypeVar("T")
NEVER_S = 3600.0  # a settlement bound no test waits for: only a hold or close commits


def held(n: int, cost_nusd: int = 100, tokens: int = 1) -> Reservation:
    rid = f"res_{n}"
    intent = intent_json({"record_id": record_id_of(rid), "provider": "openai",
                          "model": "gpt-4o", "total_tokens": tokens})
    return Reservation(rid, (A.key,), cost_nusd, tokens, intent)


def record_of(reservation: Reservation) -> UsageRecord:
    return UsageRecord(record_id=record_id_of(reservation.reservation_id), provider="openai",
                       model="gpt-4o")


def count_commits(store: SqliteStore) -> Callable[[], int]:
    """How many transactions the store's connection has committed from now on."""
    statements: list[str] = []
    store.db.set_trace_callback(statements.append)
    return lambda: sum(1 for s in statements if s.strip().upper() == "COMMIT")


async def queued(store: SqliteStore, reservation: Reservation) -> asyncio.Task[bool]:
    """Settle in a task of its own, as the proxy does, and return once it is queued."""
    task = asyncio.create_task(store.settle(reservation, 10, 1, record_of(reservation)))
    await asyncio.sleep(0)  # one loop step: the task runs until it awaits its commit
    assert any(getattr(w, "reservation", None) == reservation for w in store._pending)
    return task


async def flushed(store: SqliteStore, settlement: Awaitable[T]) -> T:
    """Await a settlement, committing it at once (a test's stand-in for the next hold)."""
    task = asyncio.ensure_future(settlement)
    await asyncio.sleep(0)  # queued
    store._flush()
    return await task


@pytest.fixture
async def lazy(tmp_path) -> AsyncIterator[SqliteStore]:
    """A store whose settlements never commit by their bound within a test."""
    store = SqliteStore(tmp_path, settle_delay_s=NEVER_S)
    await store.start()
    yield store
    await store.close()


async def test_a_settlement_with_no_write_after_it_still_commits(tmp_path):
    store = SqliteStore(tmp_path)
    await store.start()
    try:
        r = held(1)
        assert (await store.reserve(r, [A], 60)).ok
        assert await store.settle(r, 40, 1, record_of(r))  # returns once committed
        assert store.db.execute("SELECT COUNT(*) FROM holds").fetchone() == (0,)
        (rec,) = await store.list_usage(UsageQuery())
        assert rec.record_id == record_id_of("res_1")
        assert (await store.reserve(held(2), [A], 60)).ok
        task = await queued(store, held(2))  # unawaited, as the proxy's settlement task

        async def committed() -> bool:
            return task.done()

        await eventually(committed)
        assert task.result() is True
    finally:
        await store.close()


async def test_serial_calls_cost_one_commit_each(lazy: SqliteStore):
    commits = count_commits(lazy)
    tasks = []
    for n in range(10):
        assert (await lazy.reserve(held(n), [A], 60)).ok
        tasks.append(await queued(lazy, held(n)))  # commits with the next call's hold
    assert commits() == 10  # one per call, not one for the hold and one for the settlement
    assert [t.done() for t in tasks] == [True] * 9 + [False]
    await lazy.close()  # the last settlement commits at close
    assert await asyncio.gather(*tasks) == [True] * 10 and commits() == 11


async def test_concurrent_holds_share_one_commit(lazy: SqliteStore):
    commits = count_commits(lazy)
    results = await asyncio.gather(*(lazy.reserve(held(n, 10), [A], 60) for n in range(20)))
    assert all(r.ok for r in results) and commits() == 1


async def test_a_queued_settlement_frees_its_hold_for_the_next_call(lazy: SqliteStore):
    first = held(1, cost_nusd=600)
    assert (await lazy.reserve(first, [A], 60)).ok
    task = await queued(lazy, first)  # spent 10, not yet committed
    (t,) = await lazy.totals([A.key])
    assert (t.spent_nusd, t.reserved_nusd, t.requests) == (10, 0, 1)
    assert lazy.live_holds() == 0
    assert (await lazy.reserve(held(2, cost_nusd=600), [A], 60)).ok  # 10 + 600 <= 1000
    assert await task  # committed with the second call's hold


async def test_a_failed_settlement_gives_its_hold_back(lazy: SqliteStore):
    lazy.db.execute("CREATE TRIGGER poison BEFORE INSERT ON usage_records "
                    "WHEN NEW.component = 'poison' BEGIN SELECT RAISE(ABORT, 'poisoned'); END")
    r = held(1, cost_nusd=300)
    assert (await lazy.reserve(r, [A], 60)).ok
    bad = record_of(r).model_copy(update={"component": "poison"})
    task = asyncio.create_task(lazy.settle(r, 10, 1, bad))
    await asyncio.sleep(0)  # queued: counted in memory
    (t,) = await lazy.totals([A.key])
    assert (t.spent_nusd, t.reserved_nusd) == (10, 0)
    with pytest.raises(StoreError):
        await flushed(lazy, task)
    (t,) = await lazy.totals([A.key])
    assert (t.spent_nusd, t.reserved_nusd, t.requests) == (0, 300, 1)
    assert lazy.live_holds() == 1
    assert await flushed(lazy, lazy.settle(r, 20, 1, record_of(r)))  # it settles later
    (t,) = await lazy.totals([A.key])
    assert (t.spent_nusd, t.reserved_nusd, lazy.live_holds()) == (20, 0, 0)


async def test_a_call_counted_at_its_answer_is_judged_on_before_its_settlement(
        lazy: SqliteStore):
    """`account`: the hold leaves memory and the spend counts at once, before any write;
    the settlement that follows writes both, or gives the hold back if its write fails."""
    lazy.db.execute("CREATE TRIGGER poison BEFORE INSERT ON usage_records "
                    "WHEN NEW.component = 'poison' BEGIN SELECT RAISE(ABORT, 'poisoned'); END")
    r = held(1, cost_nusd=300, tokens=30)
    assert (await lazy.reserve(r, [A], 60)).ok
    commits = count_commits(lazy)
    assert lazy.account(r, 40, 4)
    (t,) = await lazy.totals([A.key])
    assert (t.spent_nusd, t.reserved_nusd, t.spent_tokens, t.reserved_tokens, t.requests) == (
        40, 0, 4, 0, 1)
    assert commits() == 0 and lazy.live_holds() == 0
    assert (await lazy.reserve(held(2, cost_nusd=960), [A], 60)).ok  # 40 + 960 fits 1000
    await flushed(lazy, lazy.release(held(2, cost_nusd=960)))
    bad = record_of(r).model_copy(update={"component": "poison"})
    with pytest.raises(StoreError):
        await flushed(lazy, lazy.settle(r, 40, 4, bad))
    (t,) = await lazy.totals([A.key])
    assert (t.spent_nusd, t.reserved_nusd, t.requests, lazy.live_holds()) == (0, 300, 1, 1)
    assert await flushed(lazy, lazy.settle(r, 40, 4, record_of(r)))  # it settles later
    (t,) = await lazy.totals([A.key])
    assert (t.spent_nusd, t.reserved_nusd, t.spent_tokens, lazy.live_holds()) == (40, 0, 4, 0)


async def test_a_record_already_stored_takes_its_spend_back(lazy: SqliteStore):
    one, two = held(1), held(2)
    for r in (one, two):
        assert (await lazy.reserve(r, [A], 60)).ok
    settled = asyncio.gather(lazy.settle(one, 40, 1, record_of(one)),
                             lazy.settle(two, 50, 1, record_of(one)))  # the same record id
    assert await flushed(lazy, settled) == [True, False]
    (t,) = await lazy.totals([A.key])
    assert (t.spent_nusd, t.reserved_nusd) == (40, 0)


async def test_a_process_killed_before_its_settlement_commits_is_charged_once(tmp_path):
    store = SqliteStore(tmp_path, settle_delay_s=NEVER_S)
    await store.start()
    done, lost = held(1, cost_nusd=300, tokens=3), held(2, cost_nusd=500, tokens=5)
    assert (await store.reserve(done, [A], 60)).ok
    assert (await store.reserve(lost, [A], 60)).ok
    await queued(store, done)
    store._flush()  # `done` settled and committed
    task = await queued(store, lost)  # never committed: the process dies now
    assert store._flush_later is not None
    store._flush_later.cancel()
    store.db.close()  # SIGKILL: no flush, no close
    task.cancel()

    for _ in range(2):  # a second start finds nothing left to charge
        again = SqliteStore(tmp_path)
        await again.start()
        try:
            records = sorted(await again.list_usage(UsageQuery()), key=lambda r: r.record_id)
            assert [(r.record_id, r.status) for r in records] == [
                (record_id_of("res_1"), "ok"), (record_id_of("res_2"), "unsettled")]
            (t,) = await again.totals([A.key])
            assert (t.spent_nusd, t.reserved_nusd, t.spent_tokens, t.requests) == (
                10 + 500, 0, 1 + 5, 2)
            assert again.db.execute("SELECT COUNT(*) FROM holds").fetchone() == (0,)
        finally:
            await again.close()


async def test_close_commits_the_writes_still_waiting(tmp_path):
    store = SqliteStore(tmp_path, settle_delay_s=NEVER_S)
    await store.start()
    settled, cancelled = held(1), held(2)
    assert (await store.reserve(settled, [A], 60)).ok
    task = asyncio.create_task(store.reserve(cancelled, [A], 60))
    await asyncio.sleep(0)  # its hold is queued
    task.cancel()  # the client is gone: never forwarded, so its hold row goes
    with pytest.raises(asyncio.CancelledError):
        await task
    settlement = await queued(store, settled)
    await store.close()
    assert await settlement
    again = SqliteStore(tmp_path)
    await again.start()
    try:
        assert [r.status for r in await again.list_usage(UsageQuery())] == ["ok"]
        assert again.db.execute("SELECT COUNT(*) FROM holds").fetchone() == (0,)
        (t,) = await again.totals([A.key])
        assert (t.spent_nusd, t.reserved_nusd, t.requests) == (10, 0, 1)
    finally:
        await again.close()



async def serial_calls(store: SqliteStore, first: int, n: int) -> list[asyncio.Task[bool]]:
    """`n` calls one after another (each settlement rides the next call's commit), each
    waiting out a checkpoint its commit started."""

    async def no_checkpoint_running() -> bool:
        return not store.checkpoints.running

    settlements = []
    for i in range(first, first + n):
        r = held(i)
        assert (await store.reserve(r, [ROOMY], 60)).ok
        settlements.append(await queued(store, r))
        await eventually(no_checkpoint_running)
    return settlements


async def test_the_wal_is_checkpointed_off_the_loop_and_stays_small(lazy, monkeypatch):
    """SQLite's own checkpoint (off here) would run inside a commit on the event loop; the
    store's runs on a thread every CHECKPOINT_EVERY commits, and the WAL is then reused from
    its start: it stops growing however many calls follow."""
    monkeypatch.setattr(lazy.checkpoints, "every", 8)
    wal = lazy.path.with_name(lazy.path.name + "-wal")
    assert lazy.db.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
    settlements = await serial_calls(lazy, 0, 12)
    after_first = wal.stat().st_size
    settlements += await serial_calls(lazy, 12, 300)
    assert wal.stat().st_size <= 2 * after_first
    await lazy.close()  # every call is in the database itself, the WAL gone with it
    assert all(await asyncio.gather(*settlements))
    assert not wal.exists()
    check = SqliteStore(lazy.path.parent)
    await check.start()
    try:
        assert len(await check.list_usage(UsageQuery(limit=1000))) == 312
        assert (await check.totals([A.key]))[0].spent_nusd == 312 * 10
    finally:
        await check.close()


async def test_a_failed_checkpoint_is_logged_and_the_next_one_retries(
        lazy, monkeypatch, caplog):
    monkeypatch.setattr(lazy.checkpoints, "every", 4)
    working = lazy.checkpoints._db
    broken = sqlite3.connect(":memory:", check_same_thread=False)
    broken.close()  # any statement on it raises
    lazy.checkpoints._db = broken
    await serial_calls(lazy, 0, 20)
    assert "WAL checkpoint of budget.db failed" in caplog.text
    wal = lazy.path.with_name(lazy.path.name + "-wal")
    lazy.checkpoints._db = working
    await serial_calls(lazy, 20, 20)  # the calls went on; checkpoints are back
    grown = wal.stat().st_size
    await serial_calls(lazy, 40, 100)
    assert wal.stat().st_size <= grown  # reused from its start: no longer growing
    assert (await lazy.totals([A.key]))[0].spent_nusd == 140 * 10  # every call counted

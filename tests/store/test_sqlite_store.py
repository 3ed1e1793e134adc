"""What only the embedded store has: the group commit isolates a write the database refuses,
never leaves a transaction open, and a hold is durable before `reserve` returns."""

from __future__ import annotations

import asyncio

import pytest

from budget_proxy.enforcement import CounterLine
from budget_proxy.models import UsageRecord
from budget_proxy.store.base import Reservation, StoreError, UsageQuery, intent_json
from budget_proxy.store.sqlite import SqliteStore

A = CounterLine("a:d:1", 10_000, None, True, "a")


@pytest.fixture
async def store(tmp_path):
    s = SqliteStore(tmp_path)
    await s.start()
    # a database that refuses one record: stands for any write SQLite fails in a batch
    s.db.execute("CREATE TRIGGER poison BEFORE INSERT ON usage_records "
                 "WHEN NEW.component = 'poison' BEGIN SELECT RAISE(ABORT, 'poisoned'); END")
    yield s
    await s.close()


def rec(rid: str, component: str = "c") -> UsageRecord:
    return UsageRecord(record_id=rid, provider="openai", model="gpt-4o", component=component)


async def test_one_refused_record_fails_alone_and_the_batch_commits(store: SqliteStore):
    holds = [Reservation(f"r{i}", (A.key,), 100, 1) for i in range(6)]
    for r in holds:
        assert (await store.reserve(r, [A], 60)).ok
    results = await asyncio.gather(  # one loop iteration: one group commit
        *(store.settle(r, 10, 1, rec(f"ok{i}")) for i, r in enumerate(holds[:5])),
        store.settle(holds[5], 10, 1, rec("bad", "poison")), return_exceptions=True)
    assert results[:5] == [True] * 5
    assert isinstance(results[5], StoreError) and "poisoned" in str(results[5])
    assert not store.db.in_transaction
    records = await asyncio.wait_for(store.list_usage(UsageQuery()), 5)
    assert sorted(x.record_id for x in records) == [f"ok{i}" for i in range(5)]
    (t,) = await asyncio.wait_for(store.totals([A.key]), 5)
    assert (t.spent_nusd, t.reserved_nusd) == (50, 100)  # the refused one still holds
    assert await store.settle(holds[5], 10, 1, rec("again"))  # and the store goes on
    (t,) = await store.totals([A.key])
    assert (t.spent_nusd, t.reserved_nusd) == (60, 0)


async def test_a_hold_that_cannot_be_written_is_not_held(store: SqliteStore):
    store.db.execute("CREATE TRIGGER full BEFORE INSERT ON holds "
                     "WHEN NEW.reservation_id = 'nope' BEGIN SELECT RAISE(ABORT, 'full'); END")
    with pytest.raises(StoreError):
        await store.reserve(Reservation("nope", (A.key,), 500, 5), [A], 60)
    assert (await store.reserve(Reservation("fine", (A.key,), 300, 3), [A], 60)).ok
    (t,) = await store.totals([A.key])
    assert (t.reserved_nusd, t.reserved_tokens) == (300, 3)
    assert not store.db.in_transaction


async def test_reserve_returns_with_the_hold_and_its_intent_committed(store: SqliteStore,
                                                                      tmp_path):
    intent = intent_json({"provider": "openai", "model": "gpt-4o"})
    assert (await store.reserve(Reservation("res_x", (A.key,), 100, 1, intent), [A], 60)).ok
    rows = store.db.execute("SELECT reservation_id, intent FROM holds").fetchall()
    assert rows == [("res_x", intent)]
    await store.settle(Reservation("res_x", (A.key,), 100, 1, intent), 40, 1, rec("use_x"))
    assert store.db.execute("SELECT COUNT(*) FROM holds").fetchone() == (0,)


async def test_an_allocation_hold_survives_a_restart(tmp_path):
    first = SqliteStore(tmp_path)
    await first.start()
    assert (await first.reserve(Reservation("alloc_1:hold:0", (A.key,), 700, 7), [A],
                                3600)).ok
    second = SqliteStore(tmp_path)  # the first process is gone without closing
    await second.start()
    try:
        (t,) = await second.totals([A.key])
        assert (t.spent_nusd, t.reserved_nusd) == (0, 700)  # kept, not charged
        assert await second.list_usage(UsageQuery()) == []
    finally:
        await second.close()
        await first.close()


async def test_holds_of_a_database_from_before_the_holds_table_are_kept(tmp_path):
    import sqlite3

    old = sqlite3.connect(tmp_path / "budget.db")
    old.execute("CREATE TABLE reservations (reservation_id TEXT PRIMARY KEY, keys TEXT NOT NULL, "
                "cost_nusd INTEGER NOT NULL, tokens INTEGER NOT NULL, expires_at REAL NOT NULL)")
    old.execute("INSERT INTO reservations VALUES ('old', '[\"a:d:1\"]', 250, 2, 1e12)")
    old.commit()
    old.close()
    store = SqliteStore(tmp_path)
    await store.start()
    try:
        (t,) = await store.totals([A.key])
        assert (t.reserved_nusd, t.reserved_tokens) == (250, 2)
        await store.release(Reservation("old", (A.key,), 250, 2))
        assert store.db.execute("SELECT COUNT(*) FROM holds").fetchone() == (0,)
    finally:
        await store.close()


@pytest.mark.parametrize("cancel_after_commit", [False, True])
async def test_a_cancelled_reserve_leaves_no_hold(store: SqliteStore, cancel_after_commit):
    intent = intent_json({"provider": "openai", "model": "gpt-4o"})
    task = asyncio.create_task(store.reserve(Reservation("gone", (A.key,), 100, 1, intent),
                                             [A], 60))
    await asyncio.sleep(0)  # one loop step: the task runs until it awaits its hold's commit
    assert store._pending  # queued for the next group commit, not yet written
    if cancel_after_commit:
        store._flush()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await store.settle(Reservation("other", (A.key,), 0, 0), 0, 0, None)  # one more commit
    (t,) = await store.totals([A.key])
    assert (t.reserved_nusd, store.live_holds()) == (0, 0)
    assert store.db.execute("SELECT COUNT(*) FROM holds").fetchone() == (0,)

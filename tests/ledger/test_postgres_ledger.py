"""Contract of the PostgreSQL ledger: migrations, records written exactly once, rollups equal
to the sum of the records, the filters readers use; hostile entries skipped, never stalling."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import orjson
import pytest

from budget_proxy.ledger import UsageLedger
from budget_proxy.ledger.migrations import MIGRATIONS
from budget_proxy.ledger.postgres import PostgresLedger
from budget_proxy.models import UsageRecord
from budget_proxy.store.base import StoreError, UsageQuery

T0 = datetime(2026, 3, 2, 10, 15, tzinfo=UTC)


def rec(i: int, *, at: datetime = T0, **kw: object) -> UsageRecord:
    fields: dict[str, object] = {
        "record_id": f"use_{i:06d}", "provider": "openai", "model": "gpt-4o-mini",
        "component": "c1", "input_tokens": 10, "output_tokens": 5, "total_tokens": 15,
        "input_cost": 0.000001 * i, "output_cost": 0.000002, "total_cost": 0.000001 * i
        + 0.000002, "timestamp": at + timedelta(seconds=i)}
    fields.update(kw)
    return UsageRecord.model_validate(fields)


@pytest.fixture
async def ledger(database_url: str) -> AsyncIterator[PostgresLedger]:
    led = PostgresLedger(database_url)
    await led.start()
    yield led
    await led.close()


async def test_is_a_usage_ledger(ledger: PostgresLedger) -> None:
    assert isinstance(ledger, UsageLedger)


async def test_migrations_are_versioned_and_run_once(database_url: str) -> None:
    a, b = PostgresLedger(database_url), PostgresLedger(database_url)
    await asyncio.gather(a.start(), b.start())  # two replicas starting together
    try:
        assert await a.schema_version() == MIGRATIONS[-1][0]
        assert await a.migrate() == []  # nothing left to apply
        conn = await asyncpg.connect(database_url)
        try:
            rows = await conn.fetch("SELECT version FROM budget_schema_migrations")
        finally:
            await conn.close()
        assert sorted(r[0] for r in rows) == [v for v, _, _ in MIGRATIONS]
    finally:
        await a.close()
        await b.close()


async def test_records_are_written_exactly_once(ledger: PostgresLedger) -> None:
    batch = [rec(i) for i in range(50)]
    assert await ledger.write_records(batch) == 50
    assert await ledger.write_records(batch) == 0  # a redelivered batch changes nothing
    assert await ledger.write_records([*batch[:10], rec(50)]) == 1
    assert await ledger.count() == 51
    hours = await ledger.hourly(T0 - timedelta(days=1), T0 + timedelta(days=1))
    assert hours is not None and sum(h.requests for h in hours) == 51
    assert await ledger.check_rollups() == []


async def test_concurrent_overlapping_writers(ledger: PostgresLedger) -> None:
    records = [rec(i, component=f"c{i % 3}", model=f"m{i % 4}") for i in range(600)]
    # eight writers with overlapping batches in different orders: each record once
    batches = [records[k * 50: k * 50 + 200][::1 if k % 2 else -1] for k in range(8)]
    batches.append(records)
    written = await asyncio.gather(*(ledger.write_records(b) for b in batches))
    assert sum(written) == 600
    assert await ledger.count() == 600
    assert await ledger.check_rollups() == []
    hours = await ledger.hourly(T0, T0 + timedelta(hours=1))
    assert hours is not None
    expected = sum(round(r.total_cost * 1e9) for r in records)
    assert sum(h.total_nusd for h in hours) == expected


async def test_rollups_are_hourly_and_filtered(ledger: PostgresLedger) -> None:
    await ledger.write_records([
        rec(1), rec(2, provider="anthropic", model="claude"),
        rec(3, at=T0 + timedelta(hours=2)), rec(4, component="c2")])
    rows = await ledger.hourly(T0, T0 + timedelta(hours=3))
    assert rows is not None
    assert {(r.hour, r.provider, r.component, r.requests) for r in rows} == {
        (T0.replace(minute=0), "openai", "c1", 1),
        (T0.replace(minute=0), "anthropic", "c1", 1),
        (T0.replace(minute=0), "openai", "c2", 1),
        (T0.replace(minute=0) + timedelta(hours=2), "openai", "c1", 1)}
    only = await ledger.hourly(T0, T0 + timedelta(hours=3), provider="anthropic")
    assert only is not None and [r.model for r in only] == ["claude"]
    assert await ledger.hourly(T0 + timedelta(hours=5), T0 + timedelta(hours=6)) == []
    row = next(r for r in rows if r.provider == "anthropic")
    assert (row.input_tokens, row.output_tokens, row.total_tokens) == (10, 5, 15)


async def test_list_usage_filters_order_and_paging(ledger: PostgresLedger) -> None:
    await ledger.write_records([rec(i, component=f"c{i % 2}", session_id=f"s{i % 3}",
                                    context_id="ctx" if i < 3 else None) for i in range(20)])
    newest = await ledger.list_usage(UsageQuery(limit=5))
    assert [r.record_id for r in newest] == [f"use_{i:06d}" for i in (19, 18, 17, 16, 15)]
    oldest = await ledger.list_usage(UsageQuery(limit=3, offset=2, newest_first=False))
    assert [r.record_id for r in oldest] == ["use_000002", "use_000003", "use_000004"]
    c1 = await ledger.list_usage(UsageQuery(component="c1", session_id="s0", limit=100))
    assert [r.record_id for r in c1] == ["use_000015", "use_000009", "use_000003"]
    ctx = await ledger.list_usage(UsageQuery(context_id="ctx", limit=100))
    assert len(ctx) == 3
    window = await ledger.list_usage(UsageQuery(
        since=T0 + timedelta(seconds=5), until=T0 + timedelta(seconds=8), limit=100))
    assert sorted(r.record_id for r in window) == ["use_000005", "use_000006", "use_000007"]
    assert await ledger.list_usage(UsageQuery(model="nope")) == []
    # the record comes back whole
    assert newest[0] == rec(19, component="c1", session_id="s1")


@pytest.mark.parametrize("entry", [
    b"not json", b"[1, 2]", b"{}", b'{"record_id": 5, "timestamp": "2026-01-01T00:00:00Z"}',
    b'{"record_id": "use_x", "timestamp": "yesterday"}',
    b'{"record_id": "use_x", "timestamp": "2026-01-01T00:00:00"}',  # no zone
    b'{"record_id": "use_x", "timestamp": "2026-01-01T00:00:00Z", "total_cost": "1"}',
    b'{"record_id": "use_x", "timestamp": "2026-01-01T00:00:00Z", "input_tokens": true}',
    b'{"record_id": "' + b"x" * 5000 + b'", "timestamp": "2026-01-01T00:00:00Z"}',
])
async def test_bad_entries_are_skipped_without_stalling(ledger: PostgresLedger,
                                                        entry: bytes) -> None:
    good = rec(1).model_dump_json()
    assert await ledger.write([entry, good]) == 1
    assert [r.record_id for r in await ledger.list_usage(UsageQuery())] == ["use_000001"]


async def test_negative_and_huge_amounts_are_clamped(ledger: PostgresLedger) -> None:
    doc = orjson.loads(rec(1).model_dump_json())
    doc.update(input_tokens=-5, output_tokens=1e30, input_cost=-1.0, total_cost=1e30)
    huge = [{**doc, "record_id": f"use_h{i}"} for i in range(20)]  # sums past int64
    assert await ledger.write([orjson.dumps(d) for d in huge]) == 20
    (row,) = await ledger.hourly(T0 - timedelta(hours=1), T0 + timedelta(hours=1)) or []
    assert row.input_tokens == 0 and row.input_nusd == 0
    assert row.output_tokens == 20 * 10**15 and row.total_nusd == 2**63 - 1
    assert await ledger.write([orjson.dumps({**doc, "record_id": "use_more"})]) == 1
    (row,) = await ledger.hourly(T0 - timedelta(hours=1), T0 + timedelta(hours=1)) or []
    assert row.requests == 21 and row.total_nusd == 2**63 - 1


async def test_unicode_and_filters_with_odd_text(ledger: PostgresLedger) -> None:
    odd = "comp\udcff\u2603'; DROP TABLE usage_records; --"
    record = rec(1, component=odd)
    from budget_proxy.store.base import storable_record

    _, body = storable_record(record)
    assert await ledger.write([body]) == 1
    found = await ledger.list_usage(UsageQuery(component=odd))
    assert len(found) == 1 and await ledger.count() == 1


async def test_unreachable_database_is_a_store_error() -> None:
    from tests.redis_servers import free_port

    led = PostgresLedger(f"postgresql://postgres@127.0.0.1:{free_port()}/x")
    with pytest.raises(StoreError):
        await led.start()
    with pytest.raises(StoreError):
        await led.list_usage(UsageQuery())


async def test_spend_since_sums_by_minute_and_scope(ledger: PostgresLedger) -> None:
    await ledger.write_records([rec(i, session_id="s") for i in range(3)] + [rec(9)])
    rows = await ledger.spend_since(T0)
    by_session = {r.session_id: (r.requests, r.tokens) for r in rows}
    assert by_session == {"s": (3, 45), None: (1, 15)}

"""The ledger at scale: Redis memory per settled call, and reports over a million records.

    python benchmarks/ledger.py --calls 100000 --records 1000000

Starts its own redis-server and PostgreSQL (the test suite's helpers: free ports, temp
directories, never the machine's servers) and measures:

1. Redis `used_memory` before and after `--calls` settlements through the store (two counter
   lines each, a usage record each), without a database (records kept in Redis) and with one
   (records handed off to PostgreSQL, Redis keeping counters and settle markers).
2. `--records` records loaded into the ledger (rollups built by the same SQL as the hand-off),
   then the monthly report's aggregation (`reporting.aggregate_usage`, by provider, model and
   component) and a page of `/api/usage/records`, timed.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from budget_proxy.ledger.postgres import PostgresLedger
from budget_proxy.models import UsageRecord
from budget_proxy.reporting import aggregate_usage, time_range
from budget_proxy.store.base import Reservation, UsageQuery
from budget_proxy.store.redis import RedisStore
from tests.ledger.pg_server import PostgresServer
from tests.redis_servers import RedisServer

CONCURRENCY = 64


async def settle_many(store: RedisStore, calls: int, tag: str) -> float:
    keys = ("pol_daily:d:20260101", "pol_comp:d:20260101")
    sem = asyncio.Semaphore(CONCURRENCY)

    async def one(i: int) -> None:
        async with sem:
            record = UsageRecord(
                record_id=f"use_{tag}{i:08d}", provider="openai", model="gpt-4o-mini",
                component=f"svc-{i % 20}", session_id=f"s{i % 1000}", input_tokens=120,
                output_tokens=80, total_tokens=200, input_cost=0.000018, output_cost=0.000048,
                total_cost=0.000066)
            await store.settle(Reservation(f"res_{tag}{i:08d}", keys, 0, 0), 66_000, 200,
                               record)

    started = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(calls)))
    return time.perf_counter() - started


async def memory(store: RedisStore) -> int:
    return int((await store.client.info("memory"))["used_memory"])


async def redis_memory(redis: RedisServer, pg: PostgresServer, calls: int, tmp: Path) -> None:
    for label, database in (("no database", None), ("with database", pg.create_database())):
        redis.flushall()
        ledger = PostgresLedger(database) if database else None
        store = RedisStore(redis.url, data_dir=tmp / label.replace(" ", "-"), ledger=ledger)
        await store.start()
        try:
            before = await memory(store)
            mover = None
            if store.handoff is not None:
                mover = asyncio.create_task(store.handoff.run())
            took = await settle_many(store, calls, "m")
            if store.handoff is not None:
                while await store.handoff.backlog():  # noqa: ASYNC110 - polls Redis
                    await asyncio.sleep(0.2)
                assert store.ledger is not None
                assert await store.ledger.count() == calls
            if mover is not None:
                mover.cancel()
            after = await memory(store)
            print(f"redis used_memory, {label}: {before / 1e6:.2f} MB before, "
                  f"{after / 1e6:.2f} MB after {calls} settled calls "
                  f"(+{(after - before) / calls:.0f} B per call; settled in {took:.1f} s)")
        finally:
            await store.close()


LOAD = """
INSERT INTO usage_records (record_id, ts, provider, model, component, context_id, session_id,
    task_id, task_type, allocation_id, status, input_tokens, output_tokens, total_tokens,
    input_nusd, output_nusd, total_nusd, body)
SELECT 'use_b' || g, $1::timestamptz + (g * $2::float8) * interval '1 second',
    (ARRAY['openai', 'anthropic', 'gemini'])[1 + g % 3], 'model-' || (g % 12),
    'svc-' || (g % 40), NULL, 's' || (g % 5000), NULL, NULL, NULL, 'ok', 120, 80, 200,
    18000, 48000, 66000,
    '{"record_id": "use_b' || g || '", "provider": "openai", "model": "m", '
    || '"timestamp": "2026-01-01T00:00:00Z"}'
FROM generate_series(1, $3) AS g
"""
ROLLUP = """
INSERT INTO usage_hourly SELECT date_trunc('hour', ts), provider, model, component, count(*),
    sum(input_tokens), sum(output_tokens), sum(total_tokens), sum(input_nusd),
    sum(output_nusd), sum(total_nusd)
FROM usage_records GROUP BY 1, 2, 3, 4
"""


async def reports(redis: RedisServer, pg: PostgresServer, records: int, tmp: Path) -> None:
    redis.flushall()
    ledger = PostgresLedger(pg.create_database())
    store = RedisStore(redis.url, data_dir=tmp / "reports", ledger=ledger)
    await store.start()
    try:
        tz = ZoneInfo("UTC")
        now = store.now()
        since, _ = time_range("monthly", 30, now, tz)
        spread_s = (now - since).total_seconds() / records
        started = time.perf_counter()
        async with ledger.pool.acquire() as conn:
            await conn.execute(LOAD, since, spread_s, records)
            await conn.execute(ROLLUP)
            await conn.execute("ANALYZE")
        print(f"loaded {records} records and their rollups in "
              f"{time.perf_counter() - started:.1f} s")
        for label, period, days in (("monthly report, current month", "monthly", None),
                                    ("daily report, 30 days", "daily", 30)):
            start, end = time_range(period, days, now, tz)  # type: ignore[arg-type]
            timings = []
            for _ in range(5):
                t = time.perf_counter()
                aggs = await aggregate_usage(store, period, tz, start, end,  # type: ignore[arg-type]
                                             ("provider",), ("provider", "model"),
                                             ("component",))
                timings.append(time.perf_counter() - t)
            print(f"{label}: {aggs[0].all.requests} records aggregated, "
                  f"best {min(timings) * 1000:.0f} ms, worst {max(timings) * 1000:.0f} ms")
        t = time.perf_counter()
        page = await store.list_usage(UsageQuery(component="svc-7", limit=100))
        print(f"/api/usage/records page (component filter, newest first): {len(page)} records "
              f"in {(time.perf_counter() - t) * 1000:.0f} ms")
        t = time.perf_counter()
        page = await store.list_usage(UsageQuery(
            since=now - timedelta(days=3), until=now - timedelta(days=2), limit=100,
            offset=1000))
        print(f"/api/usage/records page (time range, offset 1000): {len(page)} records "
              f"in {(time.perf_counter() - t) * 1000:.0f} ms")
    finally:
        await store.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=100_000)
    parser.add_argument("--records", type=int, default=1_000_000)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bp-ledger-bench-"))
    redis = RedisServer(tmp / "redis").start()
    pg_dir = Path(tempfile.mkdtemp(prefix="bp-pg-"))  # its own: owned by the server's user
    pg = PostgresServer(pg_dir)
    pg.start()
    try:
        print(f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC")
        await redis_memory(redis, pg, args.calls, tmp)
        await reports(redis, pg, args.records, tmp)
    finally:
        redis.kill()
        pg.stop()
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(pg_dir, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())

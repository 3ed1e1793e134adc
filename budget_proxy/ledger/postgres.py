"""The PostgreSQL ledger (asyncpg): usage records written exactly once, hourly rollups.

- **Exactly once.** A batch is one statement: the records are inserted with
  `ON CONFLICT (record_id) DO NOTHING`, and only the rows actually inserted (`RETURNING`)
  are added to the hourly rollups, in the same transaction. A batch written twice (a
  hand-off entry redelivered after a replica died before its acknowledgement) changes
  nothing, and the rollups always equal the sum of the records.
- **Batched.** Rows travel as arrays (`unnest`), one round trip per batch; rows and rollup
  keys are sorted, so concurrent writers lock in one order (a deadlock is retried anyway).
- **Migrated.** `budget_proxy.ledger.migrations`, versioned, under an advisory lock.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import asyncpg

from budget_proxy.ledger.base import MAX_INT64, HourlyRow, SpendRow, unique_rows
from budget_proxy.ledger.migrations import LOCK_ID, MIGRATIONS, MIGRATIONS_TABLE
from budget_proxy.logs import redact_url
from budget_proxy.models import UsageRecord
from budget_proxy.store.base import StoreError, UsageQuery, safe_text

log = logging.getLogger(__name__)

DEADLOCK_RETRIES = 5
POOL_MAX = 8

INSERT = """
WITH rows AS (
    SELECT * FROM unnest($1::text[], $2::timestamptz[], $3::text[], $4::text[], $5::text[],
        $6::text[], $7::text[], $8::text[], $9::text[], $10::text[], $11::text[],
        $12::bigint[], $13::bigint[], $14::bigint[], $15::bigint[], $16::bigint[],
        $17::bigint[], $18::text[])
), ins AS (
    INSERT INTO usage_records (record_id, ts, provider, model, component, context_id,
        session_id, task_id, task_type, allocation_id, status, input_tokens, output_tokens,
        total_tokens, input_nusd, output_nusd, total_nusd, body)
    SELECT * FROM rows
    ON CONFLICT (record_id) DO NOTHING
    RETURNING ts, provider, model, component, input_tokens, output_tokens, total_tokens,
        input_nusd, output_nusd, total_nusd
), up AS (
    INSERT INTO usage_hourly AS h (hour, provider, model, component, requests, input_tokens,
        output_tokens, total_tokens, input_nusd, output_nusd, total_nusd)
    SELECT date_trunc('hour', ts), provider, model, component, count(*),
        LEAST(sum(input_tokens), $19), LEAST(sum(output_tokens), $19),
        LEAST(sum(total_tokens), $19), LEAST(sum(input_nusd), $19),
        LEAST(sum(output_nusd), $19), LEAST(sum(total_nusd), $19)
    FROM ins GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4
    ON CONFLICT (hour, provider, model, component) DO UPDATE SET
        requests = LEAST(h.requests::numeric + EXCLUDED.requests, $19),
        input_tokens = LEAST(h.input_tokens::numeric + EXCLUDED.input_tokens, $19),
        output_tokens = LEAST(h.output_tokens::numeric + EXCLUDED.output_tokens, $19),
        total_tokens = LEAST(h.total_tokens::numeric + EXCLUDED.total_tokens, $19),
        input_nusd = LEAST(h.input_nusd::numeric + EXCLUDED.input_nusd, $19),
        output_nusd = LEAST(h.output_nusd::numeric + EXCLUDED.output_nusd, $19),
        total_nusd = LEAST(h.total_nusd::numeric + EXCLUDED.total_nusd, $19)
    RETURNING 1
)
SELECT count(*) FROM ins
"""
WINDOW_UNITS = {"hourly": "hour", "daily": "day", "weekly": "week", "monthly": "month"}
FILTER_COLUMNS = ("component", "provider", "model", "context_id", "session_id")


class PostgresLedger:
    """Usage records and hourly rollups in PostgreSQL. Errors surface as `StoreError`, so
    readers keep the admin API's one store-failure answer (503)."""

    kind = "postgres"

    def __init__(self, url: str, *, pool_max: int = POOL_MAX) -> None:
        self.url = url
        self.pool_max = pool_max
        self._pool: asyncpg.Pool | None = None

    async def start(self) -> None:
        """Open the pool and migrate; a no-op once started (the store and its hand-off both
        start it: whichever comes first)."""
        if self._pool is not None:
            return
        try:
            self._pool = await asyncpg.create_pool(
                self.url, min_size=1, max_size=self.pool_max, command_timeout=60,
                server_settings={"timezone": "UTC", "application_name": "budget-proxy"})
            await self.migrate()
        except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
            await self.close()
            raise StoreError(f"ledger {redact_url(self.url)}: {exc}") from exc

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise StoreError("ledger is not started")
        return self._pool

    async def _run(self, fn: Any, *args: Any) -> Any:
        """One pooled call with errors turned into StoreError."""
        try:
            async with self.pool.acquire() as conn:
                return await fn(conn, *args)
        except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise StoreError(f"ledger: {type(exc).__name__}: {exc}") from exc

    # schema -------------------------------------------------------------------------------
    async def migrate(self) -> list[int]:
        """Apply the migrations this database lacks, in order; returns the versions applied."""
        async def run(conn: asyncpg.Connection) -> list[int]:
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1)", LOCK_ID)
                await conn.execute(
                    f"CREATE TABLE IF NOT EXISTS {MIGRATIONS_TABLE} (version integer PRIMARY "
                    "KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())")
                have = {r[0] for r in await conn.fetch(
                    f"SELECT version FROM {MIGRATIONS_TABLE}")}
                applied = []
                for version, name, sql in MIGRATIONS:
                    if version in have:
                        continue
                    await conn.execute(sql)
                    await conn.execute(f"INSERT INTO {MIGRATIONS_TABLE} (version, name) "
                                       "VALUES ($1, $2)", version, name)
                    applied.append(version)
                newer = max(have, default=0) > MIGRATIONS[-1][0]
            if newer:
                log.warning("ledger schema is newer (v%d) than this proxy knows (v%d)",
                            max(have), MIGRATIONS[-1][0])
            return applied

        applied: list[int] = await self._run(run)
        if applied:
            log.info("ledger schema migrated to v%d", applied[-1])
        return applied

    async def schema_version(self) -> int:
        return int(await self._run(lambda c: c.fetchval(
            f"SELECT coalesce(max(version), 0) FROM {MIGRATIONS_TABLE}")))

    # writes -------------------------------------------------------------------------------
    async def write(self, bodies: Sequence[str | bytes]) -> int:
        """Insert the records (JSON bodies) not in the ledger yet, with their rollups, in one
        transaction; returns how many were new. Entries that are not usage records are
        logged and skipped (one bad entry never stalls the others)."""
        rows, bad = unique_rows(bodies)
        for reason in bad[:5]:
            log.error("ledger: hand-off entry is not a usage record (%s); skipped", reason)
        if not rows:
            return 0
        columns = [list(c) for c in zip(*rows, strict=True)]
        for attempt in range(DEADLOCK_RETRIES):
            try:
                return int(await self._run(lambda c: c.fetchval(INSERT, *columns, MAX_INT64)))
            except StoreError as exc:
                if not isinstance(exc.__cause__, asyncpg.DeadlockDetectedError) or \
                        attempt == DEADLOCK_RETRIES - 1:
                    raise
        raise AssertionError("unreachable")

    async def write_records(self, records: Sequence[UsageRecord]) -> int:
        return await self.write([r.model_dump_json() for r in records])

    # reads --------------------------------------------------------------------------------
    async def list_usage(self, query: UsageQuery) -> list[UsageRecord]:
        clauses, params = _where(query)
        order = "DESC" if query.newest_first else "ASC"
        params += [query.limit, query.offset]
        sql = (f"SELECT body FROM usage_records {clauses} ORDER BY ts {order}, "
               f"record_id {order} LIMIT ${len(params) - 1} OFFSET ${len(params)}")
        rows = await self._run(lambda c: c.fetch(sql, *params))
        return [UsageRecord.model_validate_json(r[0]) for r in rows]

    async def hourly(self, since: datetime, until: datetime, provider: str | None = None,
                     component: str | None = None, model: str | None = None,
                     period: str = "hourly", tz: str = "UTC") -> list[HourlyRow] | None:
        """Rollups of the hours from the one holding `since` to the one holding `until`,
        summed per calendar window of `period` in `tz` (`hour` is the window's start): a
        month of a million records is a few hundred rows to the caller."""
        unit = WINDOW_UNITS[period]
        clauses = ["hour >= date_trunc('hour', $1::timestamptz)", "hour <= $2"]
        params: list[Any] = [since, until, unit, tz, MAX_INT64]
        for column, value in (("provider", provider), ("component", component),
                              ("model", model)):
            if value is not None:
                params.append(safe_text(value))
                clauses.append(f"{column} = ${len(params)}")
        sums = ", ".join(f"LEAST(sum({c}), $5)::bigint" for c in (
            "requests", "input_tokens", "output_tokens", "total_tokens", "input_nusd",
            "output_nusd", "total_nusd"))
        sql = (f"SELECT date_trunc($3, hour AT TIME ZONE $4) AT TIME ZONE $4 AS start, "
               f"provider, model, component, {sums} FROM usage_hourly "
               f"WHERE {' AND '.join(clauses)} GROUP BY 1, 2, 3, 4 ORDER BY 1")
        rows = await self._run(lambda c: c.fetch(sql, *params))
        return [HourlyRow(*r) for r in rows]

    async def spend_since(self, since: datetime) -> list[SpendRow]:
        """Spend per minute and scope since `since`: what rebuilds counters."""
        sql = ("SELECT date_trunc('minute', ts), provider, model, component, task_type, "
               "session_id, task_id, LEAST(sum(total_nusd), $2)::bigint, "
               "LEAST(sum(total_tokens), $2)::bigint, count(*) "
               "FROM usage_records WHERE ts >= $1 GROUP BY 1, 2, 3, 4, 5, 6, 7")
        rows = await self._run(lambda c: c.fetch(sql, since, MAX_INT64))
        return [SpendRow(*r) for r in rows]

    async def count(self) -> int:
        return int(await self._run(lambda c: c.fetchval("SELECT count(*) FROM usage_records")))

    async def check_rollups(self) -> list[tuple[Any, ...]]:
        """Hours whose rollup differs from the sum of their records (empty when all agree)."""
        sql = """
        WITH r AS (
            SELECT date_trunc('hour', ts) AS hour, provider, model, component,
                count(*) AS requests, sum(total_tokens) AS total_tokens,
                sum(input_nusd) AS input_nusd, sum(output_nusd) AS output_nusd,
                sum(total_nusd) AS total_nusd
            FROM usage_records GROUP BY 1, 2, 3, 4)
        SELECT coalesce(r.hour, h.hour), coalesce(r.provider, h.provider),
            coalesce(r.model, h.model), coalesce(r.component, h.component)
        FROM r FULL JOIN usage_hourly h USING (hour, provider, model, component)
        WHERE r.requests IS DISTINCT FROM h.requests
            OR r.total_tokens IS DISTINCT FROM h.total_tokens
            OR r.input_nusd IS DISTINCT FROM h.input_nusd
            OR r.output_nusd IS DISTINCT FROM h.output_nusd
            OR r.total_nusd IS DISTINCT FROM h.total_nusd
        """
        return [tuple(r) for r in await self._run(lambda c: c.fetch(sql))]


def _where(query: UsageQuery) -> tuple[str, list[Any]]:
    clauses: list[str] = []
    params: list[Any] = []
    for column in FILTER_COLUMNS:
        value = getattr(query, column)
        if value is not None:
            params.append(safe_text(value))
            clauses.append(f"{column} = ${len(params)}")
    if query.since is not None:
        params.append(query.since if query.since.tzinfo else query.since.replace(tzinfo=UTC))
        clauses.append(f"ts >= ${len(params)}")
    if query.until is not None:
        params.append(query.until if query.until.tzinfo else query.until.replace(tzinfo=UTC))
        clauses.append(f"ts < ${len(params)}")
    return ("WHERE " + " AND ".join(clauses)) if clauses else "", params

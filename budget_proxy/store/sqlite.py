"""The embedded store: SQLite under `BUDGET_DATA_DIR`, no server needed.

One process owns the database. Counter totals are mirrored in memory and every mutation is
applied to memory in one synchronous step on the event loop (no `await` in between), so a
reservation's check-and-add is atomic with respect to every other request of this process.

Durability: a settlement (usage record plus spend) is one SQLite transaction, committed before
the settlement completes; WAL with `synchronous=NORMAL` keeps committed transactions across a
crash of the process (SIGKILL). Reservations are held in memory and checkpointed to SQLite
every `CHECKPOINT_INTERVAL_S` (a write per request would double the store's cost on the hot
path): after a crash, holds older than that come back and the reaper releases them at their
deadline; a younger hold is simply released at once, which frees budget, never overspends.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path

import orjson

from budget_proxy.enforcement import CounterLine, ReserveResult, Totals, would_refuse
from budget_proxy.models import UsageRecord
from budget_proxy.store.base import Reservation, Store, StoreError, UsageQuery

CHECKPOINT_INTERVAL_S = 0.5  # how often in-memory reservations are written to SQLite
GROUP_COMMIT_MAX = 500  # settlements in one transaction at most (bounds one query's variables)

SCHEMA = """
CREATE TABLE IF NOT EXISTS counters (
    key TEXT PRIMARY KEY,
    spent_nusd INTEGER NOT NULL DEFAULT 0,
    spent_tokens INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS reservations (
    reservation_id TEXT PRIMARY KEY,
    keys TEXT NOT NULL,
    cost_nusd INTEGER NOT NULL,
    tokens INTEGER NOT NULL,
    expires_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS docs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    doc_id TEXT NOT NULL,
    body TEXT NOT NULL,
    UNIQUE (kind, doc_id)
);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS usage_records (
    record_id TEXT PRIMARY KEY,
    ts REAL NOT NULL,
    component TEXT,
    provider TEXT,
    model TEXT,
    context_id TEXT,
    session_id TEXT,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS usage_ts ON usage_records (ts);
"""


class SqliteStore(Store):
    kind = "embedded"

    def __init__(self, data_dir: Path) -> None:
        self.path = Path(data_dir) / "budget.db"
        self._db: sqlite3.Connection | None = None
        # key -> [spent_nusd, reserved_nusd, spent_tokens, reserved_tokens]
        self._counters: dict[str, list[int]] = {}
        self._reservations: dict[str, tuple[Reservation, float]] = {}
        self._reservations_dirty = False
        self._pending: list[
            tuple[Reservation, int, int, UsageRecord | None, asyncio.Future[bool]]] = []
        self._checkpointer: asyncio.Task[None] | None = None
        self._version = 0

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.executescript(SCHEMA)
        self._db = db
        counters = db.execute("SELECT key, spent_nusd, spent_tokens FROM counters")
        for key, spent, spent_tokens in counters:
            self._counters[key] = [spent, 0, spent_tokens, 0]
        rows = db.execute(
            "SELECT reservation_id, keys, cost_nusd, tokens, expires_at FROM reservations"
        )
        for rid, keys, cost, tokens, expires_at in rows:
            res = Reservation(rid, tuple(orjson.loads(keys)), cost, tokens)
            self._hold(res, +1)
            self._reservations[rid] = (res, expires_at)
        row = db.execute("SELECT value FROM meta WHERE name = 'config_version'").fetchone()
        self._version = row[0] if row else 0
        self._checkpointer = asyncio.create_task(self._checkpoint_loop())

    async def close(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._checkpointer
            self._checkpointer = None
        if self._db is not None:
            self._flush_settlements()
            self.checkpoint()
            self._db.close()
            self._db = None

    async def _checkpoint_loop(self) -> None:
        while True:
            await asyncio.sleep(CHECKPOINT_INTERVAL_S)
            try:
                self.checkpoint()
            except StoreError:
                pass  # retried next round; holds stay correct in memory

    def checkpoint(self) -> None:
        """Write the open reservations to SQLite (replacing the previous checkpoint)."""
        if not self._reservations_dirty:
            return
        rows = [
            (rid, orjson.dumps(list(res.keys)).decode(), res.cost_nusd, res.tokens, expires_at)
            for rid, (res, expires_at) in self._reservations.items()
        ]
        db = self.db
        try:
            db.execute("BEGIN")
            db.execute("DELETE FROM reservations")
            db.executemany("INSERT INTO reservations VALUES (?, ?, ?, ?, ?)", rows)
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise StoreError(str(exc)) from exc
        self._reservations_dirty = False

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise StoreError("embedded store is not open")
        return self._db

    # counters -----------------------------------------------------------------------------
    def _counter(self, key: str) -> list[int]:
        counter = self._counters.get(key)
        if counter is None:
            counter = self._counters[key] = [0, 0, 0, 0]
        return counter

    def _hold(self, res: Reservation, sign: int) -> None:
        for key in res.keys:
            counter = self._counter(key)
            counter[1] = max(0, counter[1] + sign * res.cost_nusd)
            counter[3] = max(0, counter[3] + sign * res.tokens)

    @staticmethod
    def _totals(counter: list[int]) -> Totals:
        return Totals(counter[0], counter[1], counter[2], counter[3])

    async def reserve(
        self, reservation: Reservation, lines: Sequence[CounterLine], ttl_s: float
    ) -> ReserveResult:
        current = [self._totals(self._counter(line.key)) for line in lines]
        for index, (line, tot) in enumerate(zip(lines, current, strict=True)):
            if would_refuse(line, tot, reservation.cost_nusd, reservation.tokens):
                return ReserveResult(False, tuple(current), index)
        if self._db is None:
            raise StoreError("embedded store is not open")
        self._hold(reservation, +1)
        self._reservations[reservation.reservation_id] = (reservation, time.time() + ttl_s)
        self._reservations_dirty = True
        return ReserveResult(True, tuple(self._totals(self._counters[k]) for k in reservation.keys))

    async def settle(
        self, reservation: Reservation, cost_nusd: int, tokens: int, record: UsageRecord | None
    ) -> bool:
        """Group commit: settlements queued in the same loop iteration share one SQLite
        transaction and one statement per table, so a burst pays one commit, not one each;
        each still returns only once its transaction has committed. (Waiting a few ms to batch
        more measured worse: the flush then lands in the middle of the next request.)"""
        if self._db is None:
            raise StoreError("embedded store is not open")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[bool] = loop.create_future()
        self._pending.append((reservation, cost_nusd, tokens, record, future))
        if len(self._pending) == 1:
            loop.call_soon(self._flush_settlements)
        elif len(self._pending) >= GROUP_COMMIT_MAX:
            self._flush_settlements()
        return await future

    def _flush_settlements(self) -> None:
        batch, self._pending = self._pending, []
        if not batch:
            return
        try:
            db = self.db
            db.execute("BEGIN")
            applied = self._write_batch(db, batch)
            db.execute("COMMIT")
        except (sqlite3.Error, StoreError) as exc:
            if self._db is not None and self._db.in_transaction:
                self._db.execute("ROLLBACK")
            for *_, future in batch:
                if not future.done():
                    future.set_exception(StoreError(str(exc)))
            return
        for (reservation, cost_nusd, tokens, _, future), done in zip(batch, applied, strict=True):
            if done:
                self._apply_settlement(reservation, cost_nusd, tokens)
            if not future.done():
                future.set_result(done)

    def _write_batch(
        self, db: sqlite3.Connection,
        batch: list[tuple[Reservation, int, int, UsageRecord | None, asyncio.Future[bool]]],
    ) -> list[bool]:
        """Write a batch inside the open transaction: which of its settlements were new."""
        ids = [rec.record_id for _, _, _, rec, _ in batch if rec is not None]
        seen: set[str] = set()
        if ids:
            marks = ",".join("?" * len(ids))
            seen = {row[0] for row in db.execute(
                f"SELECT record_id FROM usage_records WHERE record_id IN ({marks})", ids)}
        applied: list[bool] = []
        rows: list[tuple[object, ...]] = []
        deltas: dict[str, list[int]] = {}
        for reservation, cost_nusd, tokens, record, _ in batch:
            if record is None:  # a settlement without a record (allocations): rare, one by one
                new = bool(db.execute(
                    "INSERT OR IGNORE INTO docs (kind, doc_id, body) VALUES ('settled', ?, '')",
                    (reservation.reservation_id,)).rowcount)
            else:
                new = record.record_id not in seen
                if new:
                    seen.add(record.record_id)
                    rows.append(_usage_row(record))
            applied.append(new)
            if new:
                for key in reservation.keys:
                    delta = deltas.setdefault(key, [0, 0])
                    delta[0] += cost_nusd
                    delta[1] += tokens
        if rows:
            db.executemany("INSERT INTO usage_records VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
        if deltas:
            db.executemany(
                "INSERT INTO counters (key, spent_nusd, spent_tokens) VALUES (?, ?, ?) "
                "ON CONFLICT(key) DO UPDATE SET spent_nusd = spent_nusd + excluded.spent_nusd, "
                "spent_tokens = spent_tokens + excluded.spent_tokens",
                [(key, d[0], d[1]) for key, d in deltas.items()],
            )
        return applied

    def _apply_settlement(self, reservation: Reservation, cost_nusd: int, tokens: int) -> None:
        held = self._reservations.pop(reservation.reservation_id, None)
        if held is not None:
            self._hold(held[0], -1)
            self._reservations_dirty = True
        for key in reservation.keys:
            counter = self._counter(key)
            counter[0] += cost_nusd
            counter[2] += tokens

    async def release(self, reservation: Reservation) -> None:
        self._drop(reservation.reservation_id)

    def _drop(self, reservation_id: str) -> bool:
        held = self._reservations.pop(reservation_id, None)
        if held is None:
            return False
        self._hold(held[0], -1)
        self._reservations_dirty = True
        return True

    async def totals(self, keys: Sequence[str]) -> list[Totals]:
        zero = [0, 0, 0, 0]
        return [self._totals(self._counters.get(key, zero)) for key in keys]

    async def reap_expired(self) -> int:
        now = time.time()
        expired = [rid for rid, (_, exp) in self._reservations.items() if exp <= now]
        return sum(self._drop(rid) for rid in expired)

    def open_reservations(self) -> int:
        return len(self._reservations)

    # documents --------------------------------------------------------------------------
    def _bump(self) -> None:
        self._version += 1
        self.db.execute(
            "INSERT INTO meta VALUES ('config_version', ?) "
            "ON CONFLICT(name) DO UPDATE SET value = excluded.value", (self._version,)
        )

    async def put_doc(self, kind: str, doc_id: str, body: str, *, config: bool = False) -> None:
        try:
            self.db.execute(
                "INSERT INTO docs (kind, doc_id, body) VALUES (?, ?, ?) "
                "ON CONFLICT(kind, doc_id) DO UPDATE SET body = excluded.body",
                (kind, doc_id, body),
            )
            if config:
                self._bump()
        except sqlite3.Error as exc:
            raise StoreError(str(exc)) from exc

    async def add_doc(self, kind: str, doc_id: str, body: str) -> bool:
        try:
            return bool(self.db.execute(
                "INSERT OR IGNORE INTO docs (kind, doc_id, body) VALUES (?, ?, ?)",
                (kind, doc_id, body),
            ).rowcount)
        except sqlite3.Error as exc:
            raise StoreError(str(exc)) from exc

    async def get_doc(self, kind: str, doc_id: str) -> str | None:
        row = self.db.execute(
            "SELECT body FROM docs WHERE kind = ? AND doc_id = ?", (kind, doc_id)
        ).fetchone()
        return None if row is None else row[0]

    async def list_docs(self, kind: str) -> list[str]:
        rows = self.db.execute("SELECT body FROM docs WHERE kind = ? ORDER BY seq", (kind,))
        return [body for (body,) in rows]

    async def delete_doc(self, kind: str, doc_id: str, *, config: bool = False) -> bool:
        deleted = self.db.execute(
            "DELETE FROM docs WHERE kind = ? AND doc_id = ?", (kind, doc_id)
        ).rowcount
        if config and deleted:
            self._bump()
        return bool(deleted)

    async def config_version(self) -> int:
        return self._version

    # usage --------------------------------------------------------------------------------
    async def list_usage(self, query: UsageQuery) -> list[UsageRecord]:
        clauses, params = _usage_where(query)
        order = "DESC" if query.newest_first else "ASC"
        sql = (f"SELECT body FROM usage_records {clauses} ORDER BY ts {order}, rowid {order} "
               "LIMIT ? OFFSET ?")
        rows = self.db.execute(sql, [*params, query.limit, query.offset])
        return [UsageRecord.model_validate_json(body) for (body,) in rows]


def _usage_row(record: UsageRecord) -> tuple[object, ...]:
    return (
        record.record_id, record.timestamp.timestamp(), record.component, record.provider,
        record.model, record.context_id, record.session_id, record.model_dump_json(),
    )


def _usage_where(query: UsageQuery) -> tuple[str, list[object]]:
    clauses: list[str] = []
    params: list[object] = []
    for column, value in (
        ("component", query.component), ("provider", query.provider), ("model", query.model),
        ("context_id", query.context_id), ("session_id", query.session_id),
    ):
        if value is not None:
            clauses.append(f"{column} = ?")
            params.append(value)
    if query.since is not None:
        clauses.append("ts >= ?")
        params.append(query.since.timestamp())
    if query.until is not None:
        clauses.append("ts < ?")
        params.append(query.until.timestamp())
    return ("WHERE " + " AND ".join(clauses)) if clauses else "", params

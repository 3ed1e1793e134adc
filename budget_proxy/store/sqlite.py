"""The embedded store: SQLite under `BUDGET_DATA_DIR`, no server needed.

One process owns the database. Counter totals are mirrored in memory and every mutation is
applied to memory in one synchronous step on the event loop (no `await` in between), so a
reservation's check-and-add is atomic with respect to every other request of this process.

Durability (WAL with `synchronous=NORMAL`: a committed transaction survives a SIGKILL of the
process; no fsync per request). Writes go through one group commit: the writes queued by the
time it runs share one transaction, and each call returns only once its transaction has
committed.
- `reserve` returns after the hold row (with its intent) is committed: a request is never
  forwarded without a durable trace. A hold (or an extension) is committed at the next loop
  iteration, with whatever else is queued by then.
- `settle` writes the usage record and the spend and deletes the hold row in one transaction.
  Its commit is not urgent (the answer has been sent), so it does not schedule one of its
  own: it rides on the next hold's commit, or commits after `settle_delay_s` when no hold
  comes first (and at `close`). In steady serial traffic a call then costs one commit, not
  two, and the settlement's commit never lands in the middle of the next request. A release
  waits the same way. The counters in memory take a settlement when it is queued, so the
  next request is judged on the spend, not on the previous call's hold; a settlement that
  fails gives its hold back. A SIGKILL before a settlement commits leaves its hold row,
  which the next start charges (below): a call is charged once, at its hold instead of its
  usage, never lost and never twice (its record id derives from its reservation id).
- At start-up every request hold row left belongs to a dead process (one process owns the
  database): each is charged at its hold with its `unsettled` record, in one transaction.
  Allocation holds (no intent) are restored and released at their deadline.
- One bad write never stalls or rolls back another: when a batch fails, each of its writes
  is retried alone, so only the bad one fails (with StoreError); no transaction is ever left
  open. Text that cannot be encoded is escaped and amounts are clamped before they get here
  (`base.safe_text`, `base.storable_record`, `Reservation`), so a real call is never refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import orjson

from budget_proxy.enforcement import CounterLine, ReserveResult, Totals, would_refuse
from budget_proxy.models import UsageRecord
from budget_proxy.store.base import (
    MAX_AMOUNT_NUSD,
    MAX_AMOUNT_TOKENS,
    LiveHold,
    Reservation,
    Store,
    StoreError,
    UsageQuery,
    bounded,
    safe_text,
    storable_record,
    unsettled_record,
)
from budget_proxy.store.wal import Checkpointer

log = logging.getLogger(__name__)

GROUP_COMMIT_MAX = 500  # writes in one transaction at most
# the longest a settlement or release waits for a hold's commit to share before committing
# alone: longer than the gap between two calls of a serial client, short for a reader
SETTLE_DELAY_S = 0.005
CHECKPOINT_EVERY = 128  # commits between two WAL checkpoints (`wal.Checkpointer`)

SCHEMA = """
CREATE TABLE IF NOT EXISTS counters (
    key TEXT PRIMARY KEY,
    spent_nusd INTEGER NOT NULL DEFAULT 0,
    spent_tokens INTEGER NOT NULL DEFAULT 0,
    spent_requests INTEGER NOT NULL DEFAULT 0
);
-- one row per hold, written before its call is forwarded and deleted with its settlement;
-- keyed by rowid only (one b-tree to write: half the cost of a text primary key)
CREATE TABLE IF NOT EXISTS holds (
    seq INTEGER PRIMARY KEY,
    reservation_id TEXT NOT NULL,
    keys TEXT NOT NULL,
    cost_nusd INTEGER NOT NULL,
    tokens INTEGER NOT NULL,
    expires_at REAL NOT NULL,
    intent TEXT
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


@dataclass(slots=True)
class _Held:
    """A hold in memory: its reservation, deadline and row (0 until written)."""

    reservation: Reservation
    expires_at: float
    seq: int = 0


@dataclass(slots=True)
class _Hold:
    """Write a hold row."""

    held: _Held
    future: asyncio.Future[bool] | None = None


@dataclass(slots=True)
class _Settle:
    """Write a settlement: record, spend, and the hold row gone."""

    reservation: Reservation
    cost_nusd: int
    tokens: int
    record: UsageRecord | None
    record_json: str
    seq: int  # the hold row to delete (0: none)
    future: asyncio.Future[bool] | None = None
    # the hold it took from memory when queued (its spend counted then), and its renewal;
    # None: settled without a hold of this process, counted once committed if new
    held: _Held | None = None
    live: LiveHold | None = None

    @classmethod
    def of(cls, reservation: Reservation, cost_nusd: int, tokens: int,
           record: UsageRecord | None, seq: int) -> _Settle:
        """A settlement with amounts clamped and the record made storable."""
        body = ""
        if record is not None:
            record, body = storable_record(record)
        return cls(reservation, bounded(cost_nusd, MAX_AMOUNT_NUSD),
                   bounded(tokens, MAX_AMOUNT_TOKENS), record, body, seq)


@dataclass(slots=True)
class _Drop:
    """Delete a hold row (release, expiry)."""

    seq: int
    future: asyncio.Future[bool] | None = None


@dataclass(slots=True)
class _Extend:
    """Write a hold row's grown amounts (an incremental stream's extension)."""

    held: _Held
    future: asyncio.Future[bool] | None = None


_Write = _Hold | _Settle | _Drop | _Extend


class SqliteStore(Store):
    kind = "embedded"
    backend_errors = (sqlite3.Error,)

    def __init__(self, data_dir: Path, settle_delay_s: float = SETTLE_DELAY_S) -> None:
        super().__init__()
        self.path = Path(data_dir) / "budget.db"
        self.settle_delay_s = settle_delay_s
        self._db: sqlite3.Connection | None = None
        # key -> [spent_nusd, reserved_nusd, spent_tokens, reserved_tokens, calls]
        self._counters: dict[str, list[int]] = {}
        self._reservations: dict[str, _Held] = {}
        self._accounted: dict[str, _Settle] = {}  # counted by `account`, settlement to come
        self._pending: list[_Write] = []
        self._flush_soon: asyncio.Handle | None = None  # the next iteration's commit
        self._flush_later: asyncio.TimerHandle | None = None  # a settlement's bound
        self._version = 0
        self.checkpoints = Checkpointer(self.path, CHECKPOINT_EVERY)

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(SCHEMA)
            _migrate_reservations(db)
            _migrate_request_counts(db)
            self._db = db
            charged = self._charge_dead_holds(db)
        except BaseException:
            self._db = None
            db.close()
            raise
        self.checkpoints.start(db)
        if charged:
            log.warning("charged %d holds of a dead process as unsettled usage", charged)
        for key, spent, spent_tokens, requests in db.execute(
                "SELECT key, spent_nusd, spent_tokens, spent_requests FROM counters"):
            self._counters[key] = [spent, 0, spent_tokens, 0, requests]
        rows = db.execute("SELECT seq, reservation_id, keys, cost_nusd, tokens, expires_at "
                          "FROM holds")
        for seq, rid, keys, cost, tokens, expires_at in rows:  # allocation holds: kept
            res = Reservation(rid, tuple(orjson.loads(keys)), cost, tokens, requests=0)
            self._hold(res, +1)
            self._reservations[rid] = _Held(res, expires_at, seq)
        row = db.execute("SELECT value FROM meta WHERE name = 'config_version'").fetchone()
        self._version = row[0] if row else 0

    def _charge_dead_holds(self, db: sqlite3.Connection) -> int:
        """Charge every request hold row (it belongs to a dead process) at its hold, with
        its `unsettled` record, and delete it: one transaction per GROUP_COMMIT_MAX rows; a
        row that cannot be charged is left (and logged) rather than refusing start-up."""
        rows = db.execute("SELECT seq, reservation_id, keys, cost_nusd, tokens, intent "
                          "FROM holds WHERE intent IS NOT NULL").fetchall()
        charged = 0
        for start in range(0, len(rows), GROUP_COMMIT_MAX):
            writes: list[_Write] = []
            for seq, rid, keys, cost, tokens, intent in rows[start:start + GROUP_COMMIT_MAX]:
                res = Reservation(rid, tuple(orjson.loads(keys)), cost, tokens, intent)
                writes.append(_Settle.of(res, res.cost_nusd, res.tokens, unsettled_record(res),
                                         seq))
            try:
                self._commit(db, writes)
                charged += len(writes)
            except Exception:
                for write in writes:
                    try:
                        self._commit(db, [write])
                        charged += 1
                    except Exception as exc:
                        log.error("hold of a dead process not charged: %s: %s",
                                  type(exc).__name__, exc)
        return charged

    async def close(self) -> None:
        if self._db is not None:
            while self._pending:  # settlements waiting for a hold's commit, and the rows of
                self._flush()  # holds released while being written, which that commit queues
            self.checkpoints.close()
            self._db.close()  # the last connection out checkpoints what is left
            self._db = None

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise StoreError("embedded store is not open")
        return self._db

    # counters -----------------------------------------------------------------------------
    # A counter in memory: [spent nano-USD, reserved nano-USD, spent tokens, reserved tokens,
    # calls]. A call counts from its hold on; a release takes it back, a settlement keeps it
    # (and writes it to the table with the spend: only settlements of a held call count).
    def _counter(self, key: str) -> list[int]:
        counter = self._counters.get(key)
        if counter is None:
            key = safe_text(key)
            counter = self._counters.get(key)
            if counter is None:
                counter = self._counters[key] = [0, 0, 0, 0, 0]
        return counter

    def _hold(self, res: Reservation, sign: int, calls: bool = True) -> None:
        for key in res.keys:
            counter = self._counter(key)
            counter[1] = max(0, counter[1] + sign * res.cost_nusd)
            counter[3] = max(0, counter[3] + sign * res.tokens)
            if calls:
                counter[4] = max(0, counter[4] + sign * res.requests)

    @staticmethod
    def _totals(counter: list[int]) -> Totals:
        return Totals(counter[0], counter[1], counter[2], counter[3], counter[4])

    async def reserve(
        self, reservation: Reservation, lines: Sequence[CounterLine], ttl_s: float
    ) -> ReserveResult:
        current = [self._totals(self._counter(line.key)) for line in lines]
        for index, (line, tot) in enumerate(zip(lines, current, strict=True)):
            if would_refuse(line, tot, reservation.cost_nusd, reservation.tokens,
                            reservation.requests):
                return ReserveResult(False, tuple(current), index)
        if self._db is None:
            raise StoreError("embedded store is not open")
        rid = reservation.reservation_id
        self._hold(reservation, +1)  # in memory now: atomic with the check above
        held = self._reservations[rid] = _Held(reservation, time.time() + ttl_s)
        totals = tuple(self._totals(self._counter(k)) for k in reservation.keys)
        try:
            await self._queue(_Hold(held))  # durable before the call is forwarded
        except asyncio.CancelledError:  # the caller is gone: never forwarded, so released
            self._drop(rid)
            if held.seq:  # already written (else `_done` deletes it once written)
                with contextlib.suppress(StoreError):
                    self._queue(_Drop(held.seq), prompt=False)
            raise
        self._track(reservation, ttl_s)
        return ReserveResult(True, totals)

    async def extend(self, reservation: Reservation, lines: Sequence[CounterLine],
                     cost_nusd: int, tokens: int) -> ReserveResult:
        current = [self._totals(self._counter(line.key)) for line in lines]
        held = self._reservations.get(reservation.reservation_id)
        if held is None:
            return ReserveResult(False, tuple(current))
        cost_nusd = bounded(cost_nusd, MAX_AMOUNT_NUSD)
        tokens = bounded(tokens, MAX_AMOUNT_TOKENS)
        for index, (line, tot) in enumerate(zip(lines, current, strict=True)):
            if would_refuse(line, tot, cost_nusd, tokens, 0):
                return ReserveResult(False, tuple(current), index)
        # in memory now (atomic with the check above), then the row, before more is relayed
        grown = replace(held.reservation, cost_nusd=held.reservation.cost_nusd + cost_nusd,
                        tokens=held.reservation.tokens + tokens)
        self._hold(replace(grown, cost_nusd=cost_nusd, tokens=tokens), +1, calls=False)
        held.reservation = grown
        await self._queue(_Extend(held))
        return ReserveResult(True, tuple(self._totals(self._counter(line.key))
                                         for line in lines))

    async def settle(
        self, reservation: Reservation, cost_nusd: int, tokens: int, record: UsageRecord | None
    ) -> bool:
        """Queued without a commit of its own: it shares the next hold's (or commits after
        `settle_delay_s`) and returns once committed; in memory at once, so the next request
        is judged on the spend. (A settlement with a commit of its own, at once or a few ms
        later, pays a second commit per call, and that commit tends to land in the middle of
        the next request; sharing the hold's adds only the settlement's rows to it.)"""
        return await self._queue_settlement(
            _Settle.of(reservation, cost_nusd, tokens, record, 0))

    def account(self, reservation: Reservation, cost_nusd: int, tokens: int) -> bool:
        """The hold of this process is taken from memory and its spend counted now; the
        settlement that follows writes them (or gives the hold back if its write fails)."""
        rid = reservation.reservation_id
        held = self._reservations.pop(rid, None)
        if held is None:
            return False
        early = _Settle(reservation, bounded(cost_nusd, MAX_AMOUNT_NUSD),
                        bounded(tokens, MAX_AMOUNT_TOKENS), None, "", held.seq, held=held,
                        live=self._live.pop(rid, None))
        self._hold(held.reservation, -1, calls=False)  # the call stays counted
        self._spend(early, +1)
        self._accounted[rid] = early
        return True

    def _queue_settlement(self, write: _Settle) -> asyncio.Future[bool]:
        """Queue a settlement; a hold of this process is taken from memory now (unless
        `account` took it), and its spend counted (taken back if the settlement fails or
        was already recorded)."""
        if self._db is None:
            raise StoreError("embedded store is not open")
        rid = write.reservation.reservation_id
        early = self._accounted.pop(rid, None)
        if early is not None:  # counted by `account`: by these amounts from now on
            write.held, write.seq, write.live = early.held, early.seq, early.live
            self._spend(early, -1)
            self._spend(write, +1)
            return self._queue(write, prompt=False)
        held = self._reservations.pop(rid, None)
        if held is not None:
            write.held, write.seq, write.live = held, held.seq, self._live.pop(rid, None)
            self._hold(held.reservation, -1, calls=False)  # the call stays counted
            self._spend(write, +1)
        return self._queue(write, prompt=False)

    def _queue(self, write: _Write, *, prompt: bool = True) -> asyncio.Future[bool]:
        """Queue one write for a group commit; its future resolves once committed. A prompt
        write (a hold) commits at the next loop iteration; another (a settlement, a release)
        waits for one, at most `settle_delay_s`."""
        if self._db is None:
            raise StoreError("embedded store is not open")
        loop = asyncio.get_running_loop()
        write.future = loop.create_future()
        self._pending.append(write)
        if len(self._pending) >= GROUP_COMMIT_MAX:
            self._flush()
        elif self._flush_soon is None:
            if prompt:
                self._flush_soon = loop.call_soon(self._flush)
            elif self._flush_later is None:
                self._flush_later = loop.call_later(self.settle_delay_s, self._flush)
        return write.future

    def _flush(self) -> None:
        """Commit the queued writes in one transaction; if that fails, each alone, so one bad
        write fails by itself and every other commits. Never raises: every future resolves."""
        batch, self._pending = self._pending, []
        for handle in (self._flush_soon, self._flush_later):
            if handle is not None:
                handle.cancel()
        self._flush_soon = self._flush_later = None
        if not batch:
            return
        try:
            results = self._commit(self.db, batch)
        except Exception as exc:
            if len(batch) == 1:
                self._failed(batch[0], exc)
                return
            log.warning("group commit of %d writes failed (%s); writing each alone",
                        len(batch), exc)
            for write in batch:
                try:
                    (result,) = self._commit(self.db, [write])
                except Exception as one:
                    self._failed(write, one)
                else:
                    self._done(write, result)
            return
        self.checkpoints.committed()
        # the callers of holds resume first: a request waiting to be forwarded goes ahead of
        # the bookkeeping that follows a settlement (callers resume in this order)
        for write, result in sorted(zip(batch, results, strict=True), key=_settles_last):
            self._done(write, result)

    def _done(self, write: _Write, result: bool) -> None:
        if isinstance(write, _Settle):
            if write.held is None:
                if result:  # settled without a hold of this process: counted now
                    self._untrack(write.reservation.reservation_id)
                    self._spend(write, +1)
            elif not result:  # already recorded (and counted) before: its hold is gone
                self._spend(write, -1)
        elif isinstance(write, _Hold) and self._reservations.get(
                write.held.reservation.reservation_id) is not write.held:
            self._queue(_Drop(write.held.seq), prompt=False)  # released while being written
        if write.future is not None and not write.future.done():
            write.future.set_result(result)

    def _failed(self, write: _Write, exc: Exception) -> None:
        log.error("embedded store write failed: %s: %s", type(exc).__name__, exc)
        if isinstance(write, _Hold):  # never durable: the request is not forwarded on it
            self._drop(write.held.reservation.reservation_id)
        elif isinstance(write, _Settle) and write.held is not None:  # the hold is back
            held = write.held
            self._spend(write, -1)
            self._hold(held.reservation, +1, calls=False)
            self._reservations[held.reservation.reservation_id] = held
            if write.live is not None:
                self._live[held.reservation.reservation_id] = write.live
        if write.future is not None and not write.future.done():
            write.future.set_exception(StoreError(f"{type(exc).__name__}: {exc}"))

    @staticmethod
    def _commit(db: sqlite3.Connection, batch: list[_Write]) -> list[bool]:
        """One transaction for the batch; rolled back on any error (never left open)."""
        db.execute("BEGIN")
        try:
            results = SqliteStore._write_batch(db, batch)
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
            raise
        return results

    @staticmethod
    def _write_batch(db: sqlite3.Connection, batch: list[_Write]) -> list[bool]:
        """Write a batch inside the open transaction: for settlements, which were new."""
        for write in batch:
            if isinstance(write, _Hold):
                res = write.held.reservation
                write.held.seq = db.execute(
                    "INSERT INTO holds (reservation_id, keys, cost_nusd, tokens, expires_at, "
                    "intent) VALUES (?, ?, ?, ?, ?, ?)",
                    (res.reservation_id, orjson.dumps(res.keys).decode(), res.cost_nusd,
                     res.tokens, write.held.expires_at, res.intent)).lastrowid or 0
            elif isinstance(write, _Extend) and write.held.seq:
                res = write.held.reservation  # its amounts now (a later row write is moot)
                db.execute("UPDATE holds SET cost_nusd = ?, tokens = ? WHERE seq = ?",
                           (res.cost_nusd, res.tokens, write.held.seq))
        results: list[bool] = []
        deltas: dict[str, list[int]] = {}
        gone: list[tuple[int]] = []
        for write in batch:
            if isinstance(write, _Hold | _Extend):
                results.append(True)
                continue
            if write.seq:
                gone.append((write.seq,))
            if isinstance(write, _Drop):
                results.append(True)
                continue
            reservation, record = write.reservation, write.record
            # exactly once: a record id already stored (or earlier in this batch) is no-op
            if record is None:  # a settlement without a record (allocations): by its hold
                new = bool(db.execute(
                    "INSERT OR IGNORE INTO docs (kind, doc_id, body) VALUES ('settled', ?, '')",
                    (reservation.reservation_id,)).rowcount)
            else:
                new = bool(db.execute(
                    "INSERT INTO usage_records VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT(record_id) DO NOTHING",
                    _usage_row(record, write.record_json)).rowcount)
            results.append(new)
            if new:
                calls = reservation.requests if write.seq else 0  # a held call counts
                for key in reservation.keys:
                    delta = deltas.setdefault(key, [0, 0, 0])
                    delta[0] += write.cost_nusd
                    delta[1] += write.tokens
                    delta[2] += calls
        if deltas:
            db.executemany(
                "INSERT INTO counters (key, spent_nusd, spent_tokens, spent_requests) "
                "VALUES (?, ?, ?, ?) "
                "ON CONFLICT(key) DO UPDATE SET spent_nusd = spent_nusd + excluded.spent_nusd, "
                "spent_tokens = spent_tokens + excluded.spent_tokens, "
                "spent_requests = spent_requests + excluded.spent_requests",
                [(key, d[0], d[1], d[2]) for key, d in deltas.items()],
            )
        if gone:
            db.executemany("DELETE FROM holds WHERE seq = ?", gone)
        return results

    def _spend(self, write: _Settle, sign: int) -> None:
        for key in write.reservation.keys:
            counter = self._counter(key)
            counter[0] += sign * write.cost_nusd
            counter[2] += sign * write.tokens

    async def release(self, reservation: Reservation) -> None:
        self._untrack(reservation.reservation_id)
        held = self._drop(reservation.reservation_id)
        if held is not None and held.seq:  # budget freed at once; the row goes with a commit
            await self._queue(_Drop(held.seq), prompt=False)

    def _drop(self, reservation_id: str) -> _Held | None:
        held = self._reservations.pop(reservation_id, None)
        if held is not None:
            self._hold(held.reservation, -1)
        return held

    async def _renew(self, holds: list[LiveHold]) -> int:
        """In memory: the rows of live holds need no deadline (a restart charges them all)."""
        now = time.time()
        renewed = 0
        for hold in holds:
            rid = hold.reservation.reservation_id
            held = self._reservations.get(rid)
            if held is not None:
                held.expires_at = now + hold.ttl_s
                renewed += 1
        return renewed

    async def totals(self, keys: Sequence[str]) -> list[Totals]:
        zero = [0, 0, 0, 0, 0]
        return [self._totals(self._counters.get(key) or self._counters.get(safe_text(key), zero))
                for key in keys]

    async def reap_expired(self) -> int:
        now = time.time()
        expired = [h for h in self._reservations.values() if h.expires_at <= now]
        writes: list[asyncio.Future[bool]] = []
        for held in expired:
            res = held.reservation
            if res.intent is not None:  # a request that outlived its upstream timeout
                writes.append(self._queue_settlement(_Settle.of(
                    res, res.cost_nusd, res.tokens, unsettled_record(res), held.seq)))
            elif self._drop(res.reservation_id) is not None:
                writes.append(self._queue(_Drop(held.seq), prompt=False))
        done = await asyncio.gather(*writes, return_exceptions=True)
        return sum(1 for d in done if d is True)

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


def _migrate_reservations(db: sqlite3.Connection) -> None:
    """Holds of a database from before the `holds` table (all without an intent: released
    at their deadline) move into it."""
    if not db.execute("SELECT name FROM sqlite_master WHERE type = 'table' "
                      "AND name = 'reservations'").fetchone():
        return
    db.execute("BEGIN")
    try:
        db.execute("INSERT INTO holds (reservation_id, keys, cost_nusd, tokens, expires_at) "
                   "SELECT reservation_id, keys, cost_nusd, tokens, expires_at "
                   "FROM reservations")
        db.execute("DROP TABLE reservations")
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise


def _migrate_request_counts(db: sqlite3.Connection) -> None:
    """A database from before request limits gets its call count column (0 calls so far)."""
    columns = {row[1] for row in db.execute("PRAGMA table_info(counters)")}
    if "spent_requests" not in columns:
        db.execute("ALTER TABLE counters ADD COLUMN spent_requests INTEGER NOT NULL DEFAULT 0")


def _settles_last(done: tuple[_Write, bool]) -> bool:
    return isinstance(done[0], _Settle | _Drop)


def _usage_row(record: UsageRecord, body: str) -> tuple[object, ...]:
    """Columns of a storable record (`base.storable_record`: its text encodes as UTF-8)."""
    return (
        record.record_id, record.timestamp.timestamp(), record.component, record.provider,
        record.model, record.context_id, record.session_id, body,
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
            params.append(safe_text(value))
    if query.since is not None:
        clauses.append("ts >= ?")
        params.append(query.since.timestamp())
    if query.until is not None:
        clauses.append("ts < ?")
        params.append(query.until.timestamp())
    return ("WHERE " + " AND ".join(clauses)) if clauses else "", params

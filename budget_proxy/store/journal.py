"""The settlement journal: a local, durable outbox for usage Redis has not acknowledged yet.

Why write-ahead (journal first, then apply) rather than "apply, journal on failure": the
proxy learns a call's usage only in memory, after the provider answered. If the proxy is
killed (SIGKILL, OOM kill, pod eviction) between that moment and Redis' acknowledgement -
which with Redis slow or gone lasts up to a socket timeout - an apply-first design loses the
record, and no later step can recover it. Appending to the journal first closes that window:
once `append` returns, the settlement survives a SIGKILL, and is applied by the request
itself, by the replay loop, or by the next start of the proxy. Applying is idempotent by
settle id (`settle.lua`), so an entry applied but not yet marked done (a crash in between,
or a reply lost to a timeout) is simply a no-op when replayed: exactly once in effect.

Intents: a call forwarded without a hold (fail open, Redis down) first journals its intent,
a settlement at its worst case with its `unsettled` usage record, under the same record id
as its real settlement. The real settlement replaces it (the intent entry is deleted in the
transaction that journals the settlement) and a release drops it; while the request is live
the replay skips it. After a crash, the intent is replayed: the call is charged at its hold.

The cost is one small SQLite insert per settlement on the hot path (WAL, `synchronous=NORMAL`:
no fsync, durable across a process crash, which is what we promise; a plain rowid, so a
commit writes one table page, not an AUTOINCREMENT counter too); marking entries done is
batched. The journal lives under `BUDGET_DATA_DIR` as `redis-journal.db`.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import orjson

from budget_proxy.store.base import StoreError
from budget_proxy.store.wal import Checkpointer

# `seq` is a plain rowid, handed out by the journal (never reused while it is open): an
# AUTOINCREMENT column would write its counter page on every append too. Journals made with
# one are rebuilt without it when opened (same table name and seqs, so either schema reads
# the other's entries).
SCHEMA = """
CREATE TABLE IF NOT EXISTS settlements (
    seq INTEGER PRIMARY KEY,
    created_at REAL NOT NULL,
    body BLOB NOT NULL
);
"""
WITHOUT_AUTOINCREMENT = (
    "CREATE TABLE settlements_rebuilt (seq INTEGER PRIMARY KEY, created_at REAL NOT NULL, "
    "body BLOB NOT NULL)",
    "INSERT INTO settlements_rebuilt (seq, created_at, body) "
    "SELECT seq, created_at, body FROM settlements",
    "DROP TABLE settlements",
    "ALTER TABLE settlements_rebuilt RENAME TO settlements",
)
DONE_BATCH = 256  # flush done marks once this many are waiting ...
DONE_FLUSH_S = 0.25  # ... or this long after the last flush
CHECKPOINT_EVERY = 256  # commits between two WAL checkpoints (`wal.Checkpointer`)


class SettlementJournaled(StoreError):
    """The store could not apply a settlement now, but it is durably journaled and will be
    applied exactly once when the store is back: nothing is lost."""


@dataclass(frozen=True, slots=True)
class Settlement:
    """Everything needed to apply one settlement later, on any replica."""

    settle_id: str  # the record id, or the reservation id when there is no record
    reservation_id: str
    keys: tuple[str, ...]
    cost_nusd: int
    tokens: int
    record_json: str | None
    record_ts_s: float = 0.0

    def dumps(self) -> bytes:
        return orjson.dumps([self.settle_id, self.reservation_id, list(self.keys),
                             self.cost_nusd, self.tokens, self.record_json, self.record_ts_s])

    @classmethod
    def loads(cls, body: bytes) -> Settlement:
        sid, rid, keys, cost, tokens, record, ts = orjson.loads(body)
        return cls(sid, rid, tuple(keys), cost, tokens, record, ts)


class Journal:
    """Append-only SQLite outbox; `append` is synchronous so nothing can interleave with it."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._db: sqlite3.Connection | None = None
        self._done: list[int] = []
        self._next_seq = 1
        self._last_flush = time.monotonic()
        self._lock = threading.Lock()
        self.checkpoints = Checkpointer(self.path, CHECKPOINT_EVERY)

    def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                             timeout=5.0)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.executescript(SCHEMA)
        db.execute("BEGIN IMMEDIATE")
        try:
            (table,) = db.execute(
                "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'settlements'"
            ).fetchone()
            if "AUTOINCREMENT" in table.upper():  # a journal from before: same entries
                for statement in WITHOUT_AUTOINCREMENT:
                    db.execute(statement)
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        self._db = db
        self._next_seq = self._max_seq() + 1
        self.checkpoints.start(db)

    def _max_seq(self) -> int:
        (high,) = self.db.execute("SELECT COALESCE(MAX(seq), 0) FROM settlements").fetchone()
        return int(high)

    def close(self) -> None:
        if self._db is not None:
            try:
                self.flush()
            finally:
                self.checkpoints.close()
                self._db.close()
                self._db = None

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise StoreError("settlement journal is not open")
        return self._db

    def append(self, settlement: Settlement, replaces: int | None = None) -> int:
        """Durably record a settlement before it is applied; returns its sequence number.
        `replaces`: the entry (an intent) deleted in the same transaction."""
        try:
            body = settlement.dumps()
            with self._lock:
                try:
                    return self._insert(body, replaces)
                except sqlite3.IntegrityError:  # another process wrote to this journal
                    self._next_seq = self._max_seq() + 1
                    return self._insert(body, replaces)
        except (sqlite3.Error, TypeError) as exc:  # TypeError: orjson refused a value
            raise StoreError(f"settlement journal: {exc}") from exc

    def _insert(self, body: bytes, replaces: int | None) -> int:
        """One entry, committed (with the deletion of `replaces`, if any) before it returns.
        Seqs only grow while the journal is open, so a seq that was marked done or
        discarded never names a newer entry."""
        db, seq = self.db, self._next_seq
        if replaces is None:
            db.execute("INSERT INTO settlements (seq, created_at, body) VALUES (?, ?, ?)",
                       (seq, time.time(), body))
        else:
            db.execute("BEGIN")
            try:
                db.execute("INSERT INTO settlements (seq, created_at, body) VALUES (?, ?, ?)",
                           (seq, time.time(), body))
                db.execute("DELETE FROM settlements WHERE seq = ?", (replaces,))
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
        self._next_seq = seq + 1
        self.checkpoints.committed()
        return seq

    def discard(self, seq: int) -> None:
        """Delete an entry now (an intent whose call was released: never to be charged)."""
        try:
            with self._lock:
                self.db.execute("DELETE FROM settlements WHERE seq = ?", (seq,))
        except sqlite3.Error as exc:
            raise StoreError(f"settlement journal: {exc}") from exc

    def done(self, seq: int) -> None:
        """Mark an entry applied. Batched: an entry applied but not yet removed when the
        process dies is replayed, which the idempotent settle turns into a no-op."""
        self._done.append(seq)
        if len(self._done) >= DONE_BATCH or time.monotonic() - self._last_flush >= DONE_FLUSH_S:
            self.flush()

    def flush(self) -> None:
        self._last_flush = time.monotonic()
        if not self._done:
            return
        done, self._done = self._done, []
        try:
            with self._lock:
                self.db.execute("BEGIN")
                try:
                    self.db.executemany("DELETE FROM settlements WHERE seq = ?",
                                        [(seq,) for seq in done])
                    self.db.execute("COMMIT")
                except BaseException:
                    if self.db.in_transaction:
                        self.db.execute("ROLLBACK")
                    raise
                self.checkpoints.committed()
        except (sqlite3.Error, StoreError):
            self._done.extend(done)  # retried at the next flush; replays are harmless

    def pending(self, limit: int = 500, exclude: set[int] | frozenset[int] = frozenset()
                ) -> list[tuple[int, Settlement]]:
        """Entries not yet marked done, oldest first, skipping `exclude` (being applied)."""
        self.flush()
        waiting = set(self._done)
        rows = self.db.execute(
            "SELECT seq, body FROM settlements ORDER BY seq LIMIT ?", (limit + len(exclude),)
        ).fetchall()
        out = [(seq, Settlement.loads(body)) for seq, body in rows
               if seq not in exclude and seq not in waiting]
        return out[:limit]

    def count(self) -> int:
        """Entries not yet marked done (including ones being applied right now)."""
        self.flush()
        (n,) = self.db.execute("SELECT COUNT(*) FROM settlements").fetchone()
        return int(n)

"""WAL checkpoints off the serving thread, for the SQLite files written on the hot path.

SQLite's automatic checkpoint runs inside whichever commit crosses its threshold, and fsyncs
there: on the event loop, a stall of milliseconds every few hundred calls (the latency tail).
The serving connection turns it off; a `Checkpointer` copies the WAL into the database on a
thread of its own, with a connection of its own, every `every` commits. PASSIVE never blocks
a writer, and the first commit after a complete copy reuses the WAL from its start, so the
file stays a few MB.
"""

from __future__ import annotations

import concurrent.futures
import logging
import sqlite3
from pathlib import Path

log = logging.getLogger(__name__)


class Checkpointer:
    def __init__(self, path: Path, every: int) -> None:
        self.path = path
        self.every = every
        self._db: sqlite3.Connection | None = None
        self._thread: concurrent.futures.ThreadPoolExecutor | None = None
        self._running: concurrent.futures.Future[None] | None = None
        self._commits = 0  # since the last checkpoint began

    def start(self, serving: sqlite3.Connection) -> None:
        """Take over the checkpoints of `serving` (a WAL connection to `path`)."""
        serving.execute("PRAGMA wal_autocheckpoint=0")
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._thread = concurrent.futures.ThreadPoolExecutor(
            1, thread_name_prefix=f"checkpoint-{self.path.name}")

    @property
    def running(self) -> bool:
        return self._running is not None and not self._running.done()

    def committed(self) -> None:
        """One commit more; every `every`, a checkpoint begins unless one is running."""
        self._commits += 1
        if self._commits < self.every or self.running or self._thread is None:
            return
        self._commits = 0
        self._running = self._thread.submit(self._checkpoint)

    def wait(self, timeout_s: float | None = None) -> None:
        """Until the running checkpoint, if any, is over (it never raises: failures log)."""
        if self._running is not None:
            self._running.result(timeout_s)

    def _checkpoint(self) -> None:
        try:
            assert self._db is not None
            self._db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except Exception as exc:  # the WAL only grows until the next one
            log.warning("WAL checkpoint of %s failed (retried after more commits): %s",
                        self.path.name, exc)

    def close(self) -> None:
        """Wait for a running checkpoint; the serving connection, closed last, copies what
        is left and removes the WAL."""
        if self._thread is not None:
            self._thread.shutdown(wait=True)
            self._thread = None
        if self._db is not None:
            self._db.close()
            self._db = None

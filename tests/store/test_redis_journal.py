"""The settlement journal on its own: entries survive the process, seqs are never reused while
it is open, and a journal written with the AUTOINCREMENT schema of before keeps its entries."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from budget_proxy.store.journal import Journal, Settlement


def settlement(i: int) -> Settlement:
    return Settlement(f"use_{i}", f"res_{i}", ("p:d:1", "q:d:1"), 100 + i, 10 + i,
                      f'{{"record_id": "use_{i}"}}', 1_700_000_000.0 + i)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "redis-journal.db"


def killed(journal: Journal) -> None:
    """As if the process had been killed: no flush of done marks, no close."""
    assert journal._db is not None
    journal._db.close()
    journal._db = None


def test_an_appended_entry_survives_a_kill(path: Path):
    journal = Journal(path)
    journal.open()
    seq = journal.append(settlement(1))
    done = journal.append(settlement(2))
    journal.done(done)  # marked, not flushed: replayed again, a no-op by settle id
    killed(journal)

    after = Journal(path)
    after.open()
    assert [(s, e.settle_id) for s, e in after.pending()] == [(seq, "use_1"), (done, "use_2")]
    after.close()


def test_seqs_are_never_reused_while_open(path: Path):
    journal = Journal(path)
    journal.open()
    first = journal.append(settlement(1))
    journal.done(first)
    journal.flush()  # the newest entry is gone: a rowid table would hand its seq out again
    second = journal.append(settlement(2))
    journal.discard(second)
    third = journal.append(settlement(3))
    assert first < second < third
    assert [s for s, _ in journal.pending()] == [third]
    journal.close()


def test_an_intent_is_replaced_in_the_transaction_of_its_settlement(path: Path):
    journal = Journal(path)
    journal.open()
    intent = journal.append(settlement(1))
    real = journal.append(settlement(2), replaces=intent)
    assert [s for s, _ in journal.pending()] == [real]
    journal.close()


def test_another_writer_of_the_same_journal_does_not_make_appends_fail(path: Path):
    one, other = Journal(path), Journal(path)
    one.open()
    other.open()
    a = one.append(settlement(1))
    b = other.append(settlement(2))  # its next seq was taken: it moves past it
    c = one.append(settlement(3))
    assert len({a, b, c}) == 3
    assert {e.settle_id for _, e in one.pending()} == {"use_1", "use_2", "use_3"}
    one.close()
    other.close()


def test_a_journal_of_the_autoincrement_schema_keeps_its_entries(path: Path):
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE settlements (seq INTEGER PRIMARY KEY AUTOINCREMENT, "
               "created_at REAL NOT NULL, body BLOB NOT NULL)")
    for i in range(1, 4):
        db.execute("INSERT INTO settlements (created_at, body) VALUES (?, ?)",
                   (0.0, settlement(i).dumps()))
    db.execute("DELETE FROM settlements WHERE seq = 1")  # applied before the upgrade
    db.close()

    journal = Journal(path)
    journal.open()
    assert [(s, e) for s, e in journal.pending()] == [(2, settlement(2)), (3, settlement(3))]
    assert journal.append(settlement(4)) == 4
    (schema,) = journal.db.execute(
        "SELECT sql FROM sqlite_master WHERE name = 'settlements'").fetchone()
    assert "AUTOINCREMENT" not in schema.upper()
    journal.close()

    # a process of the version before (inserts without a seq) reads and writes it as it was
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("INSERT INTO settlements (created_at, body) VALUES (?, ?)",
               (0.0, settlement(5).dumps()))
    assert [r[0] for r in db.execute("SELECT seq FROM settlements ORDER BY seq")] == [2, 3, 4, 5]
    db.close()


def test_an_append_is_one_write_transaction(path: Path):
    journal = Journal(path)
    journal.open()
    statements: list[str] = []
    journal.db.set_trace_callback(statements.append)
    journal.append(settlement(1))
    assert [s.split()[0].upper() for s in statements] == ["INSERT"]
    journal.close()


def test_the_wal_stops_growing_however_many_entries_follow(path: Path, monkeypatch):
    """Checkpoints run on the journal's own thread (SQLite's, inside a commit on the event
    loop, are off): the WAL is reused from its start after each."""
    journal = Journal(path)
    journal.open()
    monkeypatch.setattr(journal.checkpoints, "every", 16)
    wal = path.with_name(path.name + "-wal")
    assert journal.db.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0

    def appended(first: int, n: int) -> None:
        for i in range(first, first + n):
            journal.done(journal.append(settlement(i)))
            journal.checkpoints.wait(timeout_s=60)

    appended(0, 40)
    grown = wal.stat().st_size
    appended(40, 1000)
    # a cycle of 16 appends and at most one batch of done marks; without checkpoints the
    # 1,000 appends alone would add 4 MB
    assert wal.stat().st_size <= 3 * grown
    journal.close()
    assert not wal.exists()
    after = Journal(path)
    after.open()
    assert after.count() == 0  # every done mark reached the database
    after.close()

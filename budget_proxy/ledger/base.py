"""The ledger interface and the row a record becomes (pure code, no I/O)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

import orjson

from budget_proxy.models import NUSD_PER_USD, UsageRecord
from budget_proxy.store.base import MAX_AMOUNT_NUSD, MAX_AMOUNT_TOKENS, UsageQuery

# the columns a record is filtered and summed by; the whole record is kept as JSON beside them
RECORD_FIELDS = ("record_id", "ts", "provider", "model", "component", "context_id",
                 "session_id", "task_id", "task_type", "allocation_id", "status",
                 "input_tokens", "output_tokens", "total_tokens", "input_nusd", "output_nusd",
                 "total_nusd", "body")
MAX_TEXT = 1024  # longer filter columns are cut (the body keeps the whole value)
MAX_INT64 = 2**63 - 1  # rollup sums are clamped here (never an overflow that stalls a batch)


@dataclass(frozen=True, slots=True)
class HourlyRow:
    """Totals of one hour (or of one window of a longer period, `hour` its start) for one
    (provider, model, component), in exact units;
    `input_tokens` counts cached and cache-write input too (as `reporting.Tally` does);
    `total_nusd` is what the counters were charged (a dead hold's charge has no split)."""

    hour: datetime
    provider: str
    model: str
    component: str
    requests: int
    input_tokens: int
    output_tokens: int
    total_tokens: int
    input_nusd: int
    output_nusd: int
    total_nusd: int


@dataclass(frozen=True, slots=True)
class SpendRow:
    """Spend of one minute for one scope, what `ledger rebuild` needs to rebuild counters."""

    minute: datetime
    provider: str
    model: str
    component: str
    task_type: str | None
    session_id: str | None
    task_id: str | None
    cost_nusd: int
    tokens: int
    requests: int


@runtime_checkable
class UsageLedger(Protocol):
    """Where usage is read from: a store keeps its own records; a database ledger takes
    them over. `hourly` answers None when it keeps no rollups (the caller sums records)."""

    async def list_usage(self, query: UsageQuery) -> list[UsageRecord]: ...

    async def hourly(self, since: datetime, until: datetime, provider: str | None = None,
                     component: str | None = None, model: str | None = None,
                     period: str = "hourly", tz: str = "UTC") -> list[HourlyRow] | None: ...


class BadRecord(ValueError):
    """A hand-off entry that is not a usage record: kept aside, never retried forever."""


def _text(value: Any, default: str | None = None) -> str | None:
    if value is None:
        return default
    text = value if isinstance(value, str) else str(value)
    return text[:MAX_TEXT]


def _count(value: Any, high: int = MAX_AMOUNT_TOKENS) -> int:
    """A count clamped into the store's bounds (as `store.base.bounded`)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        raise BadRecord(f"not a number: {value!r}")
    if value <= 0:
        return 0
    return high if value >= high else round(value)


def _nusd(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        raise BadRecord(f"not an amount: {value!r}")
    return _count(value * NUSD_PER_USD, MAX_AMOUNT_NUSD)


def record_row(body: str | bytes) -> tuple[Any, ...]:
    """The ledger row of a record's JSON (as `store.base.storable_record` writes it), in
    `RECORD_FIELDS` order. Raises BadRecord for anything that is not a usage record."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRecord(f"not JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise BadRecord("not an object")
    record_id, ts = doc.get("record_id"), doc.get("timestamp")
    if not isinstance(record_id, str) or not record_id or len(record_id) > MAX_TEXT:
        raise BadRecord(f"bad record_id: {record_id!r}")
    try:
        when = datetime.fromisoformat(ts) if isinstance(ts, str) else None
    except ValueError:
        when = None
    if when is None or when.tzinfo is None:
        raise BadRecord(f"bad timestamp: {ts!r}")
    text = body.decode() if isinstance(body, bytes) else body
    input_tokens = sum(_count(doc.get(f, 0)) for f in (
        "input_tokens", "cached_input_tokens", "cache_write_tokens"))
    return (
        record_id, when, _text(doc.get("provider"), ""), _text(doc.get("model"), ""),
        _text(doc.get("component"), "default"), _text(doc.get("context_id")),
        _text(doc.get("session_id")), _text(doc.get("task_id")), _text(doc.get("task_type")),
        _text(doc.get("allocation_id")), _text(doc.get("status"), "ok"),
        min(input_tokens, MAX_AMOUNT_TOKENS), _count(doc.get("output_tokens", 0)),
        _count(doc.get("total_tokens", 0)), _nusd(doc.get("input_cost", 0.0)),
        _nusd(doc.get("output_cost", 0.0)), _nusd(doc.get("total_cost", 0.0)), text,
    )


def unique_rows(bodies: Sequence[str | bytes]) -> tuple[list[tuple[Any, ...]], list[str]]:
    """(rows, one per record id, sorted by id so concurrent writers lock in one order;
    reasons of the entries refused)."""
    rows: dict[str, tuple[Any, ...]] = {}
    bad: list[str] = []
    for body in bodies:
        try:
            row = record_row(body)
        except BadRecord as exc:
            bad.append(str(exc))
            continue
        rows.setdefault(row[0], row)
    return [rows[k] for k in sorted(rows)], bad

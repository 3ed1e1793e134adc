"""Usage aggregation for summaries, reports and the assistant: pure functions over records,
plus one paging reader over the store.

Costs are summed in integer nano-USD (as the store counts them) and turned back into USD
once, so a report's total equals the sum of its rows exactly.
"""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from budget_proxy.ledger.base import HourlyRow, UsageLedger
from budget_proxy.models import NUSD_PER_USD, Period, UsageRecord, nusd_to_usd
from budget_proxy.periods import window_for
from budget_proxy.schemas import CalendarPeriod, GroupField, UsageGroup, UsageTotals, UsageWindow
from budget_proxy.store.base import Store, UsageQuery

PAGE_SIZE = 5_000  # records per store read while aggregating
WINDOW_LABELS = {"hourly": "%Y-%m-%dT%H:00", "daily": "%Y-%m-%d", "weekly": "week of %Y-%m-%d",
                 "monthly": "%Y-%m"}
RECORD_COLUMNS = (
    "record_id", "timestamp", "provider", "model", "requested_model", "component",
    "context_id", "allocation_id", "session_id", "task_id", "task_type", "input_tokens",
    "cached_input_tokens", "cache_write_tokens", "output_tokens", "reasoning_tokens",
    "total_tokens", "input_cost", "output_cost", "total_cost", "status", "streamed",
)


def window_start(period: CalendarPeriod, moment: datetime, tz: ZoneInfo) -> datetime:
    """Start of the calendar window of `period` containing `moment`, in `tz`."""
    local = moment.astimezone(tz)
    if period == "hourly":
        return local.replace(minute=0, second=0, microsecond=0)
    day = local.replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "daily":
        return day
    if period == "weekly":
        monday = day.replace(tzinfo=None) - timedelta(days=day.weekday())
        return monday.replace(tzinfo=tz)
    return day.replace(day=1)


def window_label(period: CalendarPeriod, start: datetime) -> str:
    return start.strftime(WINDOW_LABELS[period])


def time_range(
    period: CalendarPeriod, days: int | None, now: datetime, tz: ZoneInfo
) -> tuple[datetime, datetime]:
    """(since, until) of a report: the current window, or every window touching the last
    `days` calendar days (today included)."""
    if days is None:
        return window_start(period, now, tz), now
    first_day = window_start("daily", now, tz).replace(tzinfo=None) - timedelta(days=days - 1)
    return window_start(period, first_day.replace(tzinfo=tz), tz), now


def window_starts(
    period: CalendarPeriod, since: datetime, until: datetime, tz: ZoneInfo
) -> list[datetime]:
    """Start of every window of `period` from the one containing `since` to the one
    containing `until` (empty windows included)."""
    starts = []
    start = window_start(period, since, tz)
    while start <= until:
        starts.append(start)
        window = window_for(Period(period), start, tz)
        assert window is not None and window.resets_at is not None  # calendar periods
        start = window.resets_at
    return starts


@dataclass
class Tally:
    """Running totals in exact units."""

    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int = 0
    input_nusd: int = 0
    output_nusd: int = 0

    def add_row(self, row: HourlyRow) -> None:
        """Add an hourly rollup row of the ledger (same units, already summed)."""
        self.requests += row.requests
        self.input_tokens += row.input_tokens
        self.output_tokens += row.output_tokens
        self.total_tokens += row.total_tokens
        self.input_nusd += row.input_nusd
        self.output_nusd += row.output_nusd

    def add(self, rec: UsageRecord) -> None:
        self.requests += 1
        self.input_tokens += rec.input_tokens + rec.cached_input_tokens + rec.cache_write_tokens
        self.output_tokens += rec.output_tokens
        self.total_tokens += rec.total_tokens
        self.input_nusd += round(rec.input_cost * NUSD_PER_USD)
        self.output_nusd += round(rec.output_cost * NUSD_PER_USD)

    @property
    def total_nusd(self) -> int:
        return self.input_nusd + self.output_nusd

    def totals(self) -> UsageTotals:
        return UsageTotals(
            requests=self.requests, input_tokens=self.input_tokens,
            output_tokens=self.output_tokens, total_tokens=self.total_tokens,
            input_cost=nusd_to_usd(self.input_nusd), output_cost=nusd_to_usd(self.output_nusd),
            total_cost=nusd_to_usd(self.total_nusd),
        )


@dataclass
class Aggregate:
    """Totals, per window and per group, of a stream of records."""

    period: CalendarPeriod
    tz: ZoneInfo
    group_by: Sequence[GroupField] = ()
    all: Tally = field(default_factory=Tally)
    windows: dict[datetime, Tally] = field(default_factory=dict)
    groups: dict[tuple[str | None, ...], Tally] = field(default_factory=dict)

    def add(self, rec: UsageRecord) -> None:
        self.all.add(rec)
        start = window_start(self.period, rec.timestamp, self.tz)
        self.windows.setdefault(start, Tally()).add(rec)
        if self.group_by:
            key = tuple(getattr(rec, f) for f in self.group_by)
            self.groups.setdefault(key, Tally()).add(rec)

    def add_row(self, row: HourlyRow) -> None:
        self.all.add_row(row)
        self.windows.setdefault(window_start(self.period, row.hour, self.tz), Tally()).add_row(row)
        if self.group_by:
            key = tuple(getattr(row, f) for f in self.group_by)
            self.groups.setdefault(key, Tally()).add_row(row)

    def window_rows(self) -> list[UsageWindow]:
        return [UsageWindow(window=window_label(self.period, start), start=start,
                            **tally.totals().model_dump())
                for start, tally in sorted(self.windows.items())]

    def group_rows(self) -> list[UsageGroup]:
        rows = [UsageGroup(**dict(zip(self.group_by, key, strict=True)),
                           **tally.totals().model_dump())
                for key, tally in self.groups.items()]
        rows.sort(key=lambda g: (-g.total_cost, -g.total_tokens))
        return rows

    def by(self, *fields: GroupField) -> Aggregate:
        """An empty aggregate of the same period grouped differently (see `aggregate`)."""
        return replace(self, group_by=fields, all=Tally(), windows={}, groups={})


def aggregate(
    records: Iterable[UsageRecord], period: CalendarPeriod, tz: ZoneInfo,
    *groupings: Sequence[GroupField],
) -> list[Aggregate]:
    """One aggregate per grouping, in one pass over the records."""
    aggs = [Aggregate(period, tz, tuple(g)) for g in groupings] or [Aggregate(period, tz)]
    for rec in records:
        for agg in aggs:
            agg.add(rec)
    return aggs


ROLLUP_FIELDS = frozenset({"provider", "model", "component"})  # what hourly rollups keep


async def aggregate_usage(
    store: Store, period: CalendarPeriod, tz: ZoneInfo, since: datetime, until: datetime,
    *groupings: Sequence[GroupField], provider: str | None = None,
    component: str | None = None, model: str | None = None,
) -> list[Aggregate]:
    """`aggregate` of the usage in [since, until): from the ledger's hourly rollups when the
    store has a ledger, `since` falls on an hour and the groupings are rollup fields (a
    report over millions of records reads thousands of rows); else from the records."""
    aggs = [Aggregate(period, tz, tuple(g)) for g in groupings] or [Aggregate(period, tz)]
    on_the_hour = since.astimezone(UTC).replace(minute=0, second=0, microsecond=0) == since
    if (isinstance(store, UsageLedger) and on_the_hour
            and all(set(g) <= ROLLUP_FIELDS for g in groupings)):
        rows = await store.hourly(since, until, provider, component, model, period, tz.key)
        if rows is not None:
            for row in rows:
                for agg in aggs:
                    agg.add_row(row)
            return aggs
    async for rec in iter_usage(store, since=since, until=None, provider=provider,
                                component=component, model=model):
        for agg in aggs:
            agg.add(rec)
    return aggs


async def iter_usage(
    store: Store, *, since: datetime | None = None, until: datetime | None = None,
    provider: str | None = None, component: str | None = None, model: str | None = None,
    context_id: str | None = None, session_id: str | None = None, limit: int | None = None,
) -> AsyncIterator[UsageRecord]:
    """Every record in [since, until) matching the filters, oldest first, read in pages."""
    offset = 0
    seen = 0
    while True:
        page = await store.list_usage(UsageQuery(
            provider=provider, component=component, model=model, context_id=context_id,
            session_id=session_id, since=since, until=until, limit=PAGE_SIZE, offset=offset,
            newest_first=False,
        ))
        for rec in page:
            if limit is not None and seen >= limit:
                return
            seen += 1
            yield rec
        if len(page) < PAGE_SIZE:
            return
        offset += PAGE_SIZE


async def collect_usage(store: Store, **kw: object) -> list[UsageRecord]:
    return [rec async for rec in iter_usage(store, **kw)]  # type: ignore[arg-type]


def to_csv(rows: Iterable[dict[str, object]], columns: Sequence[str]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow(["" if row.get(c) is None else _csv_cell(row.get(c)) for c in columns])
    return out.getvalue()


def _csv_cell(value: object) -> object:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, float):
        return f"{value:.9f}".rstrip("0").rstrip(".") or "0"
    return value

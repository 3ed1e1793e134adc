"""Period windows: which counter a request lands in, and when that counter resets.

Pure functions. Calendar windows are computed in the configured time zone, so a daily budget
in Europe/Berlin resets at local midnight; the window id is stable text used in store keys.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from budget_proxy.models import Period


@dataclass(frozen=True, slots=True)
class Window:
    window_id: str
    resets_at: datetime | None  # None: the window never resets (sessions, tasks)
    starts_at: datetime | None = None  # None: the window has no start (sessions, tasks)


def _next_month(start: datetime) -> datetime:
    return start.replace(year=start.year + 1, month=1) if start.month == 12 else start.replace(
        month=start.month + 1
    )


def window_for(
    period: Period,
    now: datetime,
    tz: ZoneInfo,
    session: str | None = None,
    task: str | None = None,
) -> Window | None:
    """The window of `period` containing `now`; None if the request has no session/task for it."""
    if period is Period.PER_SESSION:
        return Window(f"s:{session}", None) if session else None
    if period is Period.PER_TASK:
        return Window(f"t:{task}", None) if task else None
    local = now.astimezone(tz)
    if period is Period.MINUTELY:  # absolute time: a minute is a minute across DST changes
        start = now.astimezone(UTC).replace(second=0, microsecond=0)
        return Window(f"n:{start:%Y%m%d%H%M}", start + timedelta(minutes=1), start)
    if period is Period.HOURLY:
        start = local.replace(minute=0, second=0, microsecond=0)
        return Window(f"h:{start:%Y%m%d%H}", _wall_add(start, hours=1, tz=tz), start)
    day = local.replace(hour=0, minute=0, second=0, microsecond=0)
    if period is Period.DAILY:
        return Window(f"d:{day:%Y%m%d}", _wall_add(day, days=1, tz=tz), day)
    if period is Period.WEEKLY:
        monday = day - timedelta(days=day.weekday())
        monday = monday.replace(tzinfo=None).replace(tzinfo=tz)
        return Window(f"w:{monday:%Y%m%d}", _wall_add(monday, days=7, tz=tz), monday)
    if period is Period.MONTHLY:
        first = day.replace(day=1)
        nxt = _next_month(first.replace(tzinfo=None)).replace(tzinfo=tz)
        return Window(f"m:{first:%Y%m}", nxt, first.replace(tzinfo=None).replace(tzinfo=tz))
    raise ValueError(f"unknown period {period!r}")


def _wall_add(start: datetime, *, tz: ZoneInfo, days: int = 0, hours: int = 0) -> datetime:
    """Add wall-clock time, so a day across a DST change is still midnight to midnight."""
    naive = start.replace(tzinfo=None) + timedelta(days=days, hours=hours)
    return naive.replace(tzinfo=tz)


def seconds_until(resets_at: datetime | None, now: datetime) -> int | None:
    """Whole seconds to a window's reset, rounded up, for `Retry-After`."""
    if resets_at is None:
        return None
    delta = (resets_at - now).total_seconds()
    return max(1, int(delta) + (0 if delta == int(delta) else 1))

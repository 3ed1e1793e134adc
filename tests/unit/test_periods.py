from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from budget_proxy.models import Period
from budget_proxy.periods import seconds_until, window_for

UTC_Z = ZoneInfo("UTC")
BERLIN = ZoneInfo("Europe/Berlin")


@pytest.mark.parametrize(
    ("period", "now", "tz", "window_id", "resets_at"),
    [
        (Period.HOURLY, datetime(2026, 11, 22, 13, 59, 59, tzinfo=UTC), UTC_Z, "h:2026112213",
         datetime(2026, 11, 22, 14, tzinfo=UTC)),
        (Period.DAILY, datetime(2026, 11, 22, 23, 59, tzinfo=UTC), UTC_Z, "d:20261122",
         datetime(2026, 11, 23, tzinfo=UTC)),
        # 23:30 UTC is already the next day in Berlin (UTC+1 in November)
        (Period.DAILY, datetime(2026, 11, 22, 23, 30, tzinfo=UTC), BERLIN, "d:20261123",
         datetime(2026, 11, 23, 23, tzinfo=UTC)),
        # 2026-11-22 is a Sunday: the week started on Monday the 16th
        (Period.WEEKLY, datetime(2026, 11, 22, 12, tzinfo=UTC), UTC_Z, "w:20261116",
         datetime(2026, 11, 23, tzinfo=UTC)),
        (Period.WEEKLY, datetime(2026, 11, 23, 0, 0, tzinfo=UTC), UTC_Z, "w:20261123",
         datetime(2026, 11, 30, tzinfo=UTC)),
        (Period.MONTHLY, datetime(2026, 12, 31, 23, tzinfo=UTC), UTC_Z, "m:202612",
         datetime(2027, 1, 1, tzinfo=UTC)),
        (Period.MONTHLY, datetime(2026, 2, 3, tzinfo=UTC), UTC_Z, "m:202602",
         datetime(2026, 3, 1, tzinfo=UTC)),
        (Period.MINUTELY, datetime(2026, 11, 22, 13, 59, 59, 999, tzinfo=UTC), UTC_Z,
         "n:202611221359", datetime(2026, 11, 22, 14, tzinfo=UTC)),
        # a minute is absolute: the same window id whatever the time zone
        (Period.MINUTELY, datetime(2026, 11, 22, 23, 30, 5, tzinfo=UTC), BERLIN,
         "n:202611222330", datetime(2026, 11, 22, 23, 31, tzinfo=UTC)),
        # the day DST ends in Berlin has 25 hours; the window still ends at local midnight
        (Period.DAILY, datetime(2026, 10, 25, 12, tzinfo=UTC), BERLIN, "d:20261025",
         datetime(2026, 10, 25, 23, tzinfo=UTC)),
    ],
)
def test_calendar_windows(period, now, tz, window_id, resets_at):
    window = window_for(period, now, tz)
    assert window is not None
    assert window.window_id == window_id
    assert window.resets_at == resets_at


def test_session_and_task_windows_need_an_id():
    now = datetime(2026, 11, 22, tzinfo=UTC)
    assert window_for(Period.PER_SESSION, now, UTC_Z) is None
    assert window_for(Period.PER_TASK, now, UTC_Z, session="s") is None
    session = window_for(Period.PER_SESSION, now, UTC_Z, session="abc")
    assert session is not None and session.window_id == "s:abc" and session.resets_at is None
    task = window_for(Period.PER_TASK, now, UTC_Z, task="t1")
    assert task is not None and task.window_id == "t:t1"


@pytest.mark.parametrize(
    ("seconds", "expected"), [(0.2, 1), (1.0, 1), (59.5, 60), (3600.0, 3600), (-5.0, 1)]
)
def test_retry_after_rounds_up(seconds, expected):
    now = datetime(2026, 11, 22, tzinfo=UTC)
    from datetime import timedelta

    assert seconds_until(now + timedelta(seconds=seconds), now) == expected
    assert seconds_until(None, now) is None

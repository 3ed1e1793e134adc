"""Usage aggregation: windows, ranges and exact totals."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from budget_proxy.models import UsageRecord
from budget_proxy.reporting import aggregate, time_range, to_csv, window_start, window_starts

UTC_ZONE = ZoneInfo("UTC")
BERLIN = ZoneInfo("Europe/Berlin")
NOW = datetime(2025, 3, 12, 15, 30, tzinfo=UTC)  # a Wednesday


@pytest.mark.parametrize(("period", "tz", "expected"), [
    ("hourly", UTC_ZONE, "2025-03-12T15:00:00+00:00"),
    ("daily", UTC_ZONE, "2025-03-12T00:00:00+00:00"),
    ("daily", BERLIN, "2025-03-12T00:00:00+01:00"),
    ("weekly", UTC_ZONE, "2025-03-10T00:00:00+00:00"),
    ("monthly", BERLIN, "2025-03-01T00:00:00+01:00"),
])
def test_window_start(period, tz, expected):
    assert window_start(period, NOW, tz).isoformat() == expected


def test_ranges_cover_whole_windows():
    assert time_range("daily", None, NOW, UTC_ZONE)[0].isoformat() == "2025-03-12T00:00:00+00:00"
    since, until = time_range("daily", 7, NOW, UTC_ZONE)
    assert since.isoformat() == "2025-03-06T00:00:00+00:00" and until == NOW
    assert time_range("weekly", 10, NOW, UTC_ZONE)[0].isoformat() == "2025-03-03T00:00:00+00:00"
    assert len(window_starts("daily", since, NOW, UTC_ZONE)) == 7
    assert len(window_starts("hourly", NOW.replace(hour=0, minute=0), NOW, UTC_ZONE)) == 16


def rec(day: int, component: str, cost: float) -> UsageRecord:
    return UsageRecord(provider="openai", model="m", component=component, input_tokens=10,
                       output_tokens=5, total_tokens=15, input_cost=cost, output_cost=cost,
                       total_cost=2 * cost, timestamp=datetime(2025, 3, day, 12, tzinfo=UTC))


def test_aggregate_totals_windows_and_groups_exactly():
    records = [rec(10, "a", 0.1), rec(10, "b", 0.2), rec(11, "a", 0.1)]
    by_component, plain = aggregate(records, "daily", UTC_ZONE, ("component",), ())
    assert by_component.all.totals().total_cost == 0.8  # exact: summed in nano-dollars
    assert [(g.component, g.requests) for g in by_component.group_rows()] == [("a", 2), ("b", 1)]
    assert [w.window for w in plain.window_rows()] == ["2025-03-10", "2025-03-11"]
    assert plain.group_rows() == []


def test_csv():
    text = to_csv([{"a": 1.5, "b": None}, {"a": 0.1 + 0.2, "b": "x"}], ["a", "b"])
    assert text == "a,b\n1.5,\n0.3,x\n"

"""The dashboard's pure figures (`budget_proxy.dashboard.data`)."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from budget_proxy.dashboard.data import (
    CHART_SERIES_MAX,
    RefusalLog,
    histogram_quantile,
    merge_buckets,
    spend_of,
    spend_series,
)
from budget_proxy.models import UsageRecord
from budget_proxy.reporting import window_starts

INF = math.inf
BUCKETS = [(0.001, 50.0), (0.002, 90.0), (0.005, 100.0), (INF, 100.0)]


@pytest.mark.parametrize(("buckets", "q", "expected"), [
    (BUCKETS, 0.5, 0.001),  # rank 50 is the top of the first bucket
    (BUCKETS, 0.25, 0.0005),  # interpolated from 0
    (BUCKETS, 0.7, 0.0015),  # halfway through (0.001, 0.002]
    (BUCKETS, 0.99, 0.0047),
    ([(0.001, 0.0), (INF, 0.0)], 0.5, None),  # no observations
    ([], 0.5, None),
    ([(0.001, 1.0), (INF, 10.0)], 0.99, 0.001),  # in +Inf: the highest finite bound
])
def test_histogram_quantile(buckets, q, expected):
    got = histogram_quantile(buckets, q)
    assert got == (None if expected is None else pytest.approx(expected))


def test_merge_buckets_sums_label_sets_and_ignores_other_samples():
    samples = [
        ("x_bucket", {"route": "a", "le": "0.001"}, 2.0),
        ("x_bucket", {"route": "a", "le": "+Inf"}, 3.0),
        ("x_bucket", {"route": "b", "le": "0.001"}, 1.0),
        ("x_bucket", {"route": "b", "le": "+Inf"}, 1.0),
        ("x_count", {"route": "a"}, 3.0), ("x_sum", {"route": "a"}, 0.1),
    ]
    assert merge_buckets(samples) == [(0.001, 3.0), (INF, 4.0)]


def test_refusal_log_counts_the_window_by_policy():
    log = RefusalLog(maxlen=10)
    for at, policy in ((1.0, "p1"), (5.0, "p2"), (6.0, "p1"), (7.0, "p1")):
        log.add(at, policy)
    assert log.since(5.0) == {"p2": 1, "p1": 2}
    assert log.since(100.0) == {}


def record(at: datetime, cost: float, **kw: str) -> UsageRecord:
    return UsageRecord(provider="openai", model=kw.pop("model", "m"), total_cost=cost,
                       timestamp=at, **kw)


def test_spend_of_sums_exactly_from_a_time():
    start = datetime(2026, 3, 10, tzinfo=UTC)
    records = [record(start - timedelta(hours=1), 5.0), record(start, 0.1), record(start, 0.2)]
    assert spend_of(records, start) == 0.3  # exact in nano-USD, not 0.30000000000000004


def test_spend_series_by_window_and_group():
    tz = ZoneInfo("Europe/Berlin")
    since = datetime(2026, 3, 10, tzinfo=tz)
    starts = window_starts("hourly", since, since + timedelta(hours=2, minutes=30), tz)
    records = [record(since + timedelta(minutes=5), 1.0, component="a"),
               record(since + timedelta(hours=2, minutes=1), 2.0, component="b"),
               record(since + timedelta(hours=2, minutes=2), 0.5, component="a"),
               record(since - timedelta(hours=1), 9.0, component="a")]  # before the range
    chart = spend_series(records, starts, "hourly", tz, "component")
    assert chart["labels"] == ["2026-03-10T00:00", "2026-03-10T01:00", "2026-03-10T02:00"]
    assert chart["series"] == [{"name": "b", "values": [0, 0, 2.0]},
                               {"name": "a", "values": [1.0, 0, 0.5]}]


def test_spend_series_folds_small_groups_into_other():
    tz = ZoneInfo("UTC")
    since = datetime(2026, 3, 10, tzinfo=UTC)
    starts = window_starts("daily", since, since, tz)
    records = [record(since, float(i + 1), model=f"m{i}") for i in range(CHART_SERIES_MAX + 2)]
    series = spend_series(records, starts, "daily", tz, "model")["series"]
    assert len(series) == CHART_SERIES_MAX
    assert series[0]["name"] == f"m{CHART_SERIES_MAX + 1}"
    assert series[-1] == {"name": "other", "values": [1.0 + 2.0 + 3.0]}

"""What the dashboard shows that the admin API does not serve: pure code, no I/O.

- who the presented token makes the reader (the admin API's rules: viewer reads, admin acts);
- quantiles of the proxy's own overhead from its Prometheus histogram buckets;
- refusals of the last hour (the metrics counter only counts since start);
- spend per window split by model or component, for the chart.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any, Literal
from zoneinfo import ZoneInfo

from budget_proxy.api.common import token_role
from budget_proxy.config import Settings
from budget_proxy.models import NUSD_PER_USD, UsageRecord, nusd_to_usd
from budget_proxy.reporting import window_label, window_start
from budget_proxy.schemas import CalendarPeriod

Role = Literal["admin", "viewer", "none"]
REFUSAL_WINDOW_S = 3600.0  # "refusals in the last hour"
REFUSALS_KEPT = 100_000  # refusal times remembered; a flood beyond this reads as at least this
CHART_SERIES_MAX = 8  # the largest groups get their own series; the rest are summed as other
OTHER = "other"


def role_of(presented: str, settings: Settings) -> Role:
    """What a caller with this token may do on the page. The admin API's token rules
    (`api.common.token_role`), with the WebSockets' rule on top: with any token configured,
    reading (the live events included) needs one, so the page asks for it."""
    if settings.admin_token is None and settings.viewer_token is None:
        return "admin"  # an open proxy: anyone may act
    role = token_role(presented, settings)
    if role != "none" and settings.admin_token is None:
        return "admin"  # mutations are open; the token only opens reading
    return role


def histogram_quantile(buckets: Sequence[tuple[float, float]], q: float) -> float | None:
    """The `q` quantile of a cumulative histogram, `(upper bound, count)` sorted by bound with
    `+Inf` last, interpolated linearly inside a bucket as Prometheus' `histogram_quantile`
    does. None without observations; the highest finite bound when it falls in `+Inf`."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return lower_bound
            if count == lower_count:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (
                count - lower_count)
        lower_bound, lower_count = bound, count
    return lower_bound


def merge_buckets(samples: Iterable[tuple[str, dict[str, str], float]]) -> list[
        tuple[float, float]]:
    """Sum the `_bucket` samples of every label set of one histogram, by upper bound."""
    by_bound: dict[float, float] = {}
    for name, labels, value in samples:
        if name.endswith("_bucket"):
            bound = float(labels["le"])
            by_bound[bound] = by_bound.get(bound, 0.0) + value
    return sorted(by_bound.items())


class RefusalLog:
    """Monotonic times of recent refusals (and their policies), for counts over a window."""

    def __init__(self, maxlen: int = REFUSALS_KEPT) -> None:
        self.events: deque[tuple[float, str]] = deque(maxlen=maxlen)

    def add(self, at: float, policy_id: str) -> None:
        self.events.append((at, policy_id))

    def since(self, start: float) -> dict[str, int]:
        """Refusals at or after `start`, counted by policy."""
        while self.events and self.events[0][0] < start:
            self.events.popleft()
        counts: dict[str, int] = {}
        for _, policy_id in self.events:
            counts[policy_id] = counts.get(policy_id, 0) + 1
        return counts


def spend_of(records: Iterable[UsageRecord], since: datetime) -> float:
    """Total cost in USD of the records at or after `since` (summed exactly in nano-USD)."""
    return nusd_to_usd(sum(round(r.total_cost * NUSD_PER_USD) for r in records
                           if r.timestamp >= since))


def spend_series(
    records: Iterable[UsageRecord], starts: Sequence[datetime], period: CalendarPeriod,
    tz: ZoneInfo, by: Literal["model", "component", "provider"],
) -> dict[str, Any]:
    """Spend per window (`starts`, from `reporting.window_starts`) and per group: the
    `CHART_SERIES_MAX - 1` costliest groups by name, the rest as `other`."""
    index = {start: i for i, start in enumerate(starts)}
    nusd: dict[str, list[int]] = {}
    for rec in records:
        i = index.get(window_start(period, rec.timestamp, tz))
        if i is None:
            continue
        row = nusd.setdefault(getattr(rec, by) or OTHER, [0] * len(starts))
        row[i] += round(rec.total_cost * NUSD_PER_USD)
    ranked = sorted(nusd.items(), key=lambda kv: (-sum(kv[1]), kv[0]))
    if len(ranked) > CHART_SERIES_MAX:
        rest = [sum(col) for col in zip(*(v for _, v in ranked[CHART_SERIES_MAX - 1:]),
                                        strict=True)]
        ranked = [*ranked[:CHART_SERIES_MAX - 1], (OTHER, rest)]
    return {
        "labels": [window_label(period, start) for start in starts],
        "starts": [start.isoformat() for start in starts],
        "series": [{"name": name, "values": [nusd_to_usd(v) for v in values]}
                   for name, values in ranked],
    }

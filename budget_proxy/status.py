"""A policy's window status: the numbers `/api/status` and the dashboard show for a budget.

Pure code: a policy, its current window's totals and the time in, every derived figure out
(spent, reserved, limit, remaining, utilisation, time to reset, burn rate, runway). Callers do
the one store read (`status_keys` names the counters, `Store.totals` reads them), so every
reader of a policy's status gets the same figures from the same arithmetic.

Burn rate and runway are the current window's average: settled spend over the time elapsed
since the window started (at least `MIN_ELAPSED_S`, so the first seconds of a window do not
project a huge rate). Per-session and per-task windows have no start, hence no burn rate.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from budget_proxy.enforcement import CounterLine, Totals, counter_key, utilisation
from budget_proxy.models import BudgetPolicy, nusd_to_usd
from budget_proxy.periods import Window, window_for
from budget_proxy.reporting import window_start

MIN_ELAPSED_S = 60.0  # burn rates are averaged over at least this long
SCOPE_FIELDS = ("provider", "model", "component", "tier", "task_type", "session", "task")
CALENDAR_PERIODS = ("hourly", "daily", "weekly", "monthly")


def scope_text(policy: BudgetPolicy) -> str:
    """`provider=openai,component=x`, or `all` for a policy that matches every request."""
    parts = [f"{f}={getattr(policy, f)}" for f in SCOPE_FIELDS
             if getattr(policy, f, None) is not None]
    return ",".join(parts) or "all"


def current_window(policy: BudgetPolicy, now: datetime, tz: ZoneInfo) -> Window | None:
    """The window a status reads: per-session and per-task policies have none."""
    return window_for(policy.period, now, tz)


def started_at(policy: BudgetPolicy, now: datetime, tz: ZoneInfo) -> datetime | None:
    """Start of the policy's current calendar window (None for sessions and tasks)."""
    period = policy.period.value
    if period in CALENDAR_PERIODS:
        return window_start(period, now, tz)  # type: ignore[arg-type]  # checked just above
    if period == "minutely":
        return now.astimezone(tz).replace(second=0, microsecond=0)
    return None


def status_keys(policies: Iterable[BudgetPolicy], now: datetime, tz: ZoneInfo) -> list[str]:
    """The counter keys of the policies' current windows, for one `Store.totals` read."""
    keys = []
    for policy in policies:
        window = current_window(policy, now, tz)
        if window is not None:
            keys.append(counter_key(policy.policy_id, window.window_id))
    return keys


def runway_s(remaining: float | None, burn_per_s: float | None) -> float | None:
    """Seconds until `remaining` is used up at `burn_per_s`; None when nothing burns or
    nothing is limited; 0 when nothing remains."""
    if remaining is None:
        return None
    if remaining <= 0:
        return 0.0
    if not burn_per_s or burn_per_s <= 0:
        return None
    return remaining / burn_per_s


def projection(spent: float, start: datetime, end: datetime, now: datetime) -> float:
    """Spend at `end` if the average rate since `start` holds (month-end projection)."""
    total_s = (end - start).total_seconds()
    elapsed_s = max(MIN_ELAPSED_S, (now - start).total_seconds())
    if total_s <= 0:
        return spent
    return spent * max(1.0, total_s / elapsed_s)


@dataclass(frozen=True, slots=True)
class WindowStatus:
    """One policy's current window. Amounts in `unit` (USD for a policy with a cost limit,
    tokens for a token-only policy) plus both raw figures."""

    policy: BudgetPolicy
    window: Window | None
    window_start: datetime | None
    totals: Totals
    now: datetime

    @property
    def in_tokens(self) -> bool:
        return self.policy.cost_limit is None

    @property
    def unit(self) -> str:
        return "tokens" if self.in_tokens else "usd"

    @property
    def limit(self) -> float | int | None:
        return self.policy.token_limit if self.in_tokens else self.policy.cost_limit

    @property
    def spent(self) -> float | int:
        return self.totals.spent_tokens if self.in_tokens else nusd_to_usd(self.totals.spent_nusd)

    @property
    def reserved(self) -> float | int:
        tot = self.totals
        return tot.reserved_tokens if self.in_tokens else nusd_to_usd(tot.reserved_nusd)

    @property
    def remaining(self) -> float | int | None:
        """Limit minus spent and reserved, never below zero; None without a limit."""
        p, tot = self.policy, self.totals
        if self.in_tokens:
            return None if p.token_limit is None else max(0, p.token_limit - tot.used_tokens)
        limit_nusd = p.cost_limit_nusd
        return None if limit_nusd is None else nusd_to_usd(max(0, limit_nusd - tot.used_nusd))

    @property
    def utilisation(self) -> float:
        """The larger of cost and token use (spent + reserved) over the limits."""
        line = CounterLine("", self.policy.cost_limit_nusd, self.policy.token_limit, True,
                           self.policy.policy_id)
        return utilisation(line, self.totals)

    @property
    def resets_in_s(self) -> float | None:
        if self.window is None or self.window.resets_at is None:
            return None
        return max(0.0, (self.window.resets_at - self.now).total_seconds())

    @property
    def burn_per_s(self) -> float | None:
        """Average settled spend per second since the window started, in `unit`."""
        if self.window_start is None:
            return None
        elapsed_s = max(MIN_ELAPSED_S, (self.now - self.window_start).total_seconds())
        return self.spent / elapsed_s

    @property
    def runway_s(self) -> float | None:
        return runway_s(self.remaining, self.burn_per_s)

    @property
    def runs_out_at(self) -> datetime | None:
        """When the limit is reached at the current burn, if that is before the reset."""
        runway, resets_in = self.runway_s, self.resets_in_s
        if runway is None or (resets_in is not None and runway >= resets_in):
            return None
        return self.now + timedelta(seconds=runway)

    def to_json(self) -> dict[str, Any]:
        """The `/api/status` row (`schemas.PolicyStatus`)."""
        p, tot, window = self.policy, self.totals, self.window
        burn, runway, out_at = self.burn_per_s, self.runway_s, self.runs_out_at
        return {
            "policy_id": p.policy_id, "name": p.name, "type": p.type.value,
            "period": p.period.value, "scope": scope_text(p),
            "window": window.window_id if window else None,
            "resets_at": window.resets_at.isoformat() if window and window.resets_at else None,
            "limit": self.limit, "unit": self.unit,
            "spent": self.spent, "reserved": self.reserved, "remaining": self.remaining,
            "spent_tokens": tot.spent_tokens, "spent_cost": nusd_to_usd(tot.spent_nusd),
            "reserved_tokens": tot.reserved_tokens,
            "reserved_cost": nusd_to_usd(tot.reserved_nusd),
            "cost_limit": p.cost_limit, "token_limit": p.token_limit,
            "utilisation": round(self.utilisation, 4),
            "warning_threshold": p.warning_threshold, "action_threshold": p.action_threshold,
            "resets_in_s": _round(self.resets_in_s),
            "burn_per_hour": None if burn is None else burn * 3600,
            "runway_s": _round(runway),
            "runs_out_at": out_at.isoformat() if out_at else None,
            "enabled": p.enabled,
        }


def _round(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 1)


def window_status(policy: BudgetPolicy, totals: Totals, now: datetime,
                  tz: ZoneInfo) -> WindowStatus:
    return WindowStatus(policy, current_window(policy, now, tz), started_at(policy, now, tz),
                        totals, now)


def window_statuses(policies: Iterable[BudgetPolicy], totals: Mapping[str, Totals],
                    now: datetime, tz: ZoneInfo) -> list[WindowStatus]:
    """Every policy's status; `totals` maps `status_keys` to what the store read (a missing
    key, or a policy without a current window, reads as nothing spent)."""
    out = []
    for policy in policies:
        window = current_window(policy, now, tz)
        key = counter_key(policy.policy_id, window.window_id) if window else None
        tot = totals.get(key, Totals()) if key else Totals()
        out.append(WindowStatus(policy, window, started_at(policy, now, tz), tot, now))
    return out

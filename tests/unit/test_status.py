"""A policy's window status (`budget_proxy.status`): pure figures from policy, totals, time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from budget_proxy.enforcement import Totals, counter_key
from budget_proxy.models import NUSD_PER_USD, BudgetPolicy
from budget_proxy.status import (
    projection,
    runway_s,
    scope_text,
    status_keys,
    window_status,
    window_statuses,
)

UTC_TZ = ZoneInfo("UTC")
NOON = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)


def usd(amount: float) -> int:
    return round(amount * NUSD_PER_USD)


def test_cost_policy_figures_in_usd():
    policy = BudgetPolicy(period="daily", cost_limit=10, token_limit=1000)
    st = window_status(policy, Totals(spent_nusd=usd(3), reserved_nusd=usd(1),
                                      spent_tokens=200, reserved_tokens=100), NOON, UTC_TZ)
    row = st.to_json()
    assert (row["unit"], row["limit"], row["spent"], row["reserved"]) == ("usd", 10, 3, 1)
    assert row["remaining"] == 6
    assert row["utilisation"] == 0.4  # cost 4/10 beats tokens 300/1000
    assert row["window"] == "d:20260310"
    assert row["resets_at"] == "2026-03-11T00:00:00+00:00"
    assert row["resets_in_s"] == 12 * 3600
    # $3 in 12 hours: $0.25 an hour; $6 left lasts 24 h, after the reset
    assert row["burn_per_hour"] == pytest.approx(0.25)
    assert row["runway_s"] == pytest.approx(24 * 3600)
    assert row["runs_out_at"] is None


def test_token_policy_figures_in_tokens_and_runway_before_reset():
    policy = BudgetPolicy(period="hourly", token_limit=1000)
    at = NOON + timedelta(minutes=30)
    st = window_status(policy, Totals(spent_tokens=600, reserved_tokens=100), at, UTC_TZ)
    row = st.to_json()
    assert (row["unit"], row["limit"], row["spent"], row["remaining"]) == ("tokens", 1000, 600,
                                                                          300)
    # 600 tokens in 30 minutes: 300 left run out in 15 minutes, before the 13:00 reset
    assert row["runway_s"] == pytest.approx(15 * 60)
    assert row["runs_out_at"] == (at + timedelta(minutes=15)).isoformat()


@pytest.mark.parametrize(("remaining", "burn", "expected"), [
    (None, 1.0, None),  # no limit
    (0, 1.0, 0.0),  # nothing left
    (5, 0.0, None),  # nothing burns
    (5, None, None),  # no window start
    (5, 0.5, 10.0),
])
def test_runway(remaining, burn, expected):
    assert runway_s(remaining, burn) == expected


def test_remaining_never_negative_and_utilisation_past_one():
    policy = BudgetPolicy(period="daily", cost_limit=1)
    row = window_status(policy, Totals(spent_nusd=usd(1.5)), NOON, UTC_TZ).to_json()
    assert row["remaining"] == 0
    assert row["utilisation"] == 1.5
    assert row["runway_s"] == 0
    assert row["runs_out_at"] == NOON.isoformat()


def test_session_policy_has_no_window_nor_burn():
    policy = BudgetPolicy(period="per_session", cost_limit=2)
    row = window_status(policy, Totals(), NOON, UTC_TZ).to_json()
    assert row["window"] is None and row["resets_at"] is None and row["resets_in_s"] is None
    assert row["burn_per_hour"] is None and row["runway_s"] is None
    assert row["remaining"] == 2


def test_first_seconds_of_a_window_do_not_project_a_huge_rate():
    policy = BudgetPolicy(period="daily", cost_limit=100)
    at = NOON.replace(hour=0, second=1)
    row = window_status(policy, Totals(spent_nusd=usd(1)), at, UTC_TZ).to_json()
    assert row["burn_per_hour"] == pytest.approx(60.0)  # $1 over the 60 s minimum, not 1 s


def test_calendar_windows_in_the_configured_zone():
    berlin = ZoneInfo("Europe/Berlin")
    policy = BudgetPolicy(period="daily", cost_limit=1)
    st = window_status(policy, Totals(), datetime(2026, 3, 10, 23, 30, tzinfo=UTC), berlin)
    assert st.window is not None and st.window.window_id == "d:20260311"  # 00:30 in Berlin
    assert st.window_start == datetime(2026, 3, 11, tzinfo=berlin)


def test_statuses_read_their_own_keys_and_default_to_nothing_spent():
    daily = BudgetPolicy(period="daily", cost_limit=5)
    monthly = BudgetPolicy(period="monthly", cost_limit=50)
    session = BudgetPolicy(period="per_session", cost_limit=1)
    keys = status_keys([daily, monthly, session], NOON, UTC_TZ)
    assert keys == [counter_key(daily.policy_id, "d:20260310"),
                    counter_key(monthly.policy_id, "m:202603")]
    rows = window_statuses([daily, monthly, session], {keys[1]: Totals(spent_nusd=usd(2))},
                           NOON, UTC_TZ)
    assert [r.spent for r in rows] == [0, 2, 0]


@pytest.mark.parametrize(("spent", "elapsed_days", "expected"), [
    (10.0, 10, 31.0),  # $1 a day over a 31-day month
    (0.0, 5, 0.0),
    (31.0, 31, 31.0),  # the month is over: what was spent
])
def test_projection(spent, elapsed_days, expected):
    start = datetime(2026, 3, 1, tzinfo=UTC)
    end = datetime(2026, 4, 1, tzinfo=UTC)
    assert projection(spent, start, end, start + timedelta(days=elapsed_days)) == pytest.approx(
        expected)


@pytest.mark.parametrize(("fields", "expected"), [
    ({}, "all"),
    ({"provider": "openai"}, "provider=openai"),
    ({"component": "c", "model": "gpt-4o"}, "model=gpt-4o,component=c"),
])
def test_scope_text(fields, expected):
    assert scope_text(BudgetPolicy(period="daily", cost_limit=1, **fields)) == expected

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from budget_proxy.enforcement import (
    CounterLine,
    RequestScope,
    Totals,
    counter_lines,
    policy_matches,
    soft_limit_move,
    tightest_remaining,
    utilisation,
    warnings,
    would_refuse,
)
from budget_proxy.models import BudgetPolicy, Period, PolicyType

SCOPE = RequestScope(provider="openai", model="gpt-4o", component="billing",
                     tier="remote_heavyweight", task_type="chat", session="s1", task="t1")
NOW = datetime(2026, 11, 22, 12, tzinfo=UTC)
UTC_Z = ZoneInfo("UTC")


def policy(**kw) -> BudgetPolicy:
    kw.setdefault("cost_limit", 1.0)
    return BudgetPolicy(**kw)


@pytest.mark.parametrize(
    ("fields", "matches"),
    [
        ({}, True),
        ({"provider": "openai"}, True),
        ({"provider": "anthropic"}, False),
        ({"model": "gpt-4o", "component": "billing"}, True),
        ({"model": "gpt-4o", "component": "search"}, False),
        ({"tier": "remote_heavyweight"}, True),
        ({"tier": "local_lightweight"}, False),
        ({"task_type": "chat"}, True),
        ({"session": "s2"}, False),
        ({"task": "t1"}, True),
        ({"enabled": False}, False),
    ],
)
def test_policy_matching(fields, matches):
    assert policy_matches(policy(**fields), SCOPE) is matches


def test_counter_lines_one_per_matching_window():
    policies = [
        policy(policy_id="a", period=Period.DAILY),
        policy(policy_id="b", period=Period.MONTHLY, type=PolicyType.WARN),
        policy(policy_id="c", provider="anthropic"),
        policy(policy_id="d", period=Period.PER_SESSION, token_limit=10, cost_limit=None),
    ]
    lines = counter_lines(policies, SCOPE, NOW, UTC_Z)
    assert [ln.key for ln in lines] == ["a:d:20261122", "b:m:202611", "d:s:s1"]
    assert [ln.enforce for ln in lines] == [True, False, True]
    assert lines[0].limit_nusd == 1_000_000_000
    assert lines[2].limit_tokens == 10 and lines[2].limit_nusd is None


def test_limit_edit_keeps_the_same_counter():
    before = counter_lines([policy(policy_id="a", cost_limit=1.0)], SCOPE, NOW, UTC_Z)
    after = counter_lines([policy(policy_id="a", cost_limit=9.0)], SCOPE, NOW, UTC_Z)
    assert before[0].key == after[0].key


LINE = CounterLine("k", limit_nusd=1000, limit_tokens=100, enforce=True, policy_id="p")


@pytest.mark.parametrize(
    ("totals", "cost", "tokens", "refused"),
    [
        (Totals(), 1000, 100, False),  # exactly at the limit is allowed
        (Totals(), 1001, 0, True),
        (Totals(spent_nusd=500, reserved_nusd=400), 100, 0, False),
        (Totals(spent_nusd=500, reserved_nusd=400), 101, 0, True),
        (Totals(spent_tokens=60, reserved_tokens=30), 0, 11, True),
        (Totals(spent_tokens=60, reserved_tokens=30), 0, 10, False),
    ],
)
def test_would_refuse(totals, cost, tokens, refused):
    assert would_refuse(LINE, totals, cost, tokens) is refused


def test_unenforced_lines_never_refuse():
    line = CounterLine("k", 10, None, enforce=False, policy_id="p")
    assert not would_refuse(line, Totals(spent_nusd=100), 100, 0)


def test_tightest_remaining_prefers_enforced_and_most_used():
    lines = [
        CounterLine("a", 1000, None, True, "a"),
        CounterLine("b", 10_000, 50, True, "b"),
        CounterLine("c", 10, None, False, "c"),
    ]
    totals = [Totals(spent_nusd=100), Totals(spent_tokens=45), Totals(spent_nusd=10)]
    remaining = tightest_remaining(lines, totals)
    assert remaining.policy_id == "b"
    assert remaining.tokens == 5
    assert remaining.cost_usd == pytest.approx(10_000e-9)


def test_utilisation_takes_the_larger_ratio():
    assert utilisation(LINE, Totals(spent_nusd=500, spent_tokens=90)) == pytest.approx(0.9)
    assert utilisation(CounterLine("k", None, None, True, "p"), Totals(spent_nusd=5)) == 0.0


def test_warnings_and_soft_limit_moves():
    warn = policy(policy_id="w", type=PolicyType.WARN, warning_threshold=0.5, name="team")
    soft = policy(policy_id="s", type=PolicyType.SOFT_LIMIT, action_threshold=0.9,
                  fallback_model="gpt-4o-mini")
    by_id = {"w": warn, "s": soft}
    lines = [CounterLine("w", 1000, None, False, "w"), CounterLine("s", 1000, None, False, "s")]
    assert warnings(by_id, lines, [Totals(spent_nusd=400), Totals()]) == []
    notes = warnings(by_id, lines, [Totals(spent_nusd=600), Totals()])
    assert notes == ["policy team at 60% of its daily limit"]
    assert soft_limit_move(by_id, lines, [Totals(), Totals(spent_nusd=899)]) == (None, [])
    assert soft_limit_move(by_id, lines, [Totals(), Totals(spent_nusd=900)]) == ("gpt-4o-mini", [])
    no_fallback = {"w": warn, "s": soft.model_copy(update={"fallback_model": None})}
    moved, notes = soft_limit_move(no_fallback, lines, [Totals(), Totals(spent_nusd=950)])
    assert moved is None and notes and "soft limit" in notes[0]


def test_policy_needs_a_limit_unless_ignore():
    with pytest.raises(ValueError, match="cost_limit or token_limit"):
        BudgetPolicy(type=PolicyType.HARD_LIMIT)
    assert BudgetPolicy(type=PolicyType.IGNORE).cost_limit is None

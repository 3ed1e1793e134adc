from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from budget_proxy.enforcement import (
    CounterLine,
    RateRemaining,
    RequestScope,
    Totals,
    counter_lines,
    policy_matches,
    rate_remaining,
    shadow_refusals,
    soft_limit_move,
    tightest_remaining,
    utilisation,
    warnings,
    would_refuse,
)
from budget_proxy.models import INPUT, BudgetPolicy, Period, PolicyType

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
    with pytest.raises(ValueError, match="cost_limit, token_limit or request_limit"):
        BudgetPolicy(type=PolicyType.HARD_LIMIT)
    assert BudgetPolicy(type=PolicyType.IGNORE).cost_limit is None


CALLS = CounterLine("k", None, 100, enforce=True, policy_id="p", limit_requests=3)


@pytest.mark.parametrize(
    ("totals", "tokens", "requests", "refused"),
    [
        (Totals(requests=2), 0, 1, False),  # the third call fits
        (Totals(requests=3), 0, 1, True),  # the fourth does not
        (Totals(requests=3), 0, 0, False),  # a hold that is not a call (allocation)
        (Totals(requests=0), 101, 1, True),  # tokens per minute refuse on their own
        (Totals(requests=10), 0, 1, True),  # already past (a limit lowered by an edit)
    ],
)
def test_would_refuse_counts_calls(totals, tokens, requests, refused):
    assert would_refuse(CALLS, totals, 0, tokens, requests) is refused


def test_zero_call_limit_refuses_every_call():
    line = CounterLine("k", None, None, True, "p", limit_requests=0)
    assert would_refuse(line, Totals(), 0, 0)
    assert utilisation(line, Totals()) == 1.0


def test_rate_remaining_names_the_tightest_call_limit():
    lines = [CALLS, CounterLine("b", None, 50, True, "b", limit_requests=10),
             CounterLine("c", None, 1, False, "c", limit_requests=1),  # not enforced
             CounterLine("d", 5, None, True, "d")]  # no call limit
    got = rate_remaining(lines, [Totals(requests=1, spent_tokens=10), Totals(requests=9),
                                 Totals(requests=1), Totals()])
    assert (got.requests, got.tokens) == (1, 50)
    assert rate_remaining([LINE], [Totals()]) == RateRemaining(None, None)


@pytest.mark.parametrize(
    ("spelling", "parsed"),
    [("WARN", PolicyType.WARN), ("ENFORCE", PolicyType.HARD_LIMIT), ("LOG", PolicyType.IGNORE),
     ("Hard-Limit", PolicyType.HARD_LIMIT), ("soft limit", PolicyType.SOFT_LIMIT),
     ("shadow", PolicyType.SHADOW), ("hard_limit", PolicyType.HARD_LIMIT)],
)
def test_seed_type_spellings_are_aliases(spelling, parsed):
    assert BudgetPolicy.model_validate({"type": spelling, "cost_limit": 1}).type is parsed


@pytest.mark.parametrize("spelling", ["enforced", "", "hard__limit", 3, None])
def test_unknown_type_spellings_are_refused(spelling):
    with pytest.raises(ValueError, match="type"):
        BudgetPolicy.model_validate({"type": spelling, "cost_limit": 1})


@pytest.mark.parametrize(("spelling", "parsed"), [("DAILY", Period.DAILY),
                                                   ("Minutely", Period.MINUTELY),
                                                   ("per-session", Period.PER_SESSION)])
def test_period_spellings_are_aliases(spelling, parsed):
    assert BudgetPolicy.model_validate({"period": spelling, "cost_limit": 1}).period is parsed


def test_request_limit_alone_is_a_limit_and_is_bounded():
    assert BudgetPolicy(request_limit=3).request_limit == 3
    for bad in (-1, 10**10, True, "many"):
        with pytest.raises(ValueError, match="request_limit"):
            BudgetPolicy.model_validate({"request_limit": bad}, context=INPUT)


def test_shadow_lines_never_enforce_and_report_what_they_would_refuse():
    policies = [policy(policy_id="s", type=PolicyType.SHADOW, request_limit=1, cost_limit=None),
                policy(policy_id="h", cost_limit=1.0)]
    lines = counter_lines(policies, SCOPE, NOW, UTC_Z)
    assert [(ln.enforce, ln.shadow) for ln in lines] == [(False, True), (True, False)]
    assert shadow_refusals(lines, [Totals(requests=1), Totals()], 0, 0) == ["s"]
    assert shadow_refusals(lines, [Totals(), Totals()], 0, 0) == []
    assert warnings({p.policy_id: p for p in policies}, lines,
                    [Totals(requests=5), Totals()]) == []  # the shadow header says it


@pytest.mark.parametrize(
    ("topups", "limit_nusd", "limit_tokens"),
    [
        ([], 1_000_000_000, None),
        ([{"cost": 5.0, "expires_at": datetime(2026, 11, 23, tzinfo=UTC)}], 6_000_000_000, None),
        # expired: the limit is back
        ([{"cost": 5.0, "expires_at": datetime(2026, 11, 22, 11, tzinfo=UTC)}], 1_000_000_000,
         None),
        # a token top-up does not create a token limit the policy does not have
        ([{"tokens": 50, "expires_at": datetime(2026, 11, 23, tzinfo=UTC)}], 1_000_000_000,
         None),
        ([{"cost": 1.0, "expires_at": datetime(2026, 11, 23, tzinfo=UTC)},
          {"cost": 2.0, "expires_at": datetime(2026, 11, 24, tzinfo=UTC)}], 4_000_000_000, None),
    ],
)
def test_topups_raise_the_limit_until_they_expire(topups, limit_nusd, limit_tokens):
    (line,) = counter_lines([policy(policy_id="a", topups=topups)], SCOPE, NOW, UTC_Z)
    assert (line.limit_nusd, line.limit_tokens) == (limit_nusd, limit_tokens)


def test_key_budgets_match_only_their_key():
    keyed = policy(key_id="vk_1")
    assert policy_matches(keyed, RequestScope("openai", "gpt-4o", "billing", key_id="vk_1"))
    assert not policy_matches(keyed, RequestScope("openai", "gpt-4o", "billing", key_id="vk_2"))
    assert not policy_matches(keyed, SCOPE)  # no key: not this key's budget

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from budget_proxy.enforcement import (
    CounterLine,
    PastCall,
    RateRemaining,
    RequestScope,
    Totals,
    counter_lines,
    matching_spend,
    policy_matches,
    rate_remaining,
    replay,
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


def call(at: datetime, cost_nusd: int, provider: str = "openai", tokens: int = 10) -> PastCall:
    return PastCall(RequestScope(provider, "gpt-4o", "billing"), at, cost_nusd, tokens)


DAY1, DAY2 = datetime(2026, 11, 20, 9, tzinfo=UTC), datetime(2026, 11, 21, 9, tzinfo=UTC)
SEEDED = [call(DAY1, 400), call(DAY1, 400), call(DAY1, 400), call(DAY1, 900, "anthropic"),
          call(DAY2, 500)]


@pytest.mark.parametrize(
    ("fields", "per_window"),
    [
        # hard: 400 (40%), 800 (80%, warned), 1200 > 1000 refused; day 2: 500
        ({"type": "hard_limit"}, [("d:20261120", 3, 2, 1, 1, 800, 400),
                                  ("d:20261121", 1, 1, 0, 0, 500, 0)]),
        ({"type": "shadow"}, [("d:20261120", 3, 2, 1, 1, 800, 400),
                              ("d:20261121", 1, 1, 0, 0, 500, 0)]),
        # warn never refuses: 800 and 1200 warned
        ({"type": "warn"}, [("d:20261120", 3, 3, 0, 2, 1200, 0),
                            ("d:20261121", 1, 1, 0, 0, 500, 0)]),
        ({"type": "ignore"}, [("d:20261120", 3, 3, 0, 0, 1200, 0),
                              ("d:20261121", 1, 1, 0, 0, 500, 0)]),
        # two calls a day: the second is at 100% (warned), the third refused
        ({"cost_limit": None, "request_limit": 2}, [("d:20261120", 3, 2, 1, 1, 800, 400),
                                                    ("d:20261121", 1, 1, 0, 0, 500, 0)]),
        ({"period": "weekly"}, [("w:20261116", 4, 2, 2, 1, 800, 900)]),
        ({"provider": "anthropic"}, [("d:20261120", 1, 1, 0, 1, 900, 0)]),  # 90%: warned
    ],
)
def test_replay_by_hand(fields, per_window):
    base = {"policy_id": "p", "provider": "openai", "cost_limit": 1e-6}
    policy = BudgetPolicy(**{**base, **fields})
    got = [(w.window_id, w.calls, w.allowed, w.refused, w.warned, w.allowed_nusd,
            w.refused_nusd) for w in replay(policy, SEEDED, UTC_Z)]
    assert got == per_window


def test_matching_spend_counts_only_the_current_window_and_scope():
    now = datetime(2026, 11, 20, 18, tzinfo=UTC)
    key, found = matching_spend(policy(policy_id="p", provider="openai"), SEEDED, now, UTC_Z)
    assert key == "p:d:20261120"
    assert (found.spent_nusd, found.spent_tokens, found.requests) == (1200, 30, 3)
    assert matching_spend(policy(period=Period.PER_SESSION), SEEDED, now, UTC_Z) == (
        None, Totals())


# the memoised lines ------------------------------------------------------------------------
def _cache_policies() -> tuple[BudgetPolicy, ...]:
    """Every period, a scoped one that does not match, and top-ups live and expired."""
    from budget_proxy.models import TopUp

    topups = [TopUp(cost=2.0, expires_at=datetime(2026, 3, 29, 1, 30, tzinfo=UTC)),
              TopUp(cost=1.0, expires_at=datetime(2026, 3, 28, 23, 59, tzinfo=UTC))]
    return (
        policy(policy_id="min", period=Period.MINUTELY, component="search"),
        policy(policy_id="day", period=Period.DAILY, topups=topups),
        policy(policy_id="hour", period=Period.HOURLY, token_limit=500, component="search"),
        policy(policy_id="week", period=Period.WEEKLY),
        policy(policy_id="month", period=Period.MONTHLY, request_limit=10),
        policy(policy_id="sess", period=Period.PER_SESSION),
        policy(policy_id="other", period=Period.DAILY, component="search"),
    )


def test_the_line_cache_gives_what_counter_lines_gives_at_every_moment() -> None:
    """Across a DST change in Berlin, top-ups expiring and the clock stepping back."""
    from datetime import timedelta

    from budget_proxy.enforcement import LineCache

    policies, tz = _cache_policies(), ZoneInfo("Europe/Berlin")
    cache = LineCache()
    start = datetime(2026, 3, 28, 22, 0, tzinfo=UTC)
    moments = [start + timedelta(seconds=97 * i) for i in range(200)]
    moments += [start + timedelta(hours=3), start, start - timedelta(days=40),
                start + timedelta(days=3, seconds=1)]
    for now in moments:
        for scope in (SCOPE, RequestScope("openai", "gpt-4o", "search", session="s2")):
            assert cache.lines(policies, scope, now, tz) == counter_lines(
                policies, scope, now, tz), now


def test_the_line_cache_reuses_lines_until_a_window_resets() -> None:
    from datetime import timedelta

    from budget_proxy.enforcement import LineCache

    policies = (policy(policy_id="hour", period=Period.HOURLY),)
    cache = LineCache()
    first = cache.lines(policies, SCOPE, NOW, UTC_Z)
    assert cache.lines(policies, SCOPE, NOW + timedelta(minutes=59), UTC_Z) == first
    assert cache.lines(policies, SCOPE, NOW + timedelta(minutes=60), UTC_Z) != first
    assert len(cache) == 1


def test_a_new_policy_set_empties_the_line_cache() -> None:
    from budget_proxy.enforcement import LineCache

    cache = LineCache()
    cache.lines((policy(policy_id="a"),), SCOPE, NOW, UTC_Z)
    lines = cache.lines((policy(policy_id="b"),), SCOPE, NOW, UTC_Z)
    assert [line.policy_id for line in lines] == ["b"]
    assert len(cache) == 1


def test_the_line_cache_is_bounded_against_caller_chosen_sessions() -> None:
    from dataclasses import replace

    from budget_proxy.enforcement import LineCache

    policies = (policy(policy_id="sess", period=Period.PER_SESSION),)
    cache = LineCache(max_entries=8)
    for i in range(100):
        lines = cache.lines(policies, replace(SCOPE, session=f"s{i}"), NOW, UTC_Z)
        assert lines[0].key == f"sess:s:s{i}"
    assert len(cache) == 8


def test_the_line_cache_hands_out_its_own_list() -> None:
    from budget_proxy.enforcement import LineCache

    cache = LineCache()
    policies = (policy(policy_id="a"),)
    cache.lines(policies, SCOPE, NOW, UTC_Z).clear()
    assert len(cache.lines(policies, SCOPE, NOW, UTC_Z)) == 1

"""The pure parts of allocations: which lines a request drawing on one reserves, and the live
figures read from its counter."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from budget_proxy.allocations import (
    AllocationHold,
    AllocationState,
    BudgetAllocation,
    Holder,
    Shortfall,
    allocation_key,
    drawn_lines,
    preemption_plan,
    tracker_key,
)
from budget_proxy.enforcement import CounterLine, Totals


def alloc(**kw) -> BudgetAllocation:
    holds = [AllocationHold(policy_id="p1", key="p1:d:20250101", reservation_id="a:hold:0",
                            cost_nusd=0, tokens=1000)]
    fields = {"tokens_allocated": 1000, **kw}
    return BudgetAllocation(allocation_id="a", context_id="c", component="x", holds=holds,
                            **fields)


def line(key: str, policy_id: str) -> CounterLine:
    return CounterLine(key, None, 5000, True, policy_id)


def test_held_lines_become_trackers_and_the_allocation_line_comes_first():
    lines = [line("p1:d:20250101", "p1"), line("p2:d:20250101", "p2")]
    out = drawn_lines(alloc(), lines)
    assert [ln.key for ln in out] == [allocation_key("a"), tracker_key("a", "p1:d:20250101"),
                                      "p2:d:20250101"]
    own, tracker, other = out
    assert (own.enforce, own.limit_tokens, own.limit_nusd) == (True, 1000, None)
    assert (tracker.enforce, tracker.limit_tokens, tracker.limit_nusd) == (False, None, None)
    assert other == lines[1]


def test_a_window_that_rolled_over_is_not_held_so_it_is_charged():
    out = drawn_lines(alloc(), [line("p1:d:20250102", "p1")])
    assert [ln.key for ln in out] == [allocation_key("a"), "p1:d:20250102"]


def test_a_priced_allocation_caps_cost_on_its_own_line():
    (own,) = drawn_lines(alloc(hold_cost_nusd=600_000), [])
    assert own.limit_nusd == 600_000


def test_live_figures_while_active_and_after_closing():
    active = alloc().with_totals(Totals(spent_nusd=5, reserved_nusd=1, spent_tokens=300,
                                        reserved_tokens=100))
    assert (active.tokens_used, active.tokens_reserved, active.remaining_tokens) == (300, 100, 600)
    closed = alloc(state=AllocationState.RELEASED).with_totals(Totals(spent_tokens=1300))
    assert (closed.tokens_used, closed.remaining_tokens) == (300, 0)  # the close adds N


@pytest.mark.parametrize(
    ("alloc_fields", "scope", "draws"),
    [
        ({}, ("anthropic", "claude-opus-4", "remote_heavyweight"), True),
        ({"tier": "local_lightweight"}, ("ollama", "llama3.2:1b", "local_lightweight"), True),
        # the case: a local_lightweight allocation is not drawn by a claude-opus call
        ({"tier": "local_lightweight"}, ("anthropic", "claude-opus-4", "remote_heavyweight"),
         False),
        ({"provider": "openai"}, ("openai", "gpt-4o", None), True),
        ({"provider": "openai"}, ("anthropic", "gpt-4o", None), False),
        ({"model": "gpt-4o-mini"}, ("openai", "gpt-4o", None), False),
        ({"model": "gpt-4o-mini", "provider": "openai"}, ("openai", "gpt-4o-mini", None), True),
    ],
)
def test_allocations_are_drawn_only_inside_their_tier_provider_and_model(alloc_fields, scope,
                                                                         draws):
    from budget_proxy.allocations import BudgetAllocation, covers
    from budget_proxy.enforcement import RequestScope

    alloc = BudgetAllocation(context_id="c", component="c", tokens_allocated=10, **alloc_fields)
    provider, model, tier = scope
    assert covers(alloc, RequestScope(provider, model, "c", tier=tier)) is draws
    assert covers(alloc, None) is True


# priority: which lower-priority allocations give up how many tokens -------------------------
T0 = datetime(2025, 1, 1, tzinfo=UTC)


def holder(aid: str, priority: int, unused: int, age_s: int = 0, keys: str = "L",
           allocated: int = 1000, cost_nusd: int = 0) -> Holder:
    """`age_s`: seconds before T0 it was created (larger is older)."""
    return Holder(aid, priority, T0 - timedelta(seconds=age_s), unused, allocated, cost_nusd,
                  frozenset(keys.split(",")))


@pytest.mark.parametrize(("priority", "short", "holders", "plan"), [
    # nothing short: nothing taken
    (5, [("L", 0, 0)], [holder("a", 1, 500)], []),
    # lowest priority first, only what is short
    (9, [("L", 300, 0)], [holder("hi", 8, 900), holder("lo", 1, 900)], [("lo", 300)]),
    # newest first within a priority
    (9, [("L", 300, 0)], [holder("old", 2, 900, age_s=60), holder("new", 2, 900, age_s=1)],
     [("new", 300)]),
    # several give up, each at most its unused tokens, until it fits
    (9, [("L", 700, 0)], [holder("a", 1, 200), holder("b", 2, 400), holder("c", 3, 900)],
     [("a", 200), ("b", 400), ("c", 100)]),
    # equal or higher priority is never pre-empted: not enough without it
    (5, [("L", 300, 0)], [holder("same", 5, 900), holder("lo", 4, 100)], None),
    (5, [("L", 300, 0)], [holder("higher", 7, 900)], None),
    # an allocation holding another line does not help this one
    (9, [("L", 300, 0)], [holder("elsewhere", 1, 900, keys="M")], None),
    # fully used allocations have nothing to give
    (9, [("L", 1, 0)], [holder("spent", 1, 0)], None),
    # two short lines: one allocation holding both covers both with one shrink
    (9, [("L", 300, 0), ("M", 100, 0)], [holder("both", 1, 900, keys="L,M")], [("both", 300)]),
    (9, [("L", 300, 0), ("M", 100, 0)],
     [holder("l", 1, 900, keys="L", age_s=1), holder("m", 1, 900, keys="M", age_s=2)],
     [("l", 300), ("m", 100)]),
    # cost: tokens enough to free the cost short (hold of 1000 tokens = 600 nUSD)
    (9, [("C", 0, 300)], [holder("priced", 1, 1000, keys="C", cost_nusd=600)], [("priced", 500)]),
    (9, [("C", 0, 301)], [holder("priced", 1, 1000, keys="C", cost_nusd=600)],
     [("priced", 502)]),
    (9, [("C", 0, 700)], [holder("priced", 1, 1000, keys="C", cost_nusd=600)], None),
    # an unpriced allocation cannot free cost
    (9, [("C", 0, 5)], [holder("tokens_only", 1, 1000, keys="C")], None),
    # hostile: negative shortfalls count as nothing short; priorities at the bounds
    (9, [("L", -50, -5)], [holder("a", 1, 10)], []),
    (0, [("L", 10, 0)], [holder("a", 0, 100)], None),
    (1000, [("L", 10, 0)], [holder("a", 999, 100)], [("a", 10)]),
])
def test_preemption_plan(priority, short, holders, plan):
    shortfalls = [Shortfall(key, tokens, cost) for key, tokens, cost in short]
    assert preemption_plan(priority, shortfalls, holders) == plan


def test_a_plan_never_takes_more_than_is_unused_nor_from_equal_priority():
    holders = [holder(f"h{i}", i % 7, unused=i * 37 % 500, age_s=i) for i in range(40)]
    for need in (0, 1, 999, 5000, 10**9):
        plan = preemption_plan(5, [Shortfall("L", need)], holders)
        by_id = {h.allocation_id: h for h in holders}
        for aid, tokens in plan or []:
            assert 0 < tokens <= by_id[aid].unused_tokens and by_id[aid].priority < 5
        if plan is not None:
            assert sum(t for _, t in plan) >= need


def test_a_shrunk_allocation_reports_what_it_used_not_what_it_gave_up():
    shrunk = alloc(tokens_allocated=600, tokens_yielded=400)
    assert drawn_lines(shrunk, [])[0].limit_tokens == 1000  # the counter's cap stays
    live = shrunk.with_totals(Totals(spent_tokens=400 + 250, reserved_tokens=50))
    assert (live.tokens_used, live.remaining_tokens) == (250, 300)
    closed = shrunk.model_copy(update={"state": AllocationState.RELEASED}).with_totals(
        Totals(spent_tokens=400 + 250 + 600))
    assert closed.tokens_used == 250

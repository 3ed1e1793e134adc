"""The pure parts of allocations: which lines a request drawing on one reserves, and the live
figures read from its counter."""

from __future__ import annotations

import pytest

from budget_proxy.allocations import (
    AllocationHold,
    AllocationState,
    BudgetAllocation,
    allocation_key,
    drawn_lines,
    tracker_key,
)
from budget_proxy.enforcement import CounterLine, Totals


def alloc(**kw) -> BudgetAllocation:
    holds = [AllocationHold(policy_id="p1", key="p1:d:20250101", reservation_id="a:hold:0",
                            cost_nusd=0, tokens=1000)]
    return BudgetAllocation(allocation_id="a", context_id="c", component="x",
                            tokens_allocated=1000, holds=holds, **kw)


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

"""The planner's pure decisions, table-tested: output caps, holds, what fits, how much a
stream's hold grows, and the one refusal message."""

from __future__ import annotations

import pytest

from budget_proxy import planning
from budget_proxy.enforcement import CounterLine, Totals
from budget_proxy.models import MAX_CALL_TOKENS, BudgetPolicy, Period, PolicyType
from budget_proxy.pricing import PriceCatalog

PRICE = PriceCatalog.load_default().resolve_price("openai", "gpt-4o-mini", "ceiling")
IN_NUSD, OUT_NUSD = 150, 600  # gpt-4o-mini per token: $0.15 and $0.60 per million


def line(limit_nusd: int | None = None, limit_tokens: int | None = None, *,
         enforce: bool = True, requests: int | None = None, pid: str = "p") -> CounterLine:
    return CounterLine(f"{pid}:d:1", limit_nusd, limit_tokens, enforce, pid,
                       limit_requests=requests)


@pytest.mark.parametrize(("max_out", "choices", "cap"), [
    (None, 1, 16384),  # the catalog's cap
    (100, 1, 100),
    (100, 3, 300),  # once per choice
    (None, 2, 32768),
    (0, 1, 0),
    (-5, 1, 0),  # hostile: never negative
    (10**20, 1, MAX_CALL_TOKENS),  # hostile: clamped
    (10**9, 10**9, MAX_CALL_TOKENS),
])
def test_output_cap(max_out, choices, cap):
    assert planning.output_cap(max_out, choices, PRICE) == cap


@pytest.mark.parametrize(("streaming", "enforcement", "slice_tokens", "output"), [
    (False, "incremental", 256, 1000),  # not a stream: the worst case
    (True, "worst_case", 256, 1000),
    (True, "incremental", 256, 256),  # a stream: one slice
    (True, "incremental", 5000, 1000),  # never past the cap
    (True, "incremental", 0, 1),  # at least one token
])
def test_first_hold(streaming, enforcement, slice_tokens, output):
    held = planning.first_hold(100, 1000, PRICE, planning.NO_UNITS, streaming=streaming,
                               enforcement=enforcement, slice_tokens=slice_tokens)
    assert (held.input_tokens, held.output_tokens) == (100, output)
    assert held.cost_nusd == 100 * IN_NUSD + output * OUT_NUSD


@pytest.mark.parametrize(("lines", "totals", "cap", "fits"), [
    ([], [], 1000, 1000),  # nothing limits it
    ([line(limit_tokens=150)], [Totals()], 1000, 50),  # 100 input + 50 output
    ([line(limit_tokens=150)], [Totals(spent_tokens=40)], 1000, 10),
    ([line(limit_tokens=100)], [Totals()], 1000, 0),  # the input alone fills it
    ([line(limit_tokens=90)], [Totals()], 1000, 0),  # not even the input
    ([line(100 * IN_NUSD + 7 * OUT_NUSD)], [Totals()], 1000, 7),  # by cost
    ([line(100 * IN_NUSD + 7 * OUT_NUSD + OUT_NUSD - 1)], [Totals()], 1000, 7),  # rounds down
    ([line(limit_tokens=150), line(limit_tokens=120, pid="q")], [Totals(), Totals()], 1000,
     20),  # the tightest line
    ([line(limit_tokens=120, enforce=False)], [Totals()], 1000, 1000),  # not enforced
    ([line(limit_tokens=10**6)], [Totals()], 30, 30),  # never past the cap
    ([line(requests=1)], [Totals(requests=1)], 1000, 0),  # a call limit: nothing fits
    ([line(limit_tokens=150)], [Totals(reserved_tokens=10**9)], 1000, 0),
])
def test_fitting_output(lines, totals, cap, fits):
    assert planning.fitting_output(lines, totals, 100, cap, PRICE) == fits
    if fits:  # the fitted hold passes and one more token would not (unless capped)
        assert planning.refused_index(lines, totals, planning.hold(100, fits, PRICE)) is None
        if fits < cap:
            assert planning.refused_index(lines, totals,
                                          planning.hold(100, fits + 1, PRICE)) is not None


@pytest.mark.parametrize(("held", "relayed", "cap", "slice_tokens", "more"), [
    (256, 0, 1000, 256, 0),  # covered
    (256, 256, 1000, 256, 0),
    (256, 257, 1000, 256, 256),  # one slice ahead
    (256, 800, 1000, 256, 744),  # whole slices, but never past the cap
    (256, 600, 5000, 256, 512),
    (1000, 1200, 1000, 256, 0),  # at the cap: the count erred, nothing more to hold
    (4, 5, 40, 0, 1),  # a slice of at least one token
])
def test_extension(held, relayed, cap, slice_tokens, more):
    assert planning.extension(held, relayed, cap, slice_tokens) == more


def test_the_refusal_message_names_every_limit_of_the_line():
    policy = BudgetPolicy(policy_id="p", name="team", type=PolicyType.HARD_LIMIT,
                          period=Period.DAILY, cost_limit=0.01, token_limit=500)
    ln = CounterLine("p:d:1", 10_000_000, 500, True, "p", limit_requests=10)
    totals = Totals(spent_nusd=9_000_000, spent_tokens=450, requests=3)
    message = planning.refusal_message(ln, totals, planning.hold(100, 50, PRICE), policy)
    assert message == (
        "Budget exceeded: daily hard limit team: $0.001000 of $0.010000 left, this request "
        "may cost up to $0.000045; 50 of 500 tokens left, this request may use up to 150; "
        "3 of 10 calls made")


def test_an_allocation_line_is_named_as_such():
    ln = CounterLine("alloc:a1", 100, None, True, "a1")
    assert planning.line_label(ln, None) == ("a1", "allocation")

"""`Store.extend`, on every backend: an incremental stream's hold grows atomically on all its
lines or none, by the reserve rule, and its settlement, release and dead-process charge take
the extended amounts."""

import asyncio

import pytest

from budget_proxy.store.base import Store, UsageQuery
from budget_proxy.testing.waiting import eventually
from tests.store.test_contract import held, line, record, res


async def test_an_extension_grows_the_hold_on_every_line_or_none(store: Store):
    a, b = line("a:d:1", 100), line("b:d:1", 60)
    r = res("1", (a.key, b.key), 40, 4)
    assert (await store.reserve(r, [a, b], 60)).ok
    grown = await store.extend(r, [a, b], 15, 2)
    assert grown.ok
    assert [(t.reserved_nusd, t.reserved_tokens, t.requests) for t in grown.totals] == [
        (55, 6, 1), (55, 6, 1)]
    refused = await store.extend(r, [a, b], 10, 1)  # b: 55 + 10 > 60
    assert not refused.ok and refused.refused_index == 1
    ta, tb = await store.totals([a.key, b.key])
    assert (ta.reserved_nusd, tb.reserved_nusd, ta.requests) == (55, 55, 1)  # nothing moved


async def test_a_call_limit_never_refuses_an_extension(store: Store):
    a = line("a:d:1", 100)
    capped = type(a)(a.key, 100, None, True, "a", None, limit_requests=1)
    r = res("1", (a.key,), 10)
    assert (await store.reserve(r, [capped], 60)).ok
    assert (await store.extend(r, [capped], 10, 0)).ok  # the call is already counted


async def test_settlement_and_release_take_the_extended_hold(store: Store):
    a = line("a:d:1", 1000)
    r1, r2 = res("1", (a.key,), 100, 10), res("2", (a.key,), 100, 10)
    assert (await store.reserve(r1, [a], 60)).ok and (await store.reserve(r2, [a], 60)).ok
    assert (await store.extend(r1, [a], 50, 5)).ok and (await store.extend(r2, [a], 70, 7)).ok
    assert await store.settle(r1, 120, 12, record("s1"))
    await store.release(r2)
    (t,) = await store.totals([a.key])
    assert (t.spent_nusd, t.spent_tokens, t.reserved_nusd, t.reserved_tokens) == (120, 12, 0, 0)


async def test_a_hold_that_is_gone_is_not_recreated(store: Store):
    a = line("a:d:1", 1000)
    r = res("1", (a.key,), 100, 10)
    assert (await store.reserve(r, [a], 60)).ok
    await store.release(r)
    gone = await store.extend(r, [a], 50, 5)
    assert not gone.ok and gone.refused_index is None
    (t,) = await store.totals([a.key])
    assert (t.reserved_nusd, t.reserved_tokens) == (0, 0)


@pytest.mark.parametrize(("cost", "tokens"), [(-5, -5), (2**63, 2**64)])
async def test_hostile_extension_amounts_are_clamped(store: Store, cost, tokens):
    a = line("a:d:1", None)
    r = res("1", (a.key,), 10, 1)
    assert (await store.reserve(r, [a], 60)).ok
    assert (await store.extend(r, [a], cost, tokens)).ok
    (t,) = await store.totals([a.key])
    assert t.reserved_nusd >= 10 and t.reserved_tokens >= 1  # never refunded


async def test_concurrent_extensions_never_pass_the_limit(store: Store):
    """Ten holds of 10 on a limit of 100, each extended by 10 in parallel, 20 times: the
    reserved amount ends exactly at the limit and never above."""
    a = line("a:d:1", 100)
    holds = [res(f"h{i}", (a.key,), 5) for i in range(10)]
    for r in holds:
        assert (await store.reserve(r, [a], 60)).ok
    results = await asyncio.gather(*[store.extend(r, [a], 1, 0) for r in holds * 10])
    assert sum(result.ok for result in results) == 50
    (t,) = await store.totals([a.key])
    assert t.reserved_nusd == 100


async def test_a_dead_process_extended_hold_is_charged_at_its_extended_amount(store: Store,
                                                                             reopen):
    a = line("a:d:1", 1000)
    dead = held("res_dead2", (a.key,), 300, 30)
    assert (await store.reserve(dead, [a], 0.2)).ok
    assert (await store.extend(dead, [a], 200, 20)).ok
    # the process dies here
    after = await reopen()

    async def charged() -> list:
        await after.reap_expired()
        return await after.list_usage(UsageQuery(limit=10))

    (rec,) = await eventually(charged)
    assert rec.status == "unsettled" and rec.total_cost == pytest.approx(500 / 1e9)
    (t,) = await after.totals([a.key])
    assert (t.spent_nusd, t.reserved_nusd) == (500, 0)

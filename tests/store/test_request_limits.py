"""Call limits (`request_limit`) on every backend: counted in the same atomic reserve as cost
and tokens, kept by a settlement, taken back by a release, durable across a restart."""

import asyncio

from budget_proxy.enforcement import CounterLine
from budget_proxy.store.base import Reservation, Store
from tests.store.test_contract import held


def calls_line(key: str, limit_requests: int | None, limit_tokens: int | None = None,
               enforce: bool = True) -> CounterLine:
    return CounterLine(key, None, limit_tokens, enforce, policy_id=key.split(":")[0],
                       limit_requests=limit_requests)


async def test_twenty_concurrent_calls_on_a_limit_of_three_exactly_three_pass(store: Store):
    a = calls_line("rl:n:1", 3)
    results = await asyncio.gather(*[
        store.reserve(Reservation(f"r{i}", (a.key,), 0, 1), [a], 60) for i in range(20)])
    assert sum(r.ok for r in results) == 3
    refused = [r for r in results if not r.ok]
    assert all(r.refused_index == 0 and r.totals[0].requests == 3 for r in refused)
    (t,) = await store.totals([a.key])
    assert t.requests == 3


async def test_release_takes_the_call_back_settle_keeps_it(store: Store):
    a = calls_line("rl:n:1", 2)
    one, two = Reservation("1", (a.key,), 5, 1), Reservation("2", (a.key,), 5, 1)
    assert (await store.reserve(one, [a], 60)).ok
    assert (await store.reserve(two, [a], 60)).ok
    assert not (await store.reserve(Reservation("3", (a.key,), 0, 0), [a], 60)).ok
    await store.release(two)
    await store.release(two)  # twice: never gives back more than was held
    assert (await store.totals([a.key]))[0].requests == 1
    assert await store.settle(one, 4, 1, None)
    (t,) = await store.totals([a.key])
    assert (t.requests, t.spent_nusd, t.reserved_nusd) == (1, 4, 0)
    assert (await store.reserve(Reservation("4", (a.key,), 0, 0), [a], 60)).ok
    assert not (await store.reserve(Reservation("5", (a.key,), 0, 0), [a], 60)).ok


async def test_a_refused_call_counts_nowhere_and_holds_without_calls_count_none(store: Store):
    a, b = calls_line("a:n:1", 10), calls_line("b:n:1", 0)
    refused = await store.reserve(Reservation("1", (a.key, b.key), 0, 0), [a, b], 60)
    assert not refused.ok and refused.refused_index == 1
    hold = Reservation("h", (a.key,), 0, 5, requests=0)  # an allocation's hold
    assert (await store.reserve(hold, [a], 60)).ok
    assert [t.requests for t in await store.totals([a.key, b.key])] == [0, 0]


async def test_unenforced_call_limits_count_but_never_refuse(store: Store):
    a = calls_line("a:n:1", 1, enforce=False)
    for i in range(3):
        assert (await store.reserve(Reservation(str(i), (a.key,), 0, 0), [a], 60)).ok
    assert (await store.totals([a.key]))[0].requests == 3


async def test_calls_and_tokens_on_one_line_both_hold(store: Store):
    a = calls_line("a:n:1", 5, limit_tokens=100)
    assert (await store.reserve(Reservation("1", (a.key,), 0, 90), [a], 60)).ok
    refused = await store.reserve(Reservation("2", (a.key,), 0, 20), [a], 60)
    assert not refused.ok  # tokens refuse though calls are left


async def test_settled_calls_survive_a_restart(store: Store, reopen):
    a = calls_line("a:d:1", 2)
    one = held("res_calls1", (a.key,), 10, 1)
    assert (await store.reserve(one, [a], 60)).ok
    assert await store.settle(one, 10, 1, None)
    after = await reopen()
    assert (await after.totals([a.key]))[0].requests == 1
    assert (await after.reserve(Reservation("2", (a.key,), 0, 0), [a], 60)).ok
    assert not (await after.reserve(Reservation("3", (a.key,), 0, 0), [a], 60)).ok

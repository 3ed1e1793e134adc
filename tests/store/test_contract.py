"""One contract, every backend: the store counts, reserves atomically, settles exactly."""

import asyncio

from budget_proxy.enforcement import CounterLine
from budget_proxy.models import Budget, BudgetPolicy, UsageRecord
from budget_proxy.store.base import Reservation, Store, UsageQuery


def line(key: str, limit_nusd: int | None = None, limit_tokens: int | None = None,
         enforce: bool = True) -> CounterLine:
    return CounterLine(key, limit_nusd, limit_tokens, enforce, policy_id=key.split(":")[0])


def res(rid: str, keys: tuple[str, ...], cost: int, tokens: int = 0) -> Reservation:
    return Reservation(rid, keys, cost, tokens)


def record(rid: str = "r", **kw) -> UsageRecord:
    return UsageRecord(record_id=rid, provider="openai", model="gpt-4o", **kw)


async def test_reserve_adds_to_every_line_or_none(store: Store):
    a, b = line("a:d:1", 100), line("b:d:1", 50)
    ok = await store.reserve(res("1", (a.key, b.key), 40, 4), [a, b], 60)
    assert ok.ok and [t.reserved_nusd for t in ok.totals] == [40, 40]
    refused = await store.reserve(res("2", (a.key, b.key), 20, 0), [a, b], 60)
    assert not refused.ok and refused.refused_index == 1
    totals = await store.totals([a.key, b.key])
    assert [t.reserved_nusd for t in totals] == [40, 40]  # nothing added on refusal
    assert [t.reserved_tokens for t in totals] == [4, 4]


async def test_exactly_at_the_limit_is_allowed(store: Store):
    a = line("a:d:1", 100)
    assert (await store.reserve(res("1", (a.key,), 100), [a], 60)).ok
    assert not (await store.reserve(res("2", (a.key,), 1), [a], 60)).ok


async def test_token_limits(store: Store):
    a = line("a:d:1", limit_tokens=10)
    assert (await store.reserve(res("1", (a.key,), 0, 10), [a], 60)).ok
    assert not (await store.reserve(res("2", (a.key,), 0, 1), [a], 60)).ok


async def test_unenforced_lines_count_but_never_refuse(store: Store):
    w = line("w:d:1", 10, enforce=False)
    result = await store.reserve(res("1", (w.key,), 100), [w], 60)
    assert result.ok and result.totals[0].reserved_nusd == 100


async def test_settle_moves_reserved_to_spent_and_releases_excess(store: Store):
    a = line("a:d:1", 1000)
    r = res("1", (a.key,), 500, 50)
    await store.reserve(r, [a], 60)
    assert await store.settle(r, 120, 12, record("rec1"))
    (t,) = await store.totals([a.key])
    assert (t.spent_nusd, t.reserved_nusd, t.spent_tokens, t.reserved_tokens) == (120, 0, 12, 0)
    records = await store.list_usage(UsageQuery())
    assert [x.record_id for x in records] == ["rec1"]


async def test_settle_is_idempotent_by_record_id(store: Store):
    a = line("a:d:1", 1000)
    r = res("1", (a.key,), 500)
    await store.reserve(r, [a], 60)
    assert await store.settle(r, 100, 0, record("same"))
    assert not await store.settle(r, 100, 0, record("same"))
    (t,) = await store.totals([a.key])
    assert t.spent_nusd == 100
    assert len(await store.list_usage(UsageQuery())) == 1


async def test_release_drops_the_reservation_without_spend(store: Store):
    a = line("a:d:1", 100)
    r = res("1", (a.key,), 100)
    await store.reserve(r, [a], 60)
    await store.release(r)
    await store.release(r)  # twice is harmless
    (t,) = await store.totals([a.key])
    assert (t.spent_nusd, t.reserved_nusd) == (0, 0)


async def test_settle_after_reap_still_charges(store: Store):
    a = line("a:d:1", 1000)
    r = res("1", (a.key,), 500)
    await store.reserve(r, [a], 0.05)
    await asyncio.sleep(0.1)
    assert await store.reap_expired() == 1
    assert await store.settle(r, 70, 7, record("late"))
    (t,) = await store.totals([a.key])
    assert (t.spent_nusd, t.reserved_nusd) == (70, 0)


async def test_reaper_releases_only_expired(store: Store):
    a = line("a:d:1", 1000)
    await store.reserve(res("old", (a.key,), 10), [a], 0.05)
    await store.reserve(res("new", (a.key,), 20), [a], 60)
    await asyncio.sleep(0.1)
    assert await store.reap_expired() == 1
    (t,) = await store.totals([a.key])
    assert t.reserved_nusd == 20


async def test_concurrent_reservations_never_pass_the_limit(store: Store):
    a = line("a:d:1", 1000)
    results = await asyncio.gather(*[
        store.reserve(res(f"r{i}", (a.key,), 30), [a], 60) for i in range(100)
    ])
    assert sum(r.ok for r in results) == 33  # exactly floor(1000 / 30)
    (t,) = await store.totals([a.key])
    assert t.reserved_nusd == 990


async def test_unknown_counters_are_zero(store: Store):
    (t,) = await store.totals(["nope:d:1"])
    assert (t.spent_nusd, t.reserved_nusd, t.spent_tokens, t.reserved_tokens) == (0, 0, 0, 0)


async def test_policies_and_budgets_crud_bumps_version(store: Store):
    v0 = await store.config_version()
    p = BudgetPolicy(policy_id="p1", cost_limit=5)
    await store.put_policy(p)
    assert await store.config_version() != v0
    await store.put_policy(p.model_copy(update={"cost_limit": 7.0}))
    policies = await store.list_policies()
    assert [(x.policy_id, x.cost_limit) for x in policies] == [("p1", 7.0)]
    assert (await store.get_policy("p1")) is not None
    assert await store.delete_policy("p1")
    assert not await store.delete_policy("p1")
    assert await store.list_policies() == []
    await store.put_budget(Budget(budget_id="b1", name="team"))
    assert [b.name for b in await store.list_budgets()] == ["team"]
    assert await store.delete_budget("b1")


async def test_usage_filters_and_paging(store: Store):
    a = line("a:d:1", None)
    for i in range(5):
        r = res(f"x{i}", (a.key,), 0)
        await store.reserve(r, [a], 60)
        await store.settle(r, i, i, record(f"rec{i}", component="c1" if i % 2 else "c2"))
    c1 = await store.list_usage(UsageQuery(component="c1"))
    assert sorted(x.record_id for x in c1) == ["rec1", "rec3"]
    page = await store.list_usage(UsageQuery(limit=2, offset=1, newest_first=False))
    assert [x.record_id for x in page] == ["rec1", "rec2"]

"""One contract, every backend: the store counts, reserves atomically, settles exactly."""

import asyncio
import contextlib
import time

import pytest

from budget_proxy.enforcement import CounterLine
from budget_proxy.loops import every
from budget_proxy.models import Budget, BudgetPolicy, UsageRecord
from budget_proxy.store.base import (
    MAX_AMOUNT_NUSD,
    MAX_AMOUNT_TOKENS,
    Reservation,
    Store,
    StoreError,
    UsageQuery,
    intent_json,
    record_id_of,
)
from budget_proxy.testing.waiting import eventually


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


# errors, hostile values ---------------------------------------------------------------------
async def test_backend_errors_surface_as_store_error(store: Store):
    # a doc id the backend cannot encode: sqlite3 / redis-py raise UnicodeEncodeError inside
    with pytest.raises(StoreError) as raised:
        await store.get_doc("policy", "bad\udcff")
    assert isinstance(raised.value.__cause__, UnicodeError)
    with pytest.raises(StoreError):
        await store.put_doc("policy", "p", "body \ud800")
    assert await store.get_doc("policy", "p") is None  # and the store still answers


def hostile_record(rid: str) -> UsageRecord:
    return record(rid, component="comp\udcff", session_id="s\ud800x", input_tokens=10**20,
                  metadata={"note": "\udc80", "obj": object()})


async def test_hostile_records_are_stored_escaped_and_never_stall_the_others(store: Store):
    a = line("a:d:1", None)
    good = [res(f"g{i}", (a.key,), 0) for i in range(5)]
    bad = res("bad", (a.key,), 0)
    for r in (*good, bad):
        assert (await store.reserve(r, [a], 60)).ok
    results = await asyncio.gather(
        *(store.settle(r, 10, 1, record(f"ok{i}")) for i, r in enumerate(good)),
        store.settle(bad, 2**70, 2**70, hostile_record("hostile")),  # past 64 bits, clamped
    )
    assert results == [True] * 6
    records = await asyncio.wait_for(store.list_usage(UsageQuery(limit=10)), 5)
    assert sorted(x.record_id for x in records) == ["hostile", *(f"ok{i}" for i in range(5))]
    (hostile,) = [x for x in records if x.record_id == "hostile"]
    assert hostile.component == "comp\\udcff" and hostile.session_id == "s\\ud800x"
    (t,) = await asyncio.wait_for(store.totals([a.key]), 5)
    assert (t.spent_nusd, t.spent_tokens) == (50 + MAX_AMOUNT_NUSD, 5 + MAX_AMOUNT_TOKENS)
    assert (t.reserved_nusd, t.reserved_tokens) == (0, 0)
    found = await asyncio.wait_for(store.list_usage(UsageQuery(component="comp\udcff")), 5)
    assert [x.record_id for x in found] == ["hostile"]


@pytest.mark.parametrize(("cost", "tokens"), [(-5, -5), (2**63, 2**64), (10**30, 10**30)])
async def test_reservation_amounts_are_clamped_to_int64_safe_bounds(store: Store, cost, tokens):
    a = line("a:s:sess\udcff", None)  # a counter key from a header that was not UTF-8
    r = res("r", (a.key,), cost, tokens)
    assert 0 <= r.cost_nusd <= MAX_AMOUNT_NUSD and 0 <= r.tokens <= MAX_AMOUNT_TOKENS
    assert (await store.reserve(r, [a], 60)).ok
    (t,) = await store.totals([a.key])
    assert (t.reserved_nusd, t.reserved_tokens) == (r.cost_nusd, r.tokens)
    assert await store.settle(r, cost, tokens, record("clamped"))
    (t,) = await store.totals([a.key])
    assert (t.spent_nusd, t.spent_tokens, t.reserved_nusd) == (r.cost_nusd, r.tokens, 0)


# holds of dead processes ----------------------------------------------------------------------
def held(rid: str, keys: tuple[str, ...], cost: int, tokens: int = 0) -> Reservation:
    """A request hold with its intent, as `Proxy.reservation_for` makes it."""
    return Reservation(rid, keys, cost, tokens, intent=intent_json({
        "record_id": record_id_of(rid), "provider": "openai", "model": "gpt-4o",
        "component": "billing", "session_id": "s1", "input_tokens": tokens,
        "total_tokens": tokens, "total_cost": cost / 1e9}))


async def charged_records(store: Store) -> list[UsageRecord]:
    return await store.list_usage(UsageQuery(limit=1000))


async def test_a_dead_process_hold_is_charged_as_unsettled_with_its_record(store: Store, reopen):
    a = line("a:d:1", 1000)
    dead = held("res_dead1", (a.key,), 300, 30)
    assert (await store.reserve(dead, [a], 0.2)).ok
    # the process dies here: no settlement, no close, no renewal of the hold
    after = await reopen()  # embedded: charged at start-up; Redis: by a reaper, once due

    async def reaped() -> list[UsageRecord]:
        await after.reap_expired()
        return await charged_records(after)

    assert await eventually(reaped)
    (rec,) = await charged_records(after)
    assert (rec.record_id, rec.status, rec.component, rec.session_id) == (
        record_id_of("res_dead1"), "unsettled", "billing", "s1")
    assert rec.total_cost == pytest.approx(300e-9)
    (t,) = await after.totals([a.key])
    assert (t.spent_nusd, t.reserved_nusd, t.spent_tokens, t.reserved_tokens) == (300, 0, 30, 0)
    assert await after.reap_expired() == 0  # charged once


async def test_a_hold_without_intent_is_released_not_charged(store: Store):
    a = line("a:d:1", 1000)
    await store.reserve(res("alloc_hold", (a.key,), 300), [a], 0.05)
    await asyncio.sleep(0.1)
    assert await store.reap_expired() == 1
    (t,) = await store.totals([a.key])
    assert (t.spent_nusd, t.reserved_nusd) == (0, 0)
    assert await charged_records(store) == []


async def test_a_live_hold_is_renewed_past_its_ttl_and_lapses_without_renewal(store: Store):
    a = line("a:d:1", 1000)
    live = held("res_live", (a.key,), 400, 4)
    assert (await store.reserve(live, [a], 1.0)).ok
    renewal = asyncio.create_task(every(1.0 / 3, store.renew_holds, "renewal"))
    try:
        kept_until = time.monotonic() + 3.0  # three TTLs
        while time.monotonic() < kept_until:
            assert await store.reap_expired() == 0
            await asyncio.sleep(0.1)  # the reaper's cadence
    finally:
        renewal.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await renewal
    (t,) = await store.totals([a.key])
    assert (t.spent_nusd, t.reserved_nusd) == (0, 400)
    assert store.live_holds() == 1
    # without renewal the same hold lapses and is charged (this process no longer renews it)
    assert await eventually(store.reap_expired)
    (t,) = await store.totals([a.key])
    assert (t.spent_nusd, t.reserved_nusd) == (400, 0)
    assert [r.status for r in await charged_records(store)] == ["unsettled"]


async def test_renewal_never_recreates_a_settled_hold(store: Store):
    a = line("a:d:1", 1000)
    r = held("res_done", (a.key,), 100)
    await store.reserve(r, [a], 60)
    await store.settle(r, 40, 0, record(record_id_of("res_done")))
    assert store.live_holds() == 0
    assert await store.renew_holds() == 0
    (t,) = await store.totals([a.key])
    assert (t.spent_nusd, t.reserved_nusd) == (40, 0)


async def test_real_settlement_and_dead_hold_charge_race_exactly_once(store: Store, reopen):
    other = await reopen()  # another replica's reaper (embedded: the same process's reaper)
    reapers = [store, other] if store.kind == "redis" else [store]
    a = line("a:d:1", None)
    holds = [held(f"res_race{i}", (a.key,), 1000, 10) for i in range(12)]
    for h in holds:
        assert (await store.reserve(h, [a], 0.05)).ok
    await asyncio.sleep(0.1)  # past every deadline, and nothing renews them
    await asyncio.gather(
        *(store.settle(h, 300, 3, record(record_id_of(h.reservation_id))) for h in holds),
        *(reaper.reap_expired() for reaper in reapers for _ in range(2)))
    records = await charged_records(store)
    assert sorted(r.record_id for r in records) == sorted(
        record_id_of(h.reservation_id) for h in holds)  # one record each, never two
    expected_spent = sum(300 if r.status == "ok" else 1000 for r in records)
    (t,) = await store.totals([a.key])
    assert (t.spent_nusd, t.reserved_nusd) == (expected_spent, 0)
    assert t.spent_tokens == sum(3 if r.status == "ok" else 10 for r in records)


async def test_a_call_counted_before_its_settlement_is_spent_once(store: Store):
    """`account` (the proxy's at the answer) then `settle` with the record: one spend, at
    the settlement's amounts, and one record, whatever the backend does at `account`."""
    a = line("a:d:1", 1000)
    r = held("res_acc1", (a.key,), 500, 50)
    assert (await store.reserve(r, [a], 60)).ok
    store.account(r, 120, 12)
    assert await store.settle(r, 150, 15, record(record_id_of("res_acc1")))
    (t,) = await store.totals([a.key])
    assert (t.spent_nusd, t.reserved_nusd, t.spent_tokens, t.reserved_tokens) == (150, 0, 15, 0)
    assert not await store.settle(r, 150, 15, record(record_id_of("res_acc1")))  # once
    (t,) = await store.totals([a.key])
    assert (t.spent_nusd, t.spent_tokens, t.requests) == (150, 15, 1)
    assert len(await charged_records(store)) == 1
    assert not store.account(res("res_never", (a.key,), 10), 10, 1)  # no hold here: nothing
    (t,) = await store.totals([a.key])
    assert (t.spent_nusd, t.reserved_nusd) == (150, 0)


async def test_a_counted_call_whose_process_died_before_its_settlement_is_charged_once(
        store: Store, reopen):
    a = line("a:d:1", 1000)
    dead = held("res_acc_dead", (a.key,), 300, 30)
    assert (await store.reserve(dead, [a], 0.2)).ok
    store.account(dead, 100, 10)
    # the process dies here: the settlement never written
    after = await reopen()

    async def reaped() -> list[UsageRecord]:
        await after.reap_expired()
        return await charged_records(after)

    (rec,) = await eventually(reaped)
    assert (rec.record_id, rec.status) == (record_id_of("res_acc_dead"), "unsettled")
    (t,) = await after.totals([a.key])
    assert (t.spent_nusd, t.reserved_nusd, t.spent_tokens) == (300, 0, 30)  # at its hold

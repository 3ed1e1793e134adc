"""Token allocations: a long-lived hold on the budgets for one context, drawn down by requests.

An allocation of N tokens for a context (`context_id`, a component, optionally a provider,
model, tier and task type) works in three steps.

**Create: hold.** The policies that cover the allocation (those whose scope matches it, in
the budget it names, if any) are resolved to their current counter lines, exactly as a
request would be. On each covered line the allocation places a *hold*: an ordinary store
reservation of N tokens (and, when the allocation names a priced model, N tokens at that
model's dearer per-token rate in cost), with a deadline just past the allocation's expiry.
Each hold is checked like any request, so an allocation the budgets cannot cover is refused
(and the holds already placed are released). A line with a cost limit is covered only when
the allocation has a cost to hold; otherwise requests keep being checked against it as usual.

**Draw: one atomic reserve.** A request carrying `X-Budget-Allocation` (or `X-Budget-Context`
of an active allocation) reserves, in the same single `reserve` call as any request:
- `alloc:{id}`, an enforced line limited to N tokens (and to the held cost), so requests stop
  at N (each reserving its worst case, as everywhere), across replicas;
- its ordinary lines, except those the allocation holds: the hold has already taken those
  tokens out of the budget, so charging the request there too would count it twice. Each
  skipped line is replaced by a tracker `alloc:{id}:held:{line key}` (no limit, not
  enforced) that records how much of the held line the allocation's requests actually used.
  A policy window that rolled over since creation is a different key, not held, so it is
  charged normally.
A request that names no component (no `X-Budget-Component`, no virtual key) is doing the
allocation's work and is charged to the allocation's component.

**Release or expiry: hand back.** Releasing first *closes* the allocation atomically: N
tokens of spend are added to `alloc:{id}` (an idempotent settlement), so every later draw is
refused by the store itself, whichever replica it reaches. Once no request under it is in
flight, each hold is settled at what its tracker recorded: the used part becomes spend on the
budget line, the unused rest is released back to it. Settlements are idempotent by
reservation id, so a release retried on several replicas (or by the sweeper) counts once.

While active, a held budget line shows the whole hold as *reserved*; after release it shows
what the allocation's requests used as *spent*. Expiry is a release done by the sweeper
(`sweep`). If the process is gone past the hold's deadline, the reaper drops the holds: the
budget then never sees the allocation's use, but every usage record is still kept.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Annotated, Any
from zoneinfo import ZoneInfo

import orjson
from pydantic import BaseModel, ConfigDict, Field, field_validator

from budget_proxy.enforcement import CounterLine, RequestScope, Totals, counter_lines
from budget_proxy.events import EventBus
from budget_proxy.models import (
    Bound,
    BudgetPolicy,
    Metadata,
    PositiveSeconds,
    PositiveTokens,
    Tier,
    Timestamp,
    new_id,
    nusd_to_usd,
    utcnow,
)
from budget_proxy.pricing import PriceCatalog
from budget_proxy.schemas import assume_utc
from budget_proxy.store.base import Reservation, Store
from budget_proxy.usage import worst_case_nusd

log = logging.getLogger(__name__)

ALLOCATION_KIND = "allocation"  # document per allocation
CONTEXT_KIND = "allocation_context"  # context_id -> allocation_id of its active allocation
OPEN_KIND = "allocation_open"  # allocations not yet finalized: what the sweeper looks at
NO_EXPIRY_HOLD_S = 365 * 86400  # hold deadline of an allocation that never expires
HOLD_GRACE_S = 3600  # holds outlive the allocation's expiry by this much, for the sweeper


def allocation_key(allocation_id: str) -> str:
    return f"alloc:{allocation_id}"


def tracker_key(allocation_id: str, held_key: str) -> str:
    """Shares the allocation's `alloc:{id}` prefix: stores group (Redis: one hash tag) by it."""
    return f"alloc:{allocation_id}:held:{held_key}"


class AllocationState(StrEnum):
    ACTIVE = "active"
    RELEASED = "released"
    EXPIRED = "expired"


class AllocationRequest(BaseModel):
    """Body of `POST /api/allocations` (seed field names)."""

    model_config = ConfigDict(extra="forbid")

    context_id: str = Field(min_length=1, description="The context whose requests draw on it.")
    component: str = Field(min_length=1)
    tokens_allocated: PositiveTokens = Field(description="Tokens held for the context.")
    tier: Tier | None = None
    provider: str | None = None
    model: str | None = None
    task_type: str | None = None
    priority: Annotated[int, Bound(0, 1000)] = Field(
        5, description="Stored and reported; higher first.")
    budget_id: str | None = Field(
        None, description="Hold only on this budget's policies (default: every budget's)."
    )
    expiration_time: Timestamp | None = None
    ttl_s: PositiveSeconds | None = Field(None, description="Expire this many seconds from now.")
    metadata: Metadata = Field(default_factory=dict)

    _utc = field_validator("expiration_time")(assume_utc)

    @field_validator("tier", mode="before")
    @classmethod
    def _tier_any_case(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value


class AllocationHold(BaseModel):
    """One budget counter line an allocation holds tokens (and cost) on."""

    policy_id: str
    key: str
    reservation_id: str
    cost_nusd: int
    tokens: int


class BudgetAllocation(BaseModel):
    """An allocation as stored and reported; token figures are live when read."""

    model_config = ConfigDict(extra="ignore")

    allocation_id: str = Field(default_factory=lambda: new_id("alloc"))
    budget_id: str | None = None
    context_id: str
    component: str
    tokens_allocated: int
    tokens_used: int = 0
    tokens_reserved: int = Field(0, description="Held by requests in flight.")
    remaining_tokens: int = 0
    cost_allocated: float | None = Field(None, description="Cost held (USD), priced models.")
    hold_cost_nusd: int = Field(0, description="Cost held per line, nano-USD (0: tokens only).")
    cost_used: float = 0.0
    tier: Tier | None = None
    provider: str | None = None
    model: str | None = None
    task_type: str | None = None
    priority: int = 5
    is_active: bool = True
    state: AllocationState = AllocationState.ACTIVE
    creation_time: datetime = Field(default_factory=utcnow)
    expiration_time: datetime | None = None
    released_at: datetime | None = None
    finalized: bool = False
    holds: list[AllocationHold] = Field(default_factory=list)
    metadata: dict[str, Any] = Field(default_factory=dict)

    @property
    def cost_limit_nusd(self) -> int | None:
        return self.hold_cost_nusd or None

    def expired(self, now: datetime) -> bool:
        return self.expiration_time is not None and self.expiration_time <= now

    def with_totals(self, totals: Totals) -> BudgetAllocation:
        """This allocation with its live figures from the `alloc:{id}` counter."""
        if self.finalized:
            return self
        closed = 0 if self.state is AllocationState.ACTIVE else self.tokens_allocated
        used = max(0, totals.spent_tokens - closed)
        in_flight = totals.reserved_tokens
        return self.model_copy(update={
            "tokens_used": used, "tokens_reserved": in_flight,
            "remaining_tokens": max(0, self.tokens_allocated - used - in_flight)
            if self.state is AllocationState.ACTIVE else 0,
            "cost_used": nusd_to_usd(totals.spent_nusd),
        })


@dataclass(frozen=True, slots=True)
class AllocationRefused:
    """Creation refused: the covered line that could not hold the tokens."""

    policy_id: str
    message: str


@dataclass(frozen=True, slots=True)
class DrawPlan:
    """The counter lines of a request after drawing on its allocation (if any)."""

    lines: list[CounterLine]
    allocation: BudgetAllocation | None = None
    refusal: str | None = None  # the named allocation cannot be drawn on: why


# the request path -----------------------------------------------------------------------
async def load(store: Store, allocation_id: str) -> BudgetAllocation | None:
    body = await store.get_doc(ALLOCATION_KIND, allocation_id)
    return None if body is None else BudgetAllocation.model_validate_json(body)


async def lookup(
    store: Store, allocation_id: str | None, context_id: str | None
) -> tuple[BudgetAllocation | None, str | None]:
    """The allocation a request names, or the active one of its context; with the reason it
    cannot be drawn on when it was named explicitly and is unknown, released or expired."""
    if allocation_id:
        alloc = await load(store, allocation_id)
        if alloc is None:
            return None, f"allocation {allocation_id} does not exist"
        if alloc.state is not AllocationState.ACTIVE:
            return alloc, f"allocation {allocation_id} is {alloc.state.value}"
        if alloc.expired(store.now()):
            return alloc, f"allocation {allocation_id} is expired"
        return alloc, None
    if context_id:
        body = await store.get_doc(CONTEXT_KIND, context_id)
        if body is None:
            return None, None
        alloc = await load(store, orjson.loads(body)["allocation_id"])
        if alloc is None or alloc.state is not AllocationState.ACTIVE:
            return None, None
        if alloc.expired(store.now()):
            return alloc, f"allocation {alloc.allocation_id} of context {context_id} is expired"
        return alloc, None
    return None, None


def drawn_lines(alloc: BudgetAllocation, lines: Sequence[CounterLine]) -> list[CounterLine]:
    """`lines` drawing on `alloc`: the allocation's own enforced line first (so a spent
    allocation is what a refusal names), held lines swapped for their trackers."""
    held = {h.key for h in alloc.holds}
    aid = alloc.allocation_id
    out = [CounterLine(allocation_key(aid), alloc.cost_limit_nusd, alloc.tokens_allocated,
                       True, aid, None)]
    for line in lines:
        if line.key in held:
            out.append(CounterLine(tracker_key(aid, line.key), None, None, False, aid, None))
        else:
            out.append(line)
    return out


def covers(alloc: BudgetAllocation, scope: RequestScope | None) -> bool:
    """A call draws on an allocation only inside its tier, provider and model (each when
    set); a call outside them is charged to the budgets as if it had no allocation."""
    if scope is None:
        return True
    tier = alloc.tier.value if alloc.tier is not None else None
    return all(wanted is None or wanted == actual for wanted, actual in (
        (tier, scope.tier), (alloc.provider, scope.provider), (alloc.model, scope.model)))


async def plan_draw(
    store: Store, allocation_id: str | None, context_id: str | None,
    lines: Sequence[CounterLine], scope: RequestScope | None = None,
) -> DrawPlan:
    """What the proxy reserves for a request: unchanged lines when no allocation applies
    (none named, or the call is outside the allocation's tier, provider or model)."""
    if not allocation_id and not context_id:
        return DrawPlan(list(lines))
    alloc, refusal = await lookup(store, allocation_id, context_id)
    if refusal is not None:
        return DrawPlan(list(lines), alloc, refusal)
    if alloc is None or not covers(alloc, scope):
        return DrawPlan(list(lines))
    return DrawPlan(drawn_lines(alloc, lines), alloc)


# management -----------------------------------------------------------------------------
class Allocations:
    """Create, read, release and expire allocations (the admin API and the sweeper)."""

    def __init__(
        self, store: Store, catalog: PriceCatalog, tz: ZoneInfo, *,
        reservation_ttl_s: float = 600.0, events: EventBus | None = None,
    ) -> None:
        self.store = store
        self.catalog = catalog
        self.tz = tz
        self.reservation_ttl_s = reservation_ttl_s
        self.events = events

    def covered_lines(
        self, req: AllocationRequest, policies: Sequence[BudgetPolicy], hold_cost_nusd: int,
        tier: str | None,
    ) -> list[CounterLine]:
        scope = RequestScope(provider=req.provider or "", model=req.model or "",
                             component=req.component, tier=tier, task_type=req.task_type)
        mine = [p for p in policies if req.budget_id is None or p.budget_id == req.budget_id]
        lines = counter_lines(mine, scope, self.store.now(), self.tz)
        return [ln for ln in lines if ln.limit_nusd is None or hold_cost_nusd > 0]

    async def create(
        self, req: AllocationRequest, policies: Sequence[BudgetPolicy]
    ) -> BudgetAllocation | AllocationRefused:
        now = self.store.now()
        expiration = req.expiration_time
        if expiration is None and req.ttl_s is not None:
            expiration = now + timedelta(seconds=req.ttl_s)
        price = self.catalog.lookup(req.provider or "", req.model) if req.model else None
        tier = req.tier or (price.tier if price else None)
        n = req.tokens_allocated
        hold_cost = max(worst_case_nusd(n, 0, price), worst_case_nusd(0, n, price)) if price else 0
        lines = self.covered_lines(req, policies, hold_cost, tier)
        aid = new_id("alloc")
        hold_ttl_s = NO_EXPIRY_HOLD_S if expiration is None else max(
            1.0, (expiration - now).total_seconds()) + HOLD_GRACE_S
        holds: list[AllocationHold] = []
        try:
            for index, line in enumerate(lines):
                hold = AllocationHold(policy_id=line.policy_id, key=line.key,
                                      reservation_id=f"{aid}:hold:{index}",
                                      cost_nusd=hold_cost, tokens=n)
                result = await self.store.reserve(_hold_reservation(hold), [line], hold_ttl_s)
                if not result.ok:
                    await self._release_holds(holds)
                    return AllocationRefused(line.policy_id,
                                             _refusal_text(line, result.totals[0], hold))
                holds.append(hold)
            alloc = BudgetAllocation(
                allocation_id=aid, budget_id=req.budget_id, context_id=req.context_id,
                component=req.component, tokens_allocated=n, remaining_tokens=n,
                cost_allocated=nusd_to_usd(hold_cost) if hold_cost else None,
                hold_cost_nusd=hold_cost,
                tier=tier, provider=req.provider, model=req.model, task_type=req.task_type,
                priority=req.priority, creation_time=now, expiration_time=expiration,
                holds=holds, metadata=req.metadata,
            )
            await self._save(alloc)
            await self.store.put_doc(OPEN_KIND, aid, orjson.dumps({"allocation_id": aid}).decode())
            await self.store.put_doc(CONTEXT_KIND, req.context_id,
                                     orjson.dumps({"allocation_id": aid}).decode())
        except BaseException:
            await self._release_holds(holds)
            raise
        self._publish("allocation_created", alloc)
        return alloc

    async def get(self, allocation_id: str) -> BudgetAllocation | None:
        alloc = await load(self.store, allocation_id)
        if alloc is None:
            return None
        (totals,) = await self.store.totals([allocation_key(allocation_id)])
        return alloc.with_totals(totals)

    async def find(
        self, *, component: str | None = None, context_id: str | None = None,
        active: bool | None = None,
    ) -> list[BudgetAllocation]:
        """Allocations matching the filters, highest priority first, then newest."""
        allocs = [BudgetAllocation.model_validate_json(body)
                  for body in await self.store.list_docs(ALLOCATION_KIND)]
        allocs = [a for a in allocs
                  if (component is None or a.component == component)
                  and (context_id is None or a.context_id == context_id)
                  and (active is None or (a.state is AllocationState.ACTIVE) == active)]
        live = [a for a in allocs if not a.finalized]
        totals = await self.store.totals([allocation_key(a.allocation_id) for a in live])
        by_id = {a.allocation_id: a.with_totals(t) for a, t in zip(live, totals, strict=True)}
        out = [by_id.get(a.allocation_id, a) for a in allocs]
        out.sort(key=lambda a: (-a.priority, -a.creation_time.timestamp()))
        return out

    async def release(
        self, allocation_id: str, state: AllocationState = AllocationState.RELEASED
    ) -> BudgetAllocation | None:
        """Close the allocation (no further draws, atomically) and hand its unused tokens
        back as soon as nothing drawn on it is in flight. Releasing twice is harmless."""
        alloc = await load(self.store, allocation_id)
        if alloc is None:
            return None
        if alloc.state is AllocationState.ACTIVE:
            close = Reservation(f"{allocation_id}:close", (allocation_key(allocation_id),), 0,
                                alloc.tokens_allocated)
            await self.store.settle(close, 0, alloc.tokens_allocated, None)
            alloc = alloc.model_copy(update={"state": state, "is_active": False,
                                             "released_at": self.store.now()})
            await self._save(alloc)
            body = await self.store.get_doc(CONTEXT_KIND, alloc.context_id)
            if body is not None and orjson.loads(body)["allocation_id"] == allocation_id:
                await self.store.delete_doc(CONTEXT_KIND, alloc.context_id)
            self._publish(f"allocation_{state.value}", alloc)
        await self.finalize(alloc)
        return await self.get(allocation_id)

    async def finalize(self, alloc: BudgetAllocation) -> bool:
        """Settle each hold at what its tracker recorded; waits (returns False) while a
        request drawn on the allocation is in flight, unless that is past any reservation's
        deadline (the reaper has dropped it by then)."""
        if alloc.finalized:
            return True
        aid = alloc.allocation_id
        trackers = await self.store.totals([tracker_key(aid, h.key) for h in alloc.holds])
        (own,) = await self.store.totals([allocation_key(aid)])
        in_flight = own.reserved_tokens > 0 or any(t.reserved_tokens for t in trackers)
        released_at = alloc.released_at or self.store.now()
        overdue = self.store.now() - released_at > timedelta(seconds=self.reservation_ttl_s + 60)
        if in_flight and not overdue:
            return False
        for hold, used in zip(alloc.holds, trackers, strict=True):
            await self.store.settle(_hold_reservation(hold), used.spent_nusd, used.spent_tokens,
                                    None)
        final = alloc.with_totals(own).model_copy(update={
            "finalized": True, "remaining_tokens": 0, "tokens_reserved": 0})
        await self._save(final)
        await self.store.delete_doc(OPEN_KIND, aid)
        return True

    async def sweep(self) -> int:
        """Expire allocations past their expiration time and finish pending releases;
        returns how many allocations were expired. Safe on every replica at once."""
        expired = 0
        now = self.store.now()
        for body in await self.store.list_docs(OPEN_KIND):
            aid = orjson.loads(body)["allocation_id"]
            alloc = await load(self.store, aid)
            if alloc is None:
                await self.store.delete_doc(OPEN_KIND, aid)
            elif alloc.state is AllocationState.ACTIVE:
                if alloc.expired(now):
                    await self.release(aid, AllocationState.EXPIRED)
                    expired += 1
            else:
                await self.finalize(alloc)
        return expired

    async def _save(self, alloc: BudgetAllocation) -> None:
        await self.store.put_doc(ALLOCATION_KIND, alloc.allocation_id, alloc.model_dump_json())

    async def _release_holds(self, holds: Sequence[AllocationHold]) -> None:
        for hold in holds:
            try:
                await self.store.release(_hold_reservation(hold))
            except Exception:  # the reaper drops it at its deadline
                log.exception("could not release hold %s", hold.reservation_id)

    def _publish(self, event_type: str, alloc: BudgetAllocation) -> None:
        if self.events is not None:
            self.events.publish("allocations", event_type, alloc.model_dump(mode="json"))


def _hold_reservation(hold: AllocationHold) -> Reservation:
    return Reservation(hold.reservation_id, (hold.key,), hold.cost_nusd, hold.tokens,
                       requests=0)  # a hold on tokens, not a call


def _refusal_text(line: CounterLine, totals: Totals, hold: AllocationHold) -> str:
    parts = []
    if line.limit_tokens is not None:
        left = max(0, line.limit_tokens - totals.used_tokens)
        parts.append(f"{left} of {line.limit_tokens} tokens left, {hold.tokens} requested")
    if line.limit_nusd is not None:
        left_usd = nusd_to_usd(max(0, line.limit_nusd - totals.used_nusd))
        parts.append(f"${left_usd:.6f} of ${nusd_to_usd(line.limit_nusd):.6f} left, "
                     f"${nusd_to_usd(hold.cost_nusd):.6f} requested")
    return f"policy {line.policy_id} cannot cover the allocation: " + "; ".join(parts)

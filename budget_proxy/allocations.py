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

**Priority: who is served first.** When the budgets cannot cover a new allocation, active
allocations of *lower* priority holding the same budget lines give up unused tokens until it
fits: lowest priority first, the newest first within a priority, each only what is still
short (`preemption_plan`, pure). An allocation of equal or higher priority is never touched,
and nothing is touched unless the lower ones together can cover the shortfall; otherwise the
409 names the policy and the allocations that hold it. A pre-empted allocation stays active
with fewer tokens (at most down to what it has used and has in flight); its owner gets an
`allocation_preempted` event on the `allocations` topic and an alert. Shrinking uses the
store's ordinary calls, in an order that can only hold too much, never too little:
1. `alloc:{id}:yield:{k}` reserves the tokens given up on the allocation's own enforced line
   (so it succeeds only if they are unused, atomically against the allocation's draws) and
   is settled there: the allocation can never draw them again;
2. each hold is replaced: the smaller hold is reserved first (unenforced: those tokens were
   already held), the document saved, then the old hold released;
3. the new allocation's holds are reserved as always, enforced: if another request took the
   freed tokens in between, it is refused (409) like any allocation that does not fit.
The races that remain cost availability, never budget: between 2's reserve and release a
line briefly counts both holds (requests may be refused that a moment later would pass); a
process dying inside 2 leaves a hold that the reaper drops at its deadline (up to
`NO_EXPIRY_HOLD_S` for an allocation without expiry); a release of the victim on another
replica at the same moment can overwrite the shrunk document, whose replaced holds then wait
for the reaper; and in 3, when a request or another replica's allocation took the freed
tokens first, the victims stay shrunk and the new allocation is refused (creations in one
process are serialized, so this needs two replicas or requests in between).

While active, a held budget line shows the whole hold as *reserved*; after release it shows
what the allocation's requests used as *spent*. Expiry is a release done by the sweeper
(`sweep`). If the process is gone past the hold's deadline, the reaper drops the holds: the
budget then never sees the allocation's use, but every usage record is still kept.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any
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

if TYPE_CHECKING:
    from budget_proxy.alerts import Alerts

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
        5, description="Higher is served first: when the budgets cannot cover this "
        "allocation, active allocations of lower priority on the same budgets give up "
        "unused tokens (lowest priority, newest first) until it fits.")
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


class Preemption(BaseModel):
    """Unused tokens one allocation gave up to a higher-priority one."""

    allocation_id: str = Field(description="The allocation that gave the tokens up.")
    by: str = Field(description="The allocation they went to.")
    tokens: int
    cost_nusd: int = 0


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
    tokens_yielded: int = Field(0, description="Tokens given up to higher priorities.")
    cost_yielded_nusd: int = 0
    preempted: list[Preemption] = Field(
        default_factory=list, description="Tokens this allocation took from lower priorities "
        "when it was created, and tokens it gave up to higher ones since.")
    metadata: dict[str, Any] = Field(default_factory=dict)

    @property
    def cost_limit_nusd(self) -> int | None:
        """Cost cap of the `alloc:{id}` line: what was ever held (yields are spend there)."""
        return (self.hold_cost_nusd + self.cost_yielded_nusd) or None

    @property
    def limit_tokens(self) -> int:
        """Token cap of the `alloc:{id}` line: what was ever held (yields are spend there)."""
        return self.tokens_allocated + self.tokens_yielded

    def expired(self, now: datetime) -> bool:
        return self.expiration_time is not None and self.expiration_time <= now

    def with_totals(self, totals: Totals) -> BudgetAllocation:
        """This allocation with its live figures from the `alloc:{id}` counter."""
        if self.finalized:
            return self
        closed = 0 if self.state is AllocationState.ACTIVE else self.tokens_allocated
        used = max(0, totals.spent_tokens - closed - self.tokens_yielded)
        in_flight = totals.reserved_tokens
        return self.model_copy(update={
            "tokens_used": used, "tokens_reserved": in_flight,
            "remaining_tokens": max(0, self.tokens_allocated - used - in_flight)
            if self.state is AllocationState.ACTIVE else 0,
            "cost_used": nusd_to_usd(max(0, totals.spent_nusd - self.cost_yielded_nusd)),
        })


@dataclass(frozen=True, slots=True)
class AllocationRefused:
    """Creation refused: the covered line that could not hold the tokens, and the active
    allocations of equal or higher priority holding it (they are never pre-empted)."""

    policy_id: str
    message: str
    blocking: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Shortfall:
    """What a budget line lacks to hold a new allocation."""

    key: str
    tokens: int
    cost_nusd: int = 0


@dataclass(frozen=True, slots=True)
class Holder:
    """An active allocation that may give tokens up: its unused tokens, on the lines it holds."""

    allocation_id: str
    priority: int
    created: datetime
    unused_tokens: int
    tokens_allocated: int
    hold_cost_nusd: int
    keys: frozenset[str]

    def cost_of(self, tokens: int) -> int:
        """Cost its hold gives back with `tokens` (at least; the shrink rounds in its favour)."""
        if self.tokens_allocated <= 0:
            return 0
        return self.hold_cost_nusd * tokens // self.tokens_allocated


def preemption_plan(
    priority: int, shortfalls: Sequence[Shortfall], holders: Sequence[Holder]
) -> list[tuple[str, int]] | None:
    """Which allocations give up how many unused tokens so every shortfall is covered:
    only those of lower `priority` holding a short line; lowest priority first, newest first
    within a priority; each gives what its lines still lack, at most its unused tokens.
    None when all of them together cannot cover it (then none should be touched)."""
    need = {s.key: [max(0, s.tokens), max(0, s.cost_nusd)] for s in shortfalls}
    plan: list[tuple[str, int]] = []
    order = sorted((h for h in holders if h.priority < priority and h.unused_tokens > 0),
                   key=lambda h: (h.priority, -h.created.timestamp(), h.allocation_id))
    for holder in order:
        short = [k for k in holder.keys if k in need and (need[k][0] > 0 or need[k][1] > 0)]
        if not short:
            continue
        take = 0
        for key in short:
            tokens, cost = need[key]
            for_cost = (math.ceil(cost * holder.tokens_allocated / holder.hold_cost_nusd)
                        if cost > 0 and holder.hold_cost_nusd > 0 else 0)
            take = max(take, tokens, for_cost)
        take = min(take, holder.unused_tokens)
        if take <= 0:
            continue
        for key in short:
            need[key][0] -= take
            need[key][1] -= holder.cost_of(take)
        plan.append((holder.allocation_id, take))
        if all(t <= 0 and c <= 0 for t, c in need.values()):
            return plan
    return plan if all(t <= 0 and c <= 0 for t, c in need.values()) else None


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
    out = [CounterLine(allocation_key(aid), alloc.cost_limit_nusd, alloc.limit_tokens,
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
        alerts: Alerts | None = None,
    ) -> None:
        self.store = store
        self.catalog = catalog
        self.tz = tz
        self.reservation_ttl_s = reservation_ttl_s
        self.events = events
        self.alerts = alerts
        # one creation at a time in this process, so a pre-emption's freed tokens go to the
        # allocation it was made for (across replicas, another may take them: a 409)
        self._creating = asyncio.Lock()

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
        hold_ttl_s = _hold_ttl_s(expiration, now)
        taken: list[Preemption] = []
        async with self._creating:
            placed = await self._hold(aid, "hold", lines, n, hold_cost, hold_ttl_s)
            if isinstance(placed, AllocationRefused):
                plan, refusal = await self._plan(req.priority, lines, n, hold_cost, placed)
                if plan is None:
                    return refusal
                taken = await self._preempt(plan, aid, req.priority)
                placed = await self._hold(aid, "hold2", lines, n, hold_cost, hold_ttl_s)
        if isinstance(placed, AllocationRefused):
            return placed
        holds = placed
        try:
            alloc = BudgetAllocation(
                allocation_id=aid, budget_id=req.budget_id, context_id=req.context_id,
                component=req.component, tokens_allocated=n, remaining_tokens=n,
                cost_allocated=nusd_to_usd(hold_cost) if hold_cost else None,
                hold_cost_nusd=hold_cost,
                tier=tier, provider=req.provider, model=req.model, task_type=req.task_type,
                priority=req.priority, creation_time=now, expiration_time=expiration,
                holds=holds, preempted=taken, metadata=req.metadata,
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

    async def _hold(
        self, aid: str, tag: str, lines: Sequence[CounterLine], tokens: int, cost_nusd: int,
        ttl_s: float,
    ) -> list[AllocationHold] | AllocationRefused:
        """One enforced hold per line, or none (those placed are released) and the refusal."""
        holds: list[AllocationHold] = []
        try:
            for index, line in enumerate(lines):
                hold = AllocationHold(policy_id=line.policy_id, key=line.key,
                                      reservation_id=f"{aid}:{tag}:{index}",
                                      cost_nusd=cost_nusd, tokens=tokens)
                result = await self.store.reserve(_hold_reservation(hold), [line], ttl_s)
                if not result.ok:
                    await self._release_holds(holds)
                    return AllocationRefused(line.policy_id,
                                             _refusal_text(line, result.totals[0], hold))
                holds.append(hold)
        except BaseException:
            await self._release_holds(holds)
            raise
        return holds

    async def _plan(
        self, priority: int, lines: Sequence[CounterLine], tokens: int, cost_nusd: int,
        refused: AllocationRefused,
    ) -> tuple[list[tuple[str, int]] | None, AllocationRefused]:
        """The pre-emption that lets the allocation fit, or None and the refusal naming the
        allocations of equal or higher priority holding the short lines."""
        totals = await self.store.totals([ln.key for ln in lines])
        shortfalls = [Shortfall(
            line.key,
            tokens - (line.limit_tokens - t.used_tokens) if line.limit_tokens is not None else 0,
            cost_nusd - (line.limit_nusd - t.used_nusd) if line.limit_nusd is not None else 0,
        ) for line, t in zip(lines, totals, strict=True)]
        short = {s.key for s in shortfalls if s.tokens > 0 or s.cost_nusd > 0}
        now = self.store.now()
        active = [a for a in await self.find(active=True) if not a.expired(now)]
        holders = [Holder(a.allocation_id, a.priority, a.creation_time, a.remaining_tokens,
                          a.tokens_allocated, a.hold_cost_nusd,
                          frozenset(h.key for h in a.holds))
                   for a in active if any(h.key in short for h in a.holds)]
        plan = preemption_plan(priority, shortfalls, holders)
        if plan is not None:
            return plan, refused
        blocking = tuple(h.allocation_id for h in holders if h.priority >= priority)
        message = refused.message
        if blocking:
            message += ("; held by allocations of equal or higher priority (never pre-empted): "
                        + ", ".join(f"{a.allocation_id} (priority {a.priority})"
                                    for a in active if a.allocation_id in blocking))
        lower = [h for h in holders if h.priority < priority]
        if lower:
            message += (f"; the {sum(h.unused_tokens for h in lower)} unused tokens of lower "
                        "priority allocations are not enough")
        return None, AllocationRefused(refused.policy_id, message, blocking)

    async def _preempt(
        self, plan: Sequence[tuple[str, int]], by: str, priority: int
    ) -> list[Preemption]:
        """Shrink each planned allocation; what was actually taken (an allocation that drew
        the tokens in the meantime gives nothing)."""
        taken = []
        for victim_id, tokens in plan:
            done = await self.shrink(victim_id, tokens, by=by, by_priority=priority)
            if done is not None:
                taken.append(done)
        return taken

    async def shrink(
        self, allocation_id: str, tokens: int, *, by: str, by_priority: int
    ) -> Preemption | None:
        """Take `tokens` unused tokens from an active allocation and hand them back to the
        budgets it holds (see the module docstring for the order of the steps). None when
        they are not unused any more, or the allocation is not active."""
        alloc = await load(self.store, allocation_id)
        if alloc is None or alloc.state is not AllocationState.ACTIVE or tokens <= 0:
            return None
        n = alloc.tokens_allocated
        tokens = min(tokens, n)
        new_n = n - tokens
        new_cost = alloc.hold_cost_nusd * new_n // n if n else 0
        cost = alloc.hold_cost_nusd - new_cost
        own = allocation_key(allocation_id)
        give = Reservation(f"{allocation_id}:yield:{new_id('y')}", (own,), cost, tokens,
                           requests=0)
        result = await self.store.reserve(
            give, [CounterLine(own, alloc.cost_limit_nusd, alloc.limit_tokens, True,
                               allocation_id)], self.reservation_ttl_s)
        if not result.ok:
            return None
        await self.store.settle(give, cost, tokens, None)
        now = self.store.now()
        ttl_s = _hold_ttl_s(alloc.expiration_time, now)
        tag = give.reservation_id.rsplit(":", 1)[1]
        smaller = [h.model_copy(update={"reservation_id": f"{allocation_id}:hold:{i}:{tag}",
                                        "tokens": new_n, "cost_nusd": new_cost})
                   for i, h in enumerate(alloc.holds)]
        for hold in smaller:  # those tokens were held already: not checked again
            await self.store.reserve(_hold_reservation(hold), [
                CounterLine(hold.key, None, None, False, hold.policy_id)], ttl_s)
        preemption = Preemption(allocation_id=allocation_id, by=by, tokens=tokens,
                                cost_nusd=cost)
        shrunk = alloc.model_copy(update={
            "tokens_allocated": new_n, "hold_cost_nusd": new_cost,
            "cost_allocated": nusd_to_usd(new_cost) if new_cost else None,
            "tokens_yielded": alloc.tokens_yielded + tokens,
            "cost_yielded_nusd": alloc.cost_yielded_nusd + cost,
            "holds": smaller, "preempted": [*alloc.preempted, preemption]})
        await self._save(shrunk)
        await self._release_holds(alloc.holds)
        (totals,) = await self.store.totals([own])
        live = shrunk.with_totals(totals)
        if self.events is not None:
            self.events.publish("allocations", "allocation_preempted", {
                **live.model_dump(mode="json"), "preemption": preemption.model_dump()})
        if self.alerts is not None:
            await self.alerts.raise_alert(
                "allocation_preempted",
                f"Allocation {allocation_id} (component {alloc.component}, context "
                f"{alloc.context_id}, priority {alloc.priority}) gave {tokens} unused tokens to "
                f"allocation {by} of priority {by_priority}; {new_n} tokens remain allocated.",
                dedupe_key=f"preempted|{give.reservation_id}",
                budget_id=alloc.budget_id, data={
                    "allocation_id": allocation_id, "component": alloc.component,
                    "context_id": alloc.context_id, "by": by, "tokens": tokens,
                    "tokens_allocated": new_n})
        return preemption

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


def _hold_ttl_s(expiration: datetime | None, now: datetime) -> float:
    """Holds last until the allocation's expiry plus a grace period for the sweeper."""
    if expiration is None:
        return NO_EXPIRY_HOLD_S
    return max(1.0, (expiration - now).total_seconds()) + HOLD_GRACE_S


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

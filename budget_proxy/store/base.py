"""The store interface: counters with atomic reservations, entities, usage records.

Kept small on purpose (like `limits.storage.base`): the decision logic lives in
`budget_proxy.enforcement`; a store only counts, stores and answers. Every backend passes the
same contract tests (`tests/store/test_contract.py`).

Errors cross the store boundary once: every public async method of a backend is wrapped (in
`Store.__init_subclass__`), so a backend failure (`backend_errors`) or a hostile value the
backend cannot take (`OverflowError`, `UnicodeError`) surfaces as one `StoreError`, and the
fail-open/fail-closed decision catches exactly one type.

Holds of dead processes are charged, not released. A request's `Reservation` carries an
*intent*: the JSON of the `unsettled` usage record that charges its hold if its process dies.
The record id of a metered call is derived from its reservation id (`record_id_of`), so the
real settlement and the charge of a dead hold share one id, and the store's idempotent settle
(exactly once by record id) lets whichever comes first win, never both. The TTL only frees
holds of dead processes: the store renews the holds of the requests still live in this
process (`renew_holds`, every `HoldTiming.renew_interval_s`). Holds without an intent
(allocations) are not renewed and are released at their deadline, as before.
"""

from __future__ import annotations

import functools
import inspect
import logging
import math
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar, TypeVar

import orjson
from pydantic import ValidationError

from budget_proxy.enforcement import CounterLine, ReserveResult, Totals
from budget_proxy.models import (
    MAX_TOKENS,
    MAX_USD,
    NUSD_PER_USD,
    Budget,
    BudgetPolicy,
    UsageRecord,
    nusd_to_usd,
)

log = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable[..., Awaitable[Any]])

# Every amount a store writes fits a signed 64-bit integer (SQLite, Redis HINCRBY) with room
# to add many: one reservation or settlement is clamped into these bounds.
MAX_AMOUNT_NUSD = MAX_USD * NUSD_PER_USD  # 1e18
MAX_AMOUNT_TOKENS = MAX_TOKENS  # 1e15, exact in Lua's doubles too
UNSETTLED = "unsettled"  # status of the usage record that charges a dead process's hold
MIN_SAFE_TTL_S = 3.0  # below this a loop stall of 2/3 of the TTL lets a live hold be charged


class StoreError(Exception):
    """The store could not be reached or answered with an error."""


# errors of a hostile value every backend turns into StoreError (a 64-bit overflow, text
# that cannot be encoded), besides each backend's own `backend_errors`
VALUE_ERRORS: tuple[type[BaseException], ...] = (OverflowError, UnicodeError)


def bounded(value: int, high: int) -> int:
    """`value` clamped into [0, high]: a negative amount never refunds, a huge one never
    overflows a 64-bit counter."""
    return 0 if value < 0 else high if value > high else value


def safe_text(text: str) -> str:
    """`text` encodable as UTF-8: lone surrogates (from bytes that were not UTF-8) are
    escaped as `\\udcxx`. Idempotent; ASCII (the usual case) is returned as is."""
    if text.isascii():
        return text
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def record_id_of(reservation_id: str) -> str:
    """The usage record id of a metered call: derived from its reservation id, so the real
    settlement and the charge of its dead hold are one record (settle is exactly once by it)."""
    return "use_" + reservation_id.removeprefix("res_")


@dataclass(frozen=True, slots=True)
class Reservation:
    """What one request holds on its counters until it settles or is released.

    Amounts are clamped into int64-safe bounds and counter keys made encodable on
    construction, so no backend ever sees a value it cannot store. `intent` (request holds)
    is the JSON of the `unsettled` usage record that charges this hold if its process dies;
    holds without one (allocations) are released at their deadline instead."""

    reservation_id: str
    keys: tuple[str, ...]
    cost_nusd: int
    tokens: int
    intent: str | None = None
    requests: int = 1  # calls this hold counts on its lines (0: an allocation's hold)

    def __post_init__(self) -> None:
        if not 0 <= self.cost_nusd <= MAX_AMOUNT_NUSD:
            object.__setattr__(self, "cost_nusd", bounded(self.cost_nusd, MAX_AMOUNT_NUSD))
        if not 0 <= self.tokens <= MAX_AMOUNT_TOKENS:
            object.__setattr__(self, "tokens", bounded(self.tokens, MAX_AMOUNT_TOKENS))
        if not all(key.isascii() for key in self.keys):
            object.__setattr__(self, "keys", tuple(safe_text(key) for key in self.keys))


def unsettled_record(reservation: Reservation) -> UsageRecord:
    """The usage record that charges a dead process's hold: its intent, charged at the hold.
    Never fails: an intent that does not load still gives a record (the call did happen)."""
    record_id = record_id_of(reservation.reservation_id)
    cost = nusd_to_usd(reservation.cost_nusd)
    if reservation.intent is not None:
        try:
            record = UsageRecord.model_validate_json(reservation.intent)
            return record.model_copy(update={
                "record_id": record_id, "status": UNSETTLED, "total_cost": cost})
        except ValidationError as exc:
            log.error("intent of %s does not load (%s); charged without its details",
                      reservation.reservation_id, exc.errors()[:1])
    return UsageRecord(record_id=record_id, provider="unknown", model="unknown",
                       status=UNSETTLED, total_tokens=reservation.tokens, total_cost=cost)


def intent_json(fields: dict[str, Any]) -> str:
    """The intent of a request hold: the JSON of its `unsettled` usage record (UsageRecord
    field names; `record_id` from `record_id_of`), timestamped now. Built with orjson, not
    pydantic, since it is made for every request; text that cannot be encoded is escaped."""
    fields = {**fields, "status": UNSETTLED, "timestamp": datetime.now(UTC)}
    try:
        return orjson.dumps(fields).decode()
    except TypeError:  # text that is not valid UTF-8
        return orjson.dumps(_escaped(fields)).decode()


def storable_record(record: UsageRecord) -> tuple[UsageRecord, str]:
    """(record, its JSON), with text that cannot be encoded (lone surrogates) escaped rather
    than refused: the call did happen and must be recorded and charged."""
    try:
        return record, record.model_dump_json()
    except ValueError:  # PydanticSerializationError: text that is not valid UTF-8
        clean = UsageRecord.model_validate(_escaped(record.model_dump()))
        return clean, clean.model_dump_json()


def _escaped(value: Any) -> Any:
    """JSON-safe copy: text made encodable, anything JSON cannot carry turned into text."""
    if isinstance(value, str):
        return safe_text(value)
    if isinstance(value, dict):
        return {safe_text(str(k)): _escaped(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_escaped(v) for v in value]
    if value is None or isinstance(value, bool | int | float | datetime):
        return value
    return safe_text(repr(value))


@dataclass(frozen=True, slots=True)
class HoldTiming:
    """How live holds are kept: renewed every `renew_interval_s` (a third of the TTL, so two
    renewals can be missed before a hold lapses); a hold older than `max_hold_s` (no request
    outlives its upstream timeout) is no longer renewed and is charged at its deadline."""

    ttl_s: float
    renew_interval_s: float
    max_hold_s: float
    warnings: tuple[str, ...] = ()


def hold_timing(ttl_s: float, upstream_timeout_s: float) -> HoldTiming:
    """Check the reservation TTL against the renewal interval and the upstream timeout.
    Raises ValueError (start-up refused) when the TTL cannot work; warns when it is short."""
    if not math.isfinite(ttl_s) or ttl_s <= 0:
        raise ValueError(f"BUDGET_RESERVATION_TTL_S must be a positive number of seconds, "
                         f"not {ttl_s}")
    timeout = upstream_timeout_s if math.isfinite(upstream_timeout_s) and upstream_timeout_s > 0 \
        else math.inf
    warnings: list[str] = []
    if ttl_s < MIN_SAFE_TTL_S:
        warnings.append(
            f"BUDGET_RESERVATION_TTL_S={ttl_s:g} is short: holds are renewed every "
            f"{ttl_s / 3:.3g} s, and an event loop stalled for {2 * ttl_s / 3:.3g} s lets "
            f"another replica charge a live request's hold at its worst case; use at least "
            f"{MIN_SAFE_TTL_S:g} s")
    if timeout == math.inf:
        warnings.append("BUDGET_UPSTREAM_TIMEOUT_S is not set: a request that never ends keeps "
                        "its hold renewed for the life of the process")
    return HoldTiming(ttl_s, ttl_s / 3, timeout + ttl_s, tuple(warnings))


@dataclass(slots=True)
class LiveHold:
    """A request hold of this process, renewed until it settles or is released."""

    reservation: Reservation
    ttl_s: float
    since_s: float = field(default_factory=time.monotonic)  # monotonic


@dataclass(frozen=True, slots=True)
class UsageQuery:
    component: str | None = None
    provider: str | None = None
    model: str | None = None
    context_id: str | None = None
    session_id: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    limit: int = 100
    offset: int = 0
    newest_first: bool = True
    extra: dict[str, str] = field(default_factory=dict)


def _wrap_errors(fn: F, errors: tuple[type[BaseException], ...]) -> F:
    @functools.wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return await fn(*args, **kwargs)
        except StoreError:
            raise
        except errors as exc:
            raise StoreError(f"{type(exc).__name__}: {exc}") from exc

    wrapper.__store_wrapped__ = True  # type: ignore[attr-defined]
    return wrapper  # type: ignore[return-value]


class Store(ABC):
    """Async store; `reserve` is the one step that must be atomic across every replica."""

    kind: str = "abstract"
    # what this backend raises when it fails; wrapped into StoreError with VALUE_ERRORS
    backend_errors: ClassVar[tuple[type[BaseException], ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Wrap every public async method (own or inherited, once) so that only StoreError
        leaves the store."""
        super().__init_subclass__(**kwargs)
        errors = (*cls.backend_errors, *VALUE_ERRORS)
        for name in dir(cls):
            fn = getattr(cls, name, None)
            if (name.startswith("_") or not inspect.iscoroutinefunction(fn)
                    or getattr(fn, "__isabstractmethod__", False)):
                continue
            original = getattr(fn, "__wrapped__", fn) if getattr(
                fn, "__store_wrapped__", False) else fn
            setattr(cls, name, _wrap_errors(original, errors))

    def __init__(self) -> None:
        self.max_hold_s = math.inf  # set from `hold_timing` by the application
        self._live: dict[str, LiveHold] = {}  # request holds of this process, by reservation id

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Open connections, create schemas, load scripts."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections; must be safe to call twice."""

    def now(self) -> datetime:
        """The one clock windows and deadlines are computed from."""
        return datetime.now(UTC)

    # counters -----------------------------------------------------------------------------
    @abstractmethod
    async def reserve(
        self, reservation: Reservation, lines: Sequence[CounterLine], ttl_s: float
    ) -> ReserveResult:
        """Add the reservation to every line, or to none if an enforced line would pass its
        limit (`enforcement.would_refuse`). Totals returned include this reservation.
        Returns only once the hold (with its intent) is durable; a hold with an intent is
        live in this process (renewed) until it settles or is released."""

    @abstractmethod
    async def settle(
        self, reservation: Reservation, cost_nusd: int, tokens: int, record: UsageRecord | None
    ) -> bool:
        """Turn the reservation into spend of the actual amounts and store the usage record.
        Idempotent by `record.record_id` (by the reservation id when there is no record):
        returns False if it was already applied, which includes the charge of the same hold
        as `unsettled` by a reaper (same record id: whichever comes first wins). Settles even
        if the hold was released or never made (fail open): the call did happen."""

    @abstractmethod
    async def extend(self, reservation: Reservation, lines: Sequence[CounterLine],
                     cost_nusd: int, tokens: int) -> ReserveResult:
        """Add `cost_nusd` and `tokens` to a live hold (an incremental stream's next slice)
        on every one of its lines, or on none if an enforced line would pass its limit: the
        rule of `reserve`, counting no call. The hold's own amounts grow with it, so its
        settlement, release, or charge as `unsettled` (its process died) takes the extended
        amounts. A hold that is gone (settled, released, reaped) is not recreated: refused,
        with `refused_index` None."""

    @abstractmethod
    async def release(self, reservation: Reservation) -> None:
        """Drop the reservation without spend (upstream error, request refused downstream)."""

    @abstractmethod
    async def totals(self, keys: Sequence[str]) -> list[Totals]:
        """Current totals of each counter key (zeros for unknown keys)."""

    @abstractmethod
    async def reap_expired(self) -> int:
        """Holds past their deadline: a request hold (with an intent) belongs to a dead
        process (live ones are renewed) and is charged at its held amounts with its
        `unsettled` record, unless its real settlement came first; a hold without an intent
        (allocations) is released. Returns how many holds were charged or released."""

    def account(self, reservation: Reservation, cost_nusd: int, tokens: int) -> bool:
        """Count a call's spend in this process's counters now, the settlement (with its
        record) to follow: the next call is judged on the spend while the record is built
        off the answer's path. The settlement must pass the same amounts. False when it was
        not counted: no hold of this process, or a backend where the settlement itself is
        what counts (Redis: the counters are shared)."""
        return False

    async def keep_intent(self, reservation: Reservation) -> None:  # noqa: B027 - optional
        """The call goes ahead without a hold (fail open, store down): keep its intent in a
        durable local journal so a crash before its settlement still charges it. The
        settlement of the reservation replaces the intent; a release drops it."""

    # live holds ---------------------------------------------------------------------------
    def _track(self, reservation: Reservation, ttl_s: float) -> None:
        if reservation.intent is not None:
            self._live[reservation.reservation_id] = LiveHold(reservation, ttl_s)

    def _untrack(self, reservation_id: str) -> None:
        self._live.pop(reservation_id, None)

    def live_holds(self) -> int:
        """Request holds of this process not yet settled or released."""
        return len(self._live)

    async def renew_holds(self) -> int:
        """Push the deadline of every live request hold one TTL ahead (run every
        `HoldTiming.renew_interval_s`); returns how many were renewed. A hold older than
        `max_hold_s` is a request that should have ended: it is no longer renewed, so the
        reaper charges it at its deadline."""
        now = time.monotonic()
        for rid, hold in list(self._live.items()):
            if now - hold.since_s > self.max_hold_s:
                log.warning("hold %s outlived the upstream timeout; no longer renewed", rid)
                del self._live[rid]
        if not self._live:
            return 0
        return await self._renew(list(self._live.values()))

    @abstractmethod
    async def _renew(self, holds: list[LiveHold]) -> int:
        """Backend part of `renew_holds`: new deadlines (now + each hold's TTL) for the holds
        that still exist; never recreates a hold that was settled, released or reaped."""

    # documents --------------------------------------------------------------------------
    # Entities (policies, budgets, allocations, alerts, keys, price versions) are JSON
    # documents by kind; feature modules build on these four calls, so a new entity never
    # needs a new method in every backend.
    @abstractmethod
    async def put_doc(self, kind: str, doc_id: str, body: str, *, config: bool = False) -> None:
        """Create or replace; `config=True` also moves `config_version` (policy-like data)."""

    @abstractmethod
    async def add_doc(self, kind: str, doc_id: str, body: str) -> bool:
        """Create only if absent, atomically across replicas; False if it already existed."""

    @abstractmethod
    async def get_doc(self, kind: str, doc_id: str) -> str | None: ...

    @abstractmethod
    async def list_docs(self, kind: str) -> list[str]:
        """All documents of a kind, oldest first."""

    @abstractmethod
    async def delete_doc(self, kind: str, doc_id: str, *, config: bool = False) -> bool: ...

    @abstractmethod
    async def config_version(self) -> int:
        """A number that changes whenever config documents change (cache invalidation)."""

    # typed helpers over documents ---------------------------------------------------------
    async def list_policies(self) -> list[BudgetPolicy]:
        return [BudgetPolicy.model_validate_json(d) for d in await self.list_docs("policy")]

    async def get_policy(self, policy_id: str) -> BudgetPolicy | None:
        doc = await self.get_doc("policy", policy_id)
        return None if doc is None else BudgetPolicy.model_validate_json(doc)

    async def put_policy(self, policy: BudgetPolicy) -> None:
        await self.put_doc("policy", policy.policy_id, policy.model_dump_json(), config=True)

    async def delete_policy(self, policy_id: str) -> bool:
        return await self.delete_doc("policy", policy_id, config=True)

    async def list_budgets(self) -> list[Budget]:
        return [Budget.model_validate_json(d) for d in await self.list_docs("budget")]

    async def get_budget(self, budget_id: str) -> Budget | None:
        doc = await self.get_doc("budget", budget_id)
        return None if doc is None else Budget.model_validate_json(doc)

    async def put_budget(self, budget: Budget) -> None:
        await self.put_doc("budget", budget.budget_id, budget.model_dump_json(), config=True)

    async def delete_budget(self, budget_id: str) -> bool:
        return await self.delete_doc("budget", budget_id, config=True)

    # usage --------------------------------------------------------------------------------
    @abstractmethod
    async def list_usage(self, query: UsageQuery) -> list[UsageRecord]: ...

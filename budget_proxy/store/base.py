"""The store interface: counters with atomic reservations, entities, usage records.

Kept small on purpose (like `limits.storage.base`): the decision logic lives in
`budget_proxy.enforcement`; a store only counts, stores and answers. Every backend passes the
same contract tests (`tests/store/test_contract.py`). Backend failures surface as one
`StoreError`, so the fail-open/fail-closed decision catches exactly one type.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from budget_proxy.enforcement import CounterLine, ReserveResult, Totals
from budget_proxy.models import Budget, BudgetPolicy, UsageRecord


class StoreError(Exception):
    """The store could not be reached or answered with an error."""


@dataclass(frozen=True, slots=True)
class Reservation:
    """What one request holds on its counters until it settles or is released."""

    reservation_id: str
    keys: tuple[str, ...]
    cost_nusd: int
    tokens: int


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


class Store(ABC):
    """Async store; `reserve` is the one step that must be atomic across every replica."""

    kind: str = "abstract"

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
        limit (`enforcement.would_refuse`). Totals returned include this reservation."""

    @abstractmethod
    async def settle(
        self, reservation: Reservation, cost_nusd: int, tokens: int, record: UsageRecord
    ) -> bool:
        """Turn the reservation into spend of the actual amounts and store the usage record.
        Idempotent by `record.record_id`: returns False if that record was already applied.
        Settles even if the reservation was already reaped (the call did happen)."""

    @abstractmethod
    async def release(self, reservation: Reservation) -> None:
        """Drop the reservation without spend (upstream error, request refused downstream)."""

    @abstractmethod
    async def totals(self, keys: Sequence[str]) -> list[Totals]:
        """Current totals of each counter key (zeros for unknown keys)."""

    @abstractmethod
    async def reap_expired(self) -> int:
        """Release reservations past their deadline; returns how many were released."""

    # entities -----------------------------------------------------------------------------
    @abstractmethod
    async def list_policies(self) -> list[BudgetPolicy]: ...

    @abstractmethod
    async def put_policy(self, policy: BudgetPolicy) -> None: ...

    @abstractmethod
    async def delete_policy(self, policy_id: str) -> bool: ...

    @abstractmethod
    async def list_budgets(self) -> list[Budget]: ...

    @abstractmethod
    async def put_budget(self, budget: Budget) -> None: ...

    @abstractmethod
    async def delete_budget(self, budget_id: str) -> bool: ...

    @abstractmethod
    async def config_version(self) -> int:
        """A number that changes whenever policies or budgets change (cache invalidation)."""

    # usage --------------------------------------------------------------------------------
    @abstractmethod
    async def list_usage(self, query: UsageQuery) -> list[UsageRecord]: ...

    async def get_policy(self, policy_id: str) -> BudgetPolicy | None:
        return next((p for p in await self.list_policies() if p.policy_id == policy_id), None)

    async def get_budget(self, budget_id: str) -> Budget | None:
        return next((b for b in await self.list_budgets() if b.budget_id == budget_id), None)

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
        self, reservation: Reservation, cost_nusd: int, tokens: int, record: UsageRecord | None
    ) -> bool:
        """Turn the reservation into spend of the actual amounts and store the usage record.
        Idempotent by `record.record_id` (by the reservation id when there is no record):
        returns False if it was already applied. Settles even if the reservation was already
        reaped (the call did happen)."""

    @abstractmethod
    async def release(self, reservation: Reservation) -> None:
        """Drop the reservation without spend (upstream error, request refused downstream)."""

    @abstractmethod
    async def totals(self, keys: Sequence[str]) -> list[Totals]:
        """Current totals of each counter key (zeros for unknown keys)."""

    @abstractmethod
    async def reap_expired(self) -> int:
        """Release reservations past their deadline; returns how many were released."""

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

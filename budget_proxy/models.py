"""The budget domain's entities (seed data model), shared by the store, the API and the CLI.

Money crosses the API as USD floats (seed field names); inside the store every amount is an
integer count of nano-dollars (`*_nusd`), so counters add exactly and Lua's doubles stay exact
up to $9M per counter.
"""

from __future__ import annotations

import itertools
import os
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

NUSD_PER_USD = 1_000_000_000
# Bounds of every amount that enters from outside (admin API, policy files, provider answers).
# A USD amount up to MAX_USD is at most 1e18 nano-USD: inside a signed 64-bit integer (SQLite,
# Redis HINCRBY) with room to add many of them. Token amounts stay exact in Lua's doubles.
MAX_USD = 1_000_000_000  # any limit, cost or price total in USD
MAX_TOKENS = 10**15  # any token limit or allocation
MAX_CALL_TOKENS = 100_000_000  # one call's token figure; a provider reporting more is absurd
DEFAULT_BUDGET_ID = "default"


def usd_to_nusd(usd: float | None) -> int | None:
    return None if usd is None else round(usd * NUSD_PER_USD)


def nusd_to_usd(nusd: int) -> float:
    return nusd / NUSD_PER_USD


def utcnow() -> datetime:
    return datetime.now(UTC)


# Ids are a random per-process tag plus a counter: unique across replicas and restarts, and
# without a system call for randomness on every request.
_ID_TAG = os.urandom(5).hex()
_id_counter = itertools.count(int.from_bytes(os.urandom(3), "big") << 16)


def new_id(prefix: str) -> str:
    return f"{prefix}_{_ID_TAG}{next(_id_counter):010x}"


class Period(StrEnum):
    HOURLY = "hourly"
    DAILY = "daily"
    WEEKLY = "weekly"
    MONTHLY = "monthly"
    PER_SESSION = "per_session"
    PER_TASK = "per_task"


class PolicyType(StrEnum):
    IGNORE = "ignore"
    WARN = "warn"
    SOFT_LIMIT = "soft_limit"
    HARD_LIMIT = "hard_limit"


class Tier(StrEnum):
    LOCAL_LIGHTWEIGHT = "local_lightweight"
    LOCAL_MIDWEIGHT = "local_midweight"
    REMOTE_HEAVYWEIGHT = "remote_heavyweight"


class _Entity(BaseModel):
    model_config = ConfigDict(extra="forbid", use_enum_values=False)


class Budget(_Entity):
    budget_id: str = Field(default_factory=lambda: new_id("bud"))
    name: str = "default"
    description: str = ""
    owner: str | None = None
    is_active: bool = True
    creation_time: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)
    metadata: dict[str, Any] = Field(default_factory=dict)


class BudgetPolicy(_Entity):
    """A limit on one period window for the requests its scope matches."""

    policy_id: str = Field(default_factory=lambda: new_id("pol"))
    budget_id: str = DEFAULT_BUDGET_ID
    name: str | None = None
    type: PolicyType = PolicyType.HARD_LIMIT
    period: Period = Period.DAILY
    tier: Tier | None = None
    provider: str | None = None
    model: str | None = None
    component: str | None = None
    task_type: str | None = None
    session: str | None = None
    task: str | None = None
    token_limit: int | None = Field(None, ge=0)
    cost_limit: float | None = Field(None, ge=0)
    warning_threshold: float = Field(0.8, ge=0, le=1)
    action_threshold: float = Field(0.95, ge=0, le=1)
    fallback_model: str | None = Field(
        None, description="soft_limit: the cheaper model requests move to past action_threshold."
    )
    enabled: bool = True
    source: str | None = Field(None, description="Policy file this policy was loaded from.")
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)

    @model_validator(mode="after")
    def _needs_a_limit(self) -> BudgetPolicy:
        unlimited = self.token_limit is None and self.cost_limit is None
        if self.type is not PolicyType.IGNORE and unlimited:
            raise ValueError("a policy needs cost_limit or token_limit (or type 'ignore')")
        return self

    @property
    def cost_limit_nusd(self) -> int | None:
        return usd_to_nusd(self.cost_limit)


class UsageRecord(_Entity):
    """One metered call: what the provider reported and what it cost."""

    record_id: str = Field(default_factory=lambda: new_id("use"))
    allocation_id: str | None = None
    context_id: str | None = None
    component: str = "default"
    session_id: str | None = None
    task_id: str | None = None
    task_type: str | None = None
    provider: str
    model: str
    requested_model: str | None = None
    route: str | None = None
    input_tokens: int = 0
    cached_input_tokens: int = 0
    cache_write_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0
    total_tokens: int = 0
    input_cost: float = 0.0
    output_cost: float = 0.0
    total_cost: float = 0.0
    pricing_id: str | None = None
    status: str = "ok"
    streamed: bool = False
    timestamp: datetime = Field(default_factory=utcnow)
    metadata: dict[str, Any] = Field(default_factory=dict)


class AlertSeverity(StrEnum):
    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"


class Alert(_Entity):
    """A budget event worth a human's attention. `alert_id` is deterministic for threshold
    alerts (policy, window, threshold), so each is raised once per window across replicas."""

    alert_id: str = Field(default_factory=lambda: new_id("alr"))
    type: str  # warning_threshold, action_threshold, limit_reached, price_change, price_conflict
    severity: AlertSeverity = AlertSeverity.WARNING
    message: str
    policy_id: str | None = None
    budget_id: str | None = None
    window: str | None = None
    data: dict[str, Any] = Field(default_factory=dict)
    created_at: datetime = Field(default_factory=utcnow)
    acknowledged: bool = False
    acknowledged_at: datetime | None = None
    acknowledged_by: str | None = None

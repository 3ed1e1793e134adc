"""The budget domain's entities (seed data model), shared by the store, the API and the CLI.

Money crosses the API as USD floats (seed field names); inside the store every amount is an
integer count of nano-dollars (`*_nusd`), so counters add exactly and Lua's doubles stay exact
up to $9M per counter.
"""

from __future__ import annotations

import itertools
import math
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    GetJsonSchemaHandler,
    ValidationInfo,
    model_validator,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import PydanticCustomError, core_schema

NUSD_PER_USD = 1_000_000_000
# Bounds of every amount that enters from outside (admin API, policy files, provider answers).
# A USD amount up to MAX_USD is at most 1e18 nano-USD: inside a signed 64-bit integer (SQLite,
# Redis HINCRBY) with room to add many of them. Token amounts stay exact in Lua's doubles.
MAX_USD = 1_000_000_000  # any limit, cost or price total in USD
MAX_TOKENS = 10**15  # any token limit or allocation
MAX_CALL_TOKENS = 100_000_000  # one call's token figure; a provider reporting more is absurd
MAX_TTL_S = 10 * 366 * 86_400  # any duration in seconds (ten years): datetimes stay in range
MAX_COUNT = 10**9  # any count of items: paging offsets, priorities, request counts
MAX_DAYS = 3660  # any look-back in days
MAX_RATE = 10**6  # any per-day frequency
MAX_JSON_DEPTH = 32  # free-form metadata from outside
MIN_TIME = datetime(1970, 1, 1, tzinfo=UTC)  # any timestamp given from outside
MAX_TIME = datetime(2200, 1, 1, tzinfo=UTC)
DEFAULT_BUDGET_ID = "default"
# Validation context of everything that enters from outside (admin API bodies and queries,
# policy files): out-of-bounds values are refused. Without it (documents read back from the
# store, written before the bounds existed), they are clamped into the bounds instead.
INPUT: dict[str, Any] = {"input": True}


@dataclass(frozen=True, slots=True)
class Bound:
    """Inclusive bounds of a number (or a timestamp) that comes from outside, as an
    `Annotated` marker. Input validated with `context=INPUT` outside `[low, high]`, or NaN or
    infinite, is a validation error naming the field; anything else is clamped, so a stored
    document from before the bounds still loads and can never overflow the arithmetic."""

    low: Any
    high: Any

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        checked = core_schema.with_info_after_validator_function(self._check, handler(source))
        return core_schema.no_info_before_validator_function(_not_a_bool, checked)

    def __get_pydantic_json_schema__(
        self, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        out = handler(schema)
        if isinstance(self.low, int | float):
            out.update(minimum=self.low, maximum=self.high)
        return out

    def _check(self, value: Any, info: ValidationInfo) -> Any:
        if value is None:
            return value
        if isinstance(value, datetime) and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)  # naive times from outside are UTC
        nan = isinstance(value, float) and math.isnan(value)
        if not nan and self.low <= value <= self.high:
            return value
        if info.context and info.context.get("input"):
            if nan or (isinstance(value, float) and math.isinf(value)):
                raise PydanticCustomError("finite_number", "Input should be a finite number")
            if value < self.low:
                raise PydanticCustomError(
                    "greater_than_equal", "Input should be greater than or equal to {low}",
                    {"low": str(self.low)})
            raise PydanticCustomError(
                "less_than_equal", "Input should be less than or equal to {high}",
                {"high": str(self.high)})
        clamped = self.low if nan else min(max(value, self.low), self.high)
        return type(value)(clamped) if isinstance(value, int | float) else clamped


@dataclass(frozen=True, slots=True)
class Shallow:
    """A JSON value from outside nested at most `depth` levels (as an `Annotated` marker):
    deeper input is refused (with `context=INPUT`), so every stored document can be written
    back out as JSON (orjson stops at 255 levels)."""

    depth: int

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return core_schema.with_info_after_validator_function(self._check, handler(source))

    def _check(self, value: Any, info: ValidationInfo) -> Any:
        if info.context and info.context.get("input") and _depth(value) > self.depth:
            raise PydanticCustomError("too_deep", "Input should be nested at most {depth} "
                                      "levels deep", {"depth": self.depth})
        return value


def _not_a_bool(value: Any) -> Any:
    """`true` is not a number, though Python and pydantic's lax mode would take it as 1."""
    if isinstance(value, bool):
        raise PydanticCustomError("bool_not_number", "Input should be a number, not a boolean")
    return value


def _depth(value: Any) -> int:
    """Nesting depth of a JSON value, iteratively (no recursion limit to hit)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        deepest = max(deepest, level)
        if isinstance(item, dict):
            stack.extend((v, level + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, level + 1) for v in item)
    return deepest


# The bounded types of every amount the admin API, policy files and stored documents carry.
Usd = Annotated[float, Bound(0, MAX_USD)]
Tokens = Annotated[int, Bound(0, MAX_TOKENS)]
CallTokens = Annotated[int, Bound(0, MAX_CALL_TOKENS)]
Seconds = Annotated[float, Bound(0, MAX_TTL_S)]
Count = Annotated[int, Bound(0, MAX_COUNT)]
Days = Annotated[int, Bound(1, MAX_DAYS)]
Ratio = Annotated[float, Bound(0, 1)]
Timestamp = Annotated[datetime, Bound(MIN_TIME, MAX_TIME)]
Metadata = Annotated[dict[str, Any], Shallow(MAX_JSON_DEPTH)]
PositiveTokens = Annotated[int, Field(gt=0), Bound(0, MAX_TOKENS)]
PositiveSeconds = Annotated[float, Field(gt=0), Bound(0, MAX_TTL_S)]


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


class _AliasEnum(StrEnum):
    """Accepts the seed documents' spellings: any case, hyphens or spaces for underscores
    (`WARN`, `Hard-Limit`)."""

    @classmethod
    def _missing_(cls, value: object) -> _AliasEnum | None:
        if isinstance(value, str):
            wanted = value.strip().lower().replace("-", "_").replace(" ", "_")
            for member in cls:
                if member.value == wanted:
                    return member
        return None


class Period(_AliasEnum):
    MINUTELY = "minutely"
    HOURLY = "hourly"
    DAILY = "daily"
    WEEKLY = "weekly"
    MONTHLY = "monthly"
    PER_SESSION = "per_session"
    PER_TASK = "per_task"


class PolicyType(_AliasEnum):
    IGNORE = "ignore"
    WARN = "warn"
    SOFT_LIMIT = "soft_limit"
    HARD_LIMIT = "hard_limit"
    SHADOW = "shadow"  # evaluated like hard_limit, never refuses: header and metric only

    @classmethod
    def _missing_(cls, value: object) -> _AliasEnum | None:
        """Seed spellings: `ENFORCE` is a hard limit, `LOG` tracks only."""
        if isinstance(value, str):
            alias = {"enforce": "hard_limit", "log": "ignore", "hard": "hard_limit",
                     "soft": "soft_limit"}.get(value.strip().lower())
            if alias is not None:
                return cls(alias)
        return super()._missing_(value)


class Tier(_AliasEnum):
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
    creation_time: Timestamp = Field(default_factory=utcnow)
    updated_at: Timestamp = Field(default_factory=utcnow)
    metadata: Metadata = Field(default_factory=dict)


class TopUp(_Entity):
    """A temporary raise of a policy's limit: counts until `expires_at`; spend is never reset."""

    topup_id: str = Field(default_factory=lambda: new_id("top"))
    cost: Usd | None = None
    tokens: Tokens | None = None
    requests: Count | None = None
    created_at: Timestamp = Field(default_factory=utcnow)
    expires_at: Timestamp

    def live(self, now: datetime) -> bool:
        return self.expires_at > now


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
    key_id: str | None = Field(None, description="Virtual key this policy limits (key budgets).")
    token_limit: Tokens | None = None
    cost_limit: Usd | None = None
    request_limit: Count | None = Field(None, description="Calls in the window.")
    warning_threshold: Ratio = 0.8
    action_threshold: Ratio = 0.95
    fallback_model: str | None = Field(
        None, description="soft_limit: the cheaper model requests move to past action_threshold."
    )
    enabled: bool = True
    topups: list[TopUp] = Field(default_factory=list, max_length=1000,
                                description="Temporary raises of the limits, until they expire.")
    source: str | None = Field(None, description="Policy file this policy was loaded from.")
    created_at: Timestamp = Field(default_factory=utcnow)
    updated_at: Timestamp = Field(default_factory=utcnow)

    @model_validator(mode="after")
    def _needs_a_limit(self) -> BudgetPolicy:
        unlimited = (self.token_limit is None and self.cost_limit is None
                     and self.request_limit is None)
        if self.type is not PolicyType.IGNORE and unlimited:
            raise ValueError("a policy needs cost_limit, token_limit or request_limit "
                             "(or type 'ignore')")
        return self

    @property
    def cost_limit_nusd(self) -> int | None:
        return usd_to_nusd(self.cost_limit)

    def limits_at(self, now: datetime) -> tuple[int | None, int | None, int | None]:
        """(nano-USD, tokens, requests) limits at `now`: the policy's own plus its live
        top-ups of the same kind (a top-up never creates a limit the policy does not have)."""
        live = [t for t in self.topups if t.live(now)]
        cost = self.cost_limit_nusd
        if cost is not None:
            cost += sum(usd_to_nusd(t.cost) or 0 for t in live)
        tokens = self.token_limit
        if tokens is not None:
            tokens += sum(t.tokens or 0 for t in live)
        requests = self.request_limit
        if requests is not None:
            requests += sum(t.requests or 0 for t in live)
        return cost, tokens, requests


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
    input_tokens: Tokens = 0
    cached_input_tokens: Tokens = 0
    cache_write_tokens: Tokens = 0
    output_tokens: Tokens = 0
    reasoning_tokens: Tokens = 0
    total_tokens: Tokens = 0
    input_cost: Usd = 0.0
    output_cost: Usd = 0.0
    total_cost: Usd = 0.0
    pricing_id: str | None = None
    status: str = "ok"
    streamed: bool = False
    timestamp: Timestamp = Field(default_factory=utcnow)
    metadata: Metadata = Field(default_factory=dict)


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

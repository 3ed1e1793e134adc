"""Request and response models of the admin API, shared by the handlers (which validate with
them), the OpenAPI document (generated from them) and the Python client (typed results).

Pure pydantic, no I/O. Entities stored as documents (Budget, BudgetPolicy, UsageRecord,
Alert) live in `budget_proxy.models`; allocations and virtual keys beside their logic.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from budget_proxy.models import (
    MAX_COUNT,
    MAX_RATE,
    MAX_USD,
    AlertSeverity,
    Bound,
    Budget,
    BudgetPolicy,
    CallTokens,
    Count,
    Days,
    Metadata,
    PositiveSeconds,
    PositiveTokens,
    Timestamp,
    UsageRecord,
    Usd,
)

PerDay = Annotated[float, Bound(0, MAX_RATE)]
PositiveUsd = Annotated[float, Field(gt=0), Bound(0, MAX_USD)]
PositiveCount = Annotated[int, Field(gt=0), Bound(0, MAX_COUNT)]

CalendarPeriod = Literal["hourly", "daily", "weekly", "monthly"]
GroupField = Literal["provider", "model", "component"]
GROUP_FIELDS: tuple[GroupField, ...] = ("provider", "model", "component")
NO_LLM_NOTE = (
    "Deterministic analysis of this proxy's own usage records, policies and price catalog. "
    "No language model is called; the same data always gives the same answer."
)


def assume_utc(value: datetime | None) -> datetime | None:
    """Naive datetimes in requests are taken as UTC."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


def _split_csv(value: Any) -> Any:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


# usage --------------------------------------------------------------------------------------
class UsageRecordsQuery(_Body):
    """Query of `GET /api/usage/records` (and of the CSV export)."""

    component: str | None = None
    provider: str | None = None
    model: str | None = None
    context_id: str | None = None
    session_id: str | None = None
    since: Timestamp | None = Field(None, description="ISO 8601; naive times are UTC.")
    until: Timestamp | None = Field(None, description="ISO 8601, exclusive.")
    limit: Annotated[int, Bound(1, 10_000)] = 100
    offset: Count = 0

    _utc = field_validator("since", "until")(assume_utc)


class UsageSummaryQuery(_Body):
    """Query of `GET /api/usage`: a period's usage, per window and grouped."""

    period: CalendarPeriod = "daily"
    days: Days | None = Field(
        None, description="Cover the windows of the last DAYS days (default: the current window).",
    )
    provider: str | None = None
    component: str | None = None
    model: str | None = None
    group_by: list[GroupField] = Field(
        default_factory=list, description="Comma-separated: provider, model, component."
    )

    _csv = field_validator("group_by", mode="before")(_split_csv)


class UsageTotals(BaseModel):
    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int = 0
    input_cost: float = 0.0
    output_cost: float = 0.0
    total_cost: float = 0.0


class UsageGroup(UsageTotals):
    provider: str | None = None
    model: str | None = None
    component: str | None = None


class UsageWindow(UsageTotals):
    window: str
    start: datetime


class UsageSummary(BaseModel):
    period: CalendarPeriod
    since: datetime
    until: datetime
    provider: str | None = None
    component: str | None = None
    model: str | None = None
    group_by: list[GroupField] = Field(default_factory=list)
    totals: UsageTotals
    windows: list[UsageWindow]
    groups: list[UsageGroup]


class UsageCheckRequest(_Body):
    """Body of `POST /api/usage/check`: would this request be allowed?"""

    provider: str = Field(min_length=1)
    model: str = Field(min_length=1)
    component: str | None = Field(None, description="Default: the proxy's BUDGET_COMPONENT.")
    input_text: str | None = Field(None, description="Counted with the model's tokenizer.")
    input_tokens: CallTokens | None = Field(None, description="Instead of input_text.")
    max_output_tokens: CallTokens | None = Field(None, description="Default: the catalog's.")
    task_type: str | None = None
    session: str | None = None
    task: str | None = None
    context_id: str | None = None
    allocation_id: str | None = None


class CheckedLine(BaseModel):
    """One counter the request would be reserved on."""

    policy_id: str
    name: str | None = None
    type: str
    period: str | None = None
    window: str
    enforced: bool
    limit_cost: float | None = None
    limit_tokens: int | None = None
    used_cost: float
    used_tokens: int
    would_exceed: bool


class UsageCheckResult(BaseModel):
    allowed: bool
    reason: str | None = None
    refused_by: str | None = Field(None, description="Policy (or allocation) that refuses.")
    provider: str
    model: str
    component: str
    input_tokens: int
    max_output_tokens: int
    estimated_cost: float = Field(description="Worst case: the reservation it would take.")
    remaining_cost: float | None = Field(None, description="Tightest limit, after this request.")
    remaining_tokens: int | None = None
    warnings: list[str] = Field(default_factory=list)
    suggested_model: str | None = Field(None, description="A soft limit would move it here.")
    allocation_id: str | None = None
    lines: list[CheckedLine] = Field(default_factory=list)


class UsageRecordRequest(_Body):
    """Body of `POST /api/usage/record`, for components that call a provider directly."""

    provider: str = Field(min_length=1)
    model: str = Field(min_length=1)
    component: str | None = None
    input_tokens: CallTokens | None = Field(None, description="Default: counted from input_text.")
    output_tokens: CallTokens | None = Field(None, description="Default: from output_text.")
    cached_input_tokens: CallTokens = 0
    cache_write_tokens: CallTokens = 0
    reasoning_tokens: CallTokens = 0
    input_text: str | None = None
    output_text: str | None = None
    input_cost: Usd | None = Field(None, description="USD; default: from the catalog.")
    output_cost: Usd | None = None
    context_id: str | None = None
    allocation_id: str | None = None
    session_id: str | None = None
    task_id: str | None = None
    task_type: str | None = None
    timestamp: Timestamp | None = None
    metadata: Metadata = Field(default_factory=dict)

    _utc = field_validator("timestamp")(assume_utc)


class RecordedUsage(BaseModel):
    record: UsageRecord
    remaining_cost: float | None = None
    remaining_tokens: int | None = None
    warnings: list[str] = Field(default_factory=list)
    over_limit: list[str] = Field(
        default_factory=list, description="Hard-limit policies this usage took past their limit."
    )


# reports ------------------------------------------------------------------------------------
class ReportQuery(_Body):
    period: CalendarPeriod = "daily"
    days: Days | None = None
    provider: str | None = None
    component: str | None = None
    model: str | None = None
    format: Literal["json", "csv"] = "json"


class ExportQuery(UsageRecordsQuery):
    limit: Annotated[int, Bound(1, 1_000_000)] = 10_000
    format: Literal["csv", "json"] = "csv"


class AllocationTotals(BaseModel):
    active: int = 0
    tokens_allocated: int = 0
    tokens_used: int = 0


class Report(BaseModel):
    generated_at: datetime
    period: CalendarPeriod
    since: datetime
    until: datetime
    totals: UsageTotals
    windows: list[UsageWindow]
    by_provider: list[UsageGroup]
    by_model: list[UsageGroup]
    by_component: list[UsageGroup]
    policies: list[PolicyStatus]
    allocations: AllocationTotals
    open_alerts: int


# status -------------------------------------------------------------------------------------
class PolicyStatus(BaseModel):
    """One policy's current window, as `/api/status` reports it."""

    model_config = ConfigDict(extra="allow")

    policy_id: str
    name: str | None = None
    type: str
    period: str
    scope: str
    window: str | None = None
    resets_at: str | None = None
    limit: float | int | None = None
    unit: Literal["usd", "tokens"]
    spent: float | int
    reserved: float | int
    remaining: float | int | None = None
    spent_tokens: int
    spent_cost: float
    utilisation: float
    enabled: bool


class StatusReport(BaseModel):
    model_config = ConfigDict(extra="allow")

    time: datetime
    store: str
    policies: list[PolicyStatus]


class HealthStatus(BaseModel):
    model_config = ConfigDict(extra="allow")

    status: str
    store: str
    time: datetime


# budgets ------------------------------------------------------------------------------------
class BudgetUpdate(_Body):
    """Body of `PATCH /api/budgets/{budget_id}`: the fields to change."""

    name: str | None = None
    description: str | None = None
    owner: str | None = None
    is_active: bool | None = None
    metadata: Metadata | None = None


class BudgetDeleteQuery(_Body):
    cascade: bool = Field(False, description="Also delete the budget's policies.")


class BudgetDetail(BaseModel):
    budget: Budget
    policies: list[PolicyStatus]


# alerts -------------------------------------------------------------------------------------
class AlertQuery(_Body):
    acknowledged: bool | None = None
    severity: AlertSeverity | None = None
    type: str | None = None
    policy_id: str | None = None
    limit: Annotated[int, Bound(1, 10_000)] = 100
    offset: Count = 0


class AlertAck(_Body):
    acknowledged_by: str | None = None


class AllocationQuery(_Body):
    component: str | None = None
    context_id: str | None = None
    active: bool | None = Field(None, description="true: active only; false: ended only.")


class Deleted(BaseModel):
    deleted: str


# assistant ----------------------------------------------------------------------------------
class AnalyzeRequest(_Body):
    period: CalendarPeriod = "daily"
    days: Days = 30
    provider: str | None = None
    component: str | None = None


class Trend(BaseModel):
    first_half_cost: float
    second_half_cost: float
    change_pct: float | None
    direction: Literal["rising", "falling", "flat", "no data"]


class PolicyRisk(BaseModel):
    policy_id: str
    name: str | None = None
    type: str
    period: str
    unit: str
    limit: float | int | None
    utilisation: float
    projected_utilisation: float | None = Field(
        None, description="At the current window's burn rate, by the window's end."
    )


class Anomaly(BaseModel):
    window: str
    total_cost: float
    median_cost: float
    ratio: float


class AssistantAnswer(BaseModel):
    """What every assistant answer says of itself: computed by rules, no language model."""

    engine: Literal["deterministic"] = "deterministic"
    llm_used: Literal[False] = False
    note: str = NO_LLM_NOTE


class Analysis(AssistantAnswer):
    period: CalendarPeriod
    since: datetime
    until: datetime
    totals: UsageTotals
    average_cost_per_window: float
    trend: Trend
    top_providers: list[UsageGroup]
    top_models: list[UsageGroup]
    top_components: list[UsageGroup]
    policies_at_risk: list[PolicyRisk]
    anomalies: list[Anomaly]
    findings: list[str]


class Recommendation(BaseModel):
    kind: Literal["cheaper_model", "soft_limit", "cache", "unbudgeted_component"]
    title: str
    detail: str
    estimated_savings_usd: float | None = None
    provider: str | None = None
    model: str | None = None
    alternative_model: str | None = None
    component: str | None = None


class Optimization(AssistantAnswer):
    period: CalendarPeriod
    since: datetime
    until: datetime
    total_cost: float
    potential_savings_usd: float
    recommendations: list[Recommendation]


class RecommendModelRequest(_Body):
    task_description: str = ""
    task_type: str | None = Field(None, description="Default: inferred from the description.")
    input_length: CallTokens = Field(1000, description="Input tokens per request.")
    output_length: CallTokens = Field(500, description="Output tokens per request.")
    usage_frequency: PerDay = Field(1.0, description="Requests per day.")
    budget_limit: Usd | None = Field(None, description="USD per day at that frequency.")
    max_cost: Usd | None = Field(None, description="USD per request.")
    priority_areas: str | list[str] | None = None
    provider: str | None = None
    limit: Annotated[int, Bound(1, 50)] = 5


class ModelOption(BaseModel):
    provider: str
    model: str
    tier: str
    input_usd_per_mtok: float
    output_usd_per_mtok: float
    cost_per_request: float
    daily_cost: float
    monthly_cost: float
    within_budget: bool
    score: float
    reason: str


class ModelRecommendation(AssistantAnswer):
    task_type: str
    complexity: Literal["simple", "standard", "complex"]
    recommendations: list[ModelOption]
    best: ModelOption | None = None


Report.model_rebuild()


# policies: edits, top-ups, what-if ----------------------------------------------------------
class PolicyWriteQuery(_Body):
    strict: bool = Field(False, description="Refuse (422) a policy naming a provider that is "
                         "not configured, a model the price catalog does not know or an "
                         "unknown key, instead of accepting it with a warning.")


class Counted(BaseModel):
    """The recorded spend a new or edited policy's current window started from."""

    window: str | None = None
    records: int = 0
    cost: float = 0.0
    tokens: int = 0


class PolicyWritten(BudgetPolicy):
    """A created or edited policy, with what was checked and counted."""

    warnings: list[str] = Field(default_factory=list)
    counted: Counted = Field(default_factory=Counted)


class TopUpRequest(_Body):
    """Body of `POST /api/policies/{policy_id}/topups`: a raise of the limits until it expires."""

    cost: PositiveUsd | None = Field(None, description="USD added to cost_limit.")
    tokens: PositiveTokens | None = Field(None, description="Tokens added to token_limit.")
    requests: PositiveCount | None = Field(None, description="Calls added to request_limit.")
    ttl_s: PositiveSeconds = Field(86_400, description="Seconds until it expires.")

    @model_validator(mode="after")
    def _needs_an_amount(self) -> TopUpRequest:
        if self.cost is None and self.tokens is None and self.requests is None:
            raise ValueError("a top-up needs cost, tokens or requests")
        return self


class ReplayRequest(_Body):
    """Body of `POST /api/policies/replay`."""

    policy: dict[str, Any] = Field(description="A policy, as for POST /api/policies.")
    days: Days = Field(7, description="Replay the recorded calls of this many days.")


class ReplayedWindow(BaseModel):
    window: str
    calls: int
    allowed: int
    refused: int
    warned: int
    allowed_cost: float
    refused_cost: float


class ReplayResult(BaseModel):
    """What a policy would have done over recorded calls (actual amounts, not worst cases)."""

    policy_id: str
    type: str
    period: str
    days: int
    since: datetime
    records_scanned: int
    truncated: bool = Field(description="More records than the scan limit: the oldest were "
                            "left out.")
    calls: int
    allowed: int
    refused: int
    warned: int
    allowed_cost: float
    refused_cost: float
    windows: list[ReplayedWindow]

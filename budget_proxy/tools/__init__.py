"""The budget tools: one set of plain async functions over the store and the domain, each with
a typed input model and a short description.

MCP (`budget_proxy.mcp`) and the assistant's tool-calling loop (`budget_proxy.tools.chat`)
list and call these and nothing else, so an agent over MCP, the Budget Chat and the admin API
get the same figures from the same code: each tool calls the function its admin route calls
(`api.usage.check`, `api.usage.summarize`, `api.prices.cost_of_call`, ...).

Access follows the admin API: a tool marked `mutating` needs the admin role; the others are
reads. `call` checks the role, validates the arguments with the tool's model (422-style
messages naming the field), runs the tool and returns plain JSON.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

import orjson
from aiohttp import ChainMapProxy, web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from budget_proxy.allocations import AllocationRefused, AllocationRequest
from budget_proxy.api.alerts import acknowledge, find_alerts
from budget_proxy.api.common import Role
from budget_proxy.api.prices import CalculateRequest, cost_of_call
from budget_proxy.api.usage import NoPrice, check, summarize
from budget_proxy.appkeys import ALLOCATIONS, CATALOG, EVENTS, POLICIES, SETTINGS, STORE
from budget_proxy.models import (
    DEFAULT_BUDGET_ID,
    INPUT,
    BudgetPolicy,
    Period,
    PolicyType,
    Tier,
    utcnow,
)
from budget_proxy.recommend import RecommendQuery, recommend_models
from budget_proxy.schemas import (
    AlertQuery,
    AllocationQuery,
    UsageCheckRequest,
    UsageSummaryQuery,
)
from budget_proxy.status import SCOPE_FIELDS, status_keys, window_statuses

State = web.Application | ChainMapProxy
MAX_LIMIT = 1e12  # a limit beyond this (USD or tokens) is a typo, not a budget


class ToolError(Exception):
    """A tool refused or could not answer; the message is meant for the caller (or model)."""


class ToolDenied(ToolError):
    """The caller's role may not call this tool."""


@dataclass(frozen=True, slots=True)
class BudgetTool:
    name: str
    description: str
    input_model: type[BaseModel]
    run: Callable[[State, Any], Awaitable[Any]]
    mutating: bool = False

    def input_schema(self) -> dict[str, Any]:
        """The JSON schema of the arguments (what MCP and the LLM are shown)."""
        return self.input_model.model_json_schema()


def to_json(value: Any) -> Any:
    """Models, lists and dicts of them as plain JSON values."""
    return orjson.loads(orjson.dumps(value, default=_default))


def _default(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    raise TypeError(f"{type(value).__name__} is not JSON")


def allowed(tool: BudgetTool, role: Role) -> bool:
    """Reads for every caller the admin API lets read; changes for the admin role only."""
    return role == "admin" or not tool.mutating


def tools_for(role: Role) -> list[BudgetTool]:
    return [t for t in TOOLS.values() if allowed(t, role)]


async def call(app: State, name: str, arguments: dict[str, Any] | None, role: Role) -> Any:
    """Run tool `name` for a caller of `role`: its JSON result, or `ToolError` (unknown tool,
    refused role, invalid arguments, or the tool's own refusal)."""
    tool = TOOLS.get(name)
    if tool is None:
        raise ToolError(f"no tool {name!r}; the tools are {', '.join(TOOLS)}")
    if not allowed(tool, role):
        raise ToolDenied(f"{name} changes budgets: it needs the admin token")
    try:
        args = tool.input_model.model_validate(arguments or {}, context=INPUT)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'arguments'}: {err['msg']}"
            for err in exc.errors(include_url=False))
        raise ToolError(f"invalid arguments for {name}: {problems}") from None
    return to_json(await tool.run(app, args))


# the tools ------------------------------------------------------------------------------
class _Input(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StatusInput(_Input):
    policy_id: str | None = Field(None, description="Only this policy (default: every policy).")


class AllocationId(_Input):
    allocation_id: str = Field(min_length=1, max_length=200)


class AlertId(_Input):
    alert_id: str = Field(min_length=1, max_length=200)
    acknowledged_by: str | None = Field(None, max_length=200)


class SetLimitInput(_Input):
    """A limit on a period's spend for a scope, like `budget set-limit PERIOD LIMIT`."""

    period: Period
    limit: float = Field(gt=0, le=MAX_LIMIT, description="USD, or tokens with tokens=true.")
    tokens: bool = Field(False, description="The limit counts tokens, not USD.")
    policy_type: PolicyType = PolicyType.HARD_LIMIT
    provider: str | None = Field(None, max_length=200)
    component: str | None = Field(None, max_length=200)
    model: str | None = Field(None, max_length=200)
    tier: Tier | None = None
    new: bool = Field(False, description="Add another policy even when one with this period, "
                      "type and scope exists (default: update that one, keeping its spend).")


async def status_rows(app: State) -> list[dict[str, object]]:
    """Every policy with its current window (`budget_proxy.status`): limit, spent, reserved,
    remaining, utilisation, time to reset, burn rate and runway."""
    store = app[STORE]
    tz = _tz(app)
    now = store.now()
    policies = await store.list_policies()
    keys = status_keys(policies, now, tz)
    totals = dict(zip(keys, await store.totals(keys), strict=True))
    return [st.to_json() for st in window_statuses(policies, totals, now, tz)]


def _tz(app: State) -> ZoneInfo:
    return ZoneInfo(app[SETTINGS].timezone)


async def budget_status(app: State, args: StatusInput) -> dict[str, Any]:
    rows = await status_rows(app)
    if args.policy_id is not None:
        rows = [r for r in rows if r["policy_id"] == args.policy_id]
        if not rows:
            raise ToolError(f"no policy {args.policy_id}")
    store = app[STORE]
    return {"time": store.now().isoformat(), "store": store.kind, "policies": rows}


async def check_budget(app: State, args: UsageCheckRequest) -> Any:
    try:
        return await check(app, args)
    except NoPrice:
        raise ToolError(f"model {args.model!r} has no price in the catalog; the proxy would "
                        "refuse this request") from None


async def get_usage(app: State, args: UsageSummaryQuery) -> Any:
    return await summarize(app, args)


async def calc_cost(app: State, args: CalculateRequest) -> Any:
    try:
        return await cost_of_call(app, args)
    except (LookupError, ValueError) as exc:
        raise ToolError(str(exc)) from None


async def recommend_model(app: State, args: RecommendQuery) -> Any:
    catalog = app[CATALOG]
    return recommend_models(catalog, args)


async def list_allocations(app: State, args: AllocationQuery) -> Any:
    return await app[ALLOCATIONS].find(component=args.component, context_id=args.context_id,
                                       active=args.active)


async def create_allocation(app: State, args: AllocationRequest) -> Any:
    policies = app[POLICIES]
    await policies.refresh()
    result = await app[ALLOCATIONS].create(args, policies.policies)
    if isinstance(result, AllocationRefused):
        raise ToolError(result.message)
    return result


async def release_allocation(app: State, args: AllocationId) -> Any:
    alloc = await app[ALLOCATIONS].release(args.allocation_id)
    if alloc is None:
        raise ToolError(f"no allocation {args.allocation_id}")
    return alloc


async def list_alerts(app: State, args: AlertQuery) -> Any:
    return await find_alerts(app, args)


async def acknowledge_alert(app: State, args: AlertId) -> Any:
    alert = await acknowledge(app, args.alert_id, args.acknowledged_by)
    if alert is None:
        raise ToolError(f"no alert {args.alert_id}")
    return alert


def same_scope(policy: BudgetPolicy, args: SetLimitInput) -> bool:
    """The policy `set_limit` updates: same period, type and scope (on the default budget)."""
    wanted = {f: None for f in SCOPE_FIELDS} | {
        "provider": args.provider, "component": args.component, "model": args.model,
        "tier": args.tier}
    return (policy.period == args.period and policy.type == args.policy_type
            and policy.budget_id == DEFAULT_BUDGET_ID
            and all(getattr(policy, f) == v for f, v in wanted.items()))


async def set_limit(app: State, args: SetLimitInput) -> dict[str, Any]:
    store = app[STORE]
    limits: dict[str, Any] = ({"token_limit": int(args.limit), "cost_limit": None} if args.tokens
                              else {"cost_limit": args.limit, "token_limit": None})
    existing = None if args.new else next(
        (p for p in await store.list_policies() if same_scope(p, args)), None)
    if existing is not None:  # same policy id: its windows, hence its spend, are kept
        policy = existing.model_copy(update=limits | {"updated_at": utcnow()})
        event = "policy_updated"
    else:
        policy = BudgetPolicy(period=args.period, type=args.policy_type, provider=args.provider,
                              component=args.component, model=args.model, tier=args.tier,
                              **limits)
        event = "policy_created"
    await store.put_policy(policy)
    await app[POLICIES].refresh(force=True)
    app[EVENTS].publish("updates", event, policy.model_dump(mode="json"))
    return {"action": "updated" if existing is not None else "created", "policy": policy}


def _tool(name: str, description: str, model: type[BaseModel], run: Callable[[State, Any],
          Awaitable[Any]], *, mutating: bool = False) -> tuple[str, BudgetTool]:
    return name, BudgetTool(name, description, model, run, mutating)


TOOLS: dict[str, BudgetTool] = dict([
    _tool("budget_status", "Every budget policy's current window: limit, spent, reserved, "
          "remaining, utilisation and time to reset.", StatusInput, budget_status),
    _tool("check_budget", "Would a request to this provider and model be allowed now, what "
          "could it cost at most, and what would remain? Nothing is reserved.",
          UsageCheckRequest, check_budget),
    _tool("get_usage", "Recorded usage (requests, tokens, cost) of the current or last DAYS "
          "windows of a period, optionally grouped by provider, model or component.",
          UsageSummaryQuery, get_usage),
    _tool("calc_cost", "The cost of a call with these token counts, line by line, as the "
          "proxy would charge it.", CalculateRequest, calc_cost),
    _tool("recommend_model", "Models for a task, ranked by fit for its complexity and "
          "priced per request, per day and per month within a budget.",
          RecommendQuery, recommend_model),
    _tool("list_allocations", "Token allocations held for contexts, with their use.",
          AllocationQuery, list_allocations),
    _tool("create_allocation", "Hold tokens on the budgets for a context before an expensive "
          "step; requests sending X-Budget-Context draw on it.", AllocationRequest,
          create_allocation, mutating=True),
    _tool("release_allocation", "End an allocation; its unused tokens go back to the budgets.",
          AllocationId, release_allocation, mutating=True),
    _tool("list_alerts", "Budget alerts, newest first (thresholds crossed, refusals, flagged "
          "usage).", AlertQuery, list_alerts),
    _tool("acknowledge_alert", "Acknowledge an alert.", AlertId, acknowledge_alert,
          mutating=True),
    _tool("set_limit", "Limit a period's spend (USD, or tokens) for a scope: updates the "
          "policy with the same period, type and scope, keeping its spend, or creates one.",
          SetLimitInput, set_limit, mutating=True),
])

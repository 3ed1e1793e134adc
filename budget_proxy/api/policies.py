"""Policies: `/api/policies` and `/api/status` (each policy's current window)."""

from __future__ import annotations

from zoneinfo import ZoneInfo

from aiohttp import web

from budget_proxy.api.common import api_error, json_response, read_model
from budget_proxy.appkeys import EVENTS, POLICIES, SETTINGS, STORE
from budget_proxy.enforcement import (
    CounterLine,
    Totals,
    counter_key,
    tightest_remaining,
    utilisation,
)
from budget_proxy.models import BudgetPolicy, nusd_to_usd
from budget_proxy.periods import window_for


async def list_policies(request: web.Request) -> web.Response:
    return json_response(await request.app[STORE].list_policies())


async def get_policy(request: web.Request) -> web.Response:
    policy = await request.app[STORE].get_policy(request.match_info["policy_id"])
    if policy is None:
        return api_error(404, "not_found", f"no policy {request.match_info['policy_id']}")
    return json_response(policy)


async def create_policy(request: web.Request) -> web.Response:
    policy = await read_model(request, BudgetPolicy)
    if isinstance(policy, web.Response):
        return policy
    await request.app[STORE].put_policy(policy)
    await request.app[POLICIES].refresh()
    request.app[EVENTS].publish("updates", "policy_created", policy.model_dump(mode="json"))
    return json_response(policy, 201)


async def delete_policy(request: web.Request) -> web.Response:
    deleted = await request.app[STORE].delete_policy(request.match_info["policy_id"])
    await request.app[POLICIES].refresh()
    if not deleted:
        return api_error(404, "not_found", f"no policy {request.match_info['policy_id']}")
    request.app[EVENTS].publish("updates", "policy_deleted",
                                {"policy_id": request.match_info["policy_id"]})
    return json_response({"deleted": request.match_info["policy_id"]})


def scope_text(policy: BudgetPolicy) -> str:
    parts = [f"{f}={getattr(policy, f)}" for f in
             ("provider", "model", "component", "tier", "task_type", "session", "task")
             if getattr(policy, f) is not None]
    return ",".join(parts) or "all"


async def policy_status_rows(request: web.Request) -> list[dict[str, object]]:
    """Every policy with its current window: limit, spent, reserved, remaining, utilisation."""
    store = request.app[STORE]
    tz = ZoneInfo(request.app[SETTINGS].timezone)
    now = store.now()
    policies = await store.list_policies()
    windows = [window_for(p.period, now, tz) for p in policies]
    keys = [counter_key(p.policy_id, w.window_id) for p, w in zip(policies, windows, strict=True)
            if w is not None]
    totals = iter(await store.totals(keys))
    rows = []
    for policy, window in zip(policies, windows, strict=True):
        tot = next(totals) if window is not None else Totals()
        line = CounterLine("", policy.cost_limit_nusd, policy.token_limit, True, policy.policy_id)
        remaining = tightest_remaining([line], [tot])
        in_tokens = policy.cost_limit is None
        rows.append({
            "policy_id": policy.policy_id, "name": policy.name, "type": policy.type.value,
            "period": policy.period.value, "scope": scope_text(policy),
            "window": window.window_id if window else None,
            "resets_at": window.resets_at.isoformat() if window and window.resets_at else None,
            "limit": policy.token_limit if in_tokens else policy.cost_limit,
            "unit": "tokens" if in_tokens else "usd",
            "spent": tot.spent_tokens if in_tokens else nusd_to_usd(tot.spent_nusd),
            "reserved": tot.reserved_tokens if in_tokens else nusd_to_usd(tot.reserved_nusd),
            "remaining": remaining.tokens if in_tokens else remaining.cost_usd,
            "spent_tokens": tot.spent_tokens, "spent_cost": nusd_to_usd(tot.spent_nusd),
            "utilisation": round(utilisation(line, tot), 4),
            "enabled": policy.enabled,
        })
    return rows


async def status(request: web.Request) -> web.Response:
    store = request.app[STORE]
    rows = await policy_status_rows(request)
    return json_response({"time": store.now().isoformat(), "store": store.kind,
                          "policies": rows})


def routes() -> list[web.RouteDef]:
    return [
        web.get("/api/policies", list_policies),
        web.post("/api/policies", create_policy),
        web.get("/api/policies/{policy_id}", get_policy),
        web.delete("/api/policies/{policy_id}", delete_policy),
        web.get("/api/status", status),
    ]

"""Policies: `/api/policies` and `/api/status` (each policy's current window)."""

from __future__ import annotations

from zoneinfo import ZoneInfo

from aiohttp import web

from budget_proxy.api.common import api_error, json_response, read_model
from budget_proxy.appkeys import EVENTS, POLICIES, SETTINGS, STORE
from budget_proxy.models import BudgetPolicy
from budget_proxy.status import scope_text as scope_text  # re-exported: the CLI imports it here
from budget_proxy.status import status_keys, window_statuses


async def list_policies(request: web.Request) -> web.Response:
    return json_response(await request.config_dict[STORE].list_policies())


async def get_policy(request: web.Request) -> web.Response:
    policy = await request.config_dict[STORE].get_policy(request.match_info["policy_id"])
    if policy is None:
        return api_error(404, "not_found", f"no policy {request.match_info['policy_id']}")
    return json_response(policy)


async def create_policy(request: web.Request) -> web.Response:
    policy = await read_model(request, BudgetPolicy)
    if isinstance(policy, web.Response):
        return policy
    await request.config_dict[STORE].put_policy(policy)
    await request.config_dict[POLICIES].refresh()
    request.config_dict[EVENTS].publish("updates", "policy_created", policy.model_dump(mode="json"))
    return json_response(policy, 201)


async def delete_policy(request: web.Request) -> web.Response:
    deleted = await request.config_dict[STORE].delete_policy(request.match_info["policy_id"])
    await request.config_dict[POLICIES].refresh()
    if not deleted:
        return api_error(404, "not_found", f"no policy {request.match_info['policy_id']}")
    request.config_dict[EVENTS].publish("updates", "policy_deleted",
                                {"policy_id": request.match_info["policy_id"]})
    return json_response({"deleted": request.match_info["policy_id"]})


async def policy_status_rows(request: web.Request) -> list[dict[str, object]]:
    """Every policy with its current window (`budget_proxy.status`): limit, spent, reserved,
    remaining, utilisation, time to reset, burn rate and runway."""
    store = request.config_dict[STORE]
    tz = ZoneInfo(request.config_dict[SETTINGS].timezone)
    now = store.now()
    policies = await store.list_policies()
    keys = status_keys(policies, now, tz)
    totals = dict(zip(keys, await store.totals(keys), strict=True))
    return [st.to_json() for st in window_statuses(policies, totals, now, tz)]


async def status(request: web.Request) -> web.Response:
    store = request.config_dict[STORE]
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

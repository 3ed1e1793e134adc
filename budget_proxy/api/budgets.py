"""Budgets: `/api/budgets`, the containers policies belong to (seed `Budget`).

The default budget (`default`) always exists: policies that name no budget belong to it.
"""

from __future__ import annotations

from aiohttp import web
from pydantic import ValidationError

from budget_proxy.api.common import (
    api_error,
    json_response,
    read_model,
    read_query,
    validation_error,
)
from budget_proxy.api.openapi import api_route
from budget_proxy.api.policies import policy_status_rows
from budget_proxy.appkeys import POLICIES, STORE
from budget_proxy.models import DEFAULT_BUDGET_ID, INPUT, Budget, utcnow
from budget_proxy.schemas import BudgetDeleteQuery, BudgetDetail, BudgetUpdate, Deleted
from budget_proxy.store.base import Store

DEFAULT_BUDGET_DESCRIPTION = "Policies that name no budget belong to this one."


async def ensure_default_budget(store: Store) -> None:
    """Create the default budget if absent (atomic: replicas starting together agree)."""
    budget = Budget(budget_id=DEFAULT_BUDGET_ID, name="default",
                    description=DEFAULT_BUDGET_DESCRIPTION)
    await store.add_doc("budget", DEFAULT_BUDGET_ID, budget.model_dump_json())


async def list_budgets(request: web.Request) -> web.Response:
    """Every budget."""
    return json_response(await request.config_dict[STORE].list_budgets())


async def create_budget(request: web.Request) -> web.Response:
    """Create a budget; 409 if `budget_id` is taken (use PUT to replace)."""
    budget = await read_model(request, Budget)
    if isinstance(budget, web.Response):
        return budget
    store = request.config_dict[STORE]
    if not await store.add_doc("budget", budget.budget_id, budget.model_dump_json()):
        return api_error(409, "conflict", f"budget {budget.budget_id} already exists")
    return json_response(budget, 201)


async def get_budget(request: web.Request) -> web.Response:
    """A budget with the current window of each of its policies."""
    budget_id = request.match_info["budget_id"]
    budget = await request.config_dict[STORE].get_budget(budget_id)
    if budget is None:
        return api_error(404, "not_found", f"no budget {budget_id}")
    policy_ids = {p.policy_id for p in await request.config_dict[STORE].list_policies()
                  if p.budget_id == budget_id}
    rows = [r for r in await policy_status_rows(request) if r["policy_id"] in policy_ids]
    return json_response(BudgetDetail.model_validate({"budget": budget, "policies": rows}))


async def put_budget(request: web.Request) -> web.Response:
    """Create or replace the budget with this id."""
    budget_id = request.match_info["budget_id"]
    budget = await read_model(request, Budget)
    if isinstance(budget, web.Response):
        return budget
    store = request.config_dict[STORE]
    existing = await store.get_budget(budget_id)
    update = {"budget_id": budget_id, "updated_at": utcnow()}
    if existing is not None:
        update["creation_time"] = existing.creation_time
    budget = budget.model_copy(update=update)
    await store.put_budget(budget)
    return json_response(budget, 200 if existing else 201)


async def patch_budget(request: web.Request) -> web.Response:
    """Change some fields of a budget."""
    budget_id = request.match_info["budget_id"]
    change = await read_model(request, BudgetUpdate)
    if isinstance(change, web.Response):
        return change
    store = request.config_dict[STORE]
    budget = await store.get_budget(budget_id)
    if budget is None:
        return api_error(404, "not_found", f"no budget {budget_id}")
    try:
        budget = Budget.model_validate({**budget.model_dump(),
                                        **change.model_dump(exclude_unset=True),
                                        "updated_at": utcnow()}, context=INPUT)
    except ValidationError as exc:
        return validation_error(exc)
    await store.put_budget(budget)
    return json_response(budget)


async def delete_budget(request: web.Request) -> web.Response:
    """Delete a budget; with policies, only with `?cascade=true` (which deletes them too)."""
    budget_id = request.match_info["budget_id"]
    query = read_query(request, BudgetDeleteQuery)
    if isinstance(query, web.Response):
        return query
    if budget_id == DEFAULT_BUDGET_ID:
        return api_error(409, "conflict", "the default budget cannot be deleted")
    store = request.config_dict[STORE]
    if await store.get_budget(budget_id) is None:
        return api_error(404, "not_found", f"no budget {budget_id}")
    owned = [p for p in await store.list_policies() if p.budget_id == budget_id]
    if owned and not query.cascade:
        return api_error(409, "conflict", f"budget {budget_id} has {len(owned)} policies; "
                         "delete them first or pass cascade=true")
    for policy in owned:
        await store.delete_policy(policy.policy_id)
    await store.delete_budget(budget_id)
    await request.config_dict[POLICIES].refresh()
    return json_response(Deleted(deleted=budget_id))


def routes() -> list[web.RouteDef]:
    tag = "budgets"
    return [
        api_route("GET", "/api/budgets", list_budgets, summary="List budgets", tag=tag,
                  response=list[Budget]),
        api_route("POST", "/api/budgets", create_budget, summary="Create a budget", tag=tag,
                  body=Budget, response=Budget, status=201),
        api_route("GET", "/api/budgets/{budget_id}", get_budget, summary="A budget and its "
                  "policies' current windows", tag=tag, response=BudgetDetail),
        api_route("PUT", "/api/budgets/{budget_id}", put_budget, summary="Create or replace "
                  "a budget", tag=tag, body=Budget, response=Budget),
        api_route("PATCH", "/api/budgets/{budget_id}", patch_budget, summary="Update a budget",
                  tag=tag, body=BudgetUpdate, response=Budget),
        api_route("DELETE", "/api/budgets/{budget_id}", delete_budget, summary="Delete a "
                  "budget", tag=tag, query=BudgetDeleteQuery, response=Deleted),
    ]

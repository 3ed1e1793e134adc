"""Allocations: `/api/allocations` (the design is in `budget_proxy.allocations`)."""

from __future__ import annotations

from aiohttp import web

from budget_proxy.allocations import AllocationRefused, AllocationRequest, BudgetAllocation
from budget_proxy.api.common import api_error, json_response, read_model, read_query
from budget_proxy.api.openapi import api_route
from budget_proxy.appkeys import ALLOCATIONS, POLICIES
from budget_proxy.schemas import AllocationQuery


async def list_allocations(request: web.Request) -> web.Response:
    """Allocations with live token figures, highest priority first."""
    query = read_query(request, AllocationQuery)
    if isinstance(query, web.Response):
        return query
    allocs = await request.config_dict[ALLOCATIONS].find(
        component=query.component, context_id=query.context_id, active=query.active)
    return json_response(allocs)


async def create_allocation(request: web.Request) -> web.Response:
    """Hold `tokens_allocated` tokens on the budgets covering the allocation. When they cannot
    cover it, active allocations of lower `priority` on the same budgets give up unused tokens
    (lowest priority, newest first; listed in `preempted`); otherwise 409, naming the policy
    and the allocations of equal or higher priority that hold it. Requests with
    `X-Budget-Allocation: ID` or `X-Budget-Context: CONTEXT_ID` then draw it down and stop at
    the allocated tokens."""
    req = await read_model(request, AllocationRequest)
    if isinstance(req, web.Response):
        return req
    policies = request.config_dict[POLICIES]
    await policies.refresh()
    result = await request.config_dict[ALLOCATIONS].create(req, policies.policies)
    if isinstance(result, AllocationRefused):
        details = [{"field": "tokens_allocated", "reason": result.message},
                   *({"field": "priority", "reason": f"held by allocation {aid} of equal or "
                      "higher priority"} for aid in result.blocking)]
        return api_error(409, "budget_exceeded", result.message, details)
    return json_response(result, 201)


async def get_allocation(request: web.Request) -> web.Response:
    """One allocation with live token figures."""
    allocation_id = request.match_info["allocation_id"]
    alloc = await request.config_dict[ALLOCATIONS].get(allocation_id)
    if alloc is None:
        return api_error(404, "not_found", f"no allocation {allocation_id}")
    return json_response(alloc)


async def release_allocation(request: web.Request) -> web.Response:
    """End the allocation: no further draws; its unused tokens go back to the budgets."""
    allocation_id = request.match_info["allocation_id"]
    alloc = await request.config_dict[ALLOCATIONS].release(allocation_id)
    if alloc is None:
        return api_error(404, "not_found", f"no allocation {allocation_id}")
    return json_response(alloc)


def routes() -> list[web.RouteDef]:
    tag = "allocations"
    return [
        api_route("GET", "/api/allocations", list_allocations, summary="List allocations",
                  tag=tag, query=AllocationQuery, response=list[BudgetAllocation]),
        api_route("POST", "/api/allocations", create_allocation, summary="Create an "
                  "allocation", tag=tag, body=AllocationRequest, response=BudgetAllocation,
                  status=201),
        api_route("GET", "/api/allocations/{allocation_id}", get_allocation,
                  summary="One allocation", tag=tag, response=BudgetAllocation),
        api_route("POST", "/api/allocations/{allocation_id}/release", release_allocation,
                  summary="Release an allocation", tag=tag, response=BudgetAllocation),
        api_route("DELETE", "/api/allocations/{allocation_id}", release_allocation,
                  summary="Release an allocation (same as POST .../release)", tag=tag,
                  response=BudgetAllocation),
    ]

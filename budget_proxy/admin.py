"""Admin routes (JSON under `/api`), health, and the access check for them.

Bodies are validated with the same pydantic models the store keeps; a bad field answers 422
naming the field and the reason.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

import orjson
from aiohttp import web
from pydantic import BaseModel, ValidationError

from budget_proxy.appkeys import POLICIES, SETTINGS, STORE
from budget_proxy.enforcement import (
    CounterLine,
    Totals,
    counter_key,
    tightest_remaining,
    utilisation,
)
from budget_proxy.models import BudgetPolicy, nusd_to_usd, utcnow
from budget_proxy.periods import window_for
from budget_proxy.store.base import StoreError, UsageQuery

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
M = TypeVar("M", bound=BaseModel)


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=orjson.dumps(data, default=_default), status=status, content_type="application/json"
    )


def _default(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    raise TypeError


def api_error(status: int, kind: str, message: str, details: Any = None) -> web.Response:
    error: dict[str, Any] = {"type": kind, "message": message}
    if details is not None:
        error["details"] = details
    return json_response({"error": error}, status)


def validation_error(exc: ValidationError) -> web.Response:
    details = [
        {"field": ".".join(str(p) for p in err["loc"]), "reason": err["msg"]}
        for err in exc.errors(include_url=False)
    ]
    summary = "; ".join(f"{d['field'] or 'body'}: {d['reason']}" for d in details)
    return api_error(422, "validation_error", summary, details)


def _token_ok(presented: str, expected: str | None) -> bool:
    return expected is not None and hmac.compare_digest(presented.encode(), expected.encode())


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """With BUDGET_ADMIN_TOKEN set, `/api` mutations need it; the viewer token may only read."""
    if not request.path.startswith("/api/"):
        return await handler(request)
    settings = request.app[SETTINGS]
    if settings.admin_token is None:
        return await handler(request)
    auth = request.headers.get("Authorization", "")
    presented = auth[7:] if auth.startswith("Bearer ") else ""
    is_admin = _token_ok(presented, settings.admin_token)
    is_viewer = _token_ok(presented, settings.viewer_token)
    if request.method in READ_METHODS:
        if settings.viewer_token is None or is_admin or is_viewer or _public(request.path):
            return await handler(request)
        return api_error(401, "unauthorized", "a viewer or admin token is required")
    if is_admin:
        return await handler(request)
    if is_viewer:
        return api_error(403, "forbidden", "the viewer token cannot change anything")
    return api_error(401, "unauthorized", "Authorization: Bearer <BUDGET_ADMIN_TOKEN> required")


def _public(path: str) -> bool:
    return path in ("/api/health", "/api/openapi.json", "/api/docs")


async def read_model(request: web.Request, model: type[M]) -> M | web.Response:
    """Parse and validate a JSON body, or the error response to return."""
    try:
        data = await request.json(loads=orjson.loads)
    except (ValueError, orjson.JSONDecodeError) as exc:
        return api_error(400, "invalid_json", f"body is not valid JSON: {exc}")
    if not isinstance(data, dict):
        return api_error(400, "invalid_json", "body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        return validation_error(exc)


async def health(request: web.Request) -> web.Response:
    store = request.app[STORE]
    try:
        await store.config_version()
        status, code = "ok", 200
    except StoreError:
        status, code = "degraded", 503
    return json_response({"status": status, "store": store.kind,
                          "time": utcnow().isoformat()}, code)


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
    return json_response(policy, 201)


async def delete_policy(request: web.Request) -> web.Response:
    deleted = await request.app[STORE].delete_policy(request.match_info["policy_id"])
    await request.app[POLICIES].refresh()
    if not deleted:
        return api_error(404, "not_found", f"no policy {request.match_info['policy_id']}")
    return json_response({"deleted": request.match_info["policy_id"]})


def _scope_text(policy: BudgetPolicy) -> str:
    parts = [f"{f}={getattr(policy, f)}" for f in
             ("provider", "model", "component", "tier", "task_type", "session", "task")
             if getattr(policy, f) is not None]
    return ",".join(parts) or "all"


async def status(request: web.Request) -> web.Response:
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
            "period": policy.period.value, "scope": _scope_text(policy),
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
    return json_response({"time": now.isoformat(), "store": store.kind, "policies": rows})


def _query_datetime(request: web.Request, name: str) -> datetime | None:
    value = request.query.get(name)
    return datetime.fromisoformat(value) if value else None


def usage_query(request: web.Request) -> UsageQuery:
    q = request.query
    return UsageQuery(
        component=q.get("component"), provider=q.get("provider"), model=q.get("model"),
        context_id=q.get("context_id"), session_id=q.get("session_id"),
        since=_query_datetime(request, "since"), until=_query_datetime(request, "until"),
        limit=min(int(q.get("limit", 100)), 10_000), offset=int(q.get("offset", 0)),
    )


async def list_usage_records(request: web.Request) -> web.Response:
    try:
        query = usage_query(request)
    except ValueError as exc:
        return api_error(400, "invalid_query", str(exc))
    return json_response(await request.app[STORE].list_usage(query))


def admin_routes() -> list[web.RouteDef]:
    return [
        web.get("/health", health),
        web.get("/api/health", health),
        web.get("/api/policies", list_policies),
        web.post("/api/policies", create_policy),
        web.get("/api/policies/{policy_id}", get_policy),
        web.delete("/api/policies/{policy_id}", delete_policy),
        web.get("/api/usage/records", list_usage_records),
        web.get("/api/status", status),
    ]

"""Policies: `/api/policies` (create, edit, top up, replay) and `/api/status`.

A policy's counters are keyed by its id and window, never by its limit, so an edit (`PUT`,
`PATCH`, or `POST` of an existing id) keeps the spend. A new or edited policy's current
window starts from the recorded spend that matches it: what the usage records of the window
hold beyond what its counter already counts is added to it (once, as a settlement), and the
answer says how much was counted (`counted`).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import orjson
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
from budget_proxy.appkeys import CATALOG, EVENTS, KEYS, POLICIES, SETTINGS, STORE
from budget_proxy.enforcement import PastCall, RequestScope, matching_spend, replay
from budget_proxy.models import (
    INPUT,
    BudgetPolicy,
    TopUp,
    UsageRecord,
    new_id,
    nusd_to_usd,
    usd_to_nusd,
    utcnow,
)
from budget_proxy.periods import window_for
from budget_proxy.pricing import PriceCatalog
from budget_proxy.schemas import (
    Counted,
    PolicyWriteQuery,
    PolicyWritten,
    ReplayedWindow,
    ReplayRequest,
    ReplayResult,
    TopUpRequest,
)
from budget_proxy.status import scope_text as scope_text  # re-exported: the CLI imports it here
from budget_proxy.status import status_keys, window_statuses
from budget_proxy.store.base import Reservation, Store, UsageQuery

SCAN_PAGE = 1000
MAX_SCAN_RECORDS = 200_000  # records one backfill or replay reads at most (newest first)
# fields an edit may not change: the id is the path's, the creation time stays
FIXED_FIELDS = ("policy_id", "created_at")


async def list_policies(request: web.Request) -> web.Response:
    return json_response(await request.config_dict[STORE].list_policies())


async def get_policy(request: web.Request) -> web.Response:
    policy = await request.config_dict[STORE].get_policy(request.match_info["policy_id"])
    if policy is None:
        return api_error(404, "not_found", f"no policy {request.match_info['policy_id']}")
    return json_response(policy)


async def create_policy(request: web.Request) -> web.Response:
    """`budget_id` is optional and defaults to the default budget: `{"period": "daily",
    "type": "hard_limit", "cost_limit": 5}` is complete. Its current window starts from the
    recorded spend that matches it (`counted`); a provider that is not configured or a model
    the catalog does not know is a warning (`warnings`), or a 422 with `?strict=true`."""
    policy = await read_model(request, BudgetPolicy)
    if isinstance(policy, web.Response):
        return policy
    existing = await request.config_dict[STORE].get_policy(policy.policy_id)
    if existing is not None:  # a POST of an existing id replaces it, keeping its history
        policy = policy.model_copy(update={"created_at": existing.created_at,
                                           "topups": policy.topups or existing.topups})
    return await _write(request, policy, "policy_created" if existing is None
                        else "policy_updated", 201)


async def replace_policy(request: web.Request) -> web.Response:
    """Replace a policy whole (same id; created, 201, when there is none): its spend is
    kept, and its current window counts the recorded spend that matches its new scope."""
    body = await _body(request)
    if isinstance(body, web.Response):
        return body
    policy_id = request.match_info["policy_id"]
    existing = await request.config_dict[STORE].get_policy(policy_id)
    if existing is None:
        try:
            policy = BudgetPolicy.model_validate({**body, "policy_id": policy_id},
                                                 context=INPUT)
        except ValidationError as exc:
            return validation_error(exc)
        return await _write(request, policy, "policy_created", 201)
    return await _edit(request, existing, {**body, **_fixed(existing)})


async def patch_policy(request: web.Request) -> web.Response:
    """Change some fields of a policy (`null` clears one): its spend is kept."""
    existing = await _existing(request)
    if isinstance(existing, web.Response):
        return existing
    body = await _body(request)
    if isinstance(body, web.Response):
        return body
    merged = {**existing.model_dump(mode="json"), **body, **_fixed(existing)}
    return await _edit(request, existing, merged)


async def delete_policy(request: web.Request) -> web.Response:
    deleted = await request.config_dict[STORE].delete_policy(request.match_info["policy_id"])
    await request.config_dict[POLICIES].refresh()
    if not deleted:
        return api_error(404, "not_found", f"no policy {request.match_info['policy_id']}")
    request.config_dict[EVENTS].publish("updates", "policy_deleted",
                                {"policy_id": request.match_info["policy_id"]})
    return json_response({"deleted": request.match_info["policy_id"]})


async def add_topup(request: web.Request) -> web.Response:
    """Raise a policy's limits until the top-up expires (`ttl_s`); then the limit is back.
    Spend is never reset. Expired top-ups are dropped from the policy here."""
    existing = await _existing(request)
    if isinstance(existing, web.Response):
        return existing
    req = await read_model(request, TopUpRequest)
    if isinstance(req, web.Response):
        return req
    store = request.config_dict[STORE]
    now = store.now()
    missing = [name for name, amount, limit in (
        ("cost", req.cost, existing.cost_limit), ("tokens", req.tokens, existing.token_limit),
        ("requests", req.requests, existing.request_limit)) if amount is not None and limit is None]
    if missing:
        reason = f"the policy has no {missing[0]} limit to raise"
        return api_error(422, "validation_error", f"{missing[0]}: {reason}",
                         [{"field": missing[0], "reason": reason}])
    topup = TopUp(cost=req.cost, tokens=req.tokens, requests=req.requests, created_at=now,
                  expires_at=min(now + timedelta(seconds=req.ttl_s), _MAX_EXPIRY))
    live = [t for t in existing.topups if t.live(now)]
    if len(live) >= 1000:
        return api_error(422, "validation_error", "topups: at most 1000 live top-ups")
    policy = existing.model_copy(update={"topups": [*live, topup], "updated_at": utcnow()})
    await store.put_policy(policy)
    await request.config_dict[POLICIES].refresh()
    request.config_dict[EVENTS].publish("updates", "policy_updated",
                                        policy.model_dump(mode="json"))
    return json_response({"policy": policy, "topup": topup}, 201)


async def replay_policy(request: web.Request) -> web.Response:
    """What-if: how many of the recorded calls of the last `days` days the policy would have
    refused or warned, per window, and the spend it would have allowed. Nothing is stored."""
    req = await read_model(request, ReplayRequest)
    if isinstance(req, web.Response):
        return req
    try:
        policy = BudgetPolicy.model_validate(req.policy, context=INPUT)
    except ValidationError as exc:
        return validation_error(exc)
    store = request.config_dict[STORE]
    tz = ZoneInfo(request.config_dict[SETTINGS].timezone)
    since = store.now() - timedelta(days=req.days)
    calls, truncated = await past_calls(store, request.config_dict[CATALOG], since)
    windows = replay(policy, calls, tz)
    return json_response(ReplayResult(
        policy_id=policy.policy_id, type=policy.type.value, period=policy.period.value,
        days=req.days, since=since, records_scanned=len(calls), truncated=truncated,
        calls=sum(w.calls for w in windows), allowed=sum(w.allowed for w in windows),
        refused=sum(w.refused for w in windows), warned=sum(w.warned for w in windows),
        allowed_cost=nusd_to_usd(sum(w.allowed_nusd for w in windows)),
        refused_cost=nusd_to_usd(sum(w.refused_nusd for w in windows)),
        windows=[ReplayedWindow(
            window=w.window_id, calls=w.calls, allowed=w.allowed, refused=w.refused,
            warned=w.warned, allowed_cost=nusd_to_usd(w.allowed_nusd),
            refused_cost=nusd_to_usd(w.refused_nusd)) for w in windows],
    ))


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


# the work below the handlers ----------------------------------------------------------------
_MAX_EXPIRY = datetime(2199, 12, 31, tzinfo=ZoneInfo("UTC"))


async def _existing(request: web.Request) -> BudgetPolicy | web.Response:
    policy_id = request.match_info["policy_id"]
    policy = await request.config_dict[STORE].get_policy(policy_id)
    if policy is None:
        return api_error(404, "not_found", f"no policy {policy_id}")
    return policy


async def _body(request: web.Request) -> dict[str, Any] | web.Response:
    """The JSON object of an edit; its `policy_id`, if any, must be the path's."""
    try:
        data = await request.json(loads=orjson.loads)
    except ValueError as exc:  # orjson.JSONDecodeError too: NaN, bad bytes, too deep
        return api_error(400, "invalid_json", f"body is not valid JSON: {exc}")
    if not isinstance(data, dict):
        return api_error(400, "invalid_json", "body must be a JSON object")
    named = data.get("policy_id")
    if named is not None and named != request.match_info["policy_id"]:
        reason = "an edit cannot change a policy's id"
        return api_error(422, "validation_error", f"policy_id: {reason}",
                         [{"field": "policy_id", "reason": reason}])
    return data


def _fixed(existing: BudgetPolicy) -> dict[str, Any]:
    return {name: getattr(existing, name) for name in FIXED_FIELDS} | {"updated_at": utcnow()}


async def _edit(request: web.Request, existing: BudgetPolicy, fields: dict[str, Any]
                ) -> web.Response:
    fields.setdefault("topups", [t.model_dump(mode="json") for t in existing.topups])
    try:
        policy = BudgetPolicy.model_validate(fields, context=INPUT)
    except ValidationError as exc:
        return validation_error(exc)
    return await _write(request, policy, "policy_updated", 200)


async def _write(request: web.Request, policy: BudgetPolicy, event: str, status: int
                 ) -> web.Response:
    """Check, store, start the current window from the recorded spend, announce."""
    query = read_query(request, PolicyWriteQuery)
    if isinstance(query, web.Response):
        return query
    problems = policy_warnings(policy, request)
    if problems and query.strict:
        return api_error(422, "validation_error", "; ".join(problems),
                         [{"field": field, "reason": text} for field, text in
                          _fields_of(problems)])
    store = request.config_dict[STORE]
    await store.put_policy(policy)
    await request.config_dict[POLICIES].refresh()
    counted = await backfill(store, request.config_dict[CATALOG], policy,
                             ZoneInfo(request.config_dict[SETTINGS].timezone))
    request.config_dict[EVENTS].publish("updates", event, policy.model_dump(mode="json"))
    written = PolicyWritten(**policy.model_dump(), warnings=problems, counted=counted)
    return json_response(written, status)


def policy_warnings(policy: BudgetPolicy, request: web.Request) -> list[str]:
    """What in a policy is probably a typo: a provider that is not configured (it would never
    match), a model the price catalog does not know, a key that does not exist."""
    out = []
    providers = request.config_dict[SETTINGS].all_providers()
    if policy.provider is not None and policy.provider not in providers:
        out.append(f"provider: {policy.provider!r} is not a configured provider "
                   f"({', '.join(sorted(providers))}); the policy never matches")
    catalog: PriceCatalog = request.config_dict[CATALOG]
    if policy.model is not None and catalog.lookup(policy.provider or "", policy.model) is None:
        out.append(f"model: {policy.model!r} is not in the price catalog"
                   + (f" for {policy.provider}" if policy.provider else ""))
    if policy.key_id is not None:
        ring = request.config_dict[KEYS]
        if all(k.key_id != policy.key_id for k in ring.by_hash.values()):
            out.append(f"key_id: no virtual key {policy.key_id!r}")
    return out


def _fields_of(problems: list[str]) -> list[tuple[str, str]]:
    return [(text.partition(":")[0], text.partition(": ")[2]) for text in problems]


async def past_calls(store: Store, catalog: PriceCatalog, since: datetime,
                     until: datetime | None = None) -> tuple[list[PastCall], bool]:
    """Recorded calls from `since` (oldest first), at most MAX_SCAN_RECORDS of the newest;
    True when more were left out."""
    records: list[UsageRecord] = []
    while len(records) < MAX_SCAN_RECORDS:
        page = await store.list_usage(UsageQuery(since=since, until=until, limit=SCAN_PAGE,
                                                 offset=len(records)))
        records.extend(page)
        if len(page) < SCAN_PAGE:
            break
    truncated = len(records) >= MAX_SCAN_RECORDS
    records.reverse()
    return [past_call(r, catalog) for r in records], truncated


def past_call(record: UsageRecord, catalog: PriceCatalog) -> PastCall:
    """A usage record as policies see it (its tier from the price catalog)."""
    price = catalog.lookup(record.provider, record.model)
    return PastCall(
        scope=RequestScope(
            provider=record.provider, model=record.model, component=record.component,
            tier=price.tier if price is not None else None, task_type=record.task_type,
            session=record.session_id, task=record.task_id,
            key_id=record.metadata.get("key_id") if isinstance(
                record.metadata.get("key_id"), str) else None),
        at=record.timestamp, cost_nusd=usd_to_nusd(record.total_cost) or 0,
        tokens=record.total_tokens)


async def backfill(store: Store, catalog: PriceCatalog, policy: BudgetPolicy, tz: ZoneInfo
                   ) -> Counted:
    """Start the policy's current window from the recorded spend that matches it: what the
    records hold beyond what the counter already counts is added (one settlement, so a
    counter never goes down and a call settled meanwhile is not counted twice)."""
    now = store.now()
    window = window_for(policy.period, now, tz)
    if window is None or window.starts_at is None:
        return Counted()
    calls, _ = await past_calls(store, catalog, window.starts_at, window.resets_at)
    key, found = matching_spend(policy, calls, now, tz)
    if key is None:
        return Counted()
    (current,) = await store.totals([key])
    add_nusd = max(0, found.spent_nusd - current.spent_nusd)
    add_tokens = max(0, found.spent_tokens - current.spent_tokens)
    if add_nusd or add_tokens:
        charge = Reservation(new_id("backfill"), (key,), 0, 0, requests=0)
        await store.settle(charge, add_nusd, add_tokens, None)
    return Counted(window=window.window_id, records=found.requests,
                   cost=nusd_to_usd(found.spent_nusd), tokens=found.spent_tokens)


def routes() -> list[web.RouteDef]:
    tag = "policies"
    return [
        web.get("/api/policies", list_policies),
        api_route("POST", "/api/policies", create_policy, summary="Create (or replace, by "
                  "policy_id) a policy", tag=tag, body=BudgetPolicy, query=PolicyWriteQuery,
                  response=PolicyWritten, status=201),
        api_route("POST", "/api/policies/replay", replay_policy, summary="What-if: replay a "
                  "policy over recorded calls", tag=tag, body=ReplayRequest,
                  response=ReplayResult),
        web.get("/api/policies/{policy_id}", get_policy),
        api_route("PUT", "/api/policies/{policy_id}", replace_policy, summary="Replace a "
                  "policy (its spend is kept)", tag=tag, body=BudgetPolicy,
                  query=PolicyWriteQuery, response=PolicyWritten),
        api_route("PATCH", "/api/policies/{policy_id}", patch_policy, summary="Change fields "
                  "of a policy (its spend is kept)", tag=tag, body=BudgetPolicy,
                  query=PolicyWriteQuery, response=PolicyWritten),
        web.delete("/api/policies/{policy_id}", delete_policy),
        api_route("POST", "/api/policies/{policy_id}/topups", add_topup, summary="Raise a "
                  "policy's limits until the top-up expires", tag=tag, body=TopUpRequest,
                  status=201),
        web.get("/api/status", status),
    ]

"""Hostile admin input on every mutating route: huge, negative, NaN/inf, wrong-typed and deeply
nested values are refused with 400/422 naming the field, never a 5xx; the admin API, the
status, reports and metrics stay answering afterwards. Also the admin API's own error shape:
JSON 404/405, a store outage as 503 `store_unavailable`, an unexpected error as a JSON 500
without its traceback."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson
import pytest
from pydantic import ValidationError

from budget_proxy.appkeys import POLICIES
from budget_proxy.models import (
    INPUT,
    MAX_TOKENS,
    MAX_USD,
    BudgetPolicy,
    UsageRecord,
)
from budget_proxy.store.base import StoreError
from tests.api.conftest import ADMIN_TOKEN, assert_invalid

# a valid body per mutating route: each hostile value replaces one field of it
VALID_BODIES: dict[tuple[str, str], dict[str, Any]] = {
    ("POST", "/api/policies"): {"period": "daily", "type": "hard_limit", "cost_limit": 5},
    ("PUT", "/api/policies/p-hostile"): {"period": "daily", "cost_limit": 5},
    ("PATCH", "/api/policies/p-hostile"): {"cost_limit": 6},
    ("POST", "/api/policies/p-hostile/topups"): {"cost": 1, "ttl_s": 60},
    ("POST", "/api/policies/replay"): {"policy": {"cost_limit": 5}, "days": 1},
    ("POST", "/api/budgets"): {"name": "hostile"},
    ("PUT", "/api/budgets/b-hostile"): {"name": "hostile"},
    ("PATCH", "/api/budgets/default"): {"description": "d"},
    ("POST", "/api/allocations"): {"context_id": "c1", "component": "c", "tokens_allocated": 10},
    ("POST", "/api/usage/record"): {"provider": "openai", "model": "gpt-4o-mini",
                                    "input_tokens": 1, "output_tokens": 1},
    ("POST", "/api/usage/check"): {"provider": "openai", "model": "gpt-4o-mini",
                                   "input_tokens": 1},
    ("POST", "/api/prices"): {"provider": "openai", "model": "hostile-model",
                              "input_usd_per_mtok": "1", "output_usd_per_mtok": "2"},
    ("POST", "/api/prices/calculate"): {"model": "gpt-4o-mini", "input_tokens": 1},
    ("POST", "/api/keys"): {"component": "c"},
    ("POST", "/api/assistant/analyze"): {},
    ("POST", "/api/assistant/optimize"): {},
    ("POST", "/api/assistant/recommend-model"): {},
}
HUGE = {"integer": 10**30, "number": 1e308}
NOT_NUMBERS = ["abc", [], {"a": 1}, True, "NaN", "Infinity", "-Infinity", "1e400"]


def _deep(levels: int) -> Any:
    value: Any = 1
    for _ in range(levels):
        value = {"a": value}
    return value


def _resolve(schema: dict[str, Any], doc: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = doc["components"]["schemas"][schema["$ref"].rsplit("/", 1)[-1]]
    return schema


def _kinds(prop: dict[str, Any]) -> set[str]:
    options = prop.get("anyOf", [prop])
    return {o.get("type") for o in options if o.get("type") in ("integer", "number")} | (
        {"number"} if any("Decimal" in str(o) or o.get("pattern") for o in options) and
        prop.get("anyOf") and any(o.get("type") == "number" for o in options) else set())


def numeric_fields(doc: dict[str, Any], method: str, path: str) -> dict[str, str]:
    """Every number a route's body takes, with its JSON type (from the OpenAPI document)."""
    op = doc["paths"][_template(path)][method.lower()]
    body = _resolve(op["requestBody"]["content"]["application/json"]["schema"], doc)
    out = {}
    for name, prop in body.get("properties", {}).items():
        kinds = _kinds(prop)
        if kinds:
            out[name] = "integer" if kinds == {"integer"} else "number"
    return out


def _template(path: str) -> str:
    return path.replace("b-hostile", "{budget_id}").replace("/default", "/{budget_id}").replace(
        "p-hostile", "{policy_id}")


@pytest.fixture
async def doc(api) -> dict[str, Any]:
    # the policy the policy routes' paths name
    await api.admin("PUT", "/api/policies/p-hostile", json=VALID_BODIES[
        ("PUT", "/api/policies/p-hostile")])
    return (await api.anon("GET", "/api/openapi.json")).json()


async def test_every_mutating_route_is_covered(api, doc):
    routes = {(m.upper(), p) for p, ops in doc["paths"].items() for m, op in ops.items()
              if "requestBody" in op}
    covered = {(m, _template(p)) for m, p in VALID_BODIES}
    missing = routes - covered - {("POST", "/api/alerts/{alert_id}/acknowledge"),
                                  ("POST", "/api/assistant/chat")}
    assert not missing, f"routes without a hostile-input case: {sorted(missing)}"
    for (method, path), body in VALID_BODIES.items():  # the bases are valid
        resp = await api.admin(method, path, json=body)
        assert resp.status_code < 300, (method, path, resp.text)


@pytest.mark.parametrize(("method", "path"), list(VALID_BODIES))
async def test_hostile_numbers_are_refused_naming_the_field(api, doc, method, path):
    fields = numeric_fields(doc, method, path)
    for name, kind in fields.items():
        for value in (HUGE[kind], -1, *NOT_NUMBERS):
            body = {**VALID_BODIES[(method, path)], name: value}
            resp = await api.admin(method, path, json=body)
            assert resp.status_code == 422, (name, value, resp.text)
            error = resp.json()["error"]
            assert error["type"] == "validation_error"
            assert name in error["message"], (name, value, error)


@pytest.mark.parametrize(("method", "path"), list(VALID_BODIES))
async def test_malformed_and_deep_bodies_are_400_or_422(api, doc, method, path):
    base = VALID_BODIES[(method, path)]
    cases: list[tuple[bytes, set[int]]] = [
        (b"{", {400}), (b"[]", {400}), (b'"x"', {400}), (b"null", {400}),
        (b"{\"a\": NaN}", {400}), (b"{\"a\": 1e999}", {400}),
        (b"[" * 5000 + b"]" * 5000, {400}),  # past the parser's depth limit
        (orjson.dumps({**base, "metadata": _deep(200)}), {422}),
        (orjson.dumps({**base, "unexpected_field": 1}), {422}),
        (b"\xff\xfe{}", {400}),
    ]
    for body, expected in cases:
        resp = await api.admin(method, path, content=body,
                               headers={"Content-Type": "application/json"})
        assert resp.status_code in expected, (body[:40], resp.status_code, resp.text)
        assert resp.json()["error"]["type"] in ("invalid_json", "validation_error")


async def test_metadata_nesting_is_bounded_but_ordinary_nesting_is_kept(api):
    ok = await api.ok("POST", "/api/budgets", 201, json={"name": "n", "metadata": _deep(20)})
    assert ok["metadata"] == _deep(20)
    resp = await api.admin("POST", "/api/usage/record", json={
        "provider": "openai", "model": "gpt-4o-mini", "input_tokens": 1, "metadata": _deep(40)})
    assert_invalid(resp, "metadata")


async def test_a_policy_of_1e308_usd_is_refused_and_everything_keeps_answering(api):
    resp = await api.admin("POST", "/api/policies",
                           json={"period": "daily", "type": "hard_limit", "cost_limit": 1e308})
    assert_invalid(resp, "cost_limit")
    for field, value in (("token_limit", 10**19), ("warning_threshold", 2),
                         ("action_threshold", -0.1)):
        resp = await api.admin("POST", "/api/policies", json={
            "period": "daily", "type": "hard_limit", "cost_limit": 1, field: value})
        assert_invalid(resp, field)
    resp = await api.admin("POST", "/api/usage/record", json={
        "provider": "openai", "model": "gpt-4o-mini", "input_tokens": 10**19})
    assert_invalid(resp, "input_tokens")
    for path in ("/api/allocations?x=1", "/api/usage/records?offset=1e30",
                 "/api/usage/records?offset=99999999999999999999999", "/api/usage?days=-1",
                 "/api/reports?days=1e9", "/api/alerts?offset=-5",
                 "/api/usage/records?since=99999-01-01", "/api/prices/calculate?model=x"
                 "&input_tokens=1e99"):
        resp = await api.admin("GET", path)
        assert resp.status_code == 422, (path, resp.text)
    await _still_answering(api)


async def test_documents_stored_before_the_bounds_still_load(api, fake):
    """A policy written with 1e308 USD (allowed before the bounds) is read back clamped: the
    proxy, status, reports and metrics keep working instead of answering 500."""
    store = api.proxy.store
    legacy = {"policy_id": "legacy", "budget_id": "default", "type": "hard_limit",
              "period": "daily", "cost_limit": 1e308, "token_limit": 10**30,
              "warning_threshold": 0.8, "action_threshold": 0.95}
    await store.put_doc("policy", "legacy", json.dumps(legacy))
    await api.proxy.app[POLICIES].refresh(force=True)
    policy = await store.get_policy("legacy")
    assert policy.cost_limit == MAX_USD and policy.token_limit == MAX_TOKENS
    async with httpx.AsyncClient(timeout=30) as client:
        resp = await client.post(f"{api.proxy.url}/v1/chat/completions", json={
            "model": "gpt-4o-mini", "max_tokens": 5,
            "messages": [{"role": "user", "content": "hi"}]})
    assert resp.status_code == 200, resp.text
    await _still_answering(api)


async def _still_answering(api) -> None:
    """The admin API, status, reports and metrics answer (a hung store would time out)."""
    async with httpx.AsyncClient(timeout=10) as client:
        for path in ("/api/status", "/api/reports", "/api/usage/records", "/api/health",
                     "/metrics"):
            resp = await client.get(f"{api.proxy.url}{path}",
                                    headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
            assert resp.status_code == 200, (path, resp.text)


# the admin API's own error shape ------------------------------------------------------------
async def test_unknown_paths_and_methods_answer_json(api, fake):
    before = len(fake.requests) if hasattr(fake, "requests") else None
    resp = await api.admin("GET", "/api/no-such-route")
    assert resp.status_code == 404 and resp.json()["error"]["type"] == "not_found"
    resp = await api.admin("POST", "/api/openai/v1/chat/completions", json={})
    assert resp.status_code == 404 and resp.json()["error"]["type"] == "not_found"
    resp = await api.admin("PUT", "/api/budgets")
    assert resp.status_code == 405
    assert resp.json()["error"]["type"] == "method_not_allowed"
    assert "POST" in resp.headers["Allow"]
    if before is not None:
        assert len(fake.requests) == before  # nothing under /api reached the provider


async def test_a_store_outage_is_a_503_json(api, monkeypatch):
    async def down(*_a: object, **_k: object) -> None:
        raise StoreError("redis unavailable: Error 111 connecting")

    monkeypatch.setattr(api.proxy.store, "list_policies", down)
    resp = await api.admin("GET", "/api/policies")
    assert resp.status_code == 503, resp.text
    assert resp.json()["error"]["type"] == "store_unavailable"
    assert int(resp.headers["Retry-After"]) > 0


async def test_an_unexpected_error_is_a_500_json_without_traceback(api, monkeypatch, caplog):
    async def broken(*_a: object, **_k: object) -> None:
        raise RuntimeError("internal detail 7f3a")

    monkeypatch.setattr(api.proxy.store, "list_policies", broken)
    with caplog.at_level(logging.ERROR, logger="budget_proxy.api.common"):
        resp = await api.admin("GET", "/api/policies")
    assert resp.status_code == 500
    assert resp.json()["error"]["type"] == "internal_error"
    assert "7f3a" not in resp.text and "Traceback" not in resp.text
    logged = [r for r in caplog.records if r.name == "budget_proxy.api.common"]
    assert len(logged) == 1 and logged[0].exc_info is not None


# the bounds themselves ------------------------------------------------------------------------
@pytest.mark.parametrize(("field", "value", "clamped"), [
    ("cost_limit", 1e308, float(MAX_USD)),
    ("cost_limit", float("inf"), float(MAX_USD)),
    ("cost_limit", float("nan"), 0.0),
    ("token_limit", 10**30, MAX_TOKENS),
    ("warning_threshold", 7.0, 1.0),
])
def test_input_is_refused_and_stored_values_are_clamped(field, value, clamped):
    body = {"period": "daily", "type": "warn", "cost_limit": 1, field: value}
    with pytest.raises(ValidationError) as err:
        BudgetPolicy.model_validate(body, context=INPUT)
    assert err.value.errors()[0]["loc"] == (field,)
    read_back = BudgetPolicy.model_validate(body)  # no INPUT context: a stored document
    assert getattr(read_back, field) == clamped


@pytest.mark.parametrize(("value", "ok"), [
    ("2026-01-01T00:00:00", True), ("1970-01-01T00:00:00Z", True),
    ("1969-12-31T23:59:59Z", False), ("2300-01-01T00:00:00Z", False),
    ("9999-12-31T23:59:59", False),
])
def test_timestamps_from_outside_are_bounded(value, ok):
    data = {"provider": "p", "model": "m", "timestamp": value}
    if ok:
        assert UsageRecord.model_validate(data, context=INPUT).timestamp.tzinfo is not None
    else:
        with pytest.raises(ValidationError):
            UsageRecord.model_validate(data, context=INPUT)
        assert UsageRecord.model_validate(data).timestamp <= datetime(2200, 1, 1, tzinfo=UTC)

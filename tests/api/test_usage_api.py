"""`/api/usage`, `/api/usage/records`, `POST /api/usage/record`, `POST /api/usage/check`
against the real server: happy paths, validation and auth."""

from __future__ import annotations

import pytest

from tests.api.conftest import assert_auth, assert_invalid

GPT_4O_MINI = (0.15e-6, 0.60e-6)  # USD per token, input and output


async def record(api, **body) -> dict:
    base = {"provider": "openai", "model": "gpt-4o-mini", "component": "codex",
            "input_tokens": 1000, "output_tokens": 100}
    return await api.ok("POST", "/api/usage/record", 201, json={**base, **body})


async def test_record_prices_from_the_catalog_and_charges_the_policies(api):
    policy = await api.ok("POST", "/api/policies", 201,
                          json={"period": "daily", "cost_limit": 1, "component": "codex"})
    out = await record(api, session_id="s1", task_type="code", metadata={"run": 7})
    rec = out["record"]
    assert rec["total_cost"] == pytest.approx(1000 * GPT_4O_MINI[0] + 100 * GPT_4O_MINI[1])
    assert rec["route"] == "record" and rec["metadata"] == {"run": 7}
    assert out["remaining_cost"] == pytest.approx(1 - rec["total_cost"])
    status = await api.ok("GET", "/api/status")
    assert status["policies"][0]["policy_id"] == policy["policy_id"]
    assert status["policies"][0]["spent"] == pytest.approx(rec["total_cost"])


async def test_record_counts_text_and_takes_explicit_costs(api):
    out = await record(api, input_tokens=None, output_tokens=None,
                       input_text="Hello, world!", output_text="Hi there! How can I help?",
                       input_cost=0.5, output_cost=0.25)
    rec = out["record"]
    assert rec["input_tokens"] == 4 and rec["output_tokens"] > 0
    assert (rec["input_cost"], rec["output_cost"], rec["total_cost"]) == (0.5, 0.25, 0.75)


async def test_record_past_a_hard_limit_is_kept_and_reported(api):
    policy = await api.ok("POST", "/api/policies", 201,
                          json={"period": "daily", "token_limit": 500})
    out = await record(api)  # 1100 tokens: the call already happened, so it is recorded
    assert out["over_limit"] == [policy["policy_id"]] and out["remaining_tokens"] == 0
    assert len(await api.ok("GET", "/api/usage/records")) == 1


async def test_records_filter_and_page(api):
    for component in ("a", "b", "a"):
        await record(api, component=component)
    assert len(await api.ok("GET", "/api/usage/records", params={"component": "a"})) == 2
    page = await api.ok("GET", "/api/usage/records", params={"limit": 2, "offset": 2})
    assert len(page) == 1
    since = await api.ok("GET", "/api/usage/records", params={"since": "2000-01-01T00:00:00"})
    assert len(since) == 3
    assert await api.ok("GET", "/api/usage/records", params={"until": "2000-01-01"}) == []


async def test_summary_by_period_with_groups(api):
    await record(api, component="a", provider="openai", model="gpt-4o-mini")
    await record(api, component="b", provider="openai", model="gpt-4o")
    await record(api, component="b", provider="anthropic", model="claude-3-5-haiku-latest")
    summary = await api.ok("GET", "/api/usage", params={"period": "daily"})
    assert summary["totals"]["requests"] == 3 and len(summary["windows"]) == 1
    assert summary["totals"]["total_tokens"] == 3300 and summary["groups"] == []
    by_provider = await api.ok("GET", "/api/usage", params={"group_by": "provider"})
    assert {g["provider"]: g["requests"] for g in by_provider["groups"]} == {
        "openai": 2, "anthropic": 1}
    by_two = await api.ok("GET", "/api/usage",
                          params={"period": "weekly", "days": 7, "group_by": "component,model"})
    assert {(g["component"], g["model"]) for g in by_two["groups"]} == {
        ("a", "gpt-4o-mini"), ("b", "gpt-4o"), ("b", "claude-3-5-haiku-latest")}
    only_b = await api.ok("GET", "/api/usage", params={"component": "b", "days": 3})
    assert only_b["totals"]["requests"] == 2 and only_b["component"] == "b"
    total = sum(g["total_cost"] for g in by_provider["groups"])
    assert by_provider["totals"]["total_cost"] == pytest.approx(total, abs=1e-12)


async def test_check_answers_without_reserving(api):
    policy = await api.ok("POST", "/api/policies", 201,
                          json={"period": "daily", "cost_limit": 0.01, "name": "tiny"})
    ok = await api.ok("POST", "/api/usage/check", json={
        "provider": "openai", "model": "gpt-4o-mini", "input_text": "Hello, world!",
        "max_output_tokens": 100})
    assert ok["allowed"] is True and ok["input_tokens"] == 4 and ok["max_output_tokens"] == 100
    assert ok["estimated_cost"] == pytest.approx(4 * GPT_4O_MINI[0] + 100 * GPT_4O_MINI[1])
    assert ok["remaining_cost"] == pytest.approx(0.01 - ok["estimated_cost"])
    assert ok["lines"][0]["policy_id"] == policy["policy_id"]
    assert (await api.ok("GET", "/api/status"))["policies"][0]["reserved"] == 0
    big = await api.ok("POST", "/api/usage/check", json={
        "provider": "openai", "model": "gpt-4o", "input_tokens": 10_000,
        "max_output_tokens": 10_000})
    assert big["allowed"] is False and big["refused_by"] == policy["policy_id"]
    assert "tiny" in big["reason"] and big["lines"][0]["would_exceed"] is True


async def test_check_follows_soft_limits_and_allocations(api):
    await api.ok("POST", "/api/policies", 201, json={
        "period": "daily", "type": "soft_limit", "cost_limit": 0.0001, "model": "gpt-4o",
        "action_threshold": 0.0, "fallback_model": "gpt-4o-mini"})
    moved = await api.ok("POST", "/api/usage/check", json={
        "provider": "openai", "model": "gpt-4o", "input_tokens": 10, "max_output_tokens": 10})
    assert moved["model"] == "gpt-4o-mini" and moved["suggested_model"] == "gpt-4o-mini"
    gone = await api.ok("POST", "/api/usage/check", json={
        "provider": "openai", "model": "gpt-4o-mini", "allocation_id": "alloc_none"})
    assert gone["allowed"] is False and "does not exist" in gone["reason"]
    alloc = await api.ok("POST", "/api/allocations", 201, json={
        "context_id": "ctx", "component": "c", "tokens_allocated": 50})
    over = await api.ok("POST", "/api/usage/check", json={
        "provider": "openai", "model": "gpt-4o-mini", "context_id": "ctx",
        "input_tokens": 10, "max_output_tokens": 100})
    assert over["allowed"] is False and over["refused_by"] == alloc["allocation_id"]
    assert over["allocation_id"] == alloc["allocation_id"]


async def test_validation_errors_name_the_field(api):
    assert_invalid(await api.admin("POST", "/api/usage/record", json={"model": "m"}), "provider")
    assert_invalid(await api.admin("POST", "/api/usage/record", json={
        "provider": "openai", "model": "gpt-4o", "input_tokens": -1}), "input_tokens")
    assert_invalid(await api.admin("POST", "/api/usage/check", json={"provider": "openai"}),
                   "model")
    assert_invalid(await api.admin("POST", "/api/usage/check", json={
        "provider": "openai", "model": "gpt-4o", "max_output_tokens": "lots"}),
        "max_output_tokens")
    assert_invalid(await api.admin("GET", "/api/usage", params={"period": "fortnightly"}),
                   "period")
    assert_invalid(await api.admin("GET", "/api/usage", params={"group_by": "colour"}),
                   "group_by.0")
    assert_invalid(await api.admin("GET", "/api/usage", params={"days": 0}), "days")
    assert_invalid(await api.admin("GET", "/api/usage/records", params={"limit": "x"}), "limit")
    assert_invalid(await api.admin("GET", "/api/usage/records", params={"since": "yesterday"}),
                   "since")


async def test_auth(api):
    for path in ("/api/usage", "/api/usage/records"):
        assert_auth(await api.anon("GET", path), 401)
        assert (await api.viewer("GET", path)).status_code == 200
    body = {"provider": "openai", "model": "gpt-4o-mini", "input_tokens": 1}
    assert_auth(await api.anon("POST", "/api/usage/record", json=body), 401)
    assert_auth(await api.viewer("POST", "/api/usage/record", json=body), 403)
    assert_auth(await api.anon("POST", "/api/usage/check", json=body), 401)
    assert (await api.viewer("POST", "/api/usage/check", json=body)).status_code == 200
    assert await api.ok("GET", "/api/usage/records") == []

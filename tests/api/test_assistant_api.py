"""`/api/assistant/*` against the real server: deterministic analysis (no LLM), stated so."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tests.api.conftest import assert_auth, assert_invalid


async def spend(api, days_ago: int, model: str = "gpt-4o", component: str = "codex",
                input_tokens: int = 100_000, output_tokens: int = 10_000) -> None:
    ts = datetime.now(UTC) - timedelta(days=days_ago)
    await api.ok("POST", "/api/usage/record", 201, json={
        "provider": "openai", "model": model, "component": component, "timestamp": ts.isoformat(),
        "input_tokens": input_tokens, "output_tokens": output_tokens})


def deterministic(answer: dict) -> None:
    assert answer["engine"] == "deterministic" and answer["llm_used"] is False
    assert "No language model" in answer["note"]


async def test_analyze_reports_trend_top_models_risks_and_anomalies(api):
    await api.ok("POST", "/api/policies", 201, json={
        "period": "daily", "cost_limit": 0.5, "name": "daily-cap"})
    for day in range(9, 0, -1):
        await spend(api, day, input_tokens=10_000, output_tokens=1_000)
    await spend(api, 0, input_tokens=150_000, output_tokens=20_000)  # today: a spike
    await spend(api, 0, model="gpt-4o-mini", component="writer")
    answer = await api.ok("POST", "/api/assistant/analyze", json={"period": "daily", "days": 10})
    deterministic(answer)
    assert answer["totals"]["requests"] == 11
    assert answer["trend"]["direction"] == "rising"
    assert answer["top_models"][0]["model"] == "gpt-4o"
    assert {c["component"] for c in answer["top_components"]} == {"codex", "writer"}
    assert answer["policies_at_risk"][0]["name"] == "daily-cap"
    assert [a["window"] for a in answer["anomalies"]] == [
        datetime.now(UTC).strftime("%Y-%m-%d")]
    assert any("daily-cap" in f for f in answer["findings"])
    again = await api.ok("POST", "/api/assistant/analyze", json={"period": "daily", "days": 10})
    assert again["findings"] == answer["findings"]  # same data, same answer


async def test_analyze_with_no_usage_says_so(api):
    answer = await api.ok("POST", "/api/assistant/analyze")  # body optional: defaults
    deterministic(answer)
    assert answer["findings"] == ["No usage recorded in the last 30 days."]
    assert answer["trend"]["direction"] == "no data"


async def test_optimize_suggests_cheaper_models_caching_and_budgets(api):
    await spend(api, 1)
    answer = await api.ok("POST", "/api/assistant/optimize",
                          json={"period": "weekly", "days": 30})
    deterministic(answer)
    kinds = {r["kind"]: r for r in answer["recommendations"]}
    cheaper = kinds["cheaper_model"]
    assert (cheaper["model"], cheaper["alternative_model"]) == ("gpt-4o", "gpt-4o-mini")
    now_cost = 100_000 * 2.5e-6 + 10_000 * 10e-6
    alt_cost = 100_000 * 0.15e-6 + 10_000 * 0.6e-6
    assert cheaper["estimated_savings_usd"] == pytest.approx(now_cost - alt_cost)
    assert answer["potential_savings_usd"] == pytest.approx(now_cost - alt_cost)
    assert kinds["cache"]["model"] == "gpt-4o"
    assert kinds["unbudgeted_component"]["component"] == "codex"


async def test_recommend_model_fits_the_task_and_the_budget(api):
    body = {"task_description": "Generate Python code for data processing",
            "input_length": 2000, "output_length": 1000, "usage_frequency": 25,
            "budget_limit": 10.0, "priority_areas": "Code accuracy, error handling"}
    answer = await api.ok("POST", "/api/assistant/recommend-model", json=body)
    deterministic(answer)
    assert answer["task_type"] == "code_generation" and answer["complexity"] == "complex"
    best = answer["best"]
    assert best is not None and best["within_budget"] is True
    assert best["daily_cost"] == pytest.approx(best["cost_per_request"] * 25)
    assert best["daily_cost"] <= 10.0
    assert all(o["within_budget"] for o in answer["recommendations"])
    cheap = await api.ok("POST", "/api/assistant/recommend-model", json={
        "task_type": "summarization", "max_cost": 0.0005, "provider": "openai"})
    assert cheap["complexity"] == "simple"
    assert all(o["provider"] == "openai" and o["cost_per_request"] <= 0.0005
               for o in cheap["recommendations"])
    nothing = await api.ok("POST", "/api/assistant/recommend-model", json={"max_cost": 0})
    assert nothing["best"] is None and nothing["recommendations"]  # cheapest, flagged
    assert not any(o["within_budget"] for o in nothing["recommendations"])


async def test_validation_errors_name_the_field(api):
    assert_invalid(await api.admin("POST", "/api/assistant/analyze", json={"days": 0}), "days")
    assert_invalid(await api.admin("POST", "/api/assistant/optimize",
                                   json={"period": "decade"}), "period")
    assert_invalid(await api.admin("POST", "/api/assistant/recommend-model",
                                   json={"input_length": -5}), "input_length")


@pytest.mark.parametrize("route", ["analyze", "optimize"])
async def test_without_a_model_no_model_is_asked_and_no_narrative_is_added(api, route):
    await spend(api, 1)
    answer = await api.ok("POST", f"/api/assistant/{route}")
    deterministic(answer)
    assert not {"narrative", "narrative_stopped", "model"} & answer.keys()


@pytest.mark.parametrize("route", ["analyze", "optimize"])
@pytest.mark.parametrize(("body", "field"), [
    ({"days": -3}, "days"),
    ({"days": 10**12}, "days"),
    ({"days": "seven"}, "days"),
    ({"days": 2.5}, "days"),
    ({"period": ["daily"]}, "period"),
    ({"component": {"name": "x"}}, "component"),
    ({"provider": 5}, "provider"),
])
async def test_hostile_analysis_bodies_are_refused(api, route, body, field):
    assert_invalid(await api.admin("POST", f"/api/assistant/{route}", json=body), field)


async def test_auth(api):
    for path in ("/api/assistant/analyze", "/api/assistant/optimize",
                 "/api/assistant/recommend-model"):
        assert_auth(await api.anon("POST", path, json={}), 401)
        assert (await api.viewer("POST", path, json={})).status_code == 200  # read-only

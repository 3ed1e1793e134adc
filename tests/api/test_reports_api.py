"""`/api/reports` and `/api/reports/export` against the real server."""

from __future__ import annotations

import csv
import io

import pytest

from tests.api.conftest import assert_auth, assert_invalid


async def seed(api) -> None:
    for component, model in (("a", "gpt-4o-mini"), ("b", "gpt-4o"), ("b", "gpt-4o")):
        await api.ok("POST", "/api/usage/record", 201, json={
            "provider": "openai", "model": model, "component": component,
            "input_tokens": 1000, "output_tokens": 100})


async def test_json_report(api):
    await seed(api)
    await api.ok("POST", "/api/policies", 201, json={"period": "daily", "cost_limit": 10})
    await api.ok("POST", "/api/allocations", 201, json={
        "context_id": "c", "component": "a", "tokens_allocated": 500})
    report = await api.ok("GET", "/api/reports", params={"period": "daily", "days": 7})
    assert report["totals"]["requests"] == 3
    assert {g["component"]: g["requests"] for g in report["by_component"]} == {"a": 1, "b": 2}
    assert [g["model"] for g in report["by_model"]] == ["gpt-4o", "gpt-4o-mini"]  # by cost
    assert report["by_provider"][0]["provider"] == "openai"
    assert len(report["policies"]) == 1 and report["open_alerts"] == 0
    assert report["allocations"] == {"active": 1, "tokens_allocated": 500, "tokens_used": 0}
    assert sum(w["total_cost"] for w in report["windows"]) == pytest.approx(
        report["totals"]["total_cost"])


async def test_csv_report_and_export(api):
    await seed(api)
    resp = await api.admin("GET", "/api/reports", params={"format": "csv", "period": "monthly"})
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(resp.text)))
    assert rows[0]["section"] == "total" and rows[0]["requests"] == "3"
    assert {r["section"] for r in rows} == {"total", "window", "provider", "model", "component"}
    export = await api.admin("GET", "/api/reports/export", params={"component": "b"})
    assert "attachment" in export.headers["content-disposition"]
    records = list(csv.DictReader(io.StringIO(export.text)))
    assert len(records) == 2 and {r["model"] for r in records} == {"gpt-4o"}
    assert float(records[0]["total_cost"]) == pytest.approx(1000 * 2.5e-6 + 100 * 10e-6)
    as_json = await api.ok("GET", "/api/reports/export", params={"format": "json", "limit": 1})
    assert len(as_json) == 1 and as_json[0]["component"] == "a"  # oldest first


async def test_validation_errors_name_the_field(api):
    assert_invalid(await api.admin("GET", "/api/reports", params={"format": "pdf"}), "format")
    assert_invalid(await api.admin("GET", "/api/reports", params={"period": "yearly"}), "period")
    assert_invalid(await api.admin("GET", "/api/reports/export", params={"limit": 0}), "limit")
    assert_invalid(await api.admin("GET", "/api/reports/export", params={"until": "soon"}),
                   "until")


async def test_auth(api):
    for path in ("/api/reports", "/api/reports/export"):
        assert_auth(await api.anon("GET", path), 401)
        assert (await api.viewer("GET", path)).status_code == 200

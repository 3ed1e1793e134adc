"""The routes the inline path issue introduced (`/api/policies`, `/api/status`, health),
checked here against the real server for validation and auth like every other route."""

from __future__ import annotations

from tests.api.conftest import assert_auth, assert_invalid


async def test_policy_crud_and_status(api):
    made = await api.ok("POST", "/api/policies", 201,
                        json={"period": "daily", "type": "hard_limit", "cost_limit": 5})
    assert made["budget_id"] == "default"
    pid = made["policy_id"]
    assert [p["policy_id"] for p in await api.ok("GET", "/api/policies")] == [pid]
    assert (await api.ok("GET", f"/api/policies/{pid}"))["cost_limit"] == 5
    status = await api.ok("GET", "/api/status")
    assert status["policies"][0]["remaining"] == 5
    assert await api.ok("DELETE", f"/api/policies/{pid}") == {"deleted": pid}
    assert (await api.admin("GET", f"/api/policies/{pid}")).status_code == 404


async def test_validation_errors_name_the_field(api):
    assert_invalid(await api.admin("POST", "/api/policies",
                                   json={"period": "daily", "cost_limit": -1}), "cost_limit")
    assert_invalid(await api.admin("POST", "/api/policies",
                                   json={"period": "yearly", "cost_limit": 1}), "period")
    no_limit = await api.admin("POST", "/api/policies", json={"period": "daily"})
    assert no_limit.status_code == 422 and "cost_limit" in no_limit.json()["error"]["message"]


async def test_auth(api):
    for path in ("/api/policies", "/api/status"):
        assert_auth(await api.anon("GET", path), 401)
        assert (await api.viewer("GET", path)).status_code == 200
    body = {"period": "daily", "cost_limit": 1}
    assert_auth(await api.anon("POST", "/api/policies", json=body), 401)
    assert_auth(await api.viewer("POST", "/api/policies", json=body), 403)
    assert_auth(await api.viewer("DELETE", "/api/policies/x"), 403)
    for path in ("/health", "/api/health"):
        resp = await api.anon("GET", path)
        assert resp.status_code == 200 and resp.json()["status"] == "ok"

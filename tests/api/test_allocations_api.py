"""`/api/allocations` against the real server (drawing down is in
tests/integration/test_allocations.py): listing, filters, validation and auth."""

from __future__ import annotations

from tests.api.conftest import assert_auth, assert_invalid


async def make(api, context_id: str, component: str, tokens: int = 100, **extra) -> dict:
    return await api.ok("POST", "/api/allocations", 201, json={
        "context_id": context_id, "component": component, "tokens_allocated": tokens, **extra})


async def test_list_filters_and_orders_by_priority(api):
    low = await make(api, "c1", "rhetor", priority=1)
    high = await make(api, "c2", "codex", priority=9, metadata={"ticket": "T-1"})
    listed = await api.ok("GET", "/api/allocations")
    assert [a["allocation_id"] for a in listed] == [high["allocation_id"], low["allocation_id"]]
    assert listed[0]["metadata"] == {"ticket": "T-1"}
    only = await api.ok("GET", "/api/allocations", params={"component": "rhetor"})
    assert [a["allocation_id"] for a in only] == [low["allocation_id"]]
    by_ctx = await api.ok("GET", "/api/allocations", params={"context_id": "c2"})
    assert [a["allocation_id"] for a in by_ctx] == [high["allocation_id"]]
    await api.ok("DELETE", f"/api/allocations/{low['allocation_id']}")
    active = await api.ok("GET", "/api/allocations", params={"active": "true"})
    ended = await api.ok("GET", "/api/allocations", params={"active": "false"})
    assert [a["allocation_id"] for a in active] == [high["allocation_id"]]
    assert [a["state"] for a in ended] == ["released"]


async def test_get_and_release_unknown_allocations_are_404(api):
    for method, path in (("GET", "/api/allocations/alloc_x"),
                         ("POST", "/api/allocations/alloc_x/release"),
                         ("DELETE", "/api/allocations/alloc_x")):
        resp = await api.admin(method, path)
        assert resp.status_code == 404 and resp.json()["error"]["type"] == "not_found"


async def test_expiration_can_be_given_as_a_time_or_a_ttl(api):
    at = await make(api, "c", "x", expiration_time="2099-01-01T00:00:00")
    assert at["expiration_time"].startswith("2099-01-01T00:00:00")
    ttl = await make(api, "d", "x", ttl_s=3600)
    assert ttl["expiration_time"] is not None


async def test_validation_errors_name_the_field(api):
    base = {"context_id": "c", "component": "x", "tokens_allocated": 10}
    assert_invalid(await api.admin("POST", "/api/allocations",
                                   json={**base, "tokens_allocated": 0}), "tokens_allocated")
    assert_invalid(await api.admin("POST", "/api/allocations",
                                   json={k: v for k, v in base.items() if k != "context_id"}),
                   "context_id")
    assert_invalid(await api.admin("POST", "/api/allocations", json={**base, "tier": "huge"}),
                   "tier")
    assert_invalid(await api.admin("POST", "/api/allocations", json={**base, "ttl_s": -1}),
                   "ttl_s")
    assert_invalid(await api.admin("GET", "/api/allocations", params={"active": "perhaps"}),
                   "active")


async def test_auth(api):
    alloc = await make(api, "c", "x")
    path = f"/api/allocations/{alloc['allocation_id']}"
    assert_auth(await api.anon("GET", "/api/allocations"), 401)
    assert (await api.viewer("GET", "/api/allocations")).status_code == 200
    assert (await api.viewer("GET", path)).status_code == 200
    body = {"context_id": "c", "component": "x", "tokens_allocated": 10}
    assert_auth(await api.anon("POST", "/api/allocations", json=body), 401)
    assert_auth(await api.viewer("POST", "/api/allocations", json=body), 403)
    assert_auth(await api.viewer("POST", f"{path}/release"), 403)
    assert_auth(await api.viewer("DELETE", path), 403)
    assert (await api.ok("GET", path))["state"] == "active"

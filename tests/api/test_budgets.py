"""`/api/budgets` against the real server: happy paths, validation and auth."""

from __future__ import annotations

from tests.api.conftest import assert_auth, assert_invalid


async def test_the_default_budget_exists_and_budgets_are_created_read_and_listed(api):
    (default,) = await api.ok("GET", "/api/budgets")
    assert default["budget_id"] == "default"
    made = await api.ok("POST", "/api/budgets", 201,
                        json={"budget_id": "research", "name": "Research", "owner": "ana"})
    assert made["budget_id"] == "research" and made["owner"] == "ana"
    assert [b["budget_id"] for b in await api.ok("GET", "/api/budgets")] == [
        "default", "research"]
    await api.ok("POST", "/api/policies", 201, json={
        "budget_id": "research", "period": "daily", "cost_limit": 5, "component": "r"})
    await api.ok("POST", "/api/policies", 201, json={"period": "daily", "cost_limit": 9})
    detail = await api.ok("GET", "/api/budgets/research")
    assert detail["budget"]["name"] == "Research"
    assert [p["limit"] for p in detail["policies"]] == [5]


async def test_duplicate_ids_conflict_and_put_replaces(api):
    await api.ok("POST", "/api/budgets", 201, json={"budget_id": "b1", "name": "one"})
    dup = await api.admin("POST", "/api/budgets", json={"budget_id": "b1", "name": "again"})
    assert dup.status_code == 409 and dup.json()["error"]["type"] == "conflict"
    replaced = await api.ok("PUT", "/api/budgets/b1", json={"name": "uno"})
    assert replaced["name"] == "uno" and replaced["budget_id"] == "b1"
    created = await api.ok("PUT", "/api/budgets/b2", 201, json={"name": "two"})
    assert created["budget_id"] == "b2"


async def test_patch_changes_only_the_fields_given(api):
    await api.ok("POST", "/api/budgets", 201, json={"budget_id": "b", "name": "n",
                                                     "description": "d"})
    patched = await api.ok("PATCH", "/api/budgets/b", json={"owner": "ops", "is_active": False})
    assert (patched["name"], patched["description"], patched["owner"], patched["is_active"]) == (
        "n", "d", "ops", False)
    assert_invalid(await api.admin("PATCH", "/api/budgets/b", json={"name": None}), "name")
    assert (await api.admin("PATCH", "/api/budgets/nope", json={})).status_code == 404


async def test_delete_refuses_the_default_budget_and_budgets_with_policies(api):
    assert (await api.admin("DELETE", "/api/budgets/default")).status_code == 409
    await api.ok("POST", "/api/budgets", 201, json={"budget_id": "b", "name": "n"})
    policy = await api.ok("POST", "/api/policies", 201, json={
        "budget_id": "b", "period": "daily", "cost_limit": 1})
    busy = await api.admin("DELETE", "/api/budgets/b")
    assert busy.status_code == 409 and "cascade" in busy.json()["error"]["message"]
    assert await api.ok("DELETE", "/api/budgets/b", params={"cascade": "true"}) == {
        "deleted": "b"}
    assert (await api.admin("GET", f"/api/policies/{policy['policy_id']}")).status_code == 404
    assert (await api.admin("GET", "/api/budgets/b")).status_code == 404
    assert (await api.admin("DELETE", "/api/budgets/b")).status_code == 404


async def test_validation_errors_name_the_field(api):
    assert_invalid(await api.admin("POST", "/api/budgets", json={"name": 12}), "name")
    assert_invalid(await api.admin("POST", "/api/budgets", json={"colour": "red"}), "colour")
    assert_invalid(await api.admin("PUT", "/api/budgets/x", json={"is_active": "maybe"}),
                   "is_active")
    assert_invalid(await api.admin("DELETE", "/api/budgets/x", params={"cascade": "perhaps"}),
                   "cascade")
    bad = await api.admin("POST", "/api/budgets", content=b"[1, 2]")
    assert bad.status_code == 400 and bad.json()["error"]["type"] == "invalid_json"


async def test_auth(api):
    assert_auth(await api.anon("GET", "/api/budgets"), 401)
    assert (await api.viewer("GET", "/api/budgets")).status_code == 200
    assert (await api.viewer("GET", "/api/budgets/default")).status_code == 200
    for method, path in (("POST", "/api/budgets"), ("PUT", "/api/budgets/x"),
                         ("PATCH", "/api/budgets/default"), ("DELETE", "/api/budgets/x")):
        assert_auth(await api.anon(method, path, json={"name": "x"}), 401)
        assert_auth(await api.viewer(method, path, json={"name": "x"}), 403)
    assert len(await api.ok("GET", "/api/budgets")) == 1  # nothing was created

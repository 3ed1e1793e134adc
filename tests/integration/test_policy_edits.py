"""Editing policies through the real admin API on both stores: edits keep the spend, a new
policy starts from today's recorded spend, typos are warned (or refused with `strict`), and a
what-if replay over seeded records gives the counts computed by hand."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx
import pytest

from tests.integration.conftest import HAVE_REDIS, WHY_NOT

ADMIN = {"Authorization": "Bearer admin-token"}


@pytest.fixture(params=["embedded", "redis"])
async def proxy(request: pytest.FixtureRequest, proxy_factory):
    if request.param == "redis":
        if not HAVE_REDIS:
            pytest.skip(WHY_NOT)
        return await proxy_factory(admin_token="admin-token",
                                   redis_url=request.getfixturevalue("redis_url"))
    return await proxy_factory(admin_token="admin-token")


@pytest.fixture
async def http():
    async with httpx.AsyncClient(timeout=30, headers=ADMIN) as client:
        yield client


async def chat(http: httpx.AsyncClient, url: str) -> httpx.Response:
    return await http.post(f"{url}/v1/chat/completions", headers={
        "Authorization": "Bearer sk-client"}, json={
        "model": "gpt-4o-mini", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]})


async def record(http: httpx.AsyncClient, url: str, cost: float, provider: str = "openai",
                 at: datetime | None = None, model: str = "gpt-4o-mini") -> None:
    resp = await http.post(f"{url}/api/usage/record", json={
        "provider": provider, "model": model, "input_tokens": 10, "output_tokens": 10,
        "input_cost": cost, "output_cost": 0, **({"timestamp": at.isoformat()} if at else {})})
    assert resp.status_code == 201, resp.text


async def spent(http: httpx.AsyncClient, url: str, policy_id: str) -> float:
    status = (await http.get(f"{url}/api/status")).json()
    (row,) = [p for p in status["policies"] if p["policy_id"] == policy_id]
    return row["spent_cost"]


async def test_edits_keep_the_spend(proxy, http):
    made = await http.post(f"{proxy.url}/api/policies", json={
        "policy_id": "team", "period": "daily", "cost_limit": 10, "provider": "openai"})
    assert made.status_code == 201, made.text
    assert (await chat(http, proxy.url)).status_code == 200
    before = await spent(http, proxy.url, "team")
    assert before > 0
    patched = await http.patch(f"{proxy.url}/api/policies/team", json={"cost_limit": 20})
    assert patched.status_code == 200, patched.text
    assert patched.json()["cost_limit"] == 20 and patched.json()["provider"] == "openai"
    put = await http.put(f"{proxy.url}/api/policies/team", json={
        "period": "daily", "cost_limit": 30, "provider": "openai", "name": "renamed"})
    assert put.status_code == 200 and put.json()["name"] == "renamed"
    assert put.json()["created_at"] == made.json()["created_at"]
    assert await spent(http, proxy.url, "team") == pytest.approx(before)
    # a limit lowered under the spend refuses at once
    await http.patch(f"{proxy.url}/api/policies/team", json={"cost_limit": before / 2})
    assert (await chat(http, proxy.url)).status_code == 429


@pytest.mark.parametrize(("method", "path", "body", "status"), [
    ("PATCH", "/api/policies/nope", {"cost_limit": 1}, 404),
    ("PATCH", "/api/policies/team", {"cost_limit": -1}, 422),
    ("PATCH", "/api/policies/team", {"cost_limit": "lots"}, 422),
    ("PATCH", "/api/policies/team", {"cost_limit": 1e300}, 422),
    ("PATCH", "/api/policies/team", {"cost_limit": None}, 422),  # no limit left
    ("PATCH", "/api/policies/team", {"policy_id": "other"}, 422),
    ("PATCH", "/api/policies/team", {"surprise": 1}, 422),
    ("PATCH", "/api/policies/team", [], 400),
    ("PUT", "/api/policies/team", {"period": "fortnightly", "cost_limit": 1}, 422),
    ("POST", "/api/policies/team/topups", {"cost": 0}, 422),
    ("POST", "/api/policies/team/topups", {"cost": -5}, 422),
    ("POST", "/api/policies/team/topups", {"ttl_s": 60}, 422),  # no amount
    ("POST", "/api/policies/team/topups", {"tokens": 5}, 422),  # no token limit to raise
    ("POST", "/api/policies/team/topups", {"cost": 1, "ttl_s": 1e12}, 422),
    ("POST", "/api/policies/nope/topups", {"cost": 1}, 404),
])
async def test_bad_edits_are_refused(proxy_factory, http, method, path, body, status):
    proxy = await proxy_factory(admin_token="admin-token")
    await http.post(f"{proxy.url}/api/policies", json={
        "policy_id": "team", "period": "daily", "cost_limit": 10})
    resp = await http.request(method, f"{proxy.url}{path}", json=body)
    assert resp.status_code == status, resp.text
    assert "error" in resp.json()
    assert (await http.get(f"{proxy.url}/api/policies/team")).json()["cost_limit"] == 10


async def test_a_new_policy_starts_from_todays_recorded_spend(proxy, http):
    await record(http, proxy.url, 0.000100)
    await record(http, proxy.url, 0.000096)
    await record(http, proxy.url, 5.0, provider="anthropic", model="claude-3-5-haiku-20241022")
    await record(http, proxy.url, 7.0, at=datetime.now(UTC) - timedelta(days=2))  # not today
    made = await http.post(f"{proxy.url}/api/policies", json={
        "period": "daily", "cost_limit": 0.0001, "provider": "openai"})
    assert made.status_code == 201, made.text
    counted = made.json()["counted"]
    assert counted["records"] == 2 and counted["cost"] == pytest.approx(0.000196)
    assert await spent(http, proxy.url, made.json()["policy_id"]) == pytest.approx(0.000196)
    assert (await chat(http, proxy.url)).status_code == 429
    # an edit counts again without counting twice
    again = await http.patch(f"{proxy.url}/api/policies/{made.json()['policy_id']}",
                             json={"cost_limit": 1})
    assert again.json()["counted"]["cost"] == pytest.approx(0.000196)
    assert await spent(http, proxy.url, made.json()["policy_id"]) == pytest.approx(0.000196)


async def test_typos_are_warned_or_refused_with_strict(proxy_factory, http):
    proxy = await proxy_factory(admin_token="admin-token")
    typo = {"period": "daily", "cost_limit": 1, "provider": "opneai", "model": "gpt-4o-mnii"}
    made = await http.post(f"{proxy.url}/api/policies", json=typo)
    assert made.status_code == 201
    warnings = made.json()["warnings"]
    assert any("'opneai' is not a configured provider" in w for w in warnings)
    assert any("'gpt-4o-mnii' is not in the price catalog" in w for w in warnings)
    strict = await http.post(f"{proxy.url}/api/policies", params={"strict": "true"}, json=typo)
    assert strict.status_code == 422
    assert {d["field"] for d in strict.json()["error"]["details"]} == {"provider", "model"}
    assert len((await http.get(f"{proxy.url}/api/policies")).json()) == 1
    ok = await http.post(f"{proxy.url}/api/policies", params={"strict": "true"}, json={
        "period": "DAILY", "type": "ENFORCE", "cost_limit": 1, "provider": "openai",
        "model": "gpt-4o-mini"})
    assert ok.status_code == 201 and ok.json()["warnings"] == []
    assert (ok.json()["type"], ok.json()["period"]) == ("hard_limit", "daily")
    warn = await http.post(f"{proxy.url}/api/policies", json={"type": "WARN", "cost_limit": 1})
    assert warn.json()["type"] == "warn"
    assert (await http.post(f"{proxy.url}/api/policies", params={"strict": "maybe"},
                            json={"cost_limit": 1})).status_code == 422


async def test_replay_gives_the_counts_computed_by_hand(proxy_factory, http):
    proxy = await proxy_factory(admin_token="admin-token")
    today = datetime.now(UTC).replace(hour=10, minute=0, second=0, microsecond=0)
    day1, day2 = today - timedelta(days=2), today - timedelta(days=1)
    for minute, cost in enumerate((0.4, 0.4, 0.4)):
        await record(http, proxy.url, cost, at=day1 + timedelta(minutes=minute))
    await record(http, proxy.url, 0.5, at=day2)
    await record(http, proxy.url, 5.0, provider="anthropic", model="claude-3-5-haiku-20241022",
                 at=day2)  # outside the policy's scope
    await record(http, proxy.url, 9.0, at=today - timedelta(days=9))  # before the replay
    resp = await http.post(f"{proxy.url}/api/policies/replay", json={
        "policy": {"period": "daily", "cost_limit": 1.0, "provider": "openai"}, "days": 3})
    assert resp.status_code == 200, resp.text
    got = resp.json()
    # day 1: 0.4 (40%), 0.8 (80%: warned), third refused (1.2 > 1.0); day 2: 0.5 allowed
    assert (got["calls"], got["allowed"], got["refused"], got["warned"]) == (4, 3, 1, 1)
    assert got["allowed_cost"] == pytest.approx(1.3)
    assert got["refused_cost"] == pytest.approx(0.4)
    assert [(w["window"], w["refused"]) for w in got["windows"]] == [
        (f"d:{day1:%Y%m%d}", 1), (f"d:{day2:%Y%m%d}", 0)]
    # nothing was stored
    assert (await http.get(f"{proxy.url}/api/policies")).json() == []
    for bad, field in (({"policy": {"period": "daily"}, "days": 3}, "cost_limit"),
                       ({"policy": {"cost_limit": 1}, "days": 0}, "days"),
                       ({"policy": {"cost_limit": 1}, "days": 10**6}, "days"),
                       ({"policy": "daily", "days": 3}, "policy")):
        refused = await http.post(f"{proxy.url}/api/policies/replay", json=bad)
        assert refused.status_code == 422 and field in refused.json()["error"]["message"]

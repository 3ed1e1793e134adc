"""The dashboard's routes against the real server: the page and its files with their security
headers, and the token rules of `/ui/api/*` (the admin API's: viewer reads, admin acts)."""

from __future__ import annotations

import pytest

from budget_proxy.config import Settings
from budget_proxy.dashboard.data import role_of
from budget_proxy.dashboard.server import SECURITY_HEADERS
from tests.api.conftest import ADMIN_TOKEN, VIEWER_TOKEN


@pytest.fixture
async def secured(proxy_factory):
    return await proxy_factory(admin_token=ADMIN_TOKEN, viewer_token=VIEWER_TOKEN,
                               timezone="Europe/Berlin")


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def assert_secure(resp) -> None:
    for name, value in SECURITY_HEADERS.items():
        assert resp.headers[name] == value, name
    csp = resp.headers["Content-Security-Policy"]
    assert "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp


async def test_root_redirects_to_the_page_and_every_file_is_secured(secured):
    root = await secured.api("GET", "/", follow_redirects=False)
    assert root.status_code == 302 and root.headers["Location"] == "/ui/"
    assert_secure(root)
    page = await secured.api("GET", "/ui/")
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    assert_secure(page)
    assert "<script>" not in page.text and 'type="module" src="static/js/main.js"' in page.text
    for path, kind in (("static/js/main.js", "text/javascript"), ("static/app.css", "text/css"),
                       ("static/vendor/chart.umd.min.js", "text/javascript")):
        resp = await secured.api("GET", f"/ui/{path}")
        assert resp.status_code == 200, path
        assert resp.headers["Content-Type"].startswith(kind)
        assert_secure(resp)


@pytest.mark.parametrize("path", [
    "/ui/static/../server.py", "/ui/static/%2e%2e/server.py", "/ui/static/js/../../data.py",
    "/ui/static/missing.js", "/ui/static/vendor/VENDORED", "/ui/static/js",
])
async def test_only_known_static_files_are_served(secured, path):
    resp = await secured.api("GET", path)
    assert resp.status_code == 404
    assert "def " not in resp.text


async def test_session_tells_the_role_of_each_token(secured):
    async def role(**kw: object) -> dict[str, object]:
        resp = await secured.api("GET", "/ui/api/session", **kw)
        assert resp.status_code == 200
        return resp.json()

    anonymous = await role()
    assert anonymous["role"] == "none" and anonymous["login"] is True
    assert anonymous["timezone"] == "Europe/Berlin"
    assert (await role(headers=bearer(VIEWER_TOKEN)))["role"] == "viewer"
    assert (await role(headers=bearer(ADMIN_TOKEN)))["role"] == "admin"
    assert (await role(headers=bearer("wrong")))["role"] == "none"


async def test_data_needs_a_reading_token(secured):
    for path in ("/ui/api/summary", "/ui/api/spend"):
        anon = await secured.api("GET", path)
        assert anon.status_code == 401 and anon.json()["error"]["type"] == "unauthorized"
        assert_secure(anon)
        for token in (VIEWER_TOKEN, ADMIN_TOKEN):
            assert (await secured.api("GET", path, headers=bearer(token))).status_code == 200


async def test_open_proxy_lets_anyone_act(proxy):
    session = (await proxy.api("GET", "/ui/api/session")).json()
    assert session["role"] == "admin" and session["login"] is False
    assert (await proxy.api("GET", "/ui/api/summary")).status_code == 200


async def test_admin_token_alone_is_needed_to_read_as_for_the_websockets(proxy_factory):
    running = await proxy_factory(admin_token=ADMIN_TOKEN)
    session = (await running.api("GET", "/ui/api/session")).json()
    assert session["role"] == "none" and session["login"] is True
    assert (await running.api("GET", "/ui/api/summary")).status_code == 401
    signed = await running.api("GET", "/ui/api/session", headers=bearer(ADMIN_TOKEN))
    assert signed.json()["role"] == "admin"


@pytest.mark.parametrize(("admin", "viewer", "presented", "role"), [
    (None, None, "", "admin"),
    ("a", None, "", "none"),
    ("a", None, "a", "admin"),
    ("a", "v", "v", "viewer"),
    ("a", "v", "x", "none"),
    (None, "v", "v", "admin"),  # mutations open, reading needs the viewer token
    (None, "v", "", "none"),
])
def test_role_of(admin, viewer, presented, role):
    settings = Settings(admin_token=admin, viewer_token=viewer)
    assert role_of(presented, settings) == role


async def test_summary_figures_are_the_status_figures(secured):
    made = await secured.api("POST", "/api/policies", headers=bearer(ADMIN_TOKEN),
                             json={"period": "daily", "cost_limit": 2.5, "name": "cap"})
    assert made.status_code == 201
    await secured.api("POST", "/api/usage/record", headers=bearer(ADMIN_TOKEN), json={
        "provider": "openai", "model": "gpt-4o-mini", "input_tokens": 1000,
        "output_tokens": 500})
    summary = (await secured.api("GET", "/ui/api/summary", headers=bearer(VIEWER_TOKEN))).json()
    status = (await secured.api("GET", "/api/status", headers=bearer(VIEWER_TOKEN))).json()
    fields = ("policy_id", "spent", "reserved", "limit", "remaining", "unit", "utilisation",
              "resets_at", "window")
    assert [{f: p[f] for f in fields} for p in summary["policies"]] == [
        {f: p[f] for f in fields} for p in status["policies"]]
    spent = status["policies"][0]["spent"]
    assert spent > 0
    assert summary["spend"]["today"] == summary["spend"]["month"] == spent
    assert summary["spend"]["month_projection"] >= spent
    assert summary["store_status"] == "ok" and summary["fail_state"] == "normal"
    assert summary["refusals_last_hour"]["total"] == 0


async def test_spend_series_and_totals_follow_the_filter(secured):
    for component, tokens in (("alpha", 1000), ("beta", 2000), ("alpha", 3000)):
        resp = await secured.api("POST", "/api/usage/record", headers=bearer(ADMIN_TOKEN), json={
            "provider": "openai", "model": "gpt-4o-mini", "component": component,
            "input_tokens": tokens, "output_tokens": 0})
        assert resp.status_code == 201
    everything = (await secured.api("GET", "/ui/api/spend", params={"by": "component"},
                                    headers=bearer(VIEWER_TOKEN))).json()
    assert {s["name"] for s in everything["series"]} == {"alpha", "beta"}
    assert everything["totals"]["requests"] == 3
    assert len(everything["labels"]) == len(everything["series"][0]["values"])
    alpha = (await secured.api("GET", "/ui/api/spend", params={"component": "alpha"},
                               headers=bearer(VIEWER_TOKEN))).json()
    assert alpha["totals"]["requests"] == 2 and alpha["totals"]["total_tokens"] == 4000
    bad = await secured.api("GET", "/ui/api/spend", params={"period": "yearly"},
                            headers=bearer(VIEWER_TOKEN))
    assert bad.status_code == 422 and "period" in bad.json()["error"]["message"]


async def test_refusals_of_the_last_hour_are_counted(proxy_factory):
    running = await proxy_factory()
    made = await running.api("POST", "/api/policies", json={
        "period": "daily", "cost_limit": 0.0000001, "type": "hard_limit"})
    assert made.status_code == 201
    for _ in range(2):
        resp = await running.api("POST", "/v1/chat/completions", json={
            "model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 50})
        assert resp.status_code == 429
    summary = (await running.api("GET", "/ui/api/summary")).json()
    assert summary["refusals_last_hour"] == {
        "total": 2, "by_policy": {made.json()["policy_id"]: 2}}

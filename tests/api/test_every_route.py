"""Every admin route in the OpenAPI document (so every route the server has) against the
real server: the access rule it documents is the one enforced, virtual keys are refused, and
no answer ever carries a provider key, a virtual key's secret (after minting) or its hash."""

from __future__ import annotations

import re

import openai

from budget_proxy.alerts import ALERT_KIND
from budget_proxy.models import Alert
from budget_proxy.virtual_keys import hash_secret
from tests.api.conftest import ADMIN_TOKEN, assert_auth
from tests.conftest import PROXY_ANTHROPIC_KEY, PROXY_OPENAI_KEY


async def operations(api) -> list[tuple[str, str, dict]]:
    doc = (await api.anon("GET", "/api/openapi.json")).json()
    return [(method.upper(), path, op) for path, ops in doc["paths"].items()
            for method, op in ops.items()]


def access(op: dict) -> str:
    security = op.get("security")
    if security is None:
        return "public"
    return "read" if {} in security else "admin"


def concrete(path: str, ids: dict[str, str]) -> str:
    return re.sub(r"{(\w+)}", lambda m: ids.get(m.group(1), "x"), path)


async def test_documented_access_is_enforced_on_every_route(api):
    for method, path, op in await operations(api):
        url = concrete(path, {"asset": "swagger-ui.css"})
        kind = access(op)
        anon = await api.anon(method, url, json={})
        viewer = await api.viewer(method, url, json={})
        virtual = await api.send("bp-some-virtual-key", method, url, json={})
        if kind == "public":
            assert anon.status_code < 400, (method, path)
            assert virtual.status_code < 400, (method, path)
            continue
        assert_auth(anon, 401)
        assert_auth(virtual, 403)
        if kind == "admin":
            assert_auth(viewer, 403)
        else:
            assert viewer.status_code not in (401, 403), (method, path, viewer.text)


async def test_no_route_returns_a_provider_key_a_virtual_key_secret_or_its_hash(api, fake):
    minted = await api.ok("POST", "/api/keys", 201, json={"component": "billing"})
    secret = minted["secret"]
    forbidden = [PROXY_OPENAI_KEY, PROXY_ANTHROPIC_KEY, secret, hash_secret(secret),
                 secret.removeprefix("bp-")]
    client = openai.AsyncOpenAI(base_url=f"{api.proxy.url}/v1", api_key=secret, max_retries=0)
    await client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], max_tokens=20)
    policy = await api.ok("POST", "/api/policies", 201, json={"period": "daily", "cost_limit": 5})
    alloc = await api.ok("POST", "/api/allocations", 201, json={
        "context_id": "c", "component": "billing", "tokens_allocated": 100})
    alert = Alert(type="warning_threshold", message="m", policy_id=policy["policy_id"])
    await api.proxy.store.put_doc(ALERT_KIND, alert.alert_id, alert.model_dump_json())
    ids = {"policy_id": policy["policy_id"], "budget_id": "default",
           "allocation_id": alloc["allocation_id"], "alert_id": alert.alert_id,
           "key_id": minted["key"]["key_id"], "asset": "swagger-ui.css",
           "provider": "openai", "model": "gpt-4o-mini"}
    answers = []
    for method, path, op in await operations(api):
        if method == "GET" or access(op) == "read":
            resp = await api.admin(method, concrete(path, ids), json={} if method != "GET"
                                   else None)
            answers.append((method, path, resp.text))
    for path in ("/health", "/metrics"):
        answers.append(("GET", path, (await api.anon("GET", path)).text))
    answers.append(("GET", "/api/reports?format=csv", (await api.admin(
        "GET", "/api/reports", params={"format": "csv"})).text))
    assert len(answers) > 25
    for method, path, text in answers:
        for secret_text in forbidden:
            assert secret_text not in text, (method, path)
    assert ADMIN_TOKEN not in "".join(text for _, _, text in answers)

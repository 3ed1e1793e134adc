"""Virtual keys against the real server: minting, attribution on the proxy routes,
revocation, and data-plane keys kept out of the admin API."""

from __future__ import annotations

import anthropic
import openai
import pytest

from tests.api.conftest import assert_auth, assert_invalid
from tests.conftest import PROXY_OPENAI_KEY


async def mint(api, **body) -> dict:
    return await api.ok("POST", "/api/keys", 201, json={"component": "billing", **body})


async def test_mint_shows_the_secret_once_and_never_the_hash(api):
    made = await mint(api, name="billing-prod", budget_id="default")
    secret, key = made["secret"], made["key"]
    assert secret.startswith("bp-") and len(secret) > 40
    assert key["hint"] == secret[:7] and "key_hash" not in key
    assert "not shown again" in made["note"]
    listed = await api.ok("GET", "/api/keys")
    assert [k["key_id"] for k in listed] == [key["key_id"]]
    one = await api.ok("GET", f"/api/keys/{key['key_id']}")
    assert one == listed[0] and one["name"] == "billing-prod" and one["budget_id"] == "default"


async def test_requests_with_a_key_are_charged_to_its_component(api, fake):
    secret = (await mint(api))["secret"]
    client = openai.AsyncOpenAI(base_url=f"{api.proxy.url}/v1", api_key=secret, max_retries=0)
    await client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}],
        extra_headers={"X-Budget-Component": "someone-else"})
    (rec,) = await api.ok("GET", "/api/usage/records")
    assert rec["component"] == "billing"  # the key wins over the header
    seen = fake.requests[0].headers
    assert seen.get("Authorization") == f"Bearer {PROXY_OPENAI_KEY}"
    assert secret not in str(seen)
    ant = anthropic.AsyncAnthropic(base_url=f"{api.proxy.url}/anthropic", api_key=secret,
                                   max_retries=0)
    await ant.messages.create(model="claude-3-5-haiku-latest", max_tokens=10,
                              messages=[{"role": "user", "content": "hi"}])
    assert {r["component"] for r in await api.ok("GET", "/api/usage/records")} == {"billing"}


async def test_revoked_and_unknown_keys_are_refused_in_the_provider_format(api, fake):
    made = await mint(api)
    revoked = await api.ok("DELETE", f"/api/keys/{made['key']['key_id']}")
    assert revoked["revoked"] is True and revoked["revoked_at"]
    again = await api.ok("POST", f"/api/keys/{made['key']['key_id']}/revoke")
    assert again["revoked_at"] == revoked["revoked_at"]
    for secret in (made["secret"], "bp-never-minted"):
        client = openai.AsyncOpenAI(base_url=f"{api.proxy.url}/v1", api_key=secret,
                                    max_retries=0)
        with pytest.raises(openai.AuthenticationError) as err:
            await client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
        assert err.value.body["code"] == "invalid_api_key"
    ant = anthropic.AsyncAnthropic(base_url=f"{api.proxy.url}/anthropic",
                                   api_key=made["secret"], max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as ant_err:
        await ant.messages.create(model="claude-3-5-haiku-latest", max_tokens=10,
                                  messages=[{"role": "user", "content": "hi"}])
    assert ant_err.value.body["error"]["type"] == "authentication_error"
    assert fake.requests == []


async def test_virtual_keys_cannot_call_the_admin_api(api):
    secret = (await mint(api))["secret"]
    for method, path in (("GET", "/api/keys"), ("GET", "/api/status"),
                         ("POST", "/api/policies"), ("POST", "/api/usage/check")):
        assert_auth(await api.send(secret, method, path, json={}), 403)
    assert (await api.send(secret, "GET", "/api/health")).status_code == 200


async def test_keys_on_an_open_proxy_are_refused_on_admin_routes_too(proxy):
    made = (await proxy.api("POST", "/api/keys", json={"component": "c"})).json()
    resp = await proxy.api("GET", "/api/keys",
                           headers={"Authorization": f"Bearer {made['secret']}"})
    assert resp.status_code == 403


async def test_validation_errors_name_the_field(api):
    assert_invalid(await api.admin("POST", "/api/keys", json={}), "component")
    assert_invalid(await api.admin("POST", "/api/keys", json={"component": ""}), "component")
    assert_invalid(await api.admin("POST", "/api/keys", json={"component": "c",
                                                              "budget_id": "nope"}), "budget_id")
    assert_invalid(await api.admin("POST", "/api/keys", json={"component": "c",
                                                              "expires_at": "never"}),
                   "expires_at")
    assert (await api.admin("DELETE", "/api/keys/vk_nope")).status_code == 404
    assert (await api.admin("GET", "/api/keys/vk_nope")).status_code == 404


async def test_auth(api):
    made = await mint(api)
    key_path = f"/api/keys/{made['key']['key_id']}"
    assert_auth(await api.anon("GET", "/api/keys"), 401)
    assert (await api.viewer("GET", "/api/keys")).status_code == 200
    assert (await api.viewer("GET", key_path)).status_code == 200
    assert_auth(await api.anon("POST", "/api/keys", json={"component": "c"}), 401)
    assert_auth(await api.viewer("POST", "/api/keys", json={"component": "c"}), 403)
    assert_auth(await api.viewer("DELETE", key_path), 403)
    assert_auth(await api.viewer("POST", f"{key_path}/revoke"), 403)
    assert (await api.ok("GET", key_path))["revoked"] is False

"""Every request under a provider prefix is metered, free or refused; paths are canonical.

Under a $0 hard limit, no spelling of a metered path reaches the fake provider: it is refused
(400 invalid_path, 403 unmetered_route) or metered (429). The fake's request log proves it.
"""

from __future__ import annotations

import logging

import anthropic
import orjson
import pytest

from budget_proxy.config import ProviderConfig
from tests.conftest import PROXY_OPENAI_KEY
from tests.security import error_code, raw_request

CORP_KEY = "sk-corp-held"
CHAT = orjson.dumps({"model": "gpt-4o-mini", "max_tokens": 10,
                     "messages": [{"role": "user", "content": "hi"}]})
MESSAGES = orjson.dumps({"model": "claude-3-5-haiku-latest", "max_tokens": 10,
                         "messages": [{"role": "user", "content": "hi"}]})
JSON = {"Content-Type": "application/json"}


@pytest.fixture
async def corp_proxy(proxy_factory, fake, monkeypatch):
    """A proxy with a configured provider whose base URL has a path prefix."""
    monkeypatch.setenv("CORP_KEY", CORP_KEY)
    corp = ProviderConfig(name="corp", base_url=f"{fake.url}/corp/v1", api="openai",
                          api_key_env="CORP_KEY")
    return await proxy_factory(providers={"corp": corp})


async def zero_limit(proxy) -> None:
    resp = await proxy.api("POST", "/api/policies", json={
        "period": "daily", "type": "hard_limit", "cost_limit": 0})
    assert resp.status_code == 201, resp.text


def spellings(prefix: str, endpoint: str) -> list[tuple[str, int, str]]:
    """(raw path, status, code) for the ways of spelling `prefix/endpoint`."""
    head, _, tail = endpoint.rpartition("/")
    head = f"/{head}" if head else ""
    return [
        (f"{prefix}/{endpoint}", 429, "budget_exceeded"),
        (f"{prefix}{head}/./{tail}", 400, "invalid_path"),
        (f"{prefix}/./{endpoint}", 400, "invalid_path"),
        (f"{prefix}{head}/x/../{tail}", 400, "invalid_path"),
        (f"{prefix}/../../admin/x", 400, "invalid_path"),
        (f"{prefix}/../{endpoint}", 400, "invalid_path"),
        (f"{prefix}//{endpoint}", 400, "invalid_path"),
        (f"{prefix}/{endpoint}/", 400, "invalid_path"),
        (f"{prefix}/{endpoint}//", 400, "invalid_path"),
        (f"{prefix}{head}%2F{tail}", 400, "invalid_path"),
        (f"{prefix}{head}%2f{tail}", 400, "invalid_path"),
        (f"{prefix}{head}%5C{tail}", 400, "invalid_path"),
        (f"{prefix}{head}%5c{tail}", 400, "invalid_path"),
        (f"{prefix}/%2e%2e/%2e%2e/admin/x", 400, "invalid_path"),
        (f"{prefix}/%2E/{endpoint}", 400, "invalid_path"),
        (f"{prefix}{head}/%2e/{tail}", 400, "invalid_path"),
        (f"{prefix}{head}%252F{tail}", 400, "invalid_path"),
        (f"{prefix}{head}\\{tail}", 400, "invalid_path"),
        (f"{prefix}{head}\\..\\{tail}", 400, "invalid_path"),
        (f"{prefix}/{endpoint}%00", 400, "invalid_path"),
        (f"{prefix}/{endpoint.upper()}", 403, "unmetered_route"),
        (f"{prefix}/{endpoint.title()}", 403, "unmetered_route"),
        (f"{prefix}/{endpoint};x", 403, "unmetered_route"),
        (f"{prefix}/{endpoint[:-1]}%{ord(endpoint[-1]):02X}", 403, "unmetered_route"),
    ]


OPENAI_CASES = [(path, status, code) for prefix in ("/v1", "/openai/v1", "/corp/v1")
                for path, status, code in spellings(prefix, "chat/completions")]
ANTHROPIC_CASES = spellings("/anthropic/v1", "messages")
ESCAPES = [  # a configured provider's own path prefix is never left
    ("/corp/../v1/chat/completions", 400, "invalid_path"),
    ("/corp/v1/../../v1/chat/completions", 400, "invalid_path"),
    ("/corp/%2e%2e/v1/chat/completions", 400, "invalid_path"),
    ("/corp/v1/..%2F..%2Fadmin", 400, "invalid_path"),
]


@pytest.mark.parametrize(("path", "status", "code"), OPENAI_CASES + ESCAPES)
async def test_openai_spellings_are_refused_or_metered_never_forwarded(
        corp_proxy, fake, path, status, code):
    await zero_limit(corp_proxy)
    resp = await raw_request(corp_proxy.url, "POST", path, headers=JSON, body=CHAT)
    assert resp.status == status, (path, resp.body)
    assert error_code(resp, "openai") == code
    assert fake.requests == []


@pytest.mark.parametrize(("path", "status", "code"), ANTHROPIC_CASES)
async def test_anthropic_spellings_are_refused_or_metered_never_forwarded(
        proxy, fake, path, status, code):
    await zero_limit(proxy)
    resp = await raw_request(proxy.url, "POST", path, headers=JSON, body=MESSAGES)
    assert resp.status == status, (path, resp.body)
    kind = {400: "invalid_request_error", 403: "permission_error", 429: "rate_limit_error"}
    assert error_code(resp, "anthropic") == kind[status]
    assert fake.requests == []


@pytest.mark.parametrize("method", ["GET", "DELETE"])
async def test_free_methods_with_dot_segments_are_refused_too(proxy, fake, method):
    resp = await raw_request(proxy.url, method, "/v1/../../admin/x")
    assert resp.status == 400
    assert error_code(resp, "openai") == "invalid_path"
    assert fake.requests == []


async def test_free_routes_are_forwarded_to_the_canonical_path(corp_proxy, fake):
    await zero_limit(corp_proxy)
    assert (await raw_request(corp_proxy.url, "GET", "/v1/models")).status == 200
    await raw_request(corp_proxy.url, "HEAD", "/openai/v1/models")  # the fake has no HEAD
    await raw_request(corp_proxy.url, "DELETE", "/v1/files/file-1")
    await raw_request(corp_proxy.url, "POST", "/v1/moderations", headers=JSON,
                      body=b'{"input": "hi"}')
    await raw_request(corp_proxy.url, "GET", "/corp/v1/models?limit=2&after=a%2Fb")
    counted = await anthropic.AsyncAnthropic(
        base_url=f"{corp_proxy.url}/anthropic", api_key="client-key",
    ).messages.count_tokens(model="claude-3-5-haiku-latest",
                            messages=[{"role": "user", "content": "hi"}])
    assert counted.input_tokens > 0
    assert [(r.method, r.path) for r in fake.requests] == [
        ("GET", "/v1/models"), ("HEAD", "/v1/models"), ("DELETE", "/v1/files/file-1"),
        ("POST", "/v1/moderations"), ("GET", "/corp/v1/models"),
        ("POST", "/v1/messages/count_tokens"),
    ]
    corp = fake.requests[4]
    assert corp.headers["authorization"] == f"Bearer {CORP_KEY}"
    assert fake.requests[0].headers["authorization"] == f"Bearer {PROXY_OPENAI_KEY}"
    resp = await corp_proxy.api("GET", "/api/usage/records")
    assert resp.json() == []


@pytest.mark.parametrize(
    ("method", "path", "headers", "api"),
    [
        ("POST", "/v1/batches", {}, "openai"),
        ("POST", "/v1/batches/batch_1/cancel", {}, "openai"),
        ("POST", "/v1/realtime/sessions", {}, "openai"),
        ("GET", "/v1/realtime?model=gpt-4o-realtime-preview",
         {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
          "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}, "openai"),
        ("POST", "/v1/vector_stores", {}, "openai"),
        ("POST", "/v1/fine_tuning/jobs", {}, "openai"),
        ("PUT", "/v1/chat/completions", {}, "openai"),
        ("PATCH", "/v1/files/file-1", {}, "openai"),
        ("OPTIONS", "/v1/models", {}, "openai"),
        ("POST", "/anthropic/v1/messages/batches", {}, "anthropic"),
        ("POST", "/anthropic/v1/complete", {}, "anthropic"),
    ],
)
async def test_unmetered_routes_are_refused(proxy, fake, method, path, headers, api):
    resp = await raw_request(proxy.url, method, path, headers={**JSON, **headers}, body=b"{}")
    assert resp.status == 403, resp.body
    assert error_code(resp, api) == ("permission_error" if api == "anthropic"
                                     else "unmetered_route")
    assert "BUDGET_UNMETERED=allow" in resp.body.decode()
    assert fake.requests == []


async def test_unmetered_allow_forwards_counts_and_logs_once_per_shape(
        proxy_factory, fake, caplog):
    proxy = await proxy_factory(unmetered="allow")
    seen: list[tuple[str, str]] = []
    proxy.proxy.on_unmetered.append(lambda provider, method: seen.append((provider, method)))
    await zero_limit(proxy)
    with caplog.at_level(logging.WARNING, logger="budget_proxy.proxy"):
        for path in ("/v1/batches", "/v1/files/file-1/content", "/v1/files/file-2/content"):
            await raw_request(proxy.url, "POST", path, headers=JSON, body=b"{}")
        await raw_request(proxy.url, "PUT", "/anthropic/v1/messages", headers=JSON, body=b"{}")
        # allow relaxes neither the canonical path rule nor the budget
        bad = await raw_request(proxy.url, "POST", "/v1/chat/./completions", headers=JSON,
                                body=CHAT)
        metered = await raw_request(proxy.url, "POST", "/v1/chat/completions", headers=JSON,
                                    body=CHAT)
    assert (bad.status, metered.status) == (400, 429)
    assert [(r.method, r.path) for r in fake.requests] == [
        ("POST", "/v1/batches"), ("POST", "/v1/files/file-1/content"),
        ("POST", "/v1/files/file-2/content"), ("PUT", "/v1/messages"),
    ]
    assert seen == [("openai", "POST")] * 3 + [("anthropic", "PUT")]
    logged = [r.getMessage() for r in caplog.records if "forwarding unmetered" in r.getMessage()]
    assert len(logged) == 3, logged
    assert any("files/{id}/content" in line for line in logged)


async def mint_key(proxy, component: str = "keyed") -> str:
    resp = await proxy.api("POST", "/api/keys", json={"component": component})
    assert resp.status_code == 201, resp.text
    return resp.json()["secret"]


@pytest.mark.parametrize(
    ("method", "path", "key_header", "api"),
    [
        ("POST", "/v1/chat/completions", "Authorization", "openai"),  # metered
        ("GET", "/v1/models", "Authorization", "openai"),  # free
        ("POST", "/v1/moderations", "Authorization", "openai"),  # free POST
        ("POST", "/v1/batches", "Authorization", "openai"),  # refused
        ("POST", "/anthropic/v1/messages", "x-api-key", "anthropic"),
        ("POST", "/anthropic/v1/messages/count_tokens", "x-api-key", "anthropic"),
        ("GET", "/anthropic/v1/models", "x-api-key", "anthropic"),
    ],
)
async def test_unknown_virtual_key_is_refused_on_every_route(
        proxy, fake, method, path, key_header, api):
    secret = "bp-never-minted"
    value = f"Bearer {secret}" if key_header == "Authorization" else secret
    resp = await raw_request(proxy.url, method, path, headers={**JSON, key_header: value},
                             body=CHAT if api == "openai" else MESSAGES)
    assert resp.status == 401, resp.body
    assert error_code(resp, api) == (
        "authentication_error" if api == "anthropic" else "invalid_api_key")
    assert fake.requests == []


async def test_revoked_key_is_refused_and_a_valid_key_never_travels_upstream(proxy, fake):
    secret = await mint_key(proxy)
    auth = {"Authorization": f"bearer {secret}"}  # the scheme is case-insensitive
    assert (await raw_request(proxy.url, "GET", "/v1/models", headers=auth)).status == 200
    assert fake.last.headers["authorization"] == f"Bearer {PROXY_OPENAI_KEY}"
    (key,) = (await proxy.api("GET", "/api/keys")).json()
    assert (await proxy.api("DELETE", f"/api/keys/{key['key_id']}")).status_code in (200, 204)
    resp = await raw_request(proxy.url, "GET", "/v1/models", headers=auth)
    assert resp.status == 401
    assert len(fake.requests) == 1


async def test_require_key_refuses_every_route_without_a_valid_virtual_key(proxy_factory, fake):
    proxy = await proxy_factory(require_key=True)
    for headers in ({}, {"Authorization": "Bearer sk-client-own-key"},
                    {"Authorization": "Bearer "}, {"x-api-key": "not-bp"}):
        for method, path in (("GET", "/v1/models"), ("POST", "/v1/moderations"),
                             ("POST", "/v1/chat/completions"), ("POST", "/v1/batches")):
            resp = await raw_request(proxy.url, method, path, headers={**JSON, **headers},
                                     body=CHAT)
            assert resp.status == 401, (headers, path, resp.body)
            assert "BUDGET_REQUIRE_KEY" in resp.json()["error"]["message"]
    assert fake.requests == []
    secret = await mint_key(proxy)
    resp = await raw_request(proxy.url, "GET", "/v1/models",
                             headers={"Authorization": f"Bearer {secret}"})
    assert resp.status == 200
    resp = await raw_request(proxy.url, "POST", "/v1/chat/completions",
                             headers={**JSON, "Authorization": f"Bearer {secret}"}, body=CHAT)
    assert resp.status == 200
    (rec,) = (await proxy.api("GET", "/api/usage/records")).json()
    assert rec["component"] == "keyed"


@pytest.mark.parametrize("value", [None, ""])
async def test_provider_without_a_key_is_refused_at_its_route(
        proxy_factory, fake, monkeypatch, value):
    if value is None:
        monkeypatch.delenv("OPENAI_API_KEY")
    else:
        monkeypatch.setenv("OPENAI_API_KEY", value)
    keyless = ProviderConfig(name="keyless", base_url=f"{fake.url}/v1")
    proxy = await proxy_factory(providers={"keyless": keyless})
    for method, path in (("GET", "/v1/models"), ("POST", "/v1/chat/completions"),
                         ("POST", "/openai/v1/moderations")):
        resp = await raw_request(proxy.url, method, path, body=CHAT, headers={
            **JSON, "Authorization": "Bearer sk-client-own-key"})
        assert resp.status == 503
        assert resp.headers["x-should-retry"] == "false"
        assert error_code(resp, "openai") == "provider_key_missing"
        assert "OPENAI_API_KEY" in resp.json()["error"]["message"]
    resp = await raw_request(proxy.url, "GET", "/keyless/v1/models")
    assert resp.status == 503
    assert "[providers.keyless]" in resp.json()["error"]["message"]
    assert fake.requests == []
    # the other provider, which has its key, still works
    resp = await raw_request(proxy.url, "GET", "/anthropic/v1/models")
    assert resp.status == 200


@pytest.mark.parametrize("target", [
    "http://127.0.0.1:1/v1/chat/./completions",  # absolute form: the path is judged the same
    "http://127.0.0.1:1/v1/../../admin/x",
])
async def test_absolute_form_targets_are_judged_by_their_path(proxy, fake, target):
    resp = await raw_request(proxy.url, "POST", target, headers=JSON, body=CHAT)
    assert resp.status == 400
    assert error_code(resp, "openai") == "invalid_path"
    assert fake.requests == []


@pytest.mark.parametrize("target", [
    "/v1/" + "a/" * 50_000 + "chat/completions",  # past aiohttp's request-line limit
    "/v1/" + "%2e%2e/" * 1000 + "admin",
])
async def test_huge_paths_are_refused_and_the_server_stays_up(proxy, fake, target):
    resp = await raw_request(proxy.url, "POST", target, headers=JSON, body=CHAT)
    assert 400 <= resp.status < 500
    assert fake.requests == []
    assert (await proxy.api("GET", "/api/health")).status_code == 200


@pytest.mark.parametrize(("field", "value"), [
    ("unmetered", "maybe"), ("unmetered", ""), ("unmetered", 1), ("unmetered", None),
    ("require_key", "perhaps"), ("require_key", [1]), ("require_key", -1),
])
def test_access_settings_refuse_wrong_values(field, value):
    from pydantic import ValidationError

    from budget_proxy.config import Settings

    with pytest.raises(ValidationError, match=field):
        Settings(**{field: value})

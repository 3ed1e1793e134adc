"""Headers at the edge: bytes that are not UTF-8 and unbounded attribution headers answer 400
before any handler runs, in the caller's format; the admin API stays responsive afterwards.
A client that trickles its request head is cut off at BUDGET_HEADER_TIMEOUT_S."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from yarl import URL

from tests.security import DEADLINE_S, error_code, raw_request

CHAT = (b'{"model": "gpt-4o-mini", "max_tokens": 10, '
        b'"messages": [{"role": "user", "content": "hi"}]}')
JSON = (b"Content-Type", b"application/json")


async def admin_api_answers(proxy) -> None:
    """The admin API, readiness included, answers within a timeout (no stuck transaction)."""
    async with httpx.AsyncClient(timeout=10) as client:
        for path in ("/api/health", "/api/usage/records", "/api/policies"):
            resp = await client.get(f"{proxy.url}{path}")
            assert resp.status_code == 200, (path, resp.text)
        assert (await client.get(f"{proxy.url}/api/usage/records")).json() == []


BAD_HEADERS = [
    (b"X-Budget-Component", b"billing\xff"),
    (b"X-Budget-Session", b"\xc3\x28"),  # an invalid two-byte sequence
    (b"X-Budget-Task", b"\xed\xa0\x80"),  # an encoded surrogate
    (b"User-Agent", b"sdk/\xfe\xff"),
    (b"X-Budget-Component", b"x" * 257),
    (b"X-Budget-Allocation", b"a\tb"),
    (b"X-Budget-Context", "ctx\u200b".encode()),  # valid UTF-8, not printable
]


@pytest.mark.parametrize(("name", "value"), BAD_HEADERS)
async def test_bad_header_on_a_proxy_route_answers_400_in_the_provider_format(
        proxy, fake, name, value):
    resp = await raw_request(proxy.url, "POST", "/v1/chat/completions",
                             headers=[JSON, (name, value)], body=CHAT)
    assert resp.status == 400, resp.body
    assert error_code(resp, "openai") == "invalid_header"
    assert name.decode() in resp.json()["error"]["message"]
    resp = await raw_request(proxy.url, "POST", "/anthropic/v1/messages",
                             headers=[JSON, (name, value)], body=CHAT)
    assert resp.status == 400
    assert error_code(resp, "anthropic") == "invalid_request_error"
    assert fake.requests == []
    await admin_api_answers(proxy)


@pytest.mark.parametrize(("name", "value"), BAD_HEADERS)
@pytest.mark.parametrize(("method", "path"), [
    ("GET", "/api/usage/records"), ("POST", "/api/usage/record"), ("GET", "/api/health"),
    ("GET", "/health"), ("GET", "/ws/budget/updates"),
])
async def test_bad_header_on_an_admin_route_answers_400_in_the_admin_format(
        proxy, name, value, method, path):
    record = (b'{"provider": "openai", "model": "gpt-4o-mini", "input_tokens": 1, '
              b'"output_tokens": 1}')
    resp = await raw_request(proxy.url, method, path, headers=[JSON, (name, value)],
                             body=record if method == "POST" else b"")
    assert resp.status == 400, resp.body
    error = resp.json()["error"]
    assert error["type"] == "invalid_header"
    assert name.decode() in error["message"]
    await admin_api_answers(proxy)


async def test_good_utf8_and_bounded_attribution_headers_pass(proxy, fake):
    resp = await raw_request(proxy.url, "POST", "/v1/chat/completions", body=CHAT, headers=[
        JSON, (b"X-Budget-Component", "caf\u00e9-worker".encode()),
        (b"X-Budget-Session", b"s" * 256), (b"User-Agent", "sdk/\u00e9".encode())])
    assert resp.status == 200, resp.body
    (rec,) = (await proxy.api("GET", "/api/usage/records")).json()
    assert (rec["component"], rec["session_id"]) == ("caf\u00e9-worker", "s" * 256)


@pytest.mark.parametrize("value", [b"x" * 200_000, b"ctx\x7f", b"a\x00b", b"a\rb"])
async def test_a_huge_or_control_header_is_refused_by_the_parser_and_the_server_stays_up(
        proxy, fake, value):
    resp = await raw_request(proxy.url, "POST", "/v1/chat/completions", body=CHAT,
                             headers=[JSON, (b"X-Budget-Component", value)])
    assert resp.status == 400
    assert fake.requests == []
    await admin_api_answers(proxy)


async def test_a_slow_header_client_is_cut_off(proxy_factory):
    proxy = await proxy_factory(header_timeout_s=1.0)
    url = URL(proxy.url)
    reader, writer = await asyncio.open_connection(url.host, url.port)
    writer.write(b"GET /api/health HTTP/1.1\r\nHost: x\r\n")
    received = b""
    closed = False
    deadline = time.monotonic() + DEADLINE_S
    try:
        while time.monotonic() < deadline:
            try:
                writer.write(b"X-Slow: 1\r\n")  # one header line at a time, never the end
                await writer.drain()
                chunk = await asyncio.wait_for(reader.read(1024), 0.2)
            except TimeoutError:
                continue
            except ConnectionError:
                closed = True
                break
            if not chunk:
                closed = True
                break
            received += chunk
    finally:
        writer.close()
    assert closed, "the server kept a trickling client's connection open"
    assert received == b""  # cut off, never answered
    # a client that sends its head at once is served by the same server
    async with httpx.AsyncClient(timeout=10) as client:
        assert (await client.get(f"{proxy.url}/api/health")).status_code == 200


@pytest.mark.parametrize("value", [0, -1, -1e9, 1e12, "soon", None, float("nan"), [1]])
def test_header_timeout_setting_refuses_wrong_values(value):
    from pydantic import ValidationError

    from budget_proxy.config import Settings

    with pytest.raises(ValidationError, match="header_timeout_s"):
        Settings(header_timeout_s=value)

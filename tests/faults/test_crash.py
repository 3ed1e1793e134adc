"""No answered call is lost to a crash: a real `budget-proxy serve` process SIGKILLed under
concurrent load (streamed and not, calls in flight at the fake provider), restarted, killed
again; then every request the fake provider received has exactly one usage record (`ok`,
`aborted`, or `unsettled`: the charge of a dead process's hold), none twice, spent equals the
sum of the records, and no hold is left. And a stream that outlives the reservation TTL keeps
its hold (renewed), so a hard limit is never passed.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import uuid
from typing import Any

import httpx
import pytest

from budget_proxy.testing.fake_provider import FakeProvider
from budget_proxy.testing.waiting import eventually
from tests.redis_servers import redis_factory  # noqa: F401 - fixture

KILLS = 3
CLIENTS = 12  # concurrent callers while the proxy is killed
IN_FLIGHT_BEFORE_KILL = 30  # requests the fake has seen in a round before the kill
CHAT = "/v1/chat/completions"
DEADLINE_S = 60.0  # only a hung test reaches it
LIMIT_TOKENS = 100


def marker_of(body: Any) -> str | None:
    """The per-request marker a caller put in its message (the fake keeps request bodies)."""
    try:
        return str(body["messages"][0]["content"])
    except (TypeError, KeyError, IndexError):
        return None


async def call(client: httpx.AsyncClient, url: str, streamed: bool) -> None:
    """One call whose marker is its message and its session (the record's `session_id`)."""
    marker = uuid.uuid4().hex
    body: dict[str, Any] = {"model": "gpt-4o-mini", "max_tokens": 50,
                            "messages": [{"role": "user", "content": marker}]}
    headers = {"X-Budget-Session": marker, "Authorization": "Bearer sk-client"}
    if streamed:
        body["stream"] = True
        headers |= {"x-fake-chunks": "8", "x-fake-chunk-delay-ms": "60"}
        async with client.stream("POST", f"{url}{CHAT}", json=body, headers=headers) as resp:
            async for _ in resp.aiter_bytes():
                pass
    else:
        headers["x-fake-delay-ms"] = "250"
        await client.post(f"{url}{CHAT}", json=body, headers=headers)


async def load(url: str, stop: asyncio.Event) -> None:
    """CLIENTS callers, half streaming, until `stop` (or the proxy dies under them)."""
    async def caller(i: int) -> None:
        async with httpx.AsyncClient(timeout=30) as client:
            while not stop.is_set():
                try:
                    await call(client, url, streamed=i % 2 == 0)
                except httpx.HTTPError:
                    if stop.is_set():
                        return
                    await asyncio.sleep(0.05)  # the proxy is gone: wait for the next one

    await asyncio.gather(*(caller(i) for i in range(CLIENTS)))


async def api(url: str, path: str) -> Any:
    async with httpx.AsyncClient(timeout=10) as client:
        resp = await client.get(f"{url}{path}")
        resp.raise_for_status()
        return resp.json()


async def add_limit(url: str) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        resp = await client.post(f"{url}/api/policies", json={
            "period": "daily", "type": "hard_limit", "cost_limit": 1000})
        assert resp.status_code in (200, 201), resp.text


@pytest.fixture(params=["embedded", "redis"])
def crash_env(request: pytest.FixtureRequest, fake: FakeProvider, tmp_path) -> dict[str, str]:
    env = {
        "BUDGET_DATA_DIR": str(tmp_path / "data"),
        "BUDGET_OPENAI_BASE_URL": f"{fake.url}/v1",  # type: ignore[attr-defined]
        "BUDGET_RESERVATION_TTL_S": "1",
        "BUDGET_REAPER_INTERVAL_S": "0.2",
        "BUDGET_LOG_LEVEL": "WARNING",
    }
    if request.param == "redis":
        env["BUDGET_REDIS_URL"] = request.getfixturevalue("redis_factory")(aof=True).url
    return env


async def test_sigkill_under_load_loses_no_answered_call(
        fake: FakeProvider, crash_env: dict[str, str], proxy_process_factory):
    first = await asyncio.to_thread(proxy_process_factory, crash_env)
    await add_limit(first.url)
    proxy = first
    for _ in range(KILLS):
        seen = len(fake.requests)
        stop = asyncio.Event()
        callers = asyncio.create_task(load(proxy.url, stop))
        async def busy(seen: int = seen) -> bool:
            return len(fake.requests) >= seen + IN_FLIGHT_BEFORE_KILL

        await eventually(busy, DEADLINE_S)
        proxy.stop(signal.SIGKILL)  # mid-burst: calls in flight at the fake and streaming
        stop.set()
        await callers
        proxy = await asyncio.to_thread(proxy_process_factory, crash_env)

    # the last process charges what the killed ones held (embedded: at start-up; Redis: its
    # reaper, once the dead holds pass their 1 s deadline); nothing is in flight any more
    async def settled() -> Any:
        status = await api(proxy.url, "/api/status")
        (policy,) = status["policies"]
        return policy if policy["reserved_tokens"] == 0 and policy["reserved_cost"] == 0 \
            else None

    policy = await eventually(settled, DEADLINE_S)
    records = await api(proxy.url, "/api/usage/records?limit=10000")
    answered = [marker_of(r.body) for r in fake.requests if r.path == CHAT]
    assert answered and all(answered)
    by_marker: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        by_marker.setdefault(record["session_id"], []).append(record)
    assert not [m for m in answered if m not in by_marker], "an answered call has no record"
    assert not {m: r for m, r in by_marker.items() if len(r) > 1}, "a call recorded twice"
    assert {r["status"] for r in records} <= {"ok", "aborted", "unsettled"}
    assert any(r["status"] == "unsettled" for r in records)  # the kills caught calls
    unanswered = [r for m, rs in by_marker.items() if m not in set(answered) for r in rs]
    assert all(r["status"] == "unsettled" for r in unanswered)  # held, never forwarded
    assert policy["spent_cost"] == pytest.approx(sum(r["total_cost"] for r in records),
                                                 rel=1e-9, abs=1e-9)
    assert policy["spent_tokens"] == sum(r["total_tokens"] for r in records)


@pytest.mark.parametrize("backend", ["embedded", "redis"])
async def test_a_stream_outliving_the_ttl_keeps_its_hold_under_a_hard_limit(
        backend: str, fake: FakeProvider, proxy_factory, request: pytest.FixtureRequest):
    overrides: dict[str, Any] = {"reservation_ttl_s": 1.0, "reaper_interval_s": 0.1}
    if backend == "redis":
        overrides["redis_url"] = request.getfixturevalue("redis_factory")(aof=True).url
    proxy = await proxy_factory(**overrides)
    # one call's worst case is its input (under 10 tokens) plus 50 output tokens: the limit
    # holds one call at a time, never two
    resp = await proxy.api("POST", "/api/policies", json={
        "period": "daily", "type": "hard_limit", "token_limit": LIMIT_TOKENS})
    assert resp.status_code in (200, 201), resp.text
    body = {"model": "gpt-4o-mini", "max_tokens": 50, "stream": True,
            "messages": [{"role": "user", "content": "long"}]}
    fake.completion_tokens = 40
    streamed = asyncio.Event()
    refused: list[int] = []

    async def long_stream() -> bytes:
        headers = {"x-fake-chunks": "30", "x-fake-chunk-delay-ms": "100"}  # 3 s: 3 TTLs
        async with httpx.AsyncClient(timeout=30) as client, client.stream(
                "POST", f"{proxy.url}{CHAT}", json=body, headers=headers) as resp:
            assert resp.status_code == 200
            out = b""
            async for piece in resp.aiter_bytes():
                out += piece
                streamed.set()
            return out

    stream = asyncio.create_task(long_stream())
    await asyncio.wait_for(streamed.wait(), DEADLINE_S)
    async with httpx.AsyncClient(timeout=30) as client:
        while not stream.done():  # others keep trying while it streams, past its TTL
            other = await client.post(f"{proxy.url}{CHAT}", json={**body, "stream": False})
            refused.append(other.status_code)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(stream), 0.2)
    assert b"[DONE]" in await stream
    assert refused and set(refused) == {429}, refused  # the hold was never lost
    (policy,) = (await proxy.api("GET", "/api/status")).json()["policies"]
    assert policy["spent_tokens"] <= LIMIT_TOKENS and policy["reserved_tokens"] == 0
    records = (await proxy.api("GET", "/api/usage/records")).json()
    assert [r["status"] for r in records] == ["ok"]

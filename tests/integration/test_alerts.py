"""Alerts end to end: real proxy, fake provider, a local webhook receiver."""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from zoneinfo import ZoneInfo

import openai
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from budget_proxy.appkeys import ALERTS, POLICIES
from budget_proxy.enforcement import counter_key
from budget_proxy.models import Alert, Period, usd_to_nusd
from budget_proxy.periods import window_for
from budget_proxy.store.base import Reservation
from budget_proxy.testing.waiting import eventually

# gpt-4o-mini list prices, USD per token
IN_USD, OUT_USD = 0.15e-6, 0.60e-6


@dataclass
class Receiver:
    """A webhook endpoint: records each POST; `status` answers (a list: one per call, then
    200); `hang` holds every request until `release` is set."""

    url: str = ""
    bodies: list[object] = field(default_factory=list)
    arrivals: list[float] = field(default_factory=list)
    status: list[int] = field(default_factory=list)
    hang: bool = False
    release: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: web.Request) -> web.Response:
        self.arrivals.append(time.monotonic())
        body = await request.json()
        if self.hang:
            await self.release.wait()
            return web.Response(status=200)
        code = self.status.pop(0) if self.status else 200
        if code == 200:
            self.bodies.append(body)
        return web.Response(status=code)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    rec = Receiver()
    app = web.Application()
    app.router.add_post("/hook", rec.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    rec.url = str(server.make_url("/hook"))
    yield rec
    rec.release.set()
    await server.close()


def client(proxy) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{proxy.url}/v1", api_key="x", max_retries=0)


async def call(proxy, **kw) -> None:
    async with client(proxy) as oai:
        await oai.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], max_tokens=100,
            **kw)


async def add_policy(proxy, **body) -> dict:
    resp = await proxy.api("POST", "/api/policies", json=body)
    assert resp.status_code == 201, resp.text
    return resp.json()


async def stored_alerts(proxy) -> list[Alert]:
    return [Alert.model_validate_json(d) for d in await proxy.store.list_docs("alert")]


async def test_warning_crossed_by_50_concurrent_requests_alerts_once(proxy_factory, fake,
                                                                     receiver):
    proxy = await proxy_factory(webhook_urls=receiver.url)
    fake.prompt_tokens, fake.completion_tokens = 1000, 100
    cost = 1000 * IN_USD + 100 * OUT_USD
    # 50 calls end at 90% of the limit: past the 80% warning, short of the 95% action level
    policy = await add_policy(proxy, period="daily", type="warn", cost_limit=50 * cost / 0.9,
                              name="team-daily")
    fake.response_delay_s = 0.02
    await asyncio.gather(*(call(proxy) for _ in range(50)))

    async def delivered() -> bool:
        return len(receiver.bodies) >= 1
    await eventually(delivered)
    await asyncio.sleep(0.5)  # room for a duplicate to show up
    alerts = await stored_alerts(proxy)
    assert [a.type for a in alerts] == ["warning_threshold"]
    assert alerts[0].policy_id == policy["policy_id"] and alerts[0].window
    assert 0.8 <= alerts[0].data["utilisation"] <= 0.9 + 1e-9
    assert len(receiver.bodies) == 1
    (event,) = receiver.bodies
    assert event["topic"] == "alerts" and event["type"] == "alert_raised"
    assert event["payload"]["alert_id"] == alerts[0].alert_id
    assert event["payload"]["type"] == "warning_threshold" and "team-daily" in \
        event["payload"]["message"]
    metrics = (await proxy.api("GET", "/metrics")).text
    assert 'budget_proxy_alerts_total{type="warning_threshold"} 1.0' in metrics
    assert 'budget_proxy_webhook_deliveries_total{format="json",result="delivered"} 1.0' in \
        metrics


async def test_two_replicas_on_redis_raise_one_alert(proxy_factory, fake, receiver, redis_url,
                                                    tmp_path):
    """Two replicas on one Redis, requests through both: one alert, one delivery."""
    first = await proxy_factory(webhook_urls=receiver.url, redis_url=redis_url,
                                data_dir=tmp_path / "a")
    second = await proxy_factory(webhook_urls=receiver.url, redis_url=redis_url,
                                 data_dir=tmp_path / "b")
    fake.prompt_tokens, fake.completion_tokens = 1000, 100
    cost = 1000 * IN_USD + 100 * OUT_USD
    await add_policy(first, period="daily", type="warn", cost_limit=50 * cost / 0.9)
    await second.app[POLICIES].refresh()  # as its config notice or poll would
    fake.response_delay_s = 0.02
    await asyncio.gather(*(call(first if i % 2 else second) for i in range(50)))

    async def delivered() -> bool:
        return len(receiver.bodies) >= 1
    await eventually(delivered)
    await asyncio.sleep(0.5)
    assert [a.type for a in await stored_alerts(first)] == ["warning_threshold"]
    assert len(receiver.bodies) == 1


async def test_each_level_once_per_window(proxy_factory, fake, receiver):
    proxy = await proxy_factory(webhook_urls=f"{receiver.url},slack+{receiver.url}")
    fake.prompt_tokens, fake.completion_tokens = 1000, 100
    await add_policy(proxy, period="daily", type="warn", cost_limit=0.0005, name="tiny")
    for _ in range(6):  # each call is ~42% of the limit: crosses all three levels
        await call(proxy)

    async def all_delivered() -> bool:
        return len(receiver.bodies) >= 6
    await eventually(all_delivered)
    await asyncio.sleep(0.3)
    alerts = await stored_alerts(proxy)
    assert sorted(a.type for a in alerts) == ["action_threshold", "limit_reached",
                                              "warning_threshold"]
    assert {a.severity.value for a in alerts} == {"warning", "critical"}
    assert len(receiver.bodies) == 6  # three alerts, two webhooks each
    slack = [b for b in receiver.bodies if set(b) == {"text"}]
    assert len(slack) == 3 and all("tiny" in b["text"] for b in slack)


async def spend(proxy, policy: dict, usd: float) -> None:
    """Settled spend on the policy's current window, as if earlier calls had cost `usd`."""
    window = window_for(Period(policy["period"]), proxy.store.now(), ZoneInfo("UTC"))
    key = counter_key(policy["policy_id"], window.window_id)
    await proxy.store.settle(Reservation(f"seed-{key}", (key,), 0, 0), usd_to_nusd(usd), 0, None)


async def test_refusals_of_a_spent_hard_limit_raise_limit_reached_once(proxy_factory, fake,
                                                                        receiver):
    proxy = await proxy_factory(webhook_urls=receiver.url)
    policy = await add_policy(proxy, period="daily", type="hard_limit", cost_limit=0.001)
    await spend(proxy, policy, 0.00097)  # 97%: past the 95% action threshold
    for _ in range(5):  # each may cost up to 100 output tokens x $0.6/M: refused
        with pytest.raises(openai.RateLimitError):
            await call(proxy)

    async def delivered() -> bool:
        return len(receiver.bodies) >= 1
    await eventually(delivered)
    await asyncio.sleep(0.3)
    (alert,) = await stored_alerts(proxy)
    assert alert.type == "limit_reached" and alert.policy_id == policy["policy_id"]
    assert alert.severity.value == "critical"
    assert alert.data["refused_provider"] == "openai" and alert.data["utilisation"] == 0.97
    assert len(receiver.bodies) == 1


async def test_an_oversized_request_refused_with_room_left_is_no_alert(proxy_factory, fake,
                                                                       receiver):
    proxy = await proxy_factory(webhook_urls=receiver.url)
    await add_policy(proxy, period="daily", type="hard_limit", cost_limit=1.0)
    with pytest.raises(openai.RateLimitError):
        async with client(proxy) as oai:
            await oai.chat.completions.create(
                model="gpt-4o", messages=[{"role": "user", "content": "hi"}],
                max_tokens=200_000)  # $2 worst case against $1
    await asyncio.sleep(0.5)
    assert await stored_alerts(proxy) == [] and receiver.arrivals == []
    assert "budget_proxy_refusals_total{" in (await proxy.api("GET", "/metrics")).text


async def test_failing_webhook_is_retried_with_backoff(proxy_factory, fake, receiver):
    receiver.status = [503, 500]
    proxy = await proxy_factory(webhook_urls=receiver.url, webhook_backoff_s=0.3)
    policy = await add_policy(proxy, period="daily", type="hard_limit", cost_limit=0.001)
    await spend(proxy, policy, 0.00099)
    with pytest.raises(openai.RateLimitError):  # one alert: limit_reached
        await call(proxy)

    async def delivered() -> bool:
        return len(receiver.bodies) >= 1
    await eventually(delivered)
    first, second, third = receiver.arrivals[:3]
    # back-off doubles: ~0.3 s, then ~0.6 s (+-10% jitter)
    assert 0.25 <= second - first <= 2.0
    assert 0.5 <= third - second <= 3.0
    assert (third - second) > (second - first)
    metrics = (await proxy.api("GET", "/metrics")).text
    assert 'budget_proxy_webhook_deliveries_total{format="json",result="retried"} 2.0' in metrics
    assert 'budget_proxy_webhook_deliveries_total{format="json",result="delivered"} 1.0' in \
        metrics


async def test_a_hanging_webhook_does_not_slow_the_proxy(proxy_factory, fake, receiver,
                                                         tmp_path):
    """The same traffic with no webhook and with one that never answers (10 s timeout): every
    request still completes in a fraction of the timeout, at about the same latency."""
    receiver.hang = True
    webhook_timeout_s = 10.0
    fake.prompt_tokens, fake.completion_tokens = 1000, 100

    async def latencies(proxy) -> list[float]:
        await add_policy(proxy, period="daily", type="warn", cost_limit=0.0005)
        out = []
        for _ in range(25):
            started = time.perf_counter()
            await call(proxy)
            out.append(time.perf_counter() - started)
        return out

    plain = await latencies(await proxy_factory(data_dir=tmp_path / "plain"))
    hooked_proxy = await proxy_factory(data_dir=tmp_path / "hooked", webhook_urls=receiver.url,
                                       webhook_timeout_s=webhook_timeout_s)
    hooked = await latencies(hooked_proxy)
    assert len(receiver.arrivals) >= 1, "the webhook was never called"
    assert max(hooked) < webhook_timeout_s / 5, hooked
    assert statistics.median(hooked) < statistics.median(plain) + 0.25, (plain, hooked)
    assert len(await stored_alerts(hooked_proxy)) == 3


async def test_price_alerts_are_deduplicated(proxy):
    alerts = proxy.app[ALERTS]
    old, new = {"input_usd_per_mtok": "1"}, {"input_usd_per_mtok": "2"}
    first = await alerts.price_change("openai", "gpt-4o", old, new, source="test")
    again = await alerts.price_change("openai", "gpt-4o", old, new, source="test")
    assert first is not None and first.type == "price_change" and again is None
    conflict = await alerts.price_conflict("openai", "gpt-4o", [{"a": 1}, {"a": 2}])
    assert conflict is not None and conflict.severity.value == "warning"
    stored = {a.type for a in await stored_alerts(proxy)}
    assert stored == {"price_change", "price_conflict"}
    body = json.loads(first.model_dump_json())
    assert body["data"]["new"] == new


async def test_usage_recorded_through_the_api_raises_threshold_alerts(proxy):
    await add_policy(proxy, period="daily", type="warn", cost_limit=0.001, name="direct-calls")
    resp = await proxy.api("POST", "/api/usage/record", json={
        "provider": "openai", "model": "gpt-4o-mini", "input_tokens": 5000,
        "output_tokens": 500, "component": "batch"})
    assert resp.status_code in (200, 201), resp.text

    async def raised() -> bool:
        return any(a.type == "warning_threshold" for a in await stored_alerts(proxy))
    await eventually(raised)

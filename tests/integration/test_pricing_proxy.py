"""Prices through the proxy: real server, fake provider, official SDKs.

Costs are computed by hand here from list prices typed in (USD per million tokens)."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace
from typing import Any

import anthropic
import httpx
import openai
import pytest
from aiohttp import web

from budget_proxy.appkeys import CATALOG, EVENTS
from budget_proxy.models import Alert

GPT_4O = {"input": 2.50, "cached": 1.25, "output": 10.00}
O3 = {"input": 2.00, "cached": 0.50, "output": 8.00}
SONNET_4_5 = {"input": 3.00, "read": 0.30, "write": 3.75, "output": 15.00}
OPENAI_CEILING = {"input": 150.00, "output": 600.00}  # o1-pro, the dearest OpenAI model
M = 1_000_000


def oai(proxy) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{proxy.url}/v1", api_key="sk-client", max_retries=0)


def claude(proxy) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=f"{proxy.url}/anthropic", api_key="client-key",
                                    max_retries=0)


async def records(proxy) -> list[dict[str, Any]]:
    resp = await proxy.api("GET", "/api/usage/records", params={"limit": 1000})
    assert resp.status_code == 200
    return sorted(resp.json(), key=lambda r: r["timestamp"])


async def alerts_of(proxy, kind: str) -> list[Alert]:
    docs = await proxy.store.list_docs("alert")
    return [a for a in (Alert.model_validate_json(d) for d in docs) if a.type == kind]


async def eventually(probe, timeout_s: float = 5.0):
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        value = await probe()
        if value or asyncio.get_running_loop().time() > deadline:
            return value
        await asyncio.sleep(0.02)


# streamed and unstreamed ------------------------------------------------------------------
async def test_openai_chat_streamed_and_unstreamed_cost_the_same(proxy, fake):
    fake.prompt_tokens, fake.completion_tokens, fake.cached_tokens = 1000, 200, 600
    client = oai(proxy)
    await client.chat.completions.create(model="gpt-4o-2024-08-06",
                                         messages=[{"role": "user", "content": "hi"}])
    stream = await client.chat.completions.create(
        model="gpt-4o-2024-08-06", messages=[{"role": "user", "content": "hi"}], stream=True)
    async for _ in stream:
        pass
    plain, streamed = await records(proxy)
    assert (plain["streamed"], streamed["streamed"]) == (False, True)
    expected = (400 * GPT_4O["input"] + 600 * GPT_4O["cached"] + 200 * GPT_4O["output"]) / M
    assert plain["total_cost"] == streamed["total_cost"] == pytest.approx(expected, abs=1e-12)
    for rec in (plain, streamed):
        assert (rec["input_tokens"], rec["cached_input_tokens"]) == (400, 600)
        assert rec["pricing_id"] == "openai/gpt-4o@2024-08-06"


async def test_responses_with_reasoning_streamed_and_unstreamed(proxy, fake):
    fake.prompt_tokens, fake.completion_tokens = 3000, 900
    fake.cached_tokens, fake.reasoning_tokens = 2048, 700
    client = oai(proxy)
    await client.responses.create(model="o3", input="think")
    stream = await client.responses.create(model="o3", input="think", stream=True)
    async for _ in stream:
        pass
    plain, streamed = await records(proxy)
    expected = (952 * O3["input"] + 2048 * O3["cached"] + 900 * O3["output"]) / M
    assert plain["total_cost"] == streamed["total_cost"] == pytest.approx(expected, abs=1e-12)
    assert plain["reasoning_tokens"] == streamed["reasoning_tokens"] == 700


async def test_anthropic_cache_reads_and_writes_at_cache_rates(proxy, fake):
    fake.prompt_tokens, fake.completion_tokens = 50, 300
    fake.cached_tokens, fake.cache_creation_tokens = 10_000, 2_000
    client = claude(proxy)
    message = await client.messages.create(
        model="claude-sonnet-4-5-20250929", max_tokens=1000,
        messages=[{"role": "user", "content": "hello"}])
    assert message.usage.cache_read_input_tokens == 10_000
    async with client.messages.stream(
        model="claude-sonnet-4-5-20250929", max_tokens=1000,
        messages=[{"role": "user", "content": "hello"}],
    ) as stream:
        await stream.get_final_text()
    plain, streamed = await records(proxy)
    expected = (50 * SONNET_4_5["input"] + 10_000 * SONNET_4_5["read"]
                + 2_000 * SONNET_4_5["write"] + 300 * SONNET_4_5["output"]) / M
    assert plain["total_cost"] == streamed["total_cost"] == pytest.approx(expected, abs=1e-12)
    for rec in (plain, streamed):
        assert (rec["input_tokens"], rec["cached_input_tokens"], rec["cache_write_tokens"],
                rec["output_tokens"]) == (50, 10_000, 2_000, 300)
        assert rec["pricing_id"] == "anthropic/claude-sonnet-4-5@2025-09-29"
    # the same tokens at the plain input rate would cost far more: the cache rates were used
    assert plain["total_cost"] < (12_050 * SONNET_4_5["input"] + 300 * SONNET_4_5["output"]) / M


# unknown models -------------------------------------------------------------------------------
async def test_unknown_model_refused_in_each_callers_format(proxy_factory, fake):
    proxy = await proxy_factory(unknown_price="refuse")
    with pytest.raises(openai.BadRequestError) as oai_err:
        await oai(proxy).chat.completions.create(
            model="gpt-unreleased", messages=[{"role": "user", "content": "hi"}])
    assert oai_err.value.status_code == 400
    assert oai_err.value.code == "unknown_model_price"
    assert "gpt-unreleased" in oai_err.value.message
    with pytest.raises(anthropic.BadRequestError) as ant_err:
        await claude(proxy).messages.create(
            model="claude-next-7", max_tokens=10, messages=[{"role": "user", "content": "x"}])
    assert ant_err.value.body["type"] == "error"
    assert "claude-next-7" in ant_err.value.body["error"]["message"]
    assert fake.requests == []  # never forwarded
    assert await records(proxy) == []


async def test_unknown_model_charged_the_ceiling(proxy_factory, fake):
    proxy = await proxy_factory(unknown_price="ceiling")
    fake.prompt_tokens, fake.completion_tokens = 1000, 100
    await oai(proxy).chat.completions.create(
        model="gpt-unreleased", messages=[{"role": "user", "content": "hi"}])
    (rec,) = await records(proxy)
    expected = (1000 * OPENAI_CEILING["input"] + 100 * OPENAI_CEILING["output"]) / M
    assert rec["total_cost"] == pytest.approx(expected, abs=1e-12) and rec["total_cost"] > 0
    assert rec["pricing_id"] == "ceiling:openai@150.00/600.00"
    assert await alerts_of(proxy, "unknown_model_price") == []


async def test_unknown_model_allowed_with_one_alert_per_model(proxy_factory, fake):
    proxy = await proxy_factory(unknown_price="alert")
    sub = proxy.app[EVENTS].subscribe(frozenset({"alerts"}))
    fake.prompt_tokens, fake.completion_tokens = 10, 5
    client = oai(proxy)
    for model in ("gpt-unreleased", "gpt-unreleased", "gpt-unreleased", "gpt-other"):
        await client.chat.completions.create(model=model,
                                             messages=[{"role": "user", "content": "hi"}])

    async def two_alerts():
        found = await alerts_of(proxy, "unknown_model_price")
        return found if len(found) >= 2 else None

    found = await eventually(two_alerts)
    assert sorted(a.data["model"] for a in found) == ["gpt-other", "gpt-unreleased"]
    recs = await records(proxy)
    assert len(recs) == 4
    assert all(r["total_cost"] > 0 and r["pricing_id"].startswith("ceiling:") for r in recs)
    await asyncio.sleep(0.1)
    assert len(await alerts_of(proxy, "unknown_model_price")) == 2
    published = []
    while not sub.queue.empty():
        published.append(sub.queue.get_nowait())
    assert sorted(e["payload"]["data"]["model"] for e in published) == ["gpt-other",
                                                                        "gpt-unreleased"]


# price updates ----------------------------------------------------------------------------
@pytest.fixture
async def price_server(aiohttp_server):
    """LiteLLM- and OpenRouter-format price lists served over HTTP; tests set the prices."""
    state = SimpleNamespace(gpt4o_litellm=2.5e-06, gpt4o_openrouter="0.0000025")

    async def litellm(request: web.Request) -> web.Response:
        return web.json_response({
            "gpt-4o": {"litellm_provider": "openai", "mode": "chat",
                       "input_cost_per_token": state.gpt4o_litellm,
                       "output_cost_per_token": 1e-05,
                       "cache_read_input_token_cost": 1.25e-06},
            "claude-sonnet-4-5": {"litellm_provider": "anthropic", "mode": "chat",
                                  "input_cost_per_token": 3e-06,
                                  "output_cost_per_token": 1.5e-05},
        })

    async def openrouter(request: web.Request) -> web.Response:
        return web.json_response({"data": [
            {"id": "openai/gpt-4o", "pricing": {"prompt": state.gpt4o_openrouter,
                                                "completion": "0.00001"}},
            {"id": "anthropic/claude-sonnet-4.5", "pricing": {"prompt": "0.000003",
                                                              "completion": "0.000015"}},
        ]})

    app = web.Application()
    app.router.add_get("/litellm.json", litellm)
    app.router.add_get("/api/v1/models", openrouter)
    server = await aiohttp_server(app)
    base = str(server.make_url("")).rstrip("/")
    state.sources = f"litellm={base}/litellm.json,openrouter={base}/api/v1/models"
    return state


async def test_agreeing_sources_create_a_version_later_requests_use(proxy_factory, fake,
                                                                    price_server):
    proxy = await proxy_factory(price_sources=price_server.sources)
    prices = proxy.app[EVENTS].subscribe(frozenset({"prices"}))
    fake.prompt_tokens, fake.completion_tokens = 1000, 100
    client = oai(proxy)
    await client.chat.completions.create(model="gpt-4o",
                                         messages=[{"role": "user", "content": "before"}])

    price_server.gpt4o_litellm, price_server.gpt4o_openrouter = 2e-06, "0.000002"
    resp = await proxy.api("POST", "/api/prices/update")
    assert resp.status_code == 200, resp.text
    report = resp.json()
    assert report["status"] == "ok" and report["conflicts"] == []
    (applied,) = report["applied"]
    assert (applied["model"], applied["changes"]) == (
        "gpt-4o", {"input_usd_per_mtok": {"old": "2.50", "new": "2.00"}})
    new_id = applied["pricing_id"]

    stream = await client.chat.completions.create(
        model="gpt-4o-2024-11-20", messages=[{"role": "user", "content": "after"}],
        stream=True)
    async for _ in stream:
        pass
    before, after = await records(proxy)
    assert before["pricing_id"] == "openai/gpt-4o@2024-08-06"
    assert before["total_cost"] == pytest.approx((1000 * 2.50 + 100 * 10.00) / M, abs=1e-12)
    assert after["pricing_id"] == new_id
    assert after["total_cost"] == pytest.approx((1000 * 2.00 + 100 * 10.00) / M, abs=1e-12)

    history = (await proxy.api("GET", "/api/prices/openai/gpt-4o/history")).json()
    assert [h["pricing_id"] for h in history] == ["openai/gpt-4o@2024-08-06", new_id]
    assert history[0]["end_date"] == history[1]["effective_date"]
    (current,) = (await proxy.api("GET", "/api/prices", params={"model": "gpt-4o"})).json()
    assert current["pricing_id"] == new_id and current["verified"] is True
    types = []
    while not prices.queue.empty():
        types.append(prices.queue.get_nowait()["type"])
    assert types == ["price_changed", "price_update_completed"]
    changes = await alerts_of(proxy, "price_change")
    assert [a.data["model"] for a in changes] == ["gpt-4o"]


async def test_disagreeing_sources_raise_a_conflict_and_change_nothing(proxy_factory, fake,
                                                                       price_server):
    proxy = await proxy_factory(price_sources=price_server.sources)
    price_server.gpt4o_litellm, price_server.gpt4o_openrouter = 2e-06, "0.000003"
    report = (await proxy.api("POST", "/api/prices/update")).json()
    assert report["applied"] == []
    (conflict,) = report["conflicts"]
    assert conflict["model"] == "gpt-4o" and conflict["fields"] == ["input_usd_per_mtok"]
    (alert,) = await alerts_of(proxy, "price_conflict")
    assert alert.alert_id == conflict["alert_id"]
    assert {c["source"] for c in alert.data["candidates"]} == {"litellm", "openrouter"}
    history = (await proxy.api("GET", "/api/prices/openai/gpt-4o/history")).json()
    assert [h["pricing_id"] for h in history] == ["openai/gpt-4o@2024-08-06"]
    fake.prompt_tokens, fake.completion_tokens = 1000, 100
    await oai(proxy).chat.completions.create(model="gpt-4o",
                                             messages=[{"role": "user", "content": "hi"}])
    (rec,) = await records(proxy)
    assert rec["pricing_id"] == "openai/gpt-4o@2024-08-06"
    # the same conflict on the next run is not raised twice
    await proxy.api("POST", "/api/prices/update")
    assert len(await alerts_of(proxy, "price_conflict")) == 1


async def test_update_streams_its_progress(proxy_factory, price_server):
    proxy = await proxy_factory(price_sources=price_server.sources)
    async with httpx.AsyncClient(timeout=10) as client:
        resp = await client.post(f"{proxy.url}/api/prices/update", params={"stream": "true"})
    assert resp.headers["content-type"].startswith("application/x-ndjson")
    lines = [json.loads(line) for line in resp.text.splitlines()]
    assert [ln["stage"] for ln in lines[:-1]][:1] == ["start"]
    assert sorted(ln["name"] for ln in lines if ln.get("stage") == "source") == [
        "litellm", "openrouter"]
    assert lines[-1]["type"] == "report" and lines[-1]["report"]["status"] == "ok"


# manual prices and the cost API ---------------------------------------------------------------
async def test_manual_price_is_a_version_and_needs_the_admin_token(proxy_factory, fake):
    proxy = await proxy_factory(admin_token="admin-secret")
    body = {"provider": "anthropic", "model": "claude-sonnet-4.5", "input_cost_per_token": 2e-06}
    assert (await proxy.api("POST", "/api/prices", json=body)).status_code == 401
    resp = await proxy.api("POST", "/api/prices", json=body,
                           headers={"Authorization": "Bearer admin-secret"})
    assert resp.status_code == 201, resp.text
    version = resp.json()
    assert version["model"] == "claude-sonnet-4-5" and version["input_usd_per_mtok"] == "2.00"
    assert version["previous_pricing_id"] == "anthropic/claude-sonnet-4-5@2025-09-29"
    fake.prompt_tokens, fake.completion_tokens = 1000, 100
    await claude(proxy).messages.create(model="claude-sonnet-4-5", max_tokens=100,
                                        messages=[{"role": "user", "content": "x"}])
    (rec,) = await records(proxy)
    assert rec["pricing_id"] == version["pricing_id"]
    assert rec["total_cost"] == pytest.approx((1000 * 2.00 + 100 * 15.00) / M, abs=1e-12)
    again = await proxy.api("POST", "/api/prices", json=body,
                            headers={"Authorization": "Bearer admin-secret"})
    assert again.status_code == 200 and again.json()["changed"] is False


@pytest.mark.parametrize(("body", "field"), [
    ({"provider": "openai", "model": "gpt-4o", "input_usd_per_mtok": "-1"}, "input"),
    ({"provider": "openai", "model": "gpt-4o", "input_usd_per_mtok": "1",
      "input_cost_per_token": 1e-06}, "not both"),
    ({"provider": "openai", "model": "gpt-4o", "output_usd_per_mtok": None}, "cannot be null"),
    ({"provider": "openai", "model": "brand-new", "input_usd_per_mtok": "1"}, "needs input"),
    ({"provider": "openai", "model": "gpt-4o", "price": 3}, "price"),
    # the other price types: exact, not negative, bounded, one name per price
    ({"provider": "openai", "model": "whisper-1", "usd_per_second": "-0.1"}, "usd_per_second"),
    ({"provider": "openai", "model": "whisper-1", "usd_per_second": True}, "boolean"),
    ({"provider": "openai", "model": "whisper-1", "usd_per_second": "1e400"},
     "usd_per_second"),
    ({"provider": "openai", "model": "whisper-1", "usd_per_second": "5000"}, "USD per unit"),
    ({"provider": "openai", "model": "whisper-1", "usd_per_second": [1]}, "usd_per_second"),
    ({"provider": "openai", "model": "whisper-1", "usd_per_second": "0.1",
      "cost_per_second": 0.1}, "not both"),
    ({"provider": "openai", "model": "dall-e-3", "usd_per_image_by_size": {"1x1": "x"}},
     "usd_per_image_by_size.1x1"),
    ({"provider": "openai", "model": "dall-e-3",
      "usd_per_image_by_size": {str(i): "1" for i in range(65)}}, "at most 64"),
    ({"provider": "openai", "model": "dall-e-3", "usd_per_image_by_size": {"": "1"}},
     "usd_per_image_by_size"),
    ({"provider": "openai", "model": "gpt-4o", "usd_per_tool_call": {"web_search": False}},
     "boolean"),
])
async def test_bad_manual_prices_are_422(proxy, body: dict[str, Any], field: str):
    resp = await proxy.api("POST", "/api/prices", json=body)
    assert resp.status_code == 422, resp.text
    assert field in resp.text


async def test_manual_prices_of_every_type_are_versions(proxy, fake):
    resp = await proxy.api("POST", "/api/prices", json={
        "provider": "openai", "model": "whisper-1", "cost_per_second": 0.0002})
    assert resp.status_code == 201, resp.text
    version = resp.json()
    assert (version["price_type"], version["usd_per_second"], version["cost_per_second"]) == (
        "time", "0.0002", 0.0002)
    resp = await proxy.api("POST", "/api/prices", json={
        "provider": "openai", "model": "dall-e-3",
        "usd_per_image_by_size": {"hd/1024x1024": "0.09"}, "fixed_cost_per_request": "0.001"})
    assert resp.status_code == 201, resp.text
    assert resp.json()["usd_per_image_by_size"] == {"hd/1024x1024": "0.09"}
    answer = await oai(proxy).images.generate(model="dall-e-3", prompt="x", quality="hd")
    assert len(answer.data) == 1
    (rec,) = await records(proxy)
    assert rec["total_cost"] == pytest.approx(0.09 + 0.001, abs=1e-12)
    assert rec["pricing_id"] == resp.json()["pricing_id"]


async def test_calculate(proxy):
    body = {"provider": "anthropic", "model": "claude-sonnet-4-5", "input_tokens": 12_050,
            "cached_tokens": 10_000, "cache_write_tokens": 2_000, "output_tokens": 300}
    resp = await proxy.api("POST", "/api/prices/calculate", json=body)
    assert resp.status_code == 200, resp.text
    result = resp.json()
    expected = (50 * SONNET_4_5["input"] + 10_000 * SONNET_4_5["read"]
                + 2_000 * SONNET_4_5["write"] + 300 * SONNET_4_5["output"]) / M
    assert result["total_cost"] == pytest.approx(expected, abs=1e-12)
    assert [ln["class"] for ln in result["lines"]] == ["input", "cached_input", "cache_write",
                                                       "output"]
    as_query = await proxy.api("GET", "/api/prices/calculate",
                               params={k: str(v) for k, v in body.items()})
    assert as_query.json()["total_cost"] == result["total_cost"]
    bad = await proxy.api("POST", "/api/prices/calculate", json={**body, "cached_tokens": 20_000})
    assert bad.status_code == 422


async def test_calculate_follows_the_unknown_price_rule(proxy_factory):
    refusing = await proxy_factory(unknown_price="refuse")
    resp = await refusing.api("POST", "/api/prices/calculate",
                              json={"model": "gpt-unreleased", "input_tokens": 10})
    assert resp.status_code == 404 and resp.json()["error"]["type"] == "unknown_model_price"


async def test_list_and_filter_prices(proxy):
    everything = (await proxy.api("GET", "/api/prices")).json()
    anthropic_only = (await proxy.api("GET", "/api/prices", params={"provider": "anthropic"}))
    rows = anthropic_only.json()
    assert rows and {r["provider"] for r in rows} == {"anthropic"}
    assert len(everything) > len(rows)
    (haiku,) = (await proxy.api("GET", "/api/prices",
                                params={"model": "claude-3-5-haiku-20241022"})).json()
    assert (haiku["model"], haiku["input_usd_per_mtok"], haiku["input_cost_per_token"]) == (
        "claude-3-5-haiku", "0.80", pytest.approx(8e-07))
    for key in ("pricing_id", "price_type", "effective_date", "end_date", "source", "verified",
                "created_at", "output_cost_per_token", "fixed_cost_per_request"):
        assert key in haiku
    missing = await proxy.api("GET", "/api/prices/openai/never-heard-of/history")
    assert missing.status_code == 404
    slashed = await proxy.api("GET", "/api/prices/groq/openai/gpt-oss-120b/history")
    assert slashed.status_code == 200 and slashed.json()[0]["model"] == "openai/gpt-oss-120b"


# replicas -------------------------------------------------------------------------------------
async def test_every_replica_prices_with_the_new_version(proxy_factory, fake, redis_url,
                                                         tmp_path):
    """Two sidecars on one Redis: a price set through one is used by the other."""
    first = await proxy_factory(redis_url=redis_url, data_dir=tmp_path / "first")
    second = await proxy_factory(redis_url=redis_url, data_dir=tmp_path / "second")
    resp = await first.api("POST", "/api/prices", json={
        "provider": "openai", "model": "gpt-4o-mini", "input_usd_per_mtok": "0.10"})
    assert resp.status_code == 201, resp.text
    new_id = resp.json()["pricing_id"]

    async def second_has_it():  # the hot path's own view, refreshed in the background
        return second.app[CATALOG].lookup("openai", "gpt-4o-mini").pricing_id == new_id

    assert await eventually(second_has_it)
    fake.prompt_tokens, fake.completion_tokens = 1000, 100
    await oai(second).chat.completions.create(model="gpt-4o-mini",
                                              messages=[{"role": "user", "content": "hi"}])
    (rec,) = await records(second)
    assert rec["pricing_id"] == new_id
    assert rec["total_cost"] == pytest.approx((1000 * 0.10 + 100 * 0.60) / M, abs=1e-12)

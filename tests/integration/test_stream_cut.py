"""Streams are cut at the budget, requests fit it, and the cost is told (DESIGN.md 3b): the
real proxy, the fake provider streaming slowly, the official SDKs."""

from __future__ import annotations

import asyncio
import re

import anthropic
import httpx
import openai
import orjson
import pytest

from budget_proxy.config import ProviderConfig
from budget_proxy.providers import adapter_for
from budget_proxy.testing.fake_provider import FakeProvider

STREAM_TOKENS = 40  # " token" is one token for tiktoken and one for the fake
OUTPUT_ROOM = 10  # output tokens the budget pays besides the input
SLICE = 4
SLOW = {"x-fake-chunks": str(STREAM_TOKENS), "x-fake-chunk-delay-ms": "2"}
PROMPT = [{"role": "user", "content": "count to forty"}]
COST = re.compile(rb": budget-proxy cost=([0-9.]+)\n\n")


def oai(url: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="sk-client-key", max_retries=0)


def claude(url: str) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=f"{url}/anthropic", api_key="client-ant-key",
                                    max_retries=0)


async def proxy_input_tokens(api: str, body: dict, endpoint: str | None = None,
                             path: str = "") -> int:
    """The input the proxy counts for `body` (its adapter's own count)."""
    adapter = adapter_for(api)
    endpoint = endpoint or ("messages" if api == "anthropic" else "chat.completions")
    raw = orjson.dumps(body)
    plan = adapter.plan(endpoint, path, "", raw,
                        ProviderConfig(name=api, api=api, base_url="x"))
    return await adapter.count_input(plan, len(raw))


async def records(proxy) -> list[dict]:
    await proxy.proxy.settled()
    resp = await proxy.api("GET", "/api/usage/records", params={"limit": 1000})
    assert resp.status_code == 200
    return resp.json()


async def add_policy(proxy, **body) -> dict:
    resp = await proxy.api("POST", "/api/policies", json={"period": "daily", **body})
    assert resp.status_code == 201, resp.text
    return resp.json()


@pytest.fixture
def slow_tokens(fake: FakeProvider) -> FakeProvider:
    fake.reply_chunks = [" token"]
    return fake


async def openai_stream(url: str) -> tuple[str, str | None]:
    """(text, finish_reason) of a slow streamed chat completion through the SDK."""
    stream = await oai(url).chat.completions.create(
        model="gpt-4o-mini", messages=PROMPT, max_tokens=200, stream=True,
        extra_headers=SLOW)
    text, finish = [], None
    async for chunk in stream:
        for choice in chunk.choices:
            text.append(choice.delta.content or "")
            finish = choice.finish_reason or finish
    return "".join(text), finish


async def anthropic_stream(url: str) -> tuple[str, str | None]:
    async with claude(url).messages.stream(
            model="claude-3-5-haiku-latest", max_tokens=200, messages=PROMPT,
            extra_headers=SLOW) as stream:
        text = [piece async for piece in stream.text_stream]
        final = await stream.get_final_message()
    return "".join(text), final.stop_reason


STREAMS = {
    "openai": (openai_stream, "length", "stop"),
    "anthropic": (anthropic_stream, "max_tokens", "end_turn"),
}


def body_of(api: str) -> dict:
    if api == "anthropic":
        return {"model": "claude-3-5-haiku-latest", "max_tokens": 200, "messages": PROMPT,
                "stream": True}
    return {"model": "gpt-4o-mini", "messages": PROMPT, "max_tokens": 200, "stream": True}


@pytest.mark.parametrize("api", ["openai", "anthropic"])
async def test_a_stream_past_its_budget_ends_early_and_cleanly(proxy_factory, slow_tokens, api):
    proxy = await proxy_factory(stream_slice_tokens=SLICE)
    limit = await proxy_input_tokens(api, body_of(api)) + OUTPUT_ROOM
    policy = await add_policy(proxy, type="hard_limit", token_limit=limit, name="tight")
    run, cut_reason, _ = STREAMS[api]

    text, reason = await asyncio.wait_for(run(proxy.url), 20)

    assert reason == cut_reason
    assert 0 < text.count(" token") <= OUTPUT_ROOM < STREAM_TOKENS
    (rec,) = await records(proxy)
    assert rec["metadata"]["cut"] == policy["policy_id"]
    assert rec["total_tokens"] <= limit
    assert rec["output_tokens"] >= text.count(" token")  # what was relayed is paid


@pytest.mark.parametrize("api", ["openai", "anthropic"])
async def test_a_cut_stream_reads_as_the_providers_own_end(proxy_factory, slow_tokens, api):
    """Raw bytes: the cut comment, the family's closing events, the cost before the last."""
    proxy = await proxy_factory(stream_slice_tokens=SLICE)
    limit = await proxy_input_tokens(api, body_of(api)) + OUTPUT_ROOM
    await add_policy(proxy, type="hard_limit", token_limit=limit)
    path = "/anthropic/v1/messages" if api == "anthropic" else "/v1/chat/completions"
    async with httpx.AsyncClient(timeout=20) as client:
        resp = await client.post(f"{proxy.url}{path}", json=body_of(api), headers=SLOW)
    body = resp.content
    assert b": budget-proxy cut policy=" in body
    cost = COST.search(body)
    assert cost is not None
    if api == "anthropic":
        tail = body[body.index(b": budget-proxy cut"):]
        assert tail.index(b"content_block_stop") < tail.index(b'"max_tokens"') < cost.start(
            ) - body.index(b": budget-proxy cut") < tail.index(b"message_stop")
        assert body.endswith(b'data: {"type":"message_stop"}\n\n')
    else:
        assert b'"finish_reason":"length"' in body
        assert body.endswith(cost.group(0) + b"data: [DONE]\n\n")
    (rec,) = await records(proxy)
    assert float(cost.group(1)) == pytest.approx(rec["total_cost"], abs=1e-9)


@pytest.mark.parametrize("api", ["openai", "anthropic"])
async def test_a_stream_that_fits_is_not_cut_and_costs_what_worst_case_holds_cost(
        proxy_factory, slow_tokens, api, tmp_path):
    run, _, done_reason = STREAMS[api]
    settled = []
    for enforcement in ("worst_case", "incremental"):
        proxy = await proxy_factory(stream_enforcement=enforcement, stream_slice_tokens=SLICE,
                                    data_dir=tmp_path / enforcement)
        await add_policy(proxy, type="hard_limit", cost_limit=1.0)
        text, reason = await asyncio.wait_for(run(proxy.url), 20)
        assert reason == done_reason and text.count(" token") == STREAM_TOKENS
        (rec,) = await records(proxy)
        assert "cut" not in rec["metadata"]
        settled.append({k: rec[k] for k in (
            "input_tokens", "output_tokens", "total_tokens", "input_cost", "output_cost",
            "total_cost", "status", "streamed", "model", "metadata")})
    assert settled[0] == settled[1]


async def concurrent_streams(urls: list[str], api: str, n: int) -> list[str | None]:
    run = STREAMS[api][0]

    async def one(i: int) -> str | None:
        try:
            _, reason = await run(urls[i % len(urls)])
        except (openai.RateLimitError, anthropic.RateLimitError):
            return "refused"
        return reason

    return await asyncio.wait_for(asyncio.gather(*[one(i) for i in range(n)]), 30)


async def assert_budget_kept(proxies, reasons, limit: int, api: str) -> None:
    cut_reason, done_reason = STREAMS[api][1], STREAMS[api][2]
    assert set(reasons) <= {cut_reason, done_reason, "refused"}, reasons
    assert reasons.count(cut_reason) >= 1
    for proxy in proxies:
        await proxy.proxy.settled()
    recorded = await records(proxies[0])  # replicas share one store: every record is here
    assert len(recorded) == len(reasons) - reasons.count("refused")
    assert sum(r["total_tokens"] for r in recorded) <= limit


@pytest.mark.parametrize("api", ["openai", "anthropic"])
async def test_fifty_concurrent_streams_never_pass_one_budget(proxy_factory, slow_tokens, api):
    proxy = await proxy_factory(stream_slice_tokens=SLICE)
    per_call = await proxy_input_tokens(api, body_of(api))
    limit = 50 * (per_call + SLICE) + 200  # every stream starts; not all can finish
    await add_policy(proxy, type="hard_limit", token_limit=limit)
    reasons = await concurrent_streams([proxy.url], api, 50)
    assert "refused" not in reasons
    await assert_budget_kept([proxy], reasons, limit, api)


async def test_fifty_concurrent_streams_on_three_redis_replicas(proxy_factory, slow_tokens,
                                                                redis_url, tmp_path):
    replicas = [await proxy_factory(redis_url=redis_url, stream_slice_tokens=SLICE,
                                    data_dir=tmp_path / f"replica{i}") for i in range(3)]
    per_call = await proxy_input_tokens("openai", body_of("openai"))
    limit = 50 * (per_call + SLICE) + 200
    await add_policy(replicas[0], type="hard_limit", token_limit=limit)
    for replica in replicas[1:]:  # every replica sees the policy before the burst
        await replica.proxy.policies.refresh()
    reasons = await concurrent_streams([r.url for r in replicas], "openai", 50)
    await assert_budget_kept(replicas, reasons, limit, "openai")


# tell the cost --------------------------------------------------------------------------
async def test_a_non_streamed_answer_tells_its_cost(proxy, fake):
    fake.prompt_tokens, fake.completion_tokens = 1200, 300
    raw = await oai(proxy.url).chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=PROMPT)
    (rec,) = await records(proxy)
    assert float(raw.headers["X-Budget-Cost"]) == pytest.approx(rec["total_cost"], abs=1e-12)
    assert rec["total_cost"] == pytest.approx((1200 * 0.15 + 300 * 0.60) / 1e6)


@pytest.mark.parametrize("api", ["openai", "anthropic"])
async def test_sdks_ignore_the_cost_comment_of_a_stream(proxy, slow_tokens, api):
    run, _, done_reason = STREAMS[api]
    text, reason = await asyncio.wait_for(run(proxy.url), 20)
    assert reason == done_reason and text == " token" * STREAM_TOKENS
    path = "/anthropic/v1/messages" if api == "anthropic" else "/v1/chat/completions"
    async with httpx.AsyncClient(timeout=20) as client:
        body = (await client.post(f"{proxy.url}{path}", json=body_of(api))).content
    (comment,) = COST.findall(body)
    last = (b'event: message_stop\ndata: {"type":"message_stop"}\n\n' if api == "anthropic"
            else b"data: [DONE]\n\n")
    assert body.endswith(b": budget-proxy cost=" + comment + b"\n\n" + last)
    (rec, _) = await records(proxy)
    assert float(comment) == pytest.approx(rec["total_cost"], abs=1e-9) and rec["total_cost"] > 0


# fit ------------------------------------------------------------------------------------
async def test_fit_lowers_the_output_cap_to_what_the_budget_pays(proxy_factory, fake):
    proxy = await proxy_factory(on_insufficient="fit")
    body = {"model": "gpt-4o-mini", "messages": PROMPT, "max_tokens": 5000}
    inputs = await proxy_input_tokens("openai", body)
    await add_policy(proxy, type="hard_limit", token_limit=inputs + 100)
    raw = await oai(proxy.url).chat.completions.with_raw_response.create(**body)
    assert raw.headers["X-Budget-Max-Tokens"] == "100"
    assert raw.parse().choices[0].message.content
    assert fake.last.body["max_tokens"] == 100  # forwarded with the lowered cap


async def test_without_fit_the_same_call_is_refused(proxy, fake):
    body = {"model": "gpt-4o-mini", "messages": PROMPT, "max_tokens": 5000}
    await add_policy(proxy, type="hard_limit",
                     token_limit=await proxy_input_tokens("openai", body) + 100)
    with pytest.raises(openai.RateLimitError):
        await oai(proxy.url).chat.completions.create(**body)
    assert fake.requests == []


async def test_fit_refuses_when_not_even_the_input_fits(proxy_factory, fake):
    proxy = await proxy_factory(on_insufficient="fit")
    body = {"model": "gpt-4o-mini", "messages": PROMPT, "max_tokens": 5000}
    await add_policy(proxy, type="hard_limit",
                     token_limit=await proxy_input_tokens("openai", body))
    with pytest.raises(openai.RateLimitError, match="Budget exceeded"):
        await oai(proxy.url).chat.completions.create(**body)
    assert fake.requests == []


@pytest.mark.parametrize(("budget", "thinking"), [
    (3000, {"type": "enabled", "budget_tokens": 2999}),  # lowered below max_tokens
    (500, None),  # below Anthropic's minimum thinking budget: thinking is turned off
])
async def test_fit_keeps_anthropic_thinking_below_the_lowered_cap(proxy_factory, fake, budget,
                                                                  thinking):
    proxy = await proxy_factory(on_insufficient="fit")
    body = {"model": "claude-3-5-haiku-latest", "max_tokens": 8000, "messages": PROMPT,
            "thinking": {"type": "enabled", "budget_tokens": 6000}}
    inputs = await proxy_input_tokens("anthropic", body)
    await add_policy(proxy, type="hard_limit", token_limit=inputs + budget)
    raw = await claude(proxy.url).messages.with_raw_response.create(**body)
    assert raw.headers["X-Budget-Max-Tokens"] == str(budget)
    sent = fake.last.body
    assert sent["max_tokens"] == budget and sent.get("thinking") == thinking


async def test_fit_with_n_choices_lowers_each_choice(proxy_factory, fake):
    proxy = await proxy_factory(on_insufficient="fit")
    body = {"model": "gpt-4o-mini", "messages": PROMPT, "max_completion_tokens": 5000, "n": 4}
    await add_policy(proxy, type="hard_limit",
                     token_limit=await proxy_input_tokens("openai", body) + 101)
    raw = await oai(proxy.url).chat.completions.with_raw_response.create(**body)
    assert raw.headers["X-Budget-Max-Tokens"] == "25"
    assert fake.last.body["max_completion_tokens"] == 25


@pytest.mark.parametrize("value", ["sometimes", "", "FIT ", "1"])
async def test_hostile_on_insufficient_values_are_configuration_errors(value, monkeypatch):
    from budget_proxy.config import Settings
    monkeypatch.setenv("BUDGET_ON_INSUFFICIENT", value)
    with pytest.raises(ValueError, match="on_insufficient"):
        Settings()


@pytest.mark.parametrize(("name", "value"), [
    ("BUDGET_STREAM_SLICE_TOKENS", "0"), ("BUDGET_STREAM_SLICE_TOKENS", "-5"),
    ("BUDGET_STREAM_SLICE_TOKENS", "1e99"), ("BUDGET_STREAM_SLICE_TOKENS", "many"),
    ("BUDGET_STREAM_SLICE_TOKENS", "99999999999"), ("BUDGET_STREAM_ENFORCEMENT", "cut"),
    ("BUDGET_STREAM_ENFORCEMENT", ""),
])
async def test_hostile_stream_settings_are_configuration_errors(name, value, monkeypatch):
    from budget_proxy.config import Settings
    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=name.removeprefix("BUDGET_").lower()):
        Settings()


# families without cut events: the stream ends after its last complete unit --------------
async def test_an_ollama_stream_past_its_budget_ends_after_a_whole_line(proxy_factory,
                                                                        slow_tokens,
                                                                        monkeypatch):
    monkeypatch.delenv("OLLAMA_HOST", raising=False)
    proxy = await proxy_factory(stream_slice_tokens=SLICE, providers={
        "ollama": ProviderConfig(name="ollama", base_url=slow_tokens.url, api="ollama")})
    body = {"model": "llama3.2:3b", "messages": PROMPT, "options": {"num_predict": 200}}
    limit = await proxy_input_tokens("ollama", body, "ollama.chat", "api/chat") + OUTPUT_ROOM
    policy = await add_policy(proxy, type="hard_limit", token_limit=limit, provider="ollama")
    async with httpx.AsyncClient(timeout=20) as client:
        resp = await client.post(f"{proxy.url}/ollama/api/chat", json=body, headers=SLOW)
    lines = [orjson.loads(line) for line in resp.content.splitlines()]  # every line whole
    text = "".join(line["message"]["content"] for line in lines)
    assert 0 < text.count(" token") <= OUTPUT_ROOM
    (rec,) = await records(proxy)
    assert rec["metadata"]["cut"] == policy["policy_id"] and rec["total_tokens"] <= limit

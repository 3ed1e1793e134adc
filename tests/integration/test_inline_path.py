"""The inline path end to end: real proxy server, fake provider, official SDKs."""

from __future__ import annotations

import asyncio

import anthropic
import httpx
import openai
import pytest

from tests.conftest import PROXY_ANTHROPIC_KEY, PROXY_OPENAI_KEY

# real list prices (USD per million tokens), typed here rather than read from the catalog
GPT_4O_MINI = (0.15, 0.60)
CLAUDE_HAIKU_3_5 = (0.80, 4.00)


def oai(proxy, **kw) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{proxy.url}/v1", api_key="sk-client-key", **kw)


def claude(proxy, **kw) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=f"{proxy.url}/anthropic", api_key="client-ant-key",
                                    **kw)


async def records(proxy) -> list[dict]:
    resp = await proxy.api("GET", "/api/usage/records", params={"limit": 1000})
    assert resp.status_code == 200
    return resp.json()


async def add_policy(proxy, **body) -> dict:
    resp = await proxy.api("POST", "/api/policies", json=body)
    assert resp.status_code == 201, resp.text
    return resp.json()


async def test_openai_chat_non_streaming_is_metered_exactly(proxy, fake):
    fake.prompt_tokens, fake.completion_tokens = 1200, 300
    client = oai(proxy)
    reply = await client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hello"}],
        extra_headers={"X-Budget-Component": "billing", "X-Budget-Session": "s-1"},
    )
    assert reply.usage.prompt_tokens == 1200
    (rec,) = await records(proxy)
    assert (rec["input_tokens"], rec["output_tokens"], rec["total_tokens"]) == (1200, 300, 1500)
    assert rec["component"] == "billing" and rec["session_id"] == "s-1"
    expected = 1200 * GPT_4O_MINI[0] / 1e6 + 300 * GPT_4O_MINI[1] / 1e6
    assert rec["total_cost"] == pytest.approx(expected, abs=1e-12)
    assert rec["provider"] == "openai" and rec["model"] == "gpt-4o-mini"


async def test_provider_key_replaces_the_client_key(proxy, fake):
    await oai(proxy).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}])
    await claude(proxy).messages.create(
        model="claude-3-5-haiku-latest", max_tokens=50, messages=[{"role": "user", "content": "x"}])
    openai_seen, anthropic_seen = fake.requests
    assert openai_seen.headers.get("Authorization") == f"Bearer {PROXY_OPENAI_KEY}"
    assert anthropic_seen.headers.get("x-api-key") == PROXY_ANTHROPIC_KEY
    for seen in fake.requests:
        assert "sk-client-key" not in str(seen.headers)
        assert "client-ant-key" not in str(seen.headers)


async def test_openai_stream_gets_usage_and_hides_the_extra_chunk(proxy, fake):
    fake.reply_chunks = ["Hel", "lo", " there"]
    fake.prompt_tokens, fake.completion_tokens = 40, 3
    stream = await oai(proxy).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True)
    chunks = [chunk async for chunk in stream]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello there"
    assert all(c.choices for c in chunks)  # the usage-only chunk was stripped
    assert fake.requests[0].body["stream_options"] == {"include_usage": True}
    (rec,) = await records(proxy)
    assert (rec["input_tokens"], rec["output_tokens"], rec["streamed"]) == (40, 3, True)


async def test_openai_stream_keeps_usage_when_the_client_asked(proxy, fake):
    fake.prompt_tokens, fake.completion_tokens = 10, 2
    stream = await oai(proxy).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True,
        stream_options={"include_usage": True})
    chunks = [chunk async for chunk in stream]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 2


async def test_streamed_and_unstreamed_cost_the_same(proxy, fake):
    fake.prompt_tokens, fake.completion_tokens = 500, 80
    client = oai(proxy)
    await client.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    stream = await client.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "hi"}], stream=True)
    async for _ in stream:
        pass
    a, b = await records(proxy)
    assert a["streamed"] != b["streamed"]
    assert a["total_cost"] == b["total_cost"] == pytest.approx(500 * 2.5e-6 + 80 * 10e-6)


async def test_anthropic_non_streaming_and_streaming(proxy, fake):
    fake.prompt_tokens, fake.completion_tokens = 900, 120
    client = claude(proxy)
    message = await client.messages.create(
        model="claude-3-5-haiku-latest", max_tokens=500,
        messages=[{"role": "user", "content": "hello"}])
    assert message.usage.input_tokens == 900
    async with client.messages.stream(
        model="claude-3-5-haiku-latest", max_tokens=500,
        messages=[{"role": "user", "content": "hello"}],
    ) as stream:
        text = await stream.get_final_text()
    assert text
    recs = await records(proxy)
    assert len(recs) == 2
    expected = 900 * CLAUDE_HAIKU_3_5[0] / 1e6 + 120 * CLAUDE_HAIKU_3_5[1] / 1e6
    for rec in recs:
        assert (rec["input_tokens"], rec["output_tokens"]) == (900, 120)
        assert rec["total_cost"] == pytest.approx(expected, abs=1e-12)
        assert rec["provider"] == "anthropic"


async def test_anthropic_cache_tokens_priced_at_cache_rates(proxy, fake):
    fake.prompt_tokens, fake.completion_tokens = 100, 10
    fake.cached_tokens, fake.cache_creation_tokens = 5000, 1000
    await claude(proxy).messages.create(
        model="claude-sonnet-4-5-20250929", max_tokens=100,
        messages=[{"role": "user", "content": "hello"}])
    (rec,) = await records(proxy)
    assert rec["cached_input_tokens"] == 5000 and rec["cache_write_tokens"] == 1000
    # sonnet 4.5: $3 input, $0.30 cache read, $3.75 cache write, $15 output per million
    expected = (100 * 3 + 5000 * 0.30 + 1000 * 3.75 + 10 * 15) / 1e6
    assert rec["total_cost"] == pytest.approx(expected, abs=1e-12)


async def test_responses_and_embeddings_are_metered(proxy, fake):
    fake.prompt_tokens, fake.completion_tokens = 30, 5
    client = oai(proxy)
    await client.responses.create(model="gpt-4o-mini", input="hello")
    await client.embeddings.create(model="text-embedding-3-small", input=["a", "b"])
    recs = await records(proxy)
    assert sorted(r["route"] for r in recs) == ["embeddings", "responses"]


async def test_passthrough_routes_are_forwarded_unmetered(proxy, fake):
    models = await oai(proxy).models.list()
    assert models.data
    resp = await claude(proxy).messages.count_tokens(
        model="claude-3-5-haiku-latest", messages=[{"role": "user", "content": "hi"}])
    assert resp.input_tokens > 0
    assert await records(proxy) == []


async def test_hard_limit_refuses_in_the_provider_format_without_retry(proxy, fake):
    policy = await add_policy(proxy, period="daily", type="hard_limit", cost_limit=0.0001)
    client = oai(proxy, max_retries=3)
    with pytest.raises(openai.RateLimitError) as err:
        await client.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "hi"}], max_tokens=1000)
    resp = err.value.response
    assert resp.status_code == 429
    assert resp.headers["x-should-retry"] == "false"
    assert resp.headers["X-Budget-Policy"] == policy["policy_id"]
    assert 0 < int(resp.headers["Retry-After"]) <= 86400
    body = resp.json()
    assert body["error"]["type"] == "insufficient_quota"
    assert body["error"]["code"] == "budget_exceeded"
    assert "Budget exceeded" in body["error"]["message"]
    with pytest.raises(anthropic.RateLimitError) as aerr:
        await claude(proxy, max_retries=3).messages.create(
            model="claude-3-5-haiku-latest", max_tokens=1000,
            messages=[{"role": "user", "content": "hi"}])
    assert aerr.value.response.json()["error"]["type"] == "rate_limit_error"
    assert fake.requests == []  # never reached the provider, and no SDK retries


async def test_success_carries_remaining_headers(proxy, fake):
    await add_policy(proxy, period="daily", type="hard_limit", cost_limit=5, token_limit=100000)
    raw = await oai(proxy).chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], max_tokens=100)
    assert float(raw.headers["X-Budget-Remaining-Cost"]) < 5
    assert 0 < int(raw.headers["X-Budget-Remaining-Tokens"]) < 100000


async def test_warn_policy_sets_the_warning_header(proxy, fake):
    await add_policy(proxy, period="daily", type="warn", cost_limit=0.000001, name="tiny")
    raw = await oai(proxy).chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], max_tokens=100)
    assert "tiny" in raw.headers["X-Budget-Warning"]


async def test_soft_limit_moves_to_the_cheaper_model(proxy, fake):
    await add_policy(proxy, period="daily", type="soft_limit", cost_limit=0.000001,
                     model="gpt-4o", action_threshold=0.0, fallback_model="gpt-4o-mini")
    await oai(proxy).chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "hi"}], max_tokens=10)
    assert fake.requests[0].body["model"] == "gpt-4o-mini"
    (rec,) = await records(proxy)
    assert rec["model"] == "gpt-4o-mini" and rec["requested_model"] == "gpt-4o"


async def test_concurrent_requests_never_overspend(proxy, fake):
    limit = 0.002
    await add_policy(proxy, period="daily", type="hard_limit", cost_limit=limit)
    fake.prompt_tokens, fake.completion_tokens = 200, 100
    fake.response_delay_s = 0.01
    client = oai(proxy, max_retries=0)

    async def one() -> bool:
        try:
            await client.chat.completions.create(
                model="gpt-4o", messages=[{"role": "user", "content": "hi"}], max_tokens=100)
            return True
        except openai.RateLimitError:
            return False

    results = await asyncio.gather(*[one() for _ in range(120)])
    recs = await records(proxy)
    assert any(results)
    assert not all(results)
    assert len(recs) == sum(results) == len(fake.requests)
    assert sum(r["total_cost"] for r in recs) <= limit + 1e-12


async def test_client_hangup_mid_stream_is_settled(proxy, fake):
    fake.reply_chunks = ["word "] * 50
    fake.chunk_delay_s = 0.02
    await add_policy(proxy, period="daily", type="hard_limit", cost_limit=10)
    async with httpx.AsyncClient(timeout=10) as client:
        async with client.stream(
            "POST", f"{proxy.url}/v1/chat/completions",
            json={"model": "gpt-4o", "stream": True, "max_tokens": 500,
                  "messages": [{"role": "user", "content": "count"}]},
        ) as resp:
            seen = 0
            async for _ in resp.aiter_raw():
                seen += 1
                if seen >= 5:
                    break
    for _ in range(100):
        recs = await records(proxy)
        if recs:
            break
        await asyncio.sleep(0.05)
    (rec,) = recs
    assert rec["status"] == "aborted"
    assert rec["output_tokens"] >= 1 and rec["input_tokens"] > 0
    assert rec["total_cost"] > 0
    await asyncio.sleep(0.1)
    status = (await proxy.api("GET", "/api/status")).json()
    assert status["policies"][0]["reserved"] == 0


async def test_upstream_error_leaves_no_charge_and_no_reservation(proxy, fake):
    await add_policy(proxy, period="daily", type="hard_limit", cost_limit=10)
    fake.fail_next = [(500, "server_error")]
    with pytest.raises(openai.InternalServerError):
        await oai(proxy, max_retries=0).chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert await records(proxy) == []
    status = (await proxy.api("GET", "/api/status")).json()
    assert status["policies"][0]["reserved"] == 0 and status["policies"][0]["spent"] == 0


@pytest.mark.parametrize(
    ("path", "body", "headers", "status", "code"),
    [
        ("/v1/chat/completions", b"{not json", {}, 400, "invalid_json"),
        ("/v1/chat/completions", b'{"messages": []}', {}, 400, "missing_model"),
        ("/v1/chat/completions", b"[1, 2]", {}, 400, "invalid_json"),
        ("/nowhere/v1/chat/completions", b"{}", {}, 404, "unknown_route"),
    ],
)
async def test_bad_input_is_refused_in_the_caller_format(proxy, fake, path, body, headers,
                                                         status, code):
    resp = await proxy.api("POST", path, content=body,
                           headers={"Content-Type": "application/json", **headers})
    assert resp.status_code == status
    assert resp.json()["error"]["code"] == code
    assert fake.requests == []


async def test_anthropic_bad_input_uses_the_anthropic_envelope(proxy, fake):
    resp = await proxy.api("POST", "/anthropic/v1/messages", content=b"{oops",
                           headers={"Content-Type": "application/json"})
    assert resp.status_code == 400
    assert resp.json()["type"] == "error"
    assert resp.json()["error"]["type"] == "invalid_request_error"


async def test_oversized_body_gets_413(proxy_factory, fake):
    proxy = await proxy_factory(max_body_bytes=1024)
    resp = await proxy.api("POST", "/v1/chat/completions",
                           content=b'{"model": "gpt-4o", "x": "' + b"a" * 4096 + b'"}',
                           headers={"Content-Type": "application/json"})
    assert resp.status_code == 413
    assert resp.json()["error"]["code"] == "request_too_large"
    assert fake.requests == []


def overhead_ms(headers) -> float:
    value = float(headers["X-Budget-Overhead-Ms"])
    assert value >= 0
    return value


async def test_every_proxy_answer_tells_its_overhead_and_the_histogram_counts_it(proxy, fake):
    """Metered (plain and streamed), free and refused answers carry X-Budget-Overhead-Ms;
    /metrics counts each in budget_proxy_overhead_seconds under its `answer`; admin answers
    carry no such header."""
    from prometheus_client.parser import text_string_to_metric_families

    client = oai(proxy)
    raw = await client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], max_tokens=10)
    overhead_ms(raw.headers)
    async with client.chat.completions.with_streaming_response.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}],
            stream=True) as streamed:
        overhead_ms(streamed.headers)
        [line async for line in streamed.iter_lines()]
    async with httpx.AsyncClient(timeout=10) as http:
        free = await http.get(f"{proxy.url}/v1/models")
        unmetered = await http.post(f"{proxy.url}/v1/batches", json={})
        unknown = await http.post(f"{proxy.url}/nowhere/v1/chat/completions", json={})
        admin = await http.get(f"{proxy.url}/api/health")
    assert free.status_code == 200 and unmetered.status_code == 403
    assert unknown.status_code == 404
    for resp in (free, unmetered, unknown):
        overhead_ms(resp.headers)
    assert "X-Budget-Overhead-Ms" not in admin.headers
    await add_policy(proxy, period="daily", type="hard_limit", cost_limit=0.0000001)
    with pytest.raises(openai.RateLimitError) as err:
        await oai(proxy, max_retries=0).chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], max_tokens=10)
    overhead_ms(err.value.response.headers)

    await proxy.api("GET", "/metrics")  # a new series is exposed at zero on its first scrape
    metrics = (await proxy.api("GET", "/metrics")).text
    counts: dict[tuple[str, str, str], float] = {}
    for family in text_string_to_metric_families(metrics):
        if family.name == "budget_proxy_overhead_seconds":
            for s in family.samples:
                if s.name.endswith("_count") and s.value:
                    key = (s.labels["gen_ai_provider_name"], s.labels["route"],
                           s.labels["answer"])
                    counts[key] = s.value
    assert counts == {
        ("openai", "chat.completions", "metered"): 2,
        ("openai", "other", "free"): 1,
        ("openai", "other", "refused"): 1,  # batches: an unmetered route
        ("other", "other", "refused"): 1,  # no such provider
        ("openai", "chat.completions", "refused"): 1,  # the hard limit
    }

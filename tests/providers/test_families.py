"""Each API family through the real proxy and the fake provider speaking its wire format:
the record's tokens and cost (computed here by hand from list prices), the hold, and the
refusal of a $0 (or 0-token) hard limit before the provider sees anything."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import httpx
import openai
import orjson
import pytest

from budget_proxy.config import ProviderConfig
from budget_proxy.models import MAX_CALL_TOKENS
from budget_proxy.testing.fake_provider import RawAnswer

AZURE_KEY = "azure-proxy-held"
GEMINI_KEY = "gemini-proxy-held"
# list prices, USD per million tokens (input, output, cache read), typed here
GPT_4O = (Decimal("2.50"), Decimal("10.00"), Decimal("1.25"))
GPT_4O_MINI_MAX_OUTPUT = 16384
GEMINI_25_FLASH = (Decimal("0.30"), Decimal("2.50"), Decimal("0.03"))


def usd(tokens: int, per_mtok: Decimal) -> Decimal:
    return tokens * per_mtok / 1_000_000


@pytest.fixture
async def families(proxy_factory, fake, monkeypatch):
    monkeypatch.setenv("AZURE_TEST_KEY", AZURE_KEY)
    monkeypatch.setenv("GEMINI_TEST_KEY", GEMINI_KEY)
    monkeypatch.delenv("OLLAMA_HOST", raising=False)
    return await proxy_factory(providers={
        "azure": ProviderConfig(name="azure", base_url=fake.url, api="azure",
                                api_key_env="AZURE_TEST_KEY",
                                deployments={"prod-4o": "gpt-4o"}),
        "gem": ProviderConfig(name="gem", base_url=fake.url, api="gemini",
                              api_key_env="GEMINI_TEST_KEY"),
        "ollama": ProviderConfig(name="ollama", base_url=fake.url, api="ollama"),
    })


async def records(proxy, expected: int) -> list[dict]:
    """The usage records, once `expected` of them are there (settlement runs after the
    answer); generous deadline."""
    deadline = asyncio.get_running_loop().time() + 10
    while True:
        resp = await proxy.api("GET", "/api/usage/records", params={"limit": 1000})
        assert resp.status_code == 200
        found = resp.json()
        if len(found) >= expected or asyncio.get_running_loop().time() > deadline:
            return found
        await asyncio.sleep(0.02)


async def add_policy(proxy, **body) -> dict:
    resp = await proxy.api("POST", "/api/policies", json=body)
    assert resp.status_code == 201, resp.text
    return resp.json()


def cost(rec: dict) -> Decimal:
    return Decimal(str(rec["total_cost"]))


# Azure ------------------------------------------------------------------------------------
def azure_client(proxy) -> openai.AsyncAzureOpenAI:
    return openai.AsyncAzureOpenAI(azure_endpoint=f"{proxy.url}/azure", api_key="client-key",
                                   api_version="2024-10-21", max_retries=0)


async def test_azure_deployment_is_metered_as_its_model_with_the_api_key_header(families, fake):
    fake.prompt_tokens, fake.completion_tokens, fake.cached_tokens = 1000, 200, 400
    reply = await azure_client(families).chat.completions.create(
        model="prod-4o", messages=[{"role": "user", "content": "hi"}])
    assert reply.choices[0].message.content == "Hello from the fake provider."
    seen = fake.last
    assert seen.path == "/openai/deployments/prod-4o/chat/completions"
    assert seen.query == "api-version=2024-10-21"
    assert seen.headers.get("api-key") == AZURE_KEY
    assert "authorization" not in seen.headers and "client-key" not in str(seen.headers)
    (rec,) = await records(families, 1)
    assert (rec["provider"], rec["model"], rec["route"]) == ("azure", "gpt-4o",
                                                             "chat.completions")
    assert (rec["input_tokens"], rec["cached_input_tokens"], rec["output_tokens"]) == (
        600, 400, 200)
    expected = usd(600, GPT_4O[0]) + usd(400, GPT_4O[2]) + usd(200, GPT_4O[1])
    assert cost(rec) == pytest.approx(expected, abs=Decimal("1e-9"))


async def test_azure_stream_asks_for_usage_and_settles_from_it(families, fake):
    fake.prompt_tokens, fake.completion_tokens = 50, 5
    stream = await azure_client(families).chat.completions.create(
        model="other-deployment", stream=True, messages=[{"role": "user", "content": "hi"}])
    chunks = [chunk async for chunk in stream]
    assert all(c.choices for c in chunks)  # the usage chunk the proxy asked for is hidden
    assert fake.last.body["stream_options"] == {"include_usage": True}
    (rec,) = await records(families, 1)
    # a deployment the table does not list is priced as the model of its name (unknown:
    # the ceiling), never free
    assert (rec["input_tokens"], rec["output_tokens"], rec["streamed"]) == (50, 5, True)
    assert cost(rec) > 0


async def test_azure_errors_keep_the_openai_envelope(families, fake):
    await add_policy(families, period="daily", type="hard_limit", cost_limit=0)
    with pytest.raises(openai.RateLimitError) as refused:
        await azure_client(families).chat.completions.create(
            model="prod-4o", messages=[{"role": "user", "content": "hi"}])
    assert refused.value.code == "budget_exceeded"
    assert fake.requests == []


# Ollama -----------------------------------------------------------------------------------
async def test_ollama_chat_streams_ndjson_and_is_metered_free_of_charge(families, fake):
    fake.prompt_tokens, fake.completion_tokens = 31, 5
    fake.reply_chunks = ["Hel", "lo", "\n", " there", "!"]
    async with httpx.AsyncClient(timeout=10) as http:
        resp = await http.post(f"{families.url}/ollama/api/chat", json={
            "model": "llama3.2:3b", "messages": [{"role": "user", "content": "hi"}]})
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("application/x-ndjson")
    lines = [orjson.loads(line) for line in resp.content.splitlines()]
    assert "".join(line["message"]["content"] for line in lines) == "Hello\n there!"
    assert lines[-1]["done"] is True
    assert "authorization" not in fake.last.headers  # no key held, none needed
    (rec,) = await records(families, 1)
    assert (rec["provider"], rec["model"], rec["route"]) == ("ollama", "llama3.2:3b",
                                                             "ollama.chat")
    assert (rec["input_tokens"], rec["output_tokens"], rec["streamed"]) == (31, 5, True)
    assert rec["total_cost"] == 0


async def test_ollama_generate_not_streamed(families, fake):
    fake.prompt_tokens, fake.completion_tokens = 12, 3
    async with httpx.AsyncClient(timeout=10) as http:
        resp = await http.post(f"{families.url}/ollama/api/generate", json={
            "model": "qwen2.5:14b", "prompt": "why", "stream": False})
    assert resp.status_code == 200 and resp.json()["response"]
    (rec,) = await records(families, 1)
    assert (rec["input_tokens"], rec["output_tokens"], rec["streamed"]) == (12, 3, False)


async def test_ollama_token_limit_refuses_in_ollamas_format(families, fake):
    await add_policy(families, period="daily", type="hard_limit", token_limit=0,
                     provider="ollama")
    async with httpx.AsyncClient(timeout=10) as http:
        resp = await http.post(f"{families.url}/ollama/api/chat", json={
            "model": "llama3.2", "messages": [{"role": "user", "content": "hi"}]})
        tags = await http.get(f"{families.url}/ollama/api/tags")  # free
    assert resp.status_code == 429
    assert "Budget exceeded" in resp.json()["error"]
    assert tags.status_code == 200
    assert [r.path for r in fake.requests] == ["/api/tags"]


# Gemini -----------------------------------------------------------------------------------
GEMINI_BODY = {"contents": [{"role": "user", "parts": [{"text": "hello"}]}]}


def gemini_expected(prompt: int, cached: int, candidates: int, thoughts: int) -> Decimal:
    return (usd(prompt - cached, GEMINI_25_FLASH[0]) + usd(cached, GEMINI_25_FLASH[2])
            + usd(candidates + thoughts, GEMINI_25_FLASH[1]))


@pytest.mark.parametrize("query", ["?alt=sse", ""], ids=["sse", "json-array"])
async def test_gemini_stream_shapes_are_both_metered(families, fake, query):
    fake.prompt_tokens, fake.completion_tokens = 1000, 40
    fake.cached_tokens, fake.reasoning_tokens = 600, 25
    url = f"{families.url}/gem/v1beta/models/gemini-2.5-flash:streamGenerateContent{query}"
    async with httpx.AsyncClient(timeout=10) as http:
        resp = await http.post(url, json=GEMINI_BODY, headers={"x-goog-api-key": "client"})
    assert resp.status_code == 200
    assert fake.last.headers.get("x-goog-api-key") == GEMINI_KEY
    if query:
        texts = [orjson.loads(line[5:]) for line in resp.content.splitlines()
                 if line.startswith(b"data:")]
    else:
        texts = orjson.loads(resp.content)  # relayed byte for byte: still one JSON array
    assert "".join(t["candidates"][0]["content"]["parts"][0]["text"] for t in texts) == (
        "Hello from the fake provider.")
    (rec,) = await records(families, 1)
    assert (rec["input_tokens"], rec["cached_input_tokens"], rec["output_tokens"],
            rec["reasoning_tokens"], rec["streamed"]) == (400, 600, 65, 25, True)
    assert cost(rec) == pytest.approx(gemini_expected(1000, 600, 40, 25), abs=Decimal("1e-9"))


async def test_gemini_generate_and_count_tokens(families, fake):
    fake.prompt_tokens, fake.completion_tokens = 200, 10
    base = f"{families.url}/gem/v1beta/models/gemini-2.5-flash"
    async with httpx.AsyncClient(timeout=10) as http:
        counted = await http.post(f"{base}:countTokens", json=GEMINI_BODY)
        answer = await http.post(f"{base}:generateContent", json=GEMINI_BODY)
    assert counted.status_code == 200 and counted.json() == {"totalTokens": 200}
    assert answer.status_code == 200
    (rec,) = await records(families, 1)  # countTokens is free: forwarded, not recorded
    assert (rec["input_tokens"], rec["output_tokens"], rec["streamed"]) == (200, 10, False)
    assert cost(rec) == pytest.approx(gemini_expected(200, 0, 10, 0), abs=Decimal("1e-9"))


async def test_a_gemini_array_stream_cut_short_is_settled_from_what_it_reported(families,
                                                                                 fake):
    fake.prompt_tokens, fake.completion_tokens = 300, 5
    fake.fail_mid_stream, fake.fail_mid_stream_after = True, 3
    url = f"{families.url}/gem/v1beta/models/gemini-2.5-flash:streamGenerateContent"
    async with httpx.AsyncClient(timeout=10) as http:
        with pytest.raises(httpx.HTTPError):
            await http.post(url, json=GEMINI_BODY)
    (rec,) = await records(families, 1)
    # the prompt the provider confirmed, and at least the 3 candidates tokens it reported
    assert rec["status"] == "aborted"
    assert rec["input_tokens"] == 300 and rec["output_tokens"] >= 3


# every family refuses over a $0 limit ----------------------------------------------------
async def test_a_zero_dollar_limit_refuses_every_priced_family_before_the_provider(
        families, fake):
    await add_policy(families, period="daily", type="hard_limit", cost_limit=0)
    async with httpx.AsyncClient(timeout=10) as http:
        calls = {
            "openai": await http.post(f"{families.url}/v1/chat/completions", json={
                "model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]}),
            "anthropic": await http.post(f"{families.url}/anthropic/v1/messages", json={
                "model": "claude-3-5-haiku-latest", "max_tokens": 10,
                "messages": [{"role": "user", "content": "x"}]}),
            "azure": await http.post(
                f"{families.url}/azure/openai/deployments/prod-4o/chat/completions"
                "?api-version=2024-10-21",
                json={"messages": [{"role": "user", "content": "x"}]}),
            "gemini": await http.post(
                f"{families.url}/gem/v1beta/models/gemini-2.5-flash:generateContent",
                json=GEMINI_BODY),
            "gemini-stream": await http.post(
                f"{families.url}/gem/v1beta/models/gemini-2.5-flash:streamGenerateContent",
                json=GEMINI_BODY),
        }
    assert {name: r.status_code for name, r in calls.items()} == dict.fromkeys(calls, 429)
    assert calls["gemini"].json()["error"]["status"] == "RESOURCE_EXHAUSTED"
    assert calls["anthropic"].json()["error"]["type"] == "rate_limit_error"
    assert fake.requests == []


# n multiplies the worst case --------------------------------------------------------------
@pytest.mark.parametrize(
    ("fields", "output_hold"),
    [
        ({"n": 4}, 4 * GPT_4O_MINI_MAX_OUTPUT),
        ({"n": 3, "max_tokens": 10}, 30),
        ({"n": 2, "max_completion_tokens": 7, "max_tokens": 100}, 14),
        ({}, GPT_4O_MINI_MAX_OUTPUT),
        ({"n": 1, "max_tokens": 10}, 10),
        ({"n": 0, "max_tokens": 10}, 10),  # refused by the provider; held as one
        ({"n": -3, "max_tokens": 10}, 10),
        ({"n": "4", "max_tokens": 10}, 10),
        ({"n": True, "max_tokens": 10}, 10),
        ({"n": 10**12}, MAX_CALL_TOKENS),  # clamped
    ],
)
async def test_n_multiplies_the_held_output(proxy, fake, fields, output_hold):
    held = []
    store = proxy.proxy.store
    reserve = store.reserve

    async def spy(reservation, lines, ttl):
        held.append(reservation)
        return await reserve(reservation, lines, ttl)

    store.reserve = spy
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], **fields}
    async with httpx.AsyncClient(timeout=10) as http:
        await http.post(f"{proxy.url}/v1/chat/completions", json=body)
    (reservation,) = held
    intent = orjson.loads(reservation.intent)
    assert intent["output_tokens"] == output_hold
    assert reservation.tokens == intent["input_tokens"] + output_hold


# free routes and query strings ------------------------------------------------------------
async def test_a_free_route_answers_an_unreachable_upstream_in_the_provider_format(
        proxy_factory):
    dead = ProviderConfig(name="dead", base_url="http://127.0.0.1:9", api="anthropic",
                          api_key_env="ANTHROPIC_API_KEY")
    proxy = await proxy_factory(providers={"dead": dead})
    async with httpx.AsyncClient(timeout=10) as http:
        resp = await http.get(f"{proxy.url}/dead/v1/models")
    assert resp.status_code == 502
    assert resp.json()["type"] == "error"
    assert resp.json()["error"]["type"] == "api_error"


async def test_query_strings_are_forwarded_raw(families, fake):
    async with httpx.AsyncClient(timeout=10) as http:
        await http.get(f"{families.url}/v1/models?after=a%26b&limit=2")
        await http.post(
            f"{families.url}/azure/openai/deployments/prod-4o/chat/completions"
            "?api-version=2024-10-21&x=%26y%3D",
            json={"messages": [{"role": "user", "content": "x"}]})
    assert [r.query for r in fake.requests] == ["after=a%26b&limit=2",
                                                "api-version=2024-10-21&x=%26y%3D"]


@pytest.mark.parametrize(
    ("answer", "code"),
    [
        # closed without an answer (twice: the client retries an idempotent GET once)
        (RawAnswer(raw=b""), "unreachable"),
        (RawAnswer(raw=b"HTTP/1.1 2OO OK\r\n\r\n"), "could not be read"),
        (RawAnswer(headers={"Content-Encoding": "gzip"}, body=b"not gzip"),
         "could not be read"),
    ],
    ids=["closed", "garbage-status", "bad-encoding"],
)
async def test_a_free_route_answers_a_broken_upstream_502_in_the_provider_format(
        proxy, fake, answer, code):
    fake.raw_next = [answer, answer]
    async with httpx.AsyncClient(timeout=10) as http:
        resp = await http.get(f"{proxy.url}/anthropic/v1/models")
    assert resp.status_code == 502
    assert resp.headers["content-type"].startswith("application/json")
    body = resp.json()
    assert body["type"] == "error" and body["error"]["type"] == "api_error"
    assert body["error"]["message"].startswith("upstream anthropic")
    assert code in body["error"]["message"]


async def test_a_free_route_broken_after_its_first_bytes_is_cut_at_the_client(proxy, fake):
    fake.raw_next = [RawAnswer(headers={"Content-Type": "application/json"},
                               chunks=[b'{"data": [', b'{"id": "a"},'], close="abort")]
    async with httpx.AsyncClient(timeout=10) as http:
        with pytest.raises(httpx.HTTPError):
            await http.get(f"{proxy.url}/v1/models")
    assert fake.requests[0].path == "/v1/models"


@pytest.mark.parametrize(
    ("api", "key_required", "env", "status"),
    [
        ("ollama", None, None, 200),  # a local runtime needs no key
        ("ollama", True, None, 503),  # unless its table says so
        ("ollama", True, "LOCAL_KEY", 200),
        ("openai", None, None, 503),  # a hosted family needs one
        ("openai", False, None, 200),  # an OpenAI-shaped local server may say it does not
    ],
)
async def test_which_providers_need_a_key(proxy_factory, fake, monkeypatch, api, key_required,
                                          env, status):
    monkeypatch.setenv("LOCAL_KEY", "local-secret")
    local = ProviderConfig(name="local", base_url=fake.url if api == "ollama" else
                           f"{fake.url}/v1", api=api, api_key_env=env,
                           key_required=key_required)
    proxy = await proxy_factory(providers={"local": local})
    path = "/local/api/tags" if api == "ollama" else "/local/v1/models"
    async with httpx.AsyncClient(timeout=10) as http:
        resp = await http.get(f"{proxy.url}{path}")
    assert resp.status_code == status, resp.text
    if status == 503:
        assert "provider_key_missing" in resp.text or "no API key" in resp.text
        assert fake.requests == []
    if env and status == 200:
        assert fake.last.headers.get("authorization") == "Bearer local-secret"

"""The fake upstream must look real to the official SDKs and report exact, steerable usage."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import importlib
import struct
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import anthropic
import openai
import orjson
import pytest

from budget_proxy.testing.fake_provider import (
    PROMPT_TOKEN_OVERHEAD,
    FakeProvider,
    estimate_prompt_tokens,
)


def _stream_break_errors() -> tuple[type[BaseException], ...]:
    """What an SDK may raise when the upstream drops a stream: its own error or the transport's."""
    errors: list[type[BaseException]] = [anthropic.APIError, openai.APIError]
    for name in ("httpx2", "httpx"):
        with contextlib.suppress(ImportError, AttributeError):
            errors.append(importlib.import_module(name).TransportError)
    return tuple(errors)


STREAM_BREAK_ERRORS = _stream_break_errors()

CHAT_BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "one two three"}]}
MSG_BODY = {
    "model": "claude-haiku-4-5",
    "max_tokens": 32,
    "messages": [{"role": "user", "content": "one two three"}],
}


@pytest.fixture
def fake() -> FakeProvider:
    return FakeProvider()


@pytest.fixture
async def base_url(fake: FakeProvider, aiohttp_server: Any) -> str:
    server = await aiohttp_server(fake.app())
    return str(server.make_url("/")).rstrip("/")


@pytest.fixture
async def oai(base_url: str) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(base_url=f"{base_url}/v1", api_key="x", max_retries=0) as c:
        yield c


@pytest.fixture
async def ant(base_url: str) -> AsyncIterator[anthropic.AsyncAnthropic]:
    async with anthropic.AsyncAnthropic(base_url=base_url, api_key="x", max_retries=0) as c:
        yield c


async def raw_sse(url: str, body: dict[str, Any]) -> list[tuple[str | None, Any]]:
    """POST and split the SSE body into (event, data) pairs without any SDK in between."""
    async with aiohttp.ClientSession() as s, s.post(url, json=body) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        assert resp.headers["x-fake-request-id"]
        text = (await resp.read()).decode()
    events: list[tuple[str | None, Any]] = []
    for block in text.split("\n\n"):
        if not block.strip():
            continue
        name = None
        data = None
        for line in block.split("\n"):
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                payload = line[6:]
                data = payload if payload == "[DONE]" else orjson.loads(payload)
        events.append((name, data))
    return events


# OpenAI chat ---------------------------------------------------------------------------


async def test_chat_nonstream_usage_defaults(fake: FakeProvider, oai: openai.AsyncOpenAI) -> None:
    resp = await oai.chat.completions.create(**CHAT_BODY)
    assert resp.choices[0].message.content == "".join(fake.reply_chunks)
    assert resp.choices[0].finish_reason == "stop"
    assert resp.usage is not None
    assert resp.usage.prompt_tokens == 3 + PROMPT_TOKEN_OVERHEAD
    assert resp.usage.completion_tokens == len(fake.reply_chunks)
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens
    assert resp.usage.prompt_tokens_details.cached_tokens == 0
    assert resp.usage.completion_tokens_details.reasoning_tokens == 0
    rec = fake.last
    assert rec.path == "/v1/chat/completions"
    assert rec.family == "openai"
    assert rec.body["messages"][0]["content"] == "one two three"
    assert rec.headers["authorization"] == "Bearer x"
    assert rec.headers.get("Authorization") == "Bearer x"
    assert "Content-Type" in rec.headers
    assert rec.usage == {
        "prompt_tokens": 10,
        "completion_tokens": 5,
        "cached_tokens": 0,
        "cache_creation_tokens": 0,
        "reasoning_tokens": 0,
    }
    assert rec.usage_reported and rec.completed
    assert resp._request_id == rec.request_id


async def test_chat_nonstream_knobs(fake: FakeProvider, oai: openai.AsyncOpenAI) -> None:
    fake.configure(
        reply_chunks=["a", "b"],
        prompt_tokens=1000,
        completion_tokens=50,
        cached_tokens=400,
        reasoning_tokens=30,
        response_model="gpt-4o-mini-2024-07-18",
    )
    resp = await oai.chat.completions.create(**CHAT_BODY)
    assert resp.model == "gpt-4o-mini-2024-07-18"
    assert resp.choices[0].message.content == "ab"
    assert resp.usage is not None
    assert (resp.usage.prompt_tokens, resp.usage.completion_tokens) == (1000, 50)
    assert resp.usage.total_tokens == 1050
    assert resp.usage.prompt_tokens_details.cached_tokens == 400
    assert resp.usage.completion_tokens_details.reasoning_tokens == 30
    assert fake.last.cached_tokens == 400


async def test_chat_stream_without_include_usage_has_no_usage_chunk(
    fake: FakeProvider, oai: openai.AsyncOpenAI
) -> None:
    stream = await oai.chat.completions.create(**CHAT_BODY, stream=True)
    texts: list[str] = []
    async for chunk in stream:
        assert chunk.usage is None
        assert chunk.choices, "usage-only chunk must not be sent without include_usage"
        if chunk.choices[0].delta.content:
            texts.append(chunk.choices[0].delta.content)
    assert texts == fake.reply_chunks
    assert fake.last.completed and not fake.last.usage_reported


async def test_chat_stream_with_include_usage(fake: FakeProvider, oai: openai.AsyncOpenAI) -> None:
    fake.prompt_tokens = 77
    stream = await oai.chat.completions.create(
        **CHAT_BODY, stream=True, stream_options={"include_usage": True}
    )
    chunks = [c async for c in stream]
    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None
    assert last.usage.prompt_tokens == 77
    assert last.usage.completion_tokens == len(fake.reply_chunks)
    assert all(c.usage is None for c in chunks[:-1])
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert fake.last.usage_reported


async def test_chat_stream_raw_wire_format(base_url: str) -> None:
    events = await raw_sse(
        f"{base_url}/v1/chat/completions",
        {**CHAT_BODY, "stream": True, "stream_options": {"include_usage": True}},
    )
    assert all(name is None for name, _ in events)
    assert events[-1][1] == "[DONE]"
    first = events[0][1]
    assert first["object"] == "chat.completion.chunk"
    assert first["choices"][0]["delta"]["role"] == "assistant"
    ids = {data["id"] for _, data in events[:-1]}
    assert len(ids) == 1
    usage = events[-2][1]["usage"]
    assert set(usage) >= {
        "prompt_tokens",
        "completion_tokens",
        "total_tokens",
        "prompt_tokens_details",
        "completion_tokens_details",
    }


# OpenAI completions / embeddings / models -----------------------------------------------


async def test_completions(fake: FakeProvider, oai: openai.AsyncOpenAI) -> None:
    resp = await oai.completions.create(model="gpt-3.5-turbo-instruct", prompt="say hi now")
    assert resp.choices[0].text == "".join(fake.reply_chunks)
    assert resp.usage is not None
    assert resp.usage.prompt_tokens == 3 + PROMPT_TOKEN_OVERHEAD

    stream = await oai.completions.create(
        model="gpt-3.5-turbo-instruct",
        prompt="say hi now",
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [c async for c in stream]
    assert "".join(c.choices[0].text for c in chunks if c.choices) == "".join(fake.reply_chunks)
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == len(fake.reply_chunks)


async def test_embeddings_float_and_base64(fake: FakeProvider, oai: openai.AsyncOpenAI) -> None:
    fake.embedding_dims = 4
    resp = await oai.embeddings.create(
        model="text-embedding-3-small", input=["a b", "c"], encoding_format="float"
    )
    assert [d.index for d in resp.data] == [0, 1]
    assert len(resp.data[0].embedding) == 4
    assert resp.usage.prompt_tokens == 3 + PROMPT_TOKEN_OVERHEAD
    assert resp.usage.total_tokens == resp.usage.prompt_tokens
    assert fake.last.completion_tokens == 0

    resp64 = await oai.embeddings.create(
        model="text-embedding-3-small", input="a b", encoding_format="base64"
    )
    emb = resp64.data[0].embedding
    if isinstance(emb, str):
        emb = list(struct.unpack("<4f", base64.b64decode(emb)))
    assert emb == pytest.approx(resp.data[0].embedding, abs=1e-6)

    tokens = await oai.embeddings.create(model="text-embedding-3-small", input=[1, 2, 3, 4])
    assert tokens.usage.prompt_tokens == 4 + PROMPT_TOKEN_OVERHEAD


async def test_models(oai: openai.AsyncOpenAI, ant: anthropic.AsyncAnthropic) -> None:
    ids = [m.id async for m in oai.models.list()]
    assert "gpt-4o-mini" in ids
    claude = [m.id async for m in ant.models.list()]
    assert any(m.startswith("claude") for m in claude)


# OpenAI Responses -----------------------------------------------------------------------


async def test_responses_nonstream(fake: FakeProvider, oai: openai.AsyncOpenAI) -> None:
    fake.configure(cached_tokens=2, reasoning_tokens=1)
    resp = await oai.responses.create(model="gpt-4.1", input="hello there world", instructions="be")
    assert resp.output_text == "".join(fake.reply_chunks)
    assert resp.status == "completed"
    assert resp.usage is not None
    assert resp.usage.input_tokens == 4 + PROMPT_TOKEN_OVERHEAD
    assert resp.usage.output_tokens == len(fake.reply_chunks)
    assert resp.usage.total_tokens == resp.usage.input_tokens + resp.usage.output_tokens
    assert resp.usage.input_tokens_details.cached_tokens == 2
    assert resp.usage.output_tokens_details.reasoning_tokens == 1


async def test_responses_stream_sdk_helper(fake: FakeProvider, oai: openai.AsyncOpenAI) -> None:
    fake.completion_tokens = 9
    deltas: list[str] = []
    async with oai.responses.stream(model="gpt-4.1", input="hi") as stream:
        async for event in stream:
            if event.type == "response.output_text.delta":
                deltas.append(event.delta)
        final = await stream.get_final_response()
    assert deltas == fake.reply_chunks
    assert final.output_text == "".join(fake.reply_chunks)
    assert final.usage is not None and final.usage.output_tokens == 9


async def test_responses_stream_raw_events(oai: openai.AsyncOpenAI) -> None:
    stream = await oai.responses.create(model="gpt-4.1", input="hi", stream=True)
    types = []
    seqs = []
    async for event in stream:
        types.append(event.type)
        seqs.append(event.sequence_number)
        if event.type == "response.completed":
            assert event.response.usage is not None
            assert event.response.usage.input_tokens == 1 + PROMPT_TOKEN_OVERHEAD
    assert types[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert types[-1] == "response.completed"
    assert "response.output_text.delta" in types
    assert seqs == list(range(len(seqs)))


# Anthropic ------------------------------------------------------------------------------


async def test_messages_nonstream(fake: FakeProvider, ant: anthropic.AsyncAnthropic) -> None:
    fake.configure(cached_tokens=100, cache_creation_tokens=20)
    msg = await ant.messages.create(**MSG_BODY)
    assert msg.content[0].type == "text"
    assert msg.content[0].text == "".join(fake.reply_chunks)
    assert msg.stop_reason == "end_turn"
    assert msg.usage.input_tokens == 3 + PROMPT_TOKEN_OVERHEAD
    assert msg.usage.output_tokens == len(fake.reply_chunks)
    assert msg.usage.cache_read_input_tokens == 100
    assert msg.usage.cache_creation_input_tokens == 20
    rec = fake.last
    assert rec.family == "anthropic"
    assert rec.headers.get("x-api-key") == "x" or rec.headers.get("authorization") == "Bearer x"
    assert "anthropic-version" in rec.headers
    assert msg._request_id == rec.request_id


async def test_messages_stream_sdk(fake: FakeProvider, ant: anthropic.AsyncAnthropic) -> None:
    fake.configure(prompt_tokens=300, completion_tokens=42, cached_tokens=5)
    async with ant.messages.stream(**MSG_BODY) as stream:
        texts = [t async for t in stream.text_stream]
        final = await stream.get_final_message()
    assert texts == fake.reply_chunks
    assert final.usage.input_tokens == 300
    assert final.usage.output_tokens == 42
    assert final.usage.cache_read_input_tokens == 5
    assert fake.last.completed and fake.last.usage_reported


async def test_messages_stream_raw_event_sequence(fake: FakeProvider, base_url: str) -> None:
    fake.completion_tokens = 12
    events = await raw_sse(f"{base_url}/v1/messages", {**MSG_BODY, "stream": True})
    names = [name for name, _ in events]
    n = len(fake.reply_chunks)
    assert names == [
        "message_start",
        "content_block_start",
        "ping",
        *["content_block_delta"] * n,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert all(name == data["type"] for name, data in events)
    start_usage = events[0][1]["message"]["usage"]
    assert start_usage["input_tokens"] == 3 + PROMPT_TOKEN_OVERHEAD
    assert start_usage["output_tokens"] == 1
    assert {"cache_creation_input_tokens", "cache_read_input_tokens"} <= set(start_usage)
    assert events[3][1]["delta"] == {"type": "text_delta", "text": fake.reply_chunks[0]}
    assert events[-2][1]["usage"] == {"output_tokens": 12}

    fake.anthropic_delta_full_usage = True
    events = await raw_sse(f"{base_url}/v1/messages", {**MSG_BODY, "stream": True})
    assert events[-2][1]["usage"]["input_tokens"] == 3 + PROMPT_TOKEN_OVERHEAD


async def test_count_tokens_matches_messages(
    fake: FakeProvider, ant: anthropic.AsyncAnthropic
) -> None:
    body = {
        "model": "claude-haiku-4-5",
        "system": "you are terse",
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "alpha beta"}]},
            {"role": "assistant", "content": "gamma"},
        ],
    }
    counted = await ant.messages.count_tokens(**body)
    assert counted.input_tokens == estimate_prompt_tokens(body) == 6 + PROMPT_TOKEN_OVERHEAD
    msg = await ant.messages.create(**body, max_tokens=5)
    assert msg.usage.input_tokens == counted.input_tokens


# Errors, failures, overrides -------------------------------------------------------------


async def test_fail_next_openai(fake: FakeProvider, oai: openai.AsyncOpenAI) -> None:
    fake.fail_next = [(429, "requests"), (500, "server_error"), (400, "invalid_request_error")]
    with pytest.raises(openai.RateLimitError) as rate:
        await oai.chat.completions.create(**CHAT_BODY)
    assert rate.value.code == "rate_limit_exceeded"
    assert set(rate.value.body) == {"message", "type", "param", "code"}  # type: ignore[arg-type]
    with pytest.raises(openai.InternalServerError):
        await oai.chat.completions.create(**CHAT_BODY)
    with pytest.raises(openai.BadRequestError) as bad:
        await oai.responses.create(model="gpt-4.1", input="x")
    assert bad.value.type == "invalid_request_error"
    ok = await oai.chat.completions.create(**CHAT_BODY)
    assert ok.choices
    assert [r.status for r in fake.requests] == [429, 500, 400, 200]
    assert fake.count("/v1/chat/completions", status=200) == 1


async def test_fail_next_anthropic(fake: FakeProvider, ant: anthropic.AsyncAnthropic) -> None:
    fake.fail_next = [(429, "rate_limit_error"), (529, "overloaded_error"), (400, "")]
    with pytest.raises(anthropic.RateLimitError) as rate:
        await ant.messages.create(**MSG_BODY)
    assert rate.value.body["type"] == "error"  # type: ignore[index]
    assert rate.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]
    with pytest.raises(anthropic.APIStatusError) as overloaded:
        await ant.messages.create(**MSG_BODY)
    assert overloaded.value.status_code == 529
    with pytest.raises(anthropic.BadRequestError) as bad:
        await ant.messages.create(**MSG_BODY)
    assert bad.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]


async def test_validation_errors_use_family_format(base_url: str) -> None:
    async with aiohttp.ClientSession() as s:
        body = {k: v for k, v in MSG_BODY.items() if k != "max_tokens"}
        async with s.post(f"{base_url}/v1/messages", json=body) as r:
            assert r.status == 400
            data = await r.json()
            assert data["type"] == "error"
            assert data["error"]["type"] == "invalid_request_error"
        async with s.post(f"{base_url}/v1/chat/completions", data=b"{not json") as r:
            assert r.status == 400
            assert set((await r.json())["error"]) == {"message", "type", "param", "code"}
        async with s.get(f"{base_url}/v1/nope") as r:
            assert r.status == 404
            assert r.headers["x-fake-request-id"]
            assert "error" in await r.json()


async def test_fail_mid_stream(fake: FakeProvider, oai: openai.AsyncOpenAI) -> None:
    fake.configure(fail_mid_stream=True, fail_mid_stream_after=2, reply_chunks=list("abcdef"))
    got: list[str] = []
    with pytest.raises(openai.APIError):
        stream = await oai.chat.completions.create(
            **CHAT_BODY, stream=True, stream_options={"include_usage": True}
        )
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                got.append(chunk.choices[0].delta.content)
    assert got == ["a", "b"]
    rec = fake.last
    assert not rec.completed and not rec.usage_reported
    assert rec.chunks_sent == 2
    assert rec.error_type == "dropped_mid_stream"

    fake.fail_mid_stream = False
    ok = await oai.chat.completions.create(**CHAT_BODY)
    assert ok.choices[0].message.content == "abcdef"


async def test_fail_mid_stream_anthropic(fake: FakeProvider, ant: anthropic.AsyncAnthropic) -> None:
    fake.fail_mid_stream = True
    with pytest.raises(STREAM_BREAK_ERRORS):
        async with ant.messages.stream(**MSG_BODY) as stream:
            async for _ in stream.text_stream:
                pass


async def test_header_overrides(fake: FakeProvider, oai: openai.AsyncOpenAI) -> None:
    fake.prompt_tokens = 5
    resp = await oai.chat.completions.create(
        **CHAT_BODY,
        extra_headers={
            "x-fake-prompt-tokens": "1234",
            "x-fake-completion-tokens": "56",
            "x-fake-chunks": "3",
        },
    )
    assert resp.usage is not None
    assert (resp.usage.prompt_tokens, resp.usage.completion_tokens) == (1234, 56)
    assert resp.choices[0].message.content == "".join(fake.reply_chunks[:3])

    start = time.perf_counter()
    await oai.chat.completions.create(**CHAT_BODY, extra_headers={"x-fake-delay-ms": "150"})
    assert time.perf_counter() - start >= 0.14


async def test_delays(fake: FakeProvider, base_url: str) -> None:
    fake.configure(
        reply_chunks=["a", "b", "c"],
        response_delay_s=0.05,
        first_chunk_delay_s=0.1,
        chunk_delay_s=0.05,
    )
    body = {**CHAT_BODY, "stream": True}
    async with aiohttp.ClientSession() as s:
        start = time.perf_counter()
        async with s.post(f"{base_url}/v1/chat/completions", json=body) as resp:
            headers_at = time.perf_counter() - start
            await resp.read()
        total = time.perf_counter() - start
    assert 0.045 <= headers_at < 0.14
    assert total >= 0.05 + 0.1 + 2 * 0.05 - 0.01


async def test_request_id_header_on_every_response(fake: FakeProvider, base_url: str) -> None:
    fake.fail_next = [(503, "")]
    async with aiohttp.ClientSession() as s:
        ids = []
        for method, path, body in [
            ("POST", "/v1/chat/completions", CHAT_BODY),
            ("POST", "/v1/chat/completions", CHAT_BODY),
            ("POST", "/v1/messages", MSG_BODY),
            ("GET", "/v1/models", None),
        ]:
            async with s.request(method, f"{base_url}{path}", json=body) as r:
                ids.append(r.headers["x-fake-request-id"])
    assert len(set(ids)) == 4
    assert [r.request_id for r in fake.requests] == ids


async def test_require_auth(fake: FakeProvider, base_url: str) -> None:
    fake.require_auth = True
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{base_url}/v1/chat/completions", json=CHAT_BODY) as r:
            assert r.status == 401
        async with s.post(f"{base_url}/v1/messages", json=MSG_BODY) as r:
            assert r.status == 401
            assert (await r.json())["error"]["type"] == "authentication_error"
        async with s.post(
            f"{base_url}/v1/messages", json=MSG_BODY, headers={"x-api-key": "k"}
        ) as r:
            assert r.status == 200


async def test_control_plane(fake: FakeProvider, base_url: str) -> None:
    async with aiohttp.ClientSession() as s:
        async with s.post(
            f"{base_url}/_fake/config", json={"prompt_tokens": 9, "fail_next": [[500, ""]]}
        ) as r:
            assert r.status == 200
        assert fake.prompt_tokens == 9 and fake.fail_next == [(500, "")]
        async with s.post(f"{base_url}/_fake/config", json={"bogus": 1}) as r:
            assert r.status == 400
        async with s.post(f"{base_url}/v1/chat/completions", json=CHAT_BODY) as r:
            assert r.status == 500
        async with s.post(f"{base_url}/v1/chat/completions", json=CHAT_BODY) as r:
            assert (await r.json())["usage"]["prompt_tokens"] == 9
        async with s.get(f"{base_url}/_fake/requests") as r:
            log = await r.json()
            assert [e["status"] for e in log] == [500, 200]
            assert log[1]["prompt_tokens"] == 9
        async with s.get(f"{base_url}/_fake/stats") as r:
            assert (await r.json())["counts"] == {"/v1/chat/completions": 2}
        async with s.post(f"{base_url}/_fake/reset") as r:
            assert r.status == 200
    assert fake.requests == [] and fake.prompt_tokens is None


async def test_counts_without_recording(fake: FakeProvider, oai: openai.AsyncOpenAI) -> None:
    fake.record_requests = False
    await oai.chat.completions.create(**CHAT_BODY)
    await oai.embeddings.create(model="text-embedding-3-small", input="x")
    assert fake.requests == []
    assert fake.count("/v1/chat/completions") == 1
    assert fake.count() == 2


def test_reset_restores_construction_values() -> None:
    fake = FakeProvider(reply_chunks=["a"], record_requests=False, prompt_tokens=3)
    fake.configure(reply_chunks=["b"], prompt_tokens=9, fail_next=[(500, "")])
    fake.reply_chunks.append("c")
    fake.reset()
    assert fake.reply_chunks == ["a"]
    assert fake.prompt_tokens == 3
    assert fake.fail_next == []
    assert fake.record_requests is False


async def test_client_disconnect_is_recorded(fake: FakeProvider, base_url: str) -> None:
    fake.configure(reply_chunks=["x"] * 50, chunk_delay_s=0.01)
    async with (
        aiohttp.ClientSession() as s,
        s.post(f"{base_url}/v1/messages", json={**MSG_BODY, "stream": True}) as r,
    ):
        await r.content.readany()
    for _ in range(100):
        if fake.last.client_disconnected:
            break
        await asyncio.sleep(0.01)
    assert fake.last.client_disconnected
    assert not fake.last.completed


def test_estimate_prompt_tokens_shapes() -> None:
    assert estimate_prompt_tokens({}) == PROMPT_TOKEN_OVERHEAD
    assert estimate_prompt_tokens({"input": "a b c"}) == 3 + PROMPT_TOKEN_OVERHEAD
    assert estimate_prompt_tokens({"prompt": ["a b", "c"]}) == 3 + PROMPT_TOKEN_OVERHEAD
    responses_items = {
        "instructions": "be brief",
        "input": [{"role": "user", "content": [{"type": "input_text", "text": "x y"}]}],
    }
    assert estimate_prompt_tokens(responses_items) == 4 + PROMPT_TOKEN_OVERHEAD
    anthropic_system = {"system": [{"type": "text", "text": "s t"}], "messages": []}
    assert estimate_prompt_tokens(anthropic_system) == 2 + PROMPT_TOKEN_OVERHEAD


async def test_serve_context_manager() -> None:
    fake = FakeProvider(reply_chunks=["ok"])
    async with fake.serve() as url, openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="x") as c:
        assert fake.url == url
        resp = await c.chat.completions.create(**CHAT_BODY)
    assert fake.url is None
    assert resp.choices[0].message.content == "ok"


async def test_cli_subprocess() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "budget_proxy.testing.fake_provider",
        "--port",
        "0",
        "--record",
        "--chunks",
        "3",
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
        assert line.startswith("fake-provider listening on http://")
        url = line.split()[3]
        async with ant_client(url) as c:
            msg = await c.messages.create(**MSG_BODY)
        assert msg.usage.output_tokens == 3
        async with aiohttp.ClientSession() as s, s.get(f"{url}/_fake/requests") as r:
            assert len(await r.json()) == 1
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 10)


def ant_client(url: str) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=url, api_key="x", max_retries=0)

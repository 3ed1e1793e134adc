"""Malformed upstream answers through the real proxy: the client gets what the provider sent
(or a 502 in the provider's format when the answer could not be read at all), the proxy logs
no traceback, no call hangs, and every hold is charged or released with counts that are never
negative; clamped or unreadable usage is flagged on the record and raises one alert.

Each case is a `RawAnswer` the fake provider sends byte for byte, whatever the request.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import anthropic
import httpx
import openai
import orjson
import pytest

from budget_proxy.testing.fake_provider import RawAnswer

CALL_DEADLINE_S = 30.0  # only a hung call reaches it
OPENAI_PATH = "/v1/chat/completions"
ANTHROPIC_PATH = "/anthropic/v1/messages"
JSON = {"Content-Type": "application/json"}
SSE = {"Content-Type": "text/event-stream"}
BIG = 2**70  # past 64 bits
UPSTREAM_FAILURES = {"bad_upstream_response", "upstream_unreachable", "upstream_timeout"}


def dumps(value: object) -> bytes:
    """JSON as a provider might send it: big integers included (orjson refuses them)."""
    return json.dumps(value, separators=(",", ":")).encode()


def sse(*events: object, event: str | None = None, eol: bytes = b"\n") -> bytes:
    """SSE events with the given line ending; bytes are sent as they are."""
    out = []
    for data in events:
        line = data if isinstance(data, bytes) else dumps(data)
        head = b"event: " + event.encode() + eol if event else b""
        out.append(head + b"data: " + line + eol + eol)
    return b"".join(out)


def chunk(content: str | None = None, usage: object = None, choices: object = None) -> dict:
    if choices is None:
        choices = [] if content is None else [{"index": 0, "delta": {"content": content}}]
    return {"id": "c1", "object": "chat.completion.chunk", "model": "gpt-4o-mini",
            "choices": choices, "usage": usage}


GOOD_OPENAI_USAGE = {"prompt_tokens": 11, "completion_tokens": 3, "total_tokens": 14}


def openai_stream(usage: object = GOOD_OPENAI_USAGE, *, done: bool = True,
                  eol: bytes = b"\n") -> bytes:
    events: list[object] = [chunk("Hel"), chunk("lo"), chunk(usage=usage)]
    body = sse(*events, eol=eol)
    return body + (b"data: [DONE]" + eol + eol if done else b"")


def openai_json(usage: object = GOOD_OPENAI_USAGE, choices: object = None) -> bytes:
    return dumps({
        "id": "x", "object": "chat.completion", "model": "gpt-4o-mini",
        "choices": choices if choices is not None else [
            {"index": 0, "message": {"role": "assistant", "content": "Hello there"},
             "finish_reason": "stop"}],
        "usage": usage})


def anthropic_json(usage: object, content: object = None) -> bytes:
    return dumps({
        "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-3-5-haiku",
        "content": content if content is not None else [{"type": "text", "text": "Hi there"}],
        "stop_reason": "end_turn", "usage": usage})


def anthropic_stream(start_usage: object, delta_usage: object, *, eol: bytes = b"\n",
                     end: bool = True) -> list[bytes]:
    """The stream as network chunks (one per event)."""
    def ev(name: str, data: dict) -> bytes:
        return sse(data, event=name, eol=eol)

    chunks = [
        ev("message_start", {"type": "message_start", "message": {
            "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-3-5-haiku",
            "content": [], "usage": start_usage}}),
        ev("content_block_start", {"type": "content_block_start", "index": 0,
                                   "content_block": {"type": "text", "text": ""}}),
        ev("content_block_delta", {"type": "content_block_delta", "index": 0,
                                   "delta": {"type": "text_delta", "text": "Hi there"}}),
    ]
    if end:
        chunks += [
            ev("content_block_stop", {"type": "content_block_stop", "index": 0}),
            ev("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"},
                                 "usage": delta_usage}),
            ev("message_stop", {"type": "message_stop"}),
        ]
    return chunks


GOOD_START = {"input_tokens": 12, "output_tokens": 1}


@dataclass
class Case:
    """One malformed answer. `expect`: "relay" (status and bytes as sent) or "502" (the
    answer could not be read: a provider-format 502, the hold released, no record)."""

    api: str  # openai | anthropic
    stream: bool
    answer: RawAnswer
    expect: str = "relay"
    flags: set[str] = field(default_factory=set)  # each must be on the record
    status: str | None = None  # the record's status, when it matters
    cut: bool = False  # the upstream reset the connection mid-body: the client's is cut too
    tokens: tuple[int, int] | None = None  # (input, output) the provider's usage says


def raw(headers: dict[str, str], body: bytes = b"", **kw: object) -> RawAnswer:
    return RawAnswer(headers=headers, body=body, **kw)  # type: ignore[arg-type]


def chunks_of(data: bytes, size: int) -> list[bytes]:
    return [data[i:i + size] for i in range(0, len(data), size)]


CRLF_STREAM = openai_stream(eol=b"\r\n")
CR_SPLIT = CRLF_STREAM.index(b"\r\n\r\n") + 1  # between the CR and the LF of a CRLF

CASES: dict[str, Case] = {
    # non-streamed OpenAI ----------------------------------------------------------------
    "openai-usage-every-field-wrong-type": Case("openai", False, raw(JSON, openai_json({
        "prompt_tokens": "11", "completion_tokens": [3], "total_tokens": {},
        "prompt_tokens_details": "x", "completion_tokens_details": 5})), flags={"wrong_type"}),
    "openai-negative-counts": Case("openai", False, raw(JSON, openai_json({
        "prompt_tokens": -1_000_000, "completion_tokens": -5,
        "prompt_tokens_details": {"cached_tokens": -3}})), flags={"negative_count"}),
    "openai-counts-past-64-bits": Case("openai", False, raw(JSON, openai_json({
        "prompt_tokens": BIG, "completion_tokens": BIG,
        "completion_tokens_details": {"reasoning_tokens": BIG}})), flags={"absurd_count"}),
    "openai-bool-and-float-counts": Case("openai", False, raw(JSON, openai_json({
        "prompt_tokens": True, "completion_tokens": 2.5})), flags={"wrong_type"}),
    "openai-infinite-count": Case("openai", False, raw(
        JSON, b'{"choices": [], "usage": {"prompt_tokens": 1e400, "completion_tokens": -1e400}}'),
        flags={"absurd_count", "negative_count"}),
    "openai-details-wrong-type-only": Case("openai", False, raw(JSON, openai_json({
        **GOOD_OPENAI_USAGE, "prompt_tokens_details": "x"})), flags={"wrong_type"}),
    "openai-choices-of-ints": Case("openai", False, raw(JSON, openai_json(choices=[1])),
                                   tokens=(11, 3)),
    "openai-usage-a-string": Case("openai", False, raw(JSON, openai_json("lots")),
                                  flags={"wrong_type"}),
    "openai-usage-null": Case("openai", False, raw(JSON, openai_json(None)),
                              flags={"unparseable_usage"}),
    "openai-usage-nested-junk": Case("openai", False, raw(JSON, openai_json(
        {"prompt_tokens": [[[[{"a": [1, {"b": None}]}]]]], "completion_tokens": {"x": {}}})),
        flags={"wrong_type"}),
    "openai-deeply-nested-answer": Case("openai", False, raw(
        JSON, b'{"usage": ' + b"[" * 5000 + b"]" * 5000 + b"}"), flags={"unparseable_usage"}),
    "openai-empty-200": Case("openai", False, raw(JSON, b""), flags={"unparseable_usage"}),
    "openai-html-200": Case("openai", False, raw({"Content-Type": "text/html"},
                                                  b"<html><body>Bad gateway</body></html>"),
                            flags={"unparseable_usage"}),
    "openai-json-array-200": Case("openai", False, raw(JSON, b"[1, 2, 3]"),
                                  flags={"unparseable_usage"}),
    "openai-non-utf8-200": Case("openai", False, raw(JSON, b'{"usage": "\xff\xfe"}'),
                                flags={"unparseable_usage"}),
    "openai-content-length-lies": Case("openai", False, raw(
        {**JSON, "Content-Length": "500"}, openai_json()), expect="502"),
    "openai-gzip-garbage": Case("openai", False, raw(
        {**JSON, "Content-Encoding": "gzip"}, b"this is not gzip"), expect="502"),
    "openai-brotli-unsupported": Case("openai", False, raw(
        {**JSON, "Content-Encoding": "br"}, openai_json()), expect="502"),
    "openai-reset-mid-body": Case("openai", False, RawAnswer(
        headers=JSON, chunks=[openai_json()[:20]], close="abort"), expect="502"),
    "openai-garbage-status-line": Case("openai", False, RawAnswer(
        raw=b"HTTP/1.1 2xx OK\r\n\r\n"), expect="502"),
    "openai-closed-without-answer": Case("openai", False, RawAnswer(raw=b""), expect="502"),
    "openai-error-status-short-body": Case("openai", False, RawAnswer(
        status=500, headers={**JSON, "Content-Length": "400"}, body=b'{"error": '),
        expect="502"),
    # non-streamed Anthropic -------------------------------------------------------------
    "anthropic-negative-and-wrong-types": Case("anthropic", False, raw(JSON, anthropic_json({
        "input_tokens": -1_000_000, "output_tokens": "7", "cache_read_input_tokens": [1],
        "cache_creation_input_tokens": False})), flags={"negative_count", "wrong_type"}),
    "anthropic-output-past-64-bits": Case("anthropic", False, raw(JSON, anthropic_json({
        "input_tokens": 12, "output_tokens": BIG})), flags={"absurd_count"}),
    "anthropic-content-not-a-list": Case("anthropic", False, raw(JSON, anthropic_json(
        {"input_tokens": 12, "output_tokens": 3}, content="x"))),
    "anthropic-no-usage": Case("anthropic", False, raw(JSON, dumps(
        {"type": "message", "content": [{"type": "text", "text": "Hi"}]})),
        flags={"unparseable_usage"}),
    "anthropic-usage-a-list": Case("anthropic", False, raw(JSON, anthropic_json([1, 2])),
                                   flags={"wrong_type"}),
    "anthropic-gzip-garbage": Case("anthropic", False, raw(
        {**JSON, "Content-Encoding": "gzip"}, b"\x1f\x8b garbage"), expect="502"),
    # streamed OpenAI --------------------------------------------------------------------
    "stream-choices-of-ints": Case("openai", True, raw(SSE, sse(
        chunk(choices=[1]), chunk(choices=[{"delta": "x"}, None]), chunk(usage=GOOD_OPENAI_USAGE)
    ) + b"data: [DONE]\n\n"), tokens=(11, 3)),
    "stream-details-wrong-type": Case("openai", True, raw(SSE, openai_stream(
        {**GOOD_OPENAI_USAGE, "prompt_tokens_details": "x"})), flags={"wrong_type"}),
    "stream-negative-usage": Case("openai", True, raw(SSE, openai_stream(
        {"prompt_tokens": -1_000_000, "completion_tokens": 3})), flags={"negative_count"}),
    "stream-usage-past-64-bits": Case("openai", True, raw(SSE, openai_stream(
        {"prompt_tokens": BIG, "completion_tokens": BIG})), flags={"absurd_count"}),
    "stream-usage-wrong-types": Case("openai", True, raw(SSE, openai_stream(
        {"prompt_tokens": "11", "completion_tokens": None, "total_tokens": [],
         "prompt_tokens_details": [], "completion_tokens_details": "x"})),
        flags={"wrong_type"}),
    "stream-non-json-data-lines": Case("openai", True, tokens=(11, 3), answer=raw(
        SSE, b"data: hello\n\n: a comment\n\ndata: {not json\n\nevent: x\ndata: [1, 2]\n\n"
        + openai_stream())),
    "stream-event-split-over-chunks": Case("openai", True, RawAnswer(
        headers=SSE, chunks=chunks_of(openai_stream(), 7)), tokens=(11, 3)),
    "stream-cr-only": Case("openai", True, raw(SSE, openai_stream(eol=b"\r")), tokens=(11, 3)),
    "stream-crlf": Case("openai", True, raw(SSE, CRLF_STREAM), tokens=(11, 3)),
    "stream-crlf-split-between-cr-and-lf": Case("openai", True, RawAnswer(
        headers=SSE, chunks=[CRLF_STREAM[:CR_SPLIT], CRLF_STREAM[CR_SPLIT:]],
        chunk_delay_s=0.05), tokens=(11, 3)),
    "stream-mixed-line-endings": Case("openai", True, raw(SSE, sse(chunk("Hel"), eol=b"\r")
                                                          + sse(chunk("lo"), eol=b"\r\n")
                                                          + sse(chunk(usage=GOOD_OPENAI_USAGE))
                                                          + b"data: [DONE]\r\n\n"),
                                      tokens=(11, 3)),
    "stream-truncated-without-done-or-usage": Case("openai", True, raw(SSE, sse(
        chunk("Hel"), chunk("lo"))[:-1]), flags={"unparseable_usage"}),
    "stream-empty-200": Case("openai", True, raw(SSE, b""), flags={"unparseable_usage"}),
    "stream-huge-single-line": Case("openai", True, RawAnswer(
        headers=SSE, chunks=chunks_of(sse(chunk("x" * 3_000_000)) + openai_stream(), 65_536)),
        tokens=(11, 3)),
    "stream-reset-mid-stream": Case("openai", True, RawAnswer(
        headers=SSE, chunks=[sse(chunk("Hel")), sse(chunk("lo"))], chunk_delay_s=0.05,
        close="abort"), status="aborted", cut=True),
    "stream-reset-before-first-byte": Case("openai", True, RawAnswer(
        headers=SSE, chunks=[], close="abort"), expect="502"),
    "stream-gzip-garbage": Case("openai", True, raw(
        {**SSE, "Content-Encoding": "gzip"}, b"data: not gzip\n\n"), expect="502"),
    # streamed Anthropic -----------------------------------------------------------------
    "anthropic-stream-start-usage-a-string": Case("anthropic", True, RawAnswer(
        headers=SSE, chunks=anthropic_stream("x", {"output_tokens": 5})),
        flags={"wrong_type"}),
    "anthropic-stream-negative-output": Case("anthropic", True, RawAnswer(
        headers=SSE, chunks=anthropic_stream(GOOD_START, {"output_tokens": -5})),
        flags={"negative_count"}),
    "anthropic-stream-output-past-64-bits": Case("anthropic", True, RawAnswer(
        headers=SSE, chunks=anthropic_stream(GOOD_START, {"output_tokens": BIG})),
        flags={"absurd_count"}),
    "anthropic-stream-delta-usage-wrong-types": Case("anthropic", True, RawAnswer(
        headers=SSE, chunks=anthropic_stream(GOOD_START, {
            "output_tokens": 5, "input_tokens": {"a": 1}, "cache_read_input_tokens": "9"})),
        flags={"wrong_type"}),
    "anthropic-stream-crlf": Case("anthropic", True, RawAnswer(
        headers=SSE, chunks=anthropic_stream(GOOD_START, {"output_tokens": 5}, eol=b"\r\n")),
        tokens=(12, 5)),
    "anthropic-stream-cr-only-in-one-chunk": Case("anthropic", True, raw(SSE, b"".join(
        anthropic_stream(GOOD_START, {"output_tokens": 5}, eol=b"\r"))), tokens=(12, 5)),
    "anthropic-stream-reset-mid-stream": Case("anthropic", True, RawAnswer(
        headers=SSE, chunks=anthropic_stream(GOOD_START, None, end=False), close="abort"),
        status="aborted", cut=True),
}


def oai(proxy) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{proxy.url}/v1", api_key="sk-client", max_retries=0)


def sent_bytes(answer: RawAnswer) -> bytes:
    return b"".join(answer.chunks) if answer.chunks is not None else answer.body


def request_body(case: Case) -> dict:
    if case.api == "anthropic":
        return {"model": "claude-3-5-haiku-latest", "max_tokens": 100, "stream": case.stream,
                "messages": [{"role": "user", "content": "say hi"}]}
    body: dict = {"model": "gpt-4o-mini", "max_tokens": 100,
                  "messages": [{"role": "user", "content": "say hi"}]}
    if case.stream:  # the client asks for usage itself: nothing is hidden from it
        body.update(stream=True, stream_options={"include_usage": True})
    return body


@pytest.fixture
def proxy_log(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """Every log record of the proxy (and of aiohttp serving it)."""
    caplog.set_level(logging.DEBUG)
    yield caplog


def assert_no_traceback(caplog: pytest.LogCaptureFixture) -> None:
    """No traceback and no error from the proxy or the server under it (clients' own log
    records are not the proxy's)."""
    mine = [r for r in caplog.records if r.name.startswith(("budget_proxy", "aiohttp"))]
    bad = [r for r in mine if r.exc_info or r.stack_info or "Traceback" in r.getMessage()
           or (r.name.startswith("aiohttp") and r.levelno >= logging.ERROR)]
    assert not bad, [f"{r.name}: {r.getMessage()}" for r in bad]


async def call(proxy, case: Case) -> tuple[int, dict[str, str], bytes, bool]:
    """(status, headers, body bytes received, whether the body was cut short)."""
    path = ANTHROPIC_PATH if case.api == "anthropic" else OPENAI_PATH
    received = bytearray()
    cut = False
    async with httpx.AsyncClient(timeout=CALL_DEADLINE_S) as client:
        async with client.stream("POST", f"{proxy.url}{path}", json=request_body(case),
                                 headers={"Authorization": "Bearer sk-client"}) as resp:
            try:
                async for piece in resp.aiter_raw():
                    received += piece
            except httpx.RemoteProtocolError:
                cut = True
            return resp.status_code, dict(resp.headers), bytes(received), cut


async def budget_status(proxy) -> dict:
    resp = await proxy.api("GET", "/api/status")
    assert resp.status_code == 200, resp.text
    (policy,) = resp.json()["policies"]
    return policy


async def settled_records(proxy) -> list[dict]:
    await proxy.proxy.settled()
    resp = await proxy.api("GET", "/api/usage/records", params={"limit": 100})
    assert resp.status_code == 200
    return resp.json()


def assert_provider_error(api: str, body: bytes) -> None:
    error = orjson.loads(body)
    if api == "anthropic":
        assert error["type"] == "error" and error["error"]["type"] == "api_error"
    else:
        assert error["error"]["code"] in UPSTREAM_FAILURES, error


@pytest.mark.parametrize("name", list(CASES))
async def test_malformed_answer(proxy, fake, proxy_log, name):
    case = CASES[name]
    assert (await proxy.api("POST", "/api/policies", json={
        "period": "daily", "type": "hard_limit", "cost_limit": 100})).status_code == 201
    fake.raw_next = [case.answer]

    status, headers, body, cut = await asyncio.wait_for(call(proxy, case), CALL_DEADLINE_S)

    assert len(fake.requests) == 1
    records = await asyncio.wait_for(settled_records(proxy), CALL_DEADLINE_S)
    if case.expect == "502":
        assert status == 502
        assert headers["content-type"].startswith("application/json")
        assert_provider_error(case.api, body)
        assert records == []  # released, not charged
    else:
        assert status == case.answer.status
        # relayed byte for byte, but for the cost the proxy tells before a stream's last event
        assert re.sub(rb": budget-proxy cost=[0-9.]+\n\n", b"", body) == sent_bytes(case.answer)
        assert cut == case.cut
        (record,) = records
        flagged = set(record["metadata"].get("flagged", []))
        assert case.flags <= flagged, flagged
        if not case.flags:
            assert not flagged
        if case.status:
            assert record["status"] == case.status
        if case.tokens:
            assert (record["input_tokens"], record["output_tokens"]) == case.tokens
            assert record["status"] == "ok"
        for key in ("input_tokens", "cached_input_tokens", "cache_write_tokens",
                    "output_tokens", "reasoning_tokens", "total_tokens", "total_cost"):
            assert 0 <= record[key], (key, record)
        assert record["total_tokens"] <= 10**9
    assert proxy.store.open_reservations() == 0
    policy = await budget_status(proxy)
    assert policy["reserved"] == 0 and policy["spent"] >= 0
    assert_no_traceback(proxy_log)


def test_the_corpus_is_big_enough():
    streamed = [c for c in CASES.values() if c.stream]
    assert len(CASES) >= 25
    assert {c.api for c in streamed} == {c.api for c in CASES.values()} == {"openai",
                                                                             "anthropic"}
    assert len(streamed) >= 10 and len(CASES) - len(streamed) >= 10


async def test_clamped_usage_settles_from_the_proxys_count(proxy, fake):
    """A refund attempt (-1,000,000 prompt tokens) is settled from the proxy's own count of
    the call: the input it counted and the output text it saw."""
    fake.raw_next = [raw(JSON, openai_json({"prompt_tokens": -1_000_000,
                                            "completion_tokens": 2}))]
    async with oai(proxy) as client:
        await client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "say hi"}], max_tokens=50)
    (record,) = await settled_records(proxy)
    assert record["input_tokens"] > 0  # our count of "say hi" and its framing
    assert record["output_tokens"] == 2  # "Hello there"
    assert record["total_cost"] > 0
    assert record["metadata"]["flagged"] == ["negative_count"]


async def test_details_of_the_wrong_type_keep_the_providers_main_counts(proxy, fake):
    fake.raw_next = [raw(JSON, openai_json({"prompt_tokens": 900, "completion_tokens": 40,
                                            "prompt_tokens_details": "x"}))]
    async with oai(proxy) as client:
        await client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    (record,) = await settled_records(proxy)
    assert (record["input_tokens"], record["cached_input_tokens"]) == (900, 0)
    assert record["output_tokens"] == 40
    assert record["metadata"]["flagged"] == ["wrong_type"]


async def test_flagged_usage_raises_one_alert_per_provider_and_model(proxy, fake):
    fake.raw_next = [raw(JSON, openai_json({"prompt_tokens": -5, "completion_tokens": 1}))
                     for _ in range(4)]
    async with oai(proxy) as client:
        for _ in range(4):
            await client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
        records = await settled_records(proxy)
        assert len(records) == 4 and all(r["metadata"]["flagged"] for r in records)
        (alert,) = await alerts_of_type(proxy, "usage_flagged", 1)
        assert alert["severity"] == "warning"
        assert alert["data"]["provider"] == "openai"
        assert alert["data"]["model"] == "gpt-4o-mini"
        assert alert["data"]["reasons"] == ["negative_count"]
        # more flagged calls of that model within the hour raise no second alert; another
        # model's does (and, raised after them, shows their turn has passed)
        fake.raw_next = [raw(JSON, openai_json("x")), raw(JSON, openai_json("x"))]
        for model in ("gpt-4o-mini", "gpt-4o"):
            await client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": "hi"}])
    alerts = await alerts_of_type(proxy, "usage_flagged", 2)
    assert sorted(a["data"]["model"] for a in alerts) == ["gpt-4o", "gpt-4o-mini"]


async def alerts_of_type(proxy, kind: str, count: int) -> list[dict]:
    """The alerts of a type once there are `count` of them (they are raised in the
    background); fails only a hung test."""
    deadline = time.monotonic() + CALL_DEADLINE_S
    while True:
        resp = await proxy.api("GET", "/api/alerts")
        assert resp.status_code == 200
        found = [a for a in resp.json() if a["type"] == kind]
        if len(found) >= count or time.monotonic() > deadline:
            return found
        await asyncio.sleep(0.02)


async def test_sdks_read_a_malformed_answer_as_the_provider_sent_it(proxy, fake):
    """The official SDKs see the provider's answer: `choices: [1]` reaches OpenAI's SDK (its
    model tolerates it), a CRLF Anthropic stream is parsed by Anthropic's."""
    fake.raw_next = [
        raw(JSON, openai_json(choices=[{"index": 0, "message": {
            "role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
            usage={**GOOD_OPENAI_USAGE, "prompt_tokens_details": "x"})),
        RawAnswer(headers=SSE, chunks=anthropic_stream(GOOD_START, {"output_tokens": 5},
                                                       eol=b"\r\n")),
    ]
    async with oai(proxy) as client:
        reply = await client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    assert reply.choices[0].message.content == "ok"
    async with anthropic.AsyncAnthropic(base_url=f"{proxy.url}/anthropic",
                                        api_key="k") as claude:
        async with claude.messages.stream(
                model="claude-3-5-haiku-latest", max_tokens=50,
                messages=[{"role": "user", "content": "hi"}]) as stream:
            message = await stream.get_final_message()
    assert message.content[0].text == "Hi there"
    records = await settled_records(proxy)
    streamed = next(r for r in records if r["streamed"])
    assert (streamed["input_tokens"], streamed["output_tokens"]) == (12, 5)
    assert "flagged" not in streamed["metadata"]


async def test_upstream_timeout_answers_502_and_releases(proxy_factory, fake, proxy_log):
    proxy = await proxy_factory(upstream_timeout_s=0.5)
    assert (await proxy.api("POST", "/api/policies", json={
        "period": "daily", "type": "hard_limit", "cost_limit": 100})).status_code == 201
    # headers at once, then a body slower than the whole call may take
    fake.raw_next = [RawAnswer(headers=JSON, chunks=[b'{"a":', b"1}"], chunk_delay_s=5),
                     RawAnswer(headers=SSE, chunks=[b"data: 1\n\n", b"data: 2\n\n"],
                               chunk_delay_s=5)]
    status, _, body, _ = await call(proxy, CASES["openai-empty-200"])
    assert status == 502 and b"timed out" in body
    status, _, body, cut = await call(proxy, CASES["stream-empty-200"])
    assert (status, body, cut) == (200, b"data: 1\n\n", True)  # cut where the upstream was
    records = await settled_records(proxy)
    assert [r["status"] for r in records] == ["aborted"]
    assert proxy.store.open_reservations() == 0
    assert (await budget_status(proxy))["reserved"] == 0
    assert_no_traceback(proxy_log)


async def test_unreachable_upstream_answers_502_in_the_provider_format(proxy_factory, fake):
    from tests.conftest import free_port

    dead = f"http://127.0.0.1:{free_port()}"
    proxy = await proxy_factory(openai_base_url=f"{dead}/v1", anthropic_base_url=dead)
    for case in (CASES["openai-empty-200"], CASES["anthropic-no-usage"]):
        status, _, body, _ = await call(proxy, case)
        assert status == 502
        error = orjson.loads(body)
        assert ("error" in error) and (error.get("type") == "error") == (case.api == "anthropic")
    assert await settled_records(proxy) == []
    assert proxy.store.open_reservations() == 0


async def test_an_upstreams_cookies_are_never_sent_on_another_call(proxy_factory, fake):
    """The proxy's one upstream session is shared by every client: a cookie an upstream sets
    in one client's answer must not ride on the next client's call (nor cost a cookie jar
    lookup on every call). Upstreams are named by host name here: aiohttp's cookie jar
    ignores cookies of IP addresses."""
    named = fake.url.replace("127.0.0.1", "localhost")
    proxy = await proxy_factory(openai_base_url=f"{named}/v1")
    fake.raw_next = [raw({**JSON, "Set-Cookie": "__cf_bm=client-a-secret; Path=/; HttpOnly"},
                         openai_json())]
    for _ in range(2):  # two clients, each with a cookie jar of its own
        async with oai(proxy) as client:
            answer = await client.chat.completions.with_raw_response.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
            assert answer.status_code == 200
    first, second = fake.requests[-2:]
    assert first.headers.get("cookie") is None
    assert second.headers.get("cookie") is None

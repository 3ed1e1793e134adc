"""Golden costs: provider x stream/non-stream x cache hit/miss x reasoning.

Each case is a recorded-shape wire payload (a JSON answer, and the same usage as an SSE stream
cut into odd-sized network chunks) fed through `budget_proxy.wire.UsageTap`, priced with the
packaged catalog by `budget_proxy.usage.cost_of`. The expected cost is computed by hand here
from list prices typed in below (nano-USD per token = USD per million tokens x 1000), and the
catalog is checked to hold those list prices, so the whole path from wire to cost is covered.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import orjson
import pytest

from budget_proxy.pricing import PriceCatalog, PriceFields
from budget_proxy.providers import tap_for
from budget_proxy.usage import Usage, cost_of, worst_case_nusd
from budget_proxy.wire import SSEParser


@dataclass(frozen=True)
class Rates:
    """List prices in nano-USD per token ($2.50 per million tokens = 2_500)."""

    input: int
    output: int
    cache_read: int | None = None
    cache_write: int | None = None


# typed from the providers' price pages
GPT_4O = Rates(input=2_500, output=10_000, cache_read=1_250)
O4_MINI = Rates(input=1_100, output=4_400, cache_read=275)
O3 = Rates(input=2_000, output=8_000, cache_read=500)
GPT_4_1 = Rates(input=2_000, output=8_000, cache_read=500)
GPT_35_TURBO = Rates(input=500, output=1_500)
EMBEDDING_3_SMALL = Rates(input=20, output=0)
SONNET_4_5 = Rates(input=3_000, output=15_000, cache_read=300, cache_write=3_750)
GEMINI_25_FLASH = Rates(input=300, output=2_500, cache_read=30)
GEMINI_25_PRO = Rates(input=1_250, output=10_000, cache_read=125)


@pytest.fixture(scope="module")
def catalog() -> PriceCatalog:
    return PriceCatalog.load_default()


def check_list_prices(catalog: PriceCatalog, provider: str, model: str, rates: Rates):
    price = catalog.lookup(provider, model)
    assert price is not None, model
    per_token = Decimal(1000)  # USD per Mtok -> nano-USD per token
    assert price.input_usd_per_mtok * per_token == rates.input
    assert price.output_usd_per_mtok * per_token == rates.output
    assert price.cache_read_rate * per_token == (rates.cache_read or rates.input)
    assert price.cache_write_rate * per_token == (rates.cache_write or rates.input)
    return price


# wire shapes ------------------------------------------------------------------------------
Event = dict[str, Any] | tuple[str, dict[str, Any]]


@dataclass
class Wire:
    api: str
    endpoint: str
    body: dict[str, Any]  # the non-streamed answer
    events: list[Event]  # the streamed answer, same usage


def sse(events: list[Event], done: bool) -> bytes:
    out = []
    for event in events:
        if isinstance(event, tuple):
            name, data = event
            out.append(b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n")
        else:
            out.append(b"data: " + orjson.dumps(event) + b"\n\n")
    if done:
        out.append(b"data: [DONE]\n\n")
    return b"".join(out)


def tap_json(wire: Wire) -> Usage:
    tap = tap_for(wire.api, wire.endpoint)
    tap.observe_json(wire.body)
    assert tap.usage is not None
    return tap.usage


def tap_stream(wire: Wire, chunk_bytes: int = 7) -> Usage:
    """The stream as the network delivers it: events split across reads."""
    raw = sse(wire.events, done=wire.api == "openai" and wire.endpoint != "responses")
    tap = tap_for(wire.api, wire.endpoint)
    parser = SSEParser()
    for i in range(0, len(raw), chunk_bytes):
        for event in parser.feed(raw[i:i + chunk_bytes]):
            tap.observe_event(event)
    assert parser.flush() == b""
    assert tap.usage is not None
    return tap.usage


def openai_chat(prompt: int, cached: int, completion: int, reasoning: int) -> Wire:
    usage = {"prompt_tokens": prompt, "completion_tokens": completion,
             "total_tokens": prompt + completion,
             "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": 0},
             "completion_tokens_details": {"reasoning_tokens": reasoning, "audio_tokens": 0,
                                           "accepted_prediction_tokens": 0,
                                           "rejected_prediction_tokens": 0}}
    head = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1,
            "model": "m", "system_fingerprint": "fp"}
    return Wire("openai", "chat.completions", {
        "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello there"},
                     "finish_reason": "stop"}], "usage": usage,
    }, [
        {**head, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                              "finish_reason": None}], "usage": None},
        {**head, "choices": [{"index": 0, "delta": {"content": "Hello"},
                              "finish_reason": None}], "usage": None},
        {**head, "choices": [{"index": 0, "delta": {"content": " there"},
                              "finish_reason": None}], "usage": None},
        {**head, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
         "usage": None},
        {**head, "choices": [], "usage": usage},  # stream_options.include_usage
    ])


def openai_completions(prompt: int, completion: int) -> Wire:
    usage = {"prompt_tokens": prompt, "completion_tokens": completion,
             "total_tokens": prompt + completion}
    head = {"id": "cmpl-1", "object": "text_completion", "created": 1, "model": "m"}
    return Wire("openai", "completions", {
        **head, "choices": [{"text": "Hello there", "index": 0, "finish_reason": "stop"}],
        "usage": usage,
    }, [
        {**head, "choices": [{"text": "Hello", "index": 0, "finish_reason": None}]},
        {**head, "choices": [{"text": " there", "index": 0, "finish_reason": "stop"}]},
        {**head, "choices": [], "usage": usage},
    ])


def openai_responses(inp: int, cached: int, out: int, reasoning: int) -> Wire:
    usage = {"input_tokens": inp, "input_tokens_details": {"cached_tokens": cached},
             "output_tokens": out, "output_tokens_details": {"reasoning_tokens": reasoning},
             "total_tokens": inp + out}
    response = {"id": "resp_1", "object": "response", "status": "completed", "model": "m",
                "output": [{"type": "message", "role": "assistant", "content": [
                    {"type": "output_text", "text": "Hello there"}]}]}
    return Wire("openai", "responses", {**response, "usage": usage}, [
        ("response.created", {"type": "response.created", "sequence_number": 0,
                              "response": {**response, "status": "in_progress", "output": [],
                                           "usage": None}}),
        ("response.output_text.delta", {"type": "response.output_text.delta",
                                        "sequence_number": 1, "delta": "Hello there"}),
        ("response.completed", {"type": "response.completed", "sequence_number": 2,
                                "response": {**response, "usage": usage}}),
    ])


def anthropic_messages(inp: int, read: int, write: int, out: int, thinking: bool = False,
                       delta_full_usage: bool = False) -> Wire:
    usage = {"input_tokens": inp, "cache_creation_input_tokens": write,
             "cache_read_input_tokens": read, "output_tokens": out}
    message = {"id": "msg_1", "type": "message", "role": "assistant", "model": "m",
               "stop_reason": None, "stop_sequence": None}
    content: list[dict[str, Any]] = [{"type": "text", "text": "Hello there"}]
    blocks: list[Event] = []
    if thinking:
        content.insert(0, {"type": "thinking", "thinking": "Let me see.", "signature": "s"})
        blocks += [
            ("content_block_start", {"type": "content_block_start", "index": 0,
                                     "content_block": {"type": "thinking", "thinking": ""}}),
            ("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {
                "type": "thinking_delta", "thinking": "Let me see."}}),
            ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        ]
    text_index = len(blocks) // 3
    blocks += [
        ("content_block_start", {"type": "content_block_start", "index": text_index,
                                 "content_block": {"type": "text", "text": ""}}),
        ("content_block_delta", {"type": "content_block_delta", "index": text_index,
                                 "delta": {"type": "text_delta", "text": "Hello there"}}),
        ("content_block_stop", {"type": "content_block_stop", "index": text_index}),
    ]
    delta_usage = dict(usage) if delta_full_usage else {"output_tokens": out}
    return Wire("anthropic", "messages", {**message, "content": content,
                                          "stop_reason": "end_turn", "usage": usage}, [
        ("message_start", {"type": "message_start", "message": {
            **message, "content": [], "usage": {**usage, "output_tokens": 1}}}),
        *blocks,
        ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"},
                           "usage": delta_usage}),
        ("message_stop", {"type": "message_stop"}),
    ])


def gemini(prompt: int, cached: int, candidates: int, thoughts: int) -> Wire:
    def meta(cands: int) -> dict[str, Any]:
        out = {"promptTokenCount": prompt, "candidatesTokenCount": cands,
               "totalTokenCount": prompt + cands + thoughts}
        if cached:
            out["cachedContentTokenCount"] = cached
        if thoughts:
            out["thoughtsTokenCount"] = thoughts
        return out

    def chunk(text: str, cands: int, finish: str | None = None) -> dict[str, Any]:
        candidate: dict[str, Any] = {"content": {"parts": [{"text": text}], "role": "model"},
                                     "index": 0}
        if finish:
            candidate["finishReason"] = finish
        return {"candidates": [candidate], "usageMetadata": meta(cands),
                "modelVersion": "m", "responseId": "r1"}

    # streamed usageMetadata is cumulative: the last chunk carries the final figures
    return Wire("gemini", "gemini", chunk("Hello there", candidates, "STOP"), [
        chunk("Hello", max(1, candidates // 2)),
        chunk(" there", candidates, "STOP"),
    ])


# the table --------------------------------------------------------------------------------
@dataclass
class Case:
    provider: str
    model: str
    rates: Rates
    wire: Callable[[], Wire]
    usage: Usage  # what the normaliser must make of it
    expected_nusd: Callable[[Rates], int]  # by hand, from the typed list prices


CASES = {
    "openai-chat-cache-miss": Case(
        "openai", "gpt-4o-2024-08-06", GPT_4O, lambda: openai_chat(1000, 0, 200, 0),
        Usage(input_tokens=1000, output_tokens=200),
        lambda r: 1000 * r.input + 200 * r.output),
    "openai-chat-cache-hit": Case(
        "openai", "gpt-4o", GPT_4O, lambda: openai_chat(1000, 600, 200, 0),
        Usage(input_tokens=400, cached_input_tokens=600, output_tokens=200),
        lambda r: 400 * r.input + 600 * r.cache_read + 200 * r.output),
    "openai-chat-reasoning-cache-hit": Case(
        "openai", "o4-mini-2025-04-16", O4_MINI, lambda: openai_chat(3000, 1024, 900, 700),
        Usage(input_tokens=1976, cached_input_tokens=1024, output_tokens=900,
              reasoning_tokens=700),
        # reasoning tokens are part of completion_tokens, billed at the output rate
        lambda r: 1976 * r.input + 1024 * r.cache_read + 900 * r.output),
    "openai-chat-reasoning-cache-miss": Case(
        "openai", "o4-mini", O4_MINI, lambda: openai_chat(500, 0, 1500, 1200),
        Usage(input_tokens=500, output_tokens=1500, reasoning_tokens=1200),
        lambda r: 500 * r.input + 1500 * r.output),
    "openai-completions-cache-miss": Case(
        "openai", "gpt-3.5-turbo", GPT_35_TURBO, lambda: openai_completions(750, 120),
        Usage(input_tokens=750, output_tokens=120),
        lambda r: 750 * r.input + 120 * r.output),
    "openai-responses-reasoning-cache-miss": Case(
        "openai", "o3", O3, lambda: openai_responses(500, 0, 1500, 1200),
        Usage(input_tokens=500, output_tokens=1500, reasoning_tokens=1200),
        lambda r: 500 * r.input + 1500 * r.output),
    "openai-responses-cache-hit": Case(
        "openai", "gpt-4.1", GPT_4_1, lambda: openai_responses(2000, 1500, 100, 0),
        Usage(input_tokens=500, cached_input_tokens=1500, output_tokens=100),
        lambda r: 500 * r.input + 1500 * r.cache_read + 100 * r.output),
    "openai-responses-reasoning-cache-hit": Case(
        "openai", "o3-2025-04-16", O3, lambda: openai_responses(4096, 4000, 800, 640),
        Usage(input_tokens=96, cached_input_tokens=4000, output_tokens=800,
              reasoning_tokens=640),
        lambda r: 96 * r.input + 4000 * r.cache_read + 800 * r.output),
    "anthropic-cache-miss": Case(
        "anthropic", "claude-sonnet-4-5-20250929", SONNET_4_5,
        lambda: anthropic_messages(1200, 0, 0, 80),
        Usage(input_tokens=1200, output_tokens=80),
        lambda r: 1200 * r.input + 80 * r.output),
    "anthropic-cache-read-and-write": Case(
        "anthropic", "claude-sonnet-4-5", SONNET_4_5,
        lambda: anthropic_messages(50, 10_000, 2_000, 300),
        # Anthropic's input_tokens exclude cache reads and writes: three separate classes
        Usage(input_tokens=50, cached_input_tokens=10_000, cache_write_tokens=2_000,
              output_tokens=300),
        lambda r: 50 * r.input + 10_000 * r.cache_read + 2_000 * r.cache_write + 300 * r.output),
    "anthropic-cache-write-only-delta-usage": Case(
        "anthropic", "claude-sonnet-4-5", SONNET_4_5,
        lambda: anthropic_messages(20, 0, 5_000, 40, delta_full_usage=True),
        Usage(input_tokens=20, cache_write_tokens=5_000, output_tokens=40),
        lambda r: 20 * r.input + 5_000 * r.cache_write + 40 * r.output),
    "anthropic-thinking-cache-hit": Case(
        "anthropic", "claude-sonnet-4-5", SONNET_4_5,
        lambda: anthropic_messages(300, 8_000, 0, 2_000, thinking=True),
        # thinking is billed as output tokens (Anthropic reports it inside output_tokens)
        Usage(input_tokens=300, cached_input_tokens=8_000, output_tokens=2_000),
        lambda r: 300 * r.input + 8_000 * r.cache_read + 2_000 * r.output),
    "gemini-cache-miss": Case(
        "gemini", "gemini-2.5-pro", GEMINI_25_PRO, lambda: gemini(1000, 0, 100, 0),
        Usage(input_tokens=1000, output_tokens=100),
        lambda r: 1000 * r.input + 100 * r.output),
    "gemini-thoughts-cache-hit": Case(
        "gemini", "models/gemini-2.5-flash", GEMINI_25_FLASH, lambda: gemini(1000, 400, 100, 300),
        # promptTokenCount includes the cached part; thoughts are billed as output
        Usage(input_tokens=600, cached_input_tokens=400, output_tokens=400,
              reasoning_tokens=300),
        lambda r: 600 * r.input + 400 * r.cache_read + 400 * r.output),
}


@pytest.mark.parametrize("name", list(CASES))
def test_golden_cost_streamed_and_unstreamed(name: str, catalog: PriceCatalog):
    case = CASES[name]
    price = check_list_prices(catalog, case.provider, case.model, case.rates)
    wire = case.wire()
    expected = case.expected_nusd(case.rates)
    unstreamed, streamed = tap_json(wire), tap_stream(wire)
    assert unstreamed == streamed == case.usage
    assert cost_of(unstreamed, price).total_nusd == expected
    assert cost_of(streamed, price).total_nusd == expected


@pytest.mark.parametrize("chunk_bytes", [1, 3, 64, 100_000])
def test_stream_cost_does_not_depend_on_network_chunking(chunk_bytes: int,
                                                          catalog: PriceCatalog):
    case = CASES["anthropic-cache-read-and-write"]
    price = check_list_prices(catalog, case.provider, case.model, case.rates)
    usage = tap_stream(case.wire(), chunk_bytes=chunk_bytes)
    assert cost_of(usage, price).total_nusd == case.expected_nusd(case.rates)


def test_embeddings_cost(catalog: PriceCatalog):
    price = check_list_prices(catalog, "openai", "text-embedding-3-small", EMBEDDING_3_SMALL)
    tap = tap_for("openai", "embeddings")
    tap.observe_json({"object": "list", "model": "text-embedding-3-small",
                      "data": [{"object": "embedding", "index": 0, "embedding": [0.1]}],
                      "usage": {"prompt_tokens": 12_345, "total_tokens": 12_345}})
    assert tap.usage == Usage(input_tokens=12_345)
    # 12345 x $0.02/M = $0.0002469
    assert cost_of(tap.usage, price).total_nusd == 12_345 * EMBEDDING_3_SMALL.input == 246_900


def test_openai_usage_chunk_hidden_from_the_client_is_still_counted(catalog: PriceCatalog):
    """The proxy asks for usage a client did not ask for and strips that chunk: the usage is
    read all the same."""
    case = CASES["openai-chat-cache-hit"]
    price = check_list_prices(catalog, case.provider, case.model, case.rates)
    tap = tap_for("openai", "chat.completions", strip_usage_chunk=True)
    parser = SSEParser()
    forwarded = [event for event in parser.feed(sse(case.wire().events, done=True))
                 if tap.observe_event(event)]
    assert not any(b'"usage":{' in event for event in forwarded)
    assert cost_of(tap.usage, price).total_nusd == case.expected_nusd(case.rates)


def test_cache_rates_are_cheaper_and_writes_dearer_than_plain_input():
    """Sanity of the table itself: a cache hit must cost less than the same call uncached,
    and an Anthropic cache write more."""
    hit, miss = CASES["openai-chat-cache-hit"], CASES["openai-chat-cache-miss"]
    assert hit.expected_nusd(hit.rates) < miss.expected_nusd(miss.rates)
    r = SONNET_4_5
    assert r.cache_read < r.input < r.cache_write


# the seed's other price types: hand-computed in nano-USD -------------------------------------
@pytest.mark.parametrize(
    ("model", "usage", "expected_nusd"),
    [
        # image: dall-e-3 hd 1792x1024 at $0.120 each, x3
        ("dall-e-3", Usage(images=3, image_size="1792x1024", image_quality="hd"),
         3 * 120_000_000),
        # image: a quality the table has no price for is the model's default price ($0.040)
        ("dall-e-3", Usage(images=1, image_size="1024x1024", image_quality="ultra"),
         40_000_000),
        # image: dall-e-2 by size only, $0.016 for 256x256
        ("dall-e-2", Usage(images=2, image_size="256x256"), 2 * 16_000_000),
        # image: no size named: the dearest ($0.120 for dall-e-3)
        ("dall-e-3", Usage(images=1), 120_000_000),
        # image by tokens: gpt-image-1, 20 text tokens at $5/M, 4160 image tokens at $40/M
        ("gpt-image-1", Usage(input_tokens=20, output_tokens=4160, images=1),
         20 * 5_000 + 4160 * 40_000),
        # character: tts-1 at $15 per million characters, 1234 characters
        ("tts-1", Usage(characters=1234), 1234 * 15_000),
        ("tts-1-hd", Usage(characters=1), 30_000),
        # time: whisper-1 at $0.006 a minute, 61.5 s
        ("whisper-1", Usage(audio_ms=61_500), 6_150_000),
        ("whisper-1", Usage(audio_ms=1), 100),
    ],
)
def test_unit_price_types(catalog: PriceCatalog, model: str, usage: Usage, expected_nusd: int):
    price = catalog.lookup("openai", model)
    assert price is not None
    assert cost_of(usage, price).total_nusd == expected_nusd


@pytest.mark.parametrize(
    ("fields", "usage", "expected_nusd", "price_type"),
    [
        # fixed: $0.01 a call on top of tokens ($1/M in, $2/M out)
        ({"input_usd_per_mtok": "1", "output_usd_per_mtok": "2",
          "usd_per_request": "0.01"}, Usage(input_tokens=1000, output_tokens=500),
         1000 * 1000 + 500 * 2000 + 10_000_000, "token"),
        ({"input_usd_per_mtok": "0", "output_usd_per_mtok": "0",
          "usd_per_request": "0.005"}, Usage(), 5_000_000, "fixed"),
        ({"input_usd_per_mtok": "0", "output_usd_per_mtok": "0",
          "usd_per_second": "0.0002"}, Usage(audio_ms=1500), 300_000, "time"),
        ({"input_usd_per_mtok": "0", "output_usd_per_mtok": "0",
          "input_usd_per_char": "0.00001"}, Usage(characters=7), 70_000, "character"),
        ({"input_usd_per_mtok": "0", "output_usd_per_mtok": "0", "usd_per_image": "0.05",
          "usd_per_image_by_size": {"512x512": "0.02"}}, Usage(images=2, image_size="512x512"),
         40_000_000, "image"),
    ],
)
def test_price_types_of_a_price(fields, usage, expected_nusd, price_type):
    price = PriceFields(**fields)
    assert price.price_type == price_type
    assert cost_of(usage, price).total_nusd == expected_nusd


def test_the_worst_case_holds_every_unit_asked_for(catalog: PriceCatalog):
    dall_e_3 = catalog.lookup("openai", "dall-e-3")
    assert dall_e_3 is not None
    units = Usage(images=2, image_size="1024x1024", image_quality="standard")
    assert worst_case_nusd(0, 0, dall_e_3, units) == 2 * 40_000_000
    assert worst_case_nusd(0, 0, dall_e_3, Usage(images=2)) == 2 * 120_000_000  # any size
    whisper = catalog.lookup("openai", "whisper-1")
    assert whisper is not None
    assert worst_case_nusd(0, 0, whisper, Usage(audio_ms=10_000)) == 1_000_000

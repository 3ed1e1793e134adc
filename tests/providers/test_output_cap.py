"""Each family lowers a request's output cap in its own field (BUDGET_ON_INSUFFICIENT=fit),
and ends a cut stream in its own protocol."""

from __future__ import annotations

import orjson
import pytest

from budget_proxy.config import ProviderConfig
from budget_proxy.providers import adapter_for
from budget_proxy.usage import Usage
from budget_proxy.wire import SSEParser, event_data

CASES = [
    ("openai", "chat.completions", "v1/chat/completions",
     {"model": "gpt-4o", "messages": [], "max_tokens": 900}, ("max_tokens",)),
    ("openai", "chat.completions", "v1/chat/completions",
     {"model": "gpt-4o", "messages": []}, ("max_completion_tokens",)),
    ("openai", "chat.completions", "v1/chat/completions",
     {"model": "o3", "messages": [], "max_completion_tokens": 900}, ("max_completion_tokens",)),
    ("openai", "completions", "v1/completions", {"model": "gpt-3.5-turbo-instruct"},
     ("max_tokens",)),
    ("openai", "responses", "v1/responses", {"model": "gpt-4o", "input": "x"},
     ("max_output_tokens",)),
    ("anthropic", "messages", "v1/messages", {"model": "claude", "max_tokens": 900},
     ("max_tokens",)),
    ("gemini", "gemini.generate", "v1beta/models/gemini-2.0-flash:generateContent",
     {"contents": [], "generationConfig": {"temperature": 0}},
     ("generationConfig", "maxOutputTokens")),
    ("ollama", "ollama.chat", "api/chat", {"model": "llama3", "options": {"seed": 1}},
     ("options", "num_predict")),
]


@pytest.mark.parametrize(("api", "endpoint", "path", "body", "field"), CASES)
def test_the_output_cap_is_lowered_in_the_familys_field(api, endpoint, path, body, field):
    adapter = adapter_for(api)
    provider = ProviderConfig(name=api, api=api, base_url="http://x")
    plan = adapter.plan(endpoint, path, "", orjson.dumps(body), provider)
    lowered = adapter.with_output_cap(plan, 42)
    assert lowered is not None and lowered.max_output_tokens == 42
    sent = orjson.loads(lowered.upstream_body(b"unused"))
    value = sent
    for key in field:
        value = value[key]
    assert value == 42
    assert {k: v for k, v in sent.items() if k not in (field[0], "stream_options")} == {
        k: v for k, v in body.items() if k != field[0]}  # nothing else changed


@pytest.mark.parametrize(("api", "endpoint", "path", "body"), [
    ("openai", "embeddings", "v1/embeddings", {"model": "text-embedding-3-small", "input": "x"}),
    ("ollama", "ollama.embed", "api/embed", {"model": "nomic", "input": "x"}),
])
def test_a_request_without_output_has_no_cap_to_lower(api, endpoint, path, body):
    adapter = adapter_for(api)
    plan = adapter.plan(endpoint, path, "", orjson.dumps(body),
                        ProviderConfig(name=api, api=api, base_url="http://x"))
    assert adapter.with_output_cap(plan, 42) is None


def events(raw: bytes) -> list[tuple[str | None, dict | str]]:
    parser = SSEParser()
    out = []
    for unit in parser.feed(raw):
        if unit.startswith(b":"):
            out.append((None, unit.decode().strip()))
            continue
        name, data = event_data(unit)
        out.append((name, data.decode() if data == b"[DONE]" else orjson.loads(data)))
    return out


@pytest.mark.parametrize(("include_usage", "choices"), [(True, 1), (False, 1), (False, 3)])
def test_openai_cut_events(include_usage, choices):
    adapter = adapter_for("openai")
    body = {"model": "gpt-4o", "messages": [], "stream": True, "n": choices,
            **({"stream_options": {"include_usage": True}} if include_usage else {})}
    plan = adapter.plan("chat.completions", "v1/chat/completions", "", orjson.dumps(body),
                        ProviderConfig(name="openai", api="openai", base_url="http://x"))
    tap = adapter.tap(plan)
    tap.observe_event(b'data: {"id":"c1","object":"chat.completion.chunk","created":7,'
                      b'"model":"gpt-4o","choices":[{"index":0,"delta":{"content":"hi"}}]}\n\n')
    out = events(adapter.cut_events(tap, plan, Usage(input_tokens=5, output_tokens=3), 0.25))
    final = out[0][1]
    assert isinstance(final, dict)
    assert (final["id"], final["created"], final["model"]) == ("c1", 7, "gpt-4o")
    assert [c["finish_reason"] for c in final["choices"]] == ["length"] * choices
    if include_usage:
        assert out[1][1]["usage"] == {"prompt_tokens": 5, "completion_tokens": 3,
                                      "total_tokens": 8}
    assert out[-2:] == [(None, ": budget-proxy cost=0.250000000"), (None, "[DONE]")]


def test_anthropic_cut_events_close_the_open_block():
    adapter = adapter_for("anthropic")
    body = {"model": "claude", "max_tokens": 100, "messages": [], "stream": True}
    plan = adapter.plan("messages", "v1/messages", "", orjson.dumps(body),
                        ProviderConfig(name="anthropic", api="anthropic", base_url="http://x"))
    tap = adapter.tap(plan)
    tap.observe_event(b'event: content_block_start\ndata: {"type":"content_block_start",'
                      b'"index":2,"content_block":{"type":"text","text":""}}\n\n')
    out = events(adapter.cut_events(tap, plan, Usage(input_tokens=5, output_tokens=3), 0.5))
    assert [name for name, _ in out] == ["content_block_stop", "message_delta", None,
                                         "message_stop"]
    assert out[0][1]["index"] == 2
    assert out[1][1]["delta"]["stop_reason"] == "max_tokens"
    assert out[1][1]["usage"] == {"output_tokens": 3}


@pytest.mark.parametrize("api", ["gemini", "ollama"])
def test_other_families_close_the_stream_without_events(api):
    adapter = adapter_for(api)
    assert adapter.cut_events(adapter.tap(_plan(api)), _plan(api), Usage(), 0.0) == b""


def _plan(api: str):
    from budget_proxy.providers import Plan
    return Plan(endpoint="x", model="m", body={}, streaming=True)

"""Each family's adapter as pure decisions: routes, plans, error envelopes, stream framing
and usage taps, as tables."""

from __future__ import annotations

import json

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from budget_proxy.config import ProviderConfig
from budget_proxy.providers import ADAPTERS, RequestProblem, adapter_for, tap_for
from budget_proxy.routing import RouteClass, classify
from budget_proxy.usage import Usage
from budget_proxy.wire import JSONArrayParser, NDJSONParser, json_element

PROVIDER = ProviderConfig(name="p", base_url="http://x", api="azure",
                          deployments={"prod": "gpt-4o"})


@pytest.mark.parametrize(
    ("api", "path", "route_class", "endpoint_or_reason"),
    [
        ("openai", "chat/completions", RouteClass.METERED, "chat.completions"),
        ("openai", "Chat/Completions", RouteClass.REFUSED, "not metered"),
        ("openai", "batches", RouteClass.REFUSED, "batch"),
        ("openai", "moderations", RouteClass.FREE, None),
        ("anthropic", "v1/messages", RouteClass.METERED, "messages"),
        ("anthropic", "v1/messages/batches", RouteClass.REFUSED, "batch"),
        ("gemini", "v1beta/models/gemini-2.5-pro:streamGenerateContent", RouteClass.METERED,
         "gemini"),
        ("gemini", "v1beta/models/gemini%2D2:generateContent", RouteClass.REFUSED,
         "not metered"),
        ("gemini", "v1beta/models/gemini-2.5-pro:countTokens", RouteClass.FREE, None),
        ("gemini", "v1beta/models/x:batchGenerateContent", RouteClass.REFUSED, "batch"),
        ("azure", "openai/deployments/prod/chat/completions", RouteClass.METERED,
         "chat.completions"),
        ("azure", "openai/deployments/prod/embeddings", RouteClass.METERED, "embeddings"),
        ("azure", "openai/v1/responses", RouteClass.METERED, "responses"),
        ("azure", "chat/completions", RouteClass.REFUSED, "not metered"),
        ("azure", "openai/deployments/prod/batches", RouteClass.REFUSED, "batch"),
        ("azure", "openai/deployments/prod/realtime", RouteClass.REFUSED, "realtime"),
        ("azure", "openai/files", RouteClass.FREE, None),
        ("ollama", "api/chat", RouteClass.METERED, "ollama.chat"),
        ("ollama", "api/generate", RouteClass.METERED, "ollama.generate"),
        ("ollama", "api/embed", RouteClass.METERED, "ollama.embed"),
        ("ollama", "api/show", RouteClass.FREE, None),
        ("ollama", "api/pull", RouteClass.REFUSED, "model management"),
    ],
)
def test_routes_of_each_family(api, path, route_class, endpoint_or_reason):
    found = classify(api, "POST", path)
    assert found.route_class is route_class
    if route_class is RouteClass.METERED:
        assert found.endpoint == endpoint_or_reason
    elif route_class is RouteClass.REFUSED:
        assert endpoint_or_reason in found.reason


def plan(api, endpoint, path, body, query=""):
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    return adapter_for(api).plan(endpoint, path, query, raw, PROVIDER)


@pytest.mark.parametrize(
    ("api", "endpoint", "path", "body", "expected"),
    [
        # (model, max output per choice, choices, streaming)
        ("openai", "chat.completions", "chat/completions",
         {"model": "m", "n": 4}, ("m", None, 4, False)),
        ("openai", "chat.completions", "chat/completions",
         {"model": "m", "n": 3, "max_tokens": 10, "stream": True}, ("m", 10, 3, True)),
        ("openai", "chat.completions", "chat/completions",
         {"model": "m", "max_completion_tokens": 50, "max_tokens": 10}, ("m", 50, 1, False)),
        ("openai", "chat.completions", "chat/completions",
         {"model": "m", "max_tokens": True, "n": 2.0}, ("m", None, 1, False)),
        ("openai", "chat.completions", "chat/completions",
         {"model": "m", "max_tokens": -5, "n": -2}, ("m", None, 1, False)),
        ("openai", "completions", "completions", {"model": "m", "n": 2, "max_tokens": 7},
         ("m", 7, 2, False)),
        ("openai", "responses", "responses", {"model": "m", "max_output_tokens": 9, "n": 5},
         ("m", 9, 1, False)),
        ("openai", "embeddings", "embeddings", {"model": "m", "input": "x"},
         ("m", 0, 1, False)),
        ("anthropic", "messages", "v1/messages", {"model": "c", "max_tokens": 1024, "n": 3},
         ("c", 1024, 1, False)),
        ("gemini", "gemini", "v1beta/models/gemini-2.5-pro:streamGenerateContent",
         {"generationConfig": {"maxOutputTokens": 100, "candidateCount": 2}},
         ("gemini-2.5-pro", 100, 2, True)),
        ("gemini", "gemini", "v1beta/models/g:generateContent",
         {"generationConfig": {"maxOutputTokens": "9", "candidateCount": -1}},
         ("g", None, 1, False)),
        ("gemini", "gemini", "v1beta/models/g:generateContent", {"generationConfig": [1]},
         ("g", None, 1, False)),
        ("azure", "chat.completions", "openai/deployments/prod/chat/completions",
         {"messages": [], "n": 2}, ("gpt-4o", None, 2, False)),
        ("azure", "chat.completions", "openai/deployments/unlisted/chat/completions",
         {"messages": []}, ("unlisted", None, 1, False)),
        ("azure", "chat.completions", "openai/v1/chat/completions",
         {"model": "prod", "max_tokens": 3}, ("gpt-4o", 3, 1, False)),
        ("ollama", "ollama.chat", "api/chat", {"model": "llama3"},
         ("llama3", None, 1, True)),
        ("ollama", "ollama.chat", "api/chat",
         {"model": "llama3", "stream": False, "options": {"num_predict": 64}},
         ("llama3", 64, 1, False)),
        ("ollama", "ollama.generate", "api/generate",
         {"model": "llama3", "options": {"num_predict": -1}}, ("llama3", None, 1, True)),
        ("ollama", "ollama.generate", "api/generate",
         {"model": "llama3", "options": "x"}, ("llama3", None, 1, True)),
        ("ollama", "ollama.embed", "api/embed", {"model": "e", "input": ["a"]},
         ("e", 0, 1, False)),
    ],
)
def test_plans(api, endpoint, path, body, expected):
    p = plan(api, endpoint, path, body)
    assert (p.model, p.max_output_tokens, p.choices, p.streaming) == expected


@pytest.mark.parametrize(
    ("api", "endpoint", "path", "body", "code"),
    [
        ("openai", "chat.completions", "chat/completions", b"{", "invalid_json"),
        ("openai", "chat.completions", "chat/completions", b"[1]", "invalid_json"),
        ("openai", "chat.completions", "chat/completions", {"model": 5}, "missing_model"),
        ("openai", "chat.completions", "chat/completions", {"model": ""}, "missing_model"),
        ("anthropic", "messages", "v1/messages", {"max_tokens": 1}, "missing_model"),
        ("gemini", "gemini", "v1beta/models/:generateContent", {}, "missing_model"),
        ("azure", "chat.completions", "openai/v1/chat/completions", {}, "missing_model"),
        ("azure", "chat.completions", "openai/deployments/a%41/chat/completions", {},
         "invalid_path"),
        ("ollama", "ollama.chat", "api/chat", {"model": ["x"]}, "missing_model"),
    ],
)
def test_requests_that_cannot_be_planned(api, endpoint, path, body, code):
    with pytest.raises(RequestProblem) as problem:
        plan(api, endpoint, path, body)
    assert problem.value.code == code


def test_a_stream_asks_for_usage_only_when_the_client_did_not():
    asked = plan("openai", "chat.completions", "chat/completions",
                 {"model": "m", "stream": True, "stream_options": {"x": 1}})
    assert asked.strip_usage and asked.rewritten
    assert orjson.loads(asked.upstream_body(b""))["stream_options"] == {
        "x": 1, "include_usage": True}
    given_ = plan("azure", "chat.completions", "openai/deployments/prod/chat/completions",
                  {"stream": True, "stream_options": {"include_usage": True}})
    assert not given_.strip_usage and given_.upstream_body(b"raw") == b"raw"


def test_the_model_can_only_move_when_the_body_names_it():
    p = plan("openai", "chat.completions", "chat/completions", {"model": "a"})
    moved = adapter_for("openai").with_model(p, "b")
    assert moved is not None and orjson.loads(moved.upstream_body(b""))["model"] == "b"
    assert adapter_for("gemini").with_model(
        plan("gemini", "gemini", "v1beta/models/g:generateContent", {}), "h") is None
    assert adapter_for("azure").with_model(
        plan("azure", "chat.completions", "openai/deployments/prod/chat/completions", {}),
        "gpt-4o-mini") is None


@pytest.mark.parametrize(
    ("api", "header"),
    [("openai", ("Authorization", "Bearer k")), ("anthropic", ("x-api-key", "k")),
     ("gemini", ("x-goog-api-key", "k")), ("azure", ("api-key", "k")),
     ("ollama", ("Authorization", "Bearer k"))],
)
def test_auth_headers(api, header):
    assert adapter_for(api).auth_headers("k") == dict([header])


def test_only_ollama_needs_no_key():
    assert {api for api, a in ADAPTERS.items() if not a.needs_key} == {"ollama"}


@pytest.mark.parametrize(
    ("api", "check"),
    [
        ("openai", lambda b: b["error"]["code"] == "c" and b["error"]["type"]),
        ("azure", lambda b: b["error"]["code"] == "c" and b["error"]["message"] == "m"),
        ("anthropic", lambda b: b["type"] == "error"
         and b["error"] == {"type": "rate_limit_error", "message": "m"}),
        ("gemini", lambda b: b["error"] == {"code": 429, "message": "m",
                                            "status": "RESOURCE_EXHAUSTED"}),
        ("ollama", lambda b: b == {"error": "m"}),
    ],
)
def test_error_envelopes(api, check):
    assert check(orjson.loads(adapter_for(api).error_body(429, "m", code="c")))


@pytest.mark.parametrize(
    ("deployments", "ok"),
    [({"a": "gpt-4o"}, True), ({}, True), ({"a": 5}, False), ({"a": None}, False),
     ("gpt-4o", False), ({"a": "x" * 10_000}, True)],
)
def test_deployments_config_is_a_table_of_names(deployments, ok):
    if ok:
        ProviderConfig(name="az", base_url="http://x", api="azure", deployments=deployments)
    else:
        with pytest.raises(ValidationError):
            ProviderConfig(name="az", base_url="http://x", api="azure",
                           deployments=deployments)


@pytest.mark.parametrize("value", ["yes", 5, [True]])
def test_key_required_is_a_bool(value):
    with pytest.raises(ValidationError):
        ProviderConfig(name="o", base_url="http://x", api="ollama", key_required=value)


# stream framing ----------------------------------------------------------------------------
def feed_in_pieces(parser, stream: bytes, size: int) -> list[bytes]:
    units = []
    for i in range(0, len(stream), size):
        units.extend(parser.feed(stream[i:i + size]))
    rest = parser.flush()
    return [*units, rest] if rest else units


GEMINI_ARRAY = (b'[{"candidates": [{"content": {"parts": [{"text": "a ] } \\" {"}]}}]}\n'
                b',\r\n{"usageMetadata": {"promptTokenCount": 3}, "x": [1, [2]]}\n]')


@pytest.mark.parametrize("size", [1, 2, 3, 5, 64, 10_000])
def test_json_array_units_are_its_elements(size):
    units = feed_in_pieces(JSONArrayParser(), GEMINI_ARRAY, size)
    assert b"".join(units) == GEMINI_ARRAY
    elements = [json_element(u) for u in units[:-1]]
    assert [json.loads(e) for e in elements] == json.loads(GEMINI_ARRAY)
    assert units[-1] == b"\n]"


@pytest.mark.parametrize("size", [1, 4, 1000])
def test_ndjson_units_are_lines(size):
    stream = b'{"a": 1}\n{"b": "x\\ny"}\n\n{"done": true}'
    units = feed_in_pieces(NDJSONParser(), stream, size)
    assert b"".join(units) == stream
    assert units == [b'{"a": 1}\n', b'{"b": "x\\ny"}\n', b"\n", b'{"done": true}']


@given(st.binary(max_size=200), st.integers(min_value=1, max_value=17))
def test_parsers_relay_any_bytes_unchanged(stream, size):
    for parser in (JSONArrayParser(), NDJSONParser()):
        assert b"".join(feed_in_pieces(parser, stream, size)) == stream


# taps --------------------------------------------------------------------------------------
def test_ollama_tap_reads_the_done_line_and_the_text():
    tap = tap_for("ollama", "ollama.chat", streaming=True)
    for line in (b'{"message": {"content": "Hel"}, "done": false}\n',
                 b'{"message": {"content": "lo"}, "done": false}\n', b"not json\n",
                 b'{"message": {"content": ""}, "done": true, "prompt_eval_count": 26, '
                 b'"eval_count": 2}\n'):
        assert tap.observe_event(line) is True
    assert tap.usage == Usage(input_tokens=26, output_tokens=2)
    assert tap.output_text() == "Hello"


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ({"done": True, "eval_count": 4}, Usage(output_tokens=4)),  # prompt from cache
        ({"done": True, "prompt_eval_count": -3, "eval_count": 4},
         Usage(output_tokens=4, flags=("negative_count",), trusted=False)),
        ({"done": True, "prompt_eval_count": "9", "eval_count": 10**12},
         Usage(output_tokens=100_000_000, flags=("wrong_type", "absurd_count"),
               trusted=False)),
        ({"done": True, "prompt_eval_count": 5},
         Usage(input_tokens=5, flags=("missing_count",), trusted=False)),
        ({"done": False, "prompt_eval_count": 5, "eval_count": 1}, None),
    ],
)
def test_ollama_usage_is_clamped_and_flagged(answer, expected):
    tap = tap_for("ollama", "ollama.generate")
    tap.observe_answer(orjson.dumps(answer))
    assert tap.usage == expected


def test_ollama_embed_reports_input_only():
    tap = tap_for("ollama", "ollama.embed")
    tap.observe_answer(b'{"embeddings": [[0.1]], "prompt_eval_count": 8}')
    assert tap.usage == Usage(input_tokens=8)


def gemini_chunk(text, candidates, finish=None):
    cand = {"content": {"parts": [{"text": text}]}, "index": 0}
    if finish:
        cand["finishReason"] = finish
    return {"candidates": [cand], "usageMetadata": {
        "promptTokenCount": 100, "candidatesTokenCount": candidates,
        "cachedContentTokenCount": 40, "thoughtsTokenCount": 7}}


def test_gemini_tap_takes_the_finished_chunks_usage():
    tap = tap_for("gemini", "gemini", streaming=True)
    for i, unit in enumerate((b"[" + orjson.dumps(gemini_chunk("a", 1)),
                              b",\r\n" + orjson.dumps(gemini_chunk("b", 2, "STOP")))):
        tap.observe_event(unit)
        if i == 0:
            assert tap.usage is None  # an unfinished chunk's figures are not final
    assert tap.usage == Usage(input_tokens=60, cached_input_tokens=40, output_tokens=9,
                              reasoning_tokens=7)
    assert tap.output_text() == "ab"


def test_a_gemini_stream_cut_short_settles_from_its_last_figures():
    tap = tap_for("gemini", "gemini", streaming=True)
    tap.observe_event(b"data: " + orjson.dumps(gemini_chunk("abc", 3)) + b"\r\n\r\n")
    assert tap.fallback_usage(500, 1, complete=False) == Usage(
        input_tokens=60, cached_input_tokens=40, output_tokens=10, trusted=False)

import json

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from budget_proxy.providers import tap_for
from budget_proxy.usage import Usage
from budget_proxy.wire import SSEParser, error_body, event_data


def sse(obj, event=None) -> bytes:
    head = f"event: {event}\n".encode() if event else b""
    return head + b"data: " + orjson.dumps(obj) + b"\n\n"


def test_sse_parser_reassembles_events_split_anywhere():
    stream = sse({"a": 1}) + sse({"b": "x\ny"}) + b"data: [DONE]\n\n"
    for size in (1, 2, 3, 7, 64):
        parser = SSEParser()
        events = []
        for i in range(0, len(stream), size):
            events.extend(parser.feed(stream[i:i + size]))
        assert b"".join(events) == stream
        assert len(events) == 3
        assert parser.flush() == b""


def test_sse_parser_handles_crlf_and_multiline_data():
    parser = SSEParser()
    events = parser.feed(b"event: x\r\ndata: {\"a\":\r\ndata: 1}\r\n\r\n")
    assert len(events) == 1
    name, data = event_data(events[0])
    assert name == "x" and orjson.loads(data) == {"a": 1}


def test_openai_stream_tap_strips_only_the_usage_chunk_it_asked_for():
    tap = tap_for("openai", "chat.completions", strip_usage_chunk=True)
    chunk = sse({"model": "gpt-4o", "choices": [{"delta": {"content": "Hel"}}], "usage": None})
    usage_chunk = sse({"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 2}})
    assert tap.observe_event(chunk) is True
    assert tap.observe_event(usage_chunk) is False
    assert tap.observe_event(b"data: [DONE]\n\n") is True
    assert tap.usage == Usage(input_tokens=9, output_tokens=2)
    assert tap.streamed_text() == "Hel"
    keep = tap_for("openai", "chat.completions", strip_usage_chunk=False)
    assert keep.observe_event(usage_chunk) is True


def test_anthropic_stream_tap():
    tap = tap_for("anthropic", "messages")
    tap.observe_event(sse({"type": "message_start", "message": {
        "model": "claude-sonnet-4-5", "usage": {"input_tokens": 12, "output_tokens": 1,
                                                "cache_read_input_tokens": 100}}},
        "message_start"))
    tap.observe_event(sse({"type": "content_block_delta", "index": 0,
                           "delta": {"type": "text_delta", "text": "Hi"}}))
    assert tap.usage is None
    tap.observe_event(sse({"type": "message_delta", "delta": {}, "usage": {"output_tokens": 30}}))
    assert tap.usage == Usage(input_tokens=12, cached_input_tokens=100, output_tokens=30)
    assert tap.streamed_text() == "Hi"


def test_responses_stream_tap():
    tap = tap_for("openai", "responses")
    tap.observe_event(sse({"type": "response.output_text.delta", "delta": "ok"},
                          "response.output_text.delta"))
    tap.observe_event(sse({"type": "response.completed", "response": {
        "model": "gpt-4o", "usage": {"input_tokens": 5, "output_tokens": 7}}},
        "response.completed"))
    assert tap.usage == Usage(input_tokens=5, output_tokens=7)
    assert tap.model == "gpt-4o"


def test_error_envelopes_match_the_providers():
    openai = orjson.loads(error_body("openai", 429, "over", code="budget_exceeded"))
    assert openai == {"error": {"message": "over", "type": "insufficient_quota", "param": None,
                                "code": "budget_exceeded"}}
    anthropic = orjson.loads(error_body("anthropic", 429, "over"))
    assert anthropic == {"type": "error", "error": {"type": "rate_limit_error", "message": "over"}}


# line endings -----------------------------------------------------------------------------
def feed_in(stream: bytes, cuts: list[int]) -> tuple[list[bytes], bytes]:
    """(events, what flush returned) for the stream cut at these offsets."""
    parser = SSEParser()
    events: list[bytes] = []
    last = 0
    for cut in [*sorted(cuts), len(stream)]:
        events.extend(parser.feed(stream[last:cut]))
        last = cut
    return events, parser.flush()


def payloads(events: list[bytes]) -> list[bytes]:
    return [data for _, data in map(event_data, events) if data]


@pytest.mark.parametrize(
    ("stream", "expected"),
    [
        (b"data: 1\n\ndata: 2\n\n", [b"1", b"2"]),
        (b"data: 1\r\rdata: 2\r\r", [b"1", b"2"]),  # CR only
        (b"data: 1\r\n\r\ndata: 2\r\n\r\n", [b"1", b"2"]),
        (b"data: 1\r\n\ndata: 2\r\r\ndata: 3\n\r", [b"1", b"2", b"3"]),  # mixed
        (b"data: a\r\ndata: b\r\n\r\n", [b"a\nb"]),  # multi-line data joined with LF
        (b"event: x\rdata: {}\r\r", [b"{}"]),
        (b"\n\n\ndata: 1\n\n", [b"1"]),  # blank lines before an event
        (b": comment\r\n\r\ndata: 1\r\n\r\n", [b"1"]),
        (b"data:1\n\n", [b"1"]),  # no space after the colon
        (b"data:  1\n\n", [b" 1"]),  # only one space is removed
    ],
)
@pytest.mark.parametrize("cut", ["whole", "every-byte", "halves"])
def test_sse_line_endings(stream, expected, cut):
    cuts = {"whole": [], "every-byte": list(range(1, len(stream))),
            "halves": [len(stream) // 2]}[cut]
    events, rest = feed_in(stream, cuts)
    assert payloads(events) == expected
    assert b"".join(events) + rest == stream  # relayed byte for byte
    assert rest in (b"", b"\n")  # at most the LF of a CRLF the last read split


def test_a_crlf_split_between_two_reads_is_one_line_ending():
    parser = SSEParser()
    assert parser.feed(b"data: 1\r\n\r") == [b"data: 1\r\n\r"]  # relayed at once
    # the LF ending that CRLF comes with the next event, not as a blank line of its own
    assert parser.feed(b"\ndata: 2\r\n\r") == [b"\ndata: 2\r\n\r"]
    assert parser.feed(b"\n") == []
    assert parser.feed(b"data: 3\n\n") == [b"\ndata: 3\n\n"]
    assert parser.flush() == b""


def test_a_cr_ending_a_read_ends_its_line_at_once():
    parser = SSEParser()
    assert parser.feed(b"data: 1\r") == []
    assert parser.feed(b"\r") == [b"data: 1\r\r"]
    assert parser.feed(b"data: 2\r") == []
    assert parser.flush() == b"data: 2\r"
    assert event_data(b"data: 2\r") == (None, b"2")


def test_a_huge_event_in_many_reads():
    data = b"data: " + b"x" * 2_000_000 + b"\r\n\r\n"
    events, rest = feed_in(data, list(range(65_536, len(data), 65_536)))
    assert events == [data] and rest == b""


@given(st.lists(st.sampled_from([b"data: a", b"data: {\"b\": 1}", b"event: e", b": c", b"",
                                 b"data:"]), max_size=12),
       st.lists(st.sampled_from([b"\n", b"\r", b"\r\n"]), min_size=1, max_size=12),
       st.lists(st.integers(min_value=0, max_value=200), max_size=8))
def test_any_stream_is_relayed_byte_for_byte(lines, endings, cuts):
    stream = b"".join(line + endings[i % len(endings)] for i, line in enumerate(lines))
    events, rest = feed_in(stream, [c for c in cuts if c <= len(stream)])
    assert b"".join(events) + rest == stream
    whole, whole_rest = feed_in(stream, [])
    assert payloads([*events, rest]) == payloads([*whole, whole_rest])


# the tap is total ---------------------------------------------------------------------------
JSON_ANY = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats() | st.text(max_size=4),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(
        st.sampled_from(["type", "choices", "delta", "content", "usage", "message", "model",
                         "response", "candidates", "parts", "text", "tool_calls", "function",
                         "arguments", "prompt_tokens", "output_tokens", "input_tokens",
                         "usageMetadata", "promptTokenCount", "index", "x"]),
        children, max_size=5),
    max_leaves=25,
)
TAPS = [("openai", "chat.completions"), ("openai", "completions"), ("openai", "responses"),
        ("openai", "embeddings"), ("anthropic", "messages"), ("gemini", "gemini")]
KINDS = st.sampled_from(["message_start", "message_delta", "message_stop",
                         "content_block_delta", "response.completed",
                         "response.output_text.delta", None])


@given(st.lists(st.tuples(KINDS, JSON_ANY), max_size=6), st.booleans())
def test_the_tap_never_raises_on_any_json(events, strip):
    for api, endpoint in TAPS:
        tap = tap_for(api, endpoint, strip_usage_chunk=strip)
        for kind, value in events:
            if isinstance(value, dict) and kind is not None:
                value = {**value, "type": kind}
            raw = json.dumps(value).encode()  # big integers, NaN and Infinity included
            assert tap.observe_event(b"data: " + raw + b"\n\n") in (True, False)
        answer = tap_for(api, endpoint)
        answer.observe_answer(raw if events else b"")
        for t in (tap, answer):
            fallback = t.fallback_usage(10, 5, complete=True)
            assert not fallback.trusted
            assert isinstance(t.output_text(), str)


@pytest.mark.parametrize(
    "event",
    [
        b'data: {"choices": [1]}\n\n',
        b'data: {"choices": [{"delta": [1]}, null, "x"], "usage": [1]}\n\n',
        b'data: {"choices": {"a": 1}, "model": 5}\n\n',
        b'data: {"choices": [{"delta": {"tool_calls": [1, {"function": "x"}]}}]}\n\n',
        b'data: {"usage": {"prompt_tokens_details": "x", "prompt_tokens": 1}}\n\n',
        b"data: hello\n\n",
        b"data: [1, 2]\n\n",
        b"data: \xff\xfe\n\n",
        b"event: \xff\ndata: {}\n\n",
        b"data: " + b"[" * 3000 + b"]" * 3000 + b"\n\n",
        b"data: {\"usage\": {\"prompt_tokens\": 1e400}}\n\n",
    ],
)
@pytest.mark.parametrize(("api", "endpoint"), TAPS)
def test_wrong_types_in_events_are_skipped(event, api, endpoint):
    tap = tap_for(api, endpoint, strip_usage_chunk=True)
    assert tap.observe_event(event) in (True, False)


def test_a_wrong_typed_usage_chunk_is_still_read_and_flagged():
    tap = tap_for("openai", "chat.completions", strip_usage_chunk=True)
    assert tap.observe_event(sse({"choices": [], "usage": {
        "prompt_tokens": -1_000_000, "completion_tokens": 2}})) is False  # still hidden
    assert tap.usage == Usage(output_tokens=2, flags=("negative_count",), trusted=False)


def test_a_huge_count_orjson_refuses_is_read_and_clamped():
    tap = tap_for("openai", "chat.completions")
    tap.observe_answer(b'{"usage": {"prompt_tokens": 1e400, "completion_tokens": 3}}')
    assert tap.usage is not None and tap.usage.flags == ("absurd_count",)


@pytest.mark.parametrize(
    ("answer", "text"),
    [
        (b'{"choices": [{"message": {"content": "Hello", "tool_calls": [{"function": '
         b'{"arguments": "{}"}}]}}]}', "Hello{}"),
        (b'{"content": [{"type": "text", "text": "Hi"}, {"type": "thinking", '
         b'"thinking": "hmm"}]}', "Hihmm"),
        (b'{"output": [{"content": [{"type": "output_text", "text": "ok"}]}]}', "ok"),
        (b'{"candidates": [{"content": {"parts": [{"text": "g"}]}}]}', "g"),
        (b'{"usage": {"text": "not output"}, "choices": [1, "x", null]}', ""),
        (b"[" * 5000 + b"]" * 5000, ""),
        (b"<html>oops</html>", ""),
        (b"", ""),
    ],
)
def test_the_text_of_an_answer_is_found_in_any_shape(answer, text):
    tap = tap_for("openai", "chat.completions")
    tap.observe_answer(answer)
    assert tap.output_text() == text


@pytest.mark.parametrize(
    ("events", "complete", "expected"),
    [
        # a stream cut short: our count of the input, the output seen; not flagged
        ([], False, Usage(input_tokens=100, output_tokens=7, trusted=False)),
        # a complete answer without usage: the same, flagged
        ([], True, Usage(input_tokens=100, output_tokens=7, flags=("unparseable_usage",),
                         trusted=False)),
        # Anthropic's confirmed input, the larger of its output and ours
        ([("message_start", {"message": {"usage": {"input_tokens": 12, "output_tokens": 1,
                                                   "cache_read_input_tokens": 4}}}),
          ("message_delta", {"usage": {"output_tokens": 30}})], False,
         Usage(input_tokens=12, cached_input_tokens=4, output_tokens=30, trusted=False)),
        # an unusable output figure: its input still stands, the output is ours
        ([("message_start", {"message": {"usage": {"input_tokens": 12, "output_tokens": 1}}}),
          ("message_delta", {"usage": {"output_tokens": -9}})], True,
         Usage(input_tokens=12, output_tokens=7, flags=("negative_count",), trusted=False)),
        # an unusable input figure: our count of the input
        ([("message_start", {"message": {"usage": "x"}}),
          ("message_delta", {"usage": {"output_tokens": 9}})], True,
         Usage(input_tokens=100, output_tokens=7, flags=("wrong_type",), trusted=False)),
    ],
)
def test_fallback_usage(events, complete, expected):
    tap = tap_for("anthropic", "messages")
    for kind, payload in events:
        tap.observe_event(sse({"type": kind, **payload}, kind))
    assert tap.fallback_usage(100, 7, complete=complete) == expected

import orjson
import pytest

from budget_proxy.usage import Usage
from budget_proxy.wire import (
    SSEParser,
    UsageTap,
    error_body,
    event_data,
    requested_max_output,
)


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
    tap = UsageTap("openai", "chat.completions", strip_usage_chunk=True)
    chunk = sse({"model": "gpt-4o", "choices": [{"delta": {"content": "Hel"}}], "usage": None})
    usage_chunk = sse({"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 2}})
    assert tap.observe_event(chunk) is True
    assert tap.observe_event(usage_chunk) is False
    assert tap.observe_event(b"data: [DONE]\n\n") is True
    assert tap.usage == Usage(input_tokens=9, output_tokens=2)
    assert tap.streamed_text() == "Hel"
    keep = UsageTap("openai", "chat.completions", strip_usage_chunk=False)
    assert keep.observe_event(usage_chunk) is True


def test_anthropic_stream_tap():
    tap = UsageTap("anthropic", "messages")
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
    tap = UsageTap("openai", "responses")
    tap.observe_event(sse({"type": "response.output_text.delta", "delta": "ok"},
                          "response.output_text.delta"))
    tap.observe_event(sse({"type": "response.completed", "response": {
        "model": "gpt-4o", "usage": {"input_tokens": 5, "output_tokens": 7}}},
        "response.completed"))
    assert tap.usage == Usage(input_tokens=5, output_tokens=7)
    assert tap.model == "gpt-4o"


@pytest.mark.parametrize(
    ("endpoint", "body", "expected"),
    [
        ("chat.completions", {"max_completion_tokens": 50, "max_tokens": 10}, 50),
        ("chat.completions", {"max_tokens": 10, "n": 3}, 30),
        ("chat.completions", {}, None),
        ("responses", {"max_output_tokens": 9}, 9),
        ("messages", {"max_tokens": 1024}, 1024),
        ("embeddings", {}, 0),
        ("chat.completions", {"max_tokens": True}, None),
    ],
)
def test_requested_max_output(endpoint, body, expected):
    assert requested_max_output(endpoint, body) == expected


def test_error_envelopes_match_the_providers():
    openai = orjson.loads(error_body("openai", 429, "over", code="budget_exceeded"))
    assert openai == {"error": {"message": "over", "type": "insufficient_quota", "param": None,
                                "code": "budget_exceeded"}}
    anthropic = orjson.loads(error_body("anthropic", 429, "over"))
    assert anthropic == {"type": "error", "error": {"type": "rate_limit_error", "message": "over"}}

"""Tests for offline input-token counting (budget_proxy.tokens)."""

import asyncio
import os
import random
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from tiktoken_ext import openai_public

from budget_proxy import tokens
from budget_proxy.tokens import (
    AUDIO_TOKENS,
    DOCUMENT_TOKENS,
    IMAGE_TOKENS_ANTHROPIC,
    IMAGE_TOKENS_OPENAI,
    TokenizerDataError,
    approximation_factor,
    count_request_input,
    count_request_input_async,
    count_text,
    encoding_name_for_model,
    get_encoding,
    is_exact_model,
)

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True, scope="module")
def _warm() -> None:
    tokens.warm_up()


def ceil_scale(n: int, percent: int) -> int:
    return -(-n * percent // 100)


def o200k(text: str) -> int:
    return count_text(text, "gpt-4o")


def varied_text(n_chars: int, seed: int = 1234) -> str:
    """Deterministic prose/code-like text with ASCII, accents, CJK, emoji and newlines."""
    rng = random.Random(seed)
    vocab = [
        "".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=rng.randint(2, 11)))
        for _ in range(4000)
    ]
    vocab += ["The", "of", "and", "def", "return", "{", "}", "()", "->", "42", "3.14", "x=1;"]
    vocab += ["naïve", "café", "Größe", "日本語", "お誕生日", "🙂", "\n", "\n\n", "  ", "\t"]
    text = " ".join(rng.choices(vocab, k=n_chars // 5 + 10))
    while len(text) < n_chars:
        text += " " + text
    return text[:n_chars]


# ---------------------------------------------------------------------------
# Encodings
# ---------------------------------------------------------------------------

# Token ids published in OpenAI's "How to count tokens with tiktoken" cookbook.
CANONICAL_IDS = [
    ("o200k_base", "hello world", [24912, 2375]),
    ("cl100k_base", "hello world", [15339, 1917]),
    ("o200k_base", "tiktoken is great!", [83, 8251, 2488, 382, 2212, 0]),
    ("cl100k_base", "tiktoken is great!", [83, 1609, 5963, 374, 2294, 0]),
    ("o200k_base", "antidisestablishmentarianism", [493, 129901, 376, 160388, 21203, 2367]),
    ("cl100k_base", "antidisestablishmentarianism", [519, 85342, 34500, 479, 8997, 2191]),
    ("o200k_base", "2 + 2 = 4", [17, 659, 220, 17, 314, 220, 19]),
    ("cl100k_base", "2 + 2 = 4", [17, 489, 220, 17, 284, 220, 19]),
    ("o200k_base", "お誕生日おめでとう", [8930, 9697, 243, 128225, 8930, 17693, 4344, 48669]),
    (
        "cl100k_base",
        "お誕生日おめでとう",
        [33334, 45918, 243, 21990, 9080, 33334, 62004, 16556, 78699],
    ),
]


@pytest.mark.parametrize(("encoding", "text", "ids"), CANONICAL_IDS)
def test_canonical_token_ids(encoding: str, text: str, ids: list[int]) -> None:
    assert get_encoding(encoding).encode_ordinary(text) == ids


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("hello world", 2),
        ("", 0),
        ("user", 1),
        ("system", 1),
        ("assistant", 1),
        ("Be brief.", 3),
        ("hello world hello world hello", 5),
    ],
)
@pytest.mark.parametrize("model", ["gpt-4o", "gpt-4"])
def test_count_text_exact(text: str, expected: int, model: str) -> None:
    assert count_text(text, model) == expected


def test_special_tokens_are_counted_as_text() -> None:
    assert count_text("<|endoftext|>", "gpt-4o") == 7
    assert count_text("<|endofprompt|> <|fim_prefix|>", "gpt-4") > 2


def test_constants_match_tiktoken_official_constructors(monkeypatch: pytest.MonkeyPatch) -> None:
    requested: dict[str, str] = {}

    def fake_load(url: str, expected_hash: str) -> dict[bytes, int]:
        requested[url.rsplit("/", 1)[-1]] = expected_hash
        return {}

    monkeypatch.setattr(openai_public, "load_tiktoken_bpe", fake_load)
    for name in ("o200k_base", "cl100k_base"):
        official = getattr(openai_public, name)()
        encoding = get_encoding(name)
        assert encoding._pat_str == official["pat_str"]
        assert encoding._special_tokens == official["special_tokens"]
        assert tokens._EXPECTED_SHA256[name] == requested[f"{name}.tiktoken"]


def test_hash_mismatch_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(tokens._EXPECTED_SHA256, "cl100k_base", "0" * 64)
    with pytest.raises(TokenizerDataError, match="cl100k_base rank file is corrupted"):
        tokens._load_encoding("cl100k_base")


def test_corrupted_rank_file_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    genuine = tokens._read_rank_file("cl100k_base")
    corrupted = genuine.replace(b"IQ== 0\n", b"IQ== 1\n", 1)
    assert corrupted != genuine
    monkeypatch.setattr(tokens, "_read_rank_file", lambda name: corrupted)
    monkeypatch.setattr(tokens, "_ENCODINGS", {})
    with pytest.raises(TokenizerDataError, match="sha256"):
        get_encoding("cl100k_base")


def test_missing_rank_file_is_a_clear_error() -> None:
    with pytest.raises(TokenizerDataError, match="cannot read"):
        tokens._read_rank_file("p50k_base")


def test_unknown_encoding_name() -> None:
    with pytest.raises(ValueError, match="unsupported encoding"):
        get_encoding("r50k_base")


def test_loading_never_touches_the_network(tmp_path: Path) -> None:
    script = """
import os, socket, sys
attempts = []
def deny(*args, **kwargs):
    attempts.append(args)
    raise OSError("network disabled")
socket.socket.connect = deny
socket.socket.connect_ex = deny
socket.getaddrinfo = deny
socket.create_connection = deny
from budget_proxy import tokens
tokens.warm_up()
assert tokens.count_text("hello world", "gpt-4o") == 2
assert tokens.count_text("hello world", "gpt-4") == 2
assert attempts == [], attempts
assert os.listdir(os.environ["TIKTOKEN_CACHE_DIR"]) == []
assert "requests" not in sys.modules
print("offline-ok")
"""
    env = {**os.environ, "TIKTOKEN_CACHE_DIR": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "offline-ok" in result.stdout


@pytest.mark.parametrize("chunk_chars", [16, 64, 1000])
@pytest.mark.parametrize("encoding", ["o200k_base", "cl100k_base"])
def test_chunked_counting_equals_whole_text(
    monkeypatch: pytest.MonkeyPatch, chunk_chars: int, encoding: str
) -> None:
    enc = get_encoding(encoding)
    text = varied_text(30_000, seed=chunk_chars) + " a  b\n c 's 're 123 456 ... " + "x" * 500
    monkeypatch.setattr(tokens, "_CHUNK_CHARS", chunk_chars)
    assert tokens._count_ordinary(enc, text) == len(enc.encode_ordinary(text))


# ---------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "encoding", "factor"),
    [
        ("gpt-4o", "o200k_base", 1.0),
        ("gpt-4o-mini", "o200k_base", 1.0),
        ("gpt-4o-2024-08-06", "o200k_base", 1.0),
        ("openai/gpt-4o", "o200k_base", 1.0),
        ("ft:gpt-4o-mini:org::id", "o200k_base", 1.0),
        ("ft:gpt-4o-mini-2024-07-18:acme:custom:9abc", "o200k_base", 1.0),
        ("GPT-4o", "o200k_base", 1.0),
        ("chatgpt-4o-latest", "o200k_base", 1.0),
        ("gpt-4.1", "o200k_base", 1.0),
        ("gpt-4.1-nano", "o200k_base", 1.0),
        ("gpt-4.5-preview", "o200k_base", 1.0),
        ("gpt-5", "o200k_base", 1.0),
        ("gpt-5-mini", "o200k_base", 1.0),
        ("gpt-5.1", "o200k_base", 1.0),
        ("o1", "o200k_base", 1.0),
        ("o1-preview", "o200k_base", 1.0),
        ("o3-mini", "o200k_base", 1.0),
        ("o4-mini-2025-04-16", "o200k_base", 1.0),
        ("gpt-oss-120b", "o200k_base", 1.0),
        ("openai.gpt-oss-20b-1:0", "o200k_base", 1.0),
        ("gpt-realtime", "o200k_base", 1.0),
        ("gpt-4", "cl100k_base", 1.0),
        ("gpt-4-0613", "cl100k_base", 1.0),
        ("gpt-4-turbo", "cl100k_base", 1.0),
        ("gpt-4-32k", "cl100k_base", 1.0),
        ("gpt-3.5-turbo", "cl100k_base", 1.0),
        ("gpt-3.5-turbo-instruct", "cl100k_base", 1.0),
        ("ft:gpt-3.5-turbo-0125:org::id", "cl100k_base", 1.0),
        ("azure/gpt-35-turbo", "cl100k_base", 1.0),
        ("text-embedding-3-small", "cl100k_base", 1.0),
        ("text-embedding-3-large", "cl100k_base", 1.0),
        ("text-embedding-ada-002", "cl100k_base", 1.0),
        ("davinci-002", "cl100k_base", 1.0),
        ("ft:babbage-002:org::id", "cl100k_base", 1.0),
        ("claude-sonnet-4-5", "o200k_base", 1.2),
        ("claude-3-5-sonnet@20240620", "o200k_base", 1.2),
        ("anthropic/claude-3.5-sonnet", "o200k_base", 1.2),
        ("us.anthropic.claude-3-5-sonnet-20241022-v2:0", "o200k_base", 1.2),
        ("gemini-2.5-pro", "o200k_base", 1.1),
        ("models/gemini-1.5-flash", "o200k_base", 1.1),
        ("mistral-large-latest", "o200k_base", 1.15),
        ("meta-llama/Llama-3.1-70B-Instruct", "o200k_base", 1.15),
        ("deepseek-chat", "o200k_base", 1.15),
        ("grok-4", "o200k_base", 1.15),
        ("qwen2.5-72b-instruct", "o200k_base", 1.15),
        ("omni-unknown", "o200k_base", 1.15),
        ("", "o200k_base", 1.15),
    ],
)
def test_model_table(model: str, encoding: str, factor: float) -> None:
    assert encoding_name_for_model(model) == encoding
    assert is_exact_model(model) is (factor == 1.0)
    assert approximation_factor(model) == factor


@pytest.mark.parametrize(
    ("model", "percent"),
    [("claude-opus-4", 120), ("gemini-2.0-flash", 110), ("llama-3-8b", 115), ("gpt-4o", 100)],
)
def test_approximation_factor_rounds_up(model: str, percent: int) -> None:
    text = varied_text(5_000)
    base = o200k(text)
    assert count_text(text, model) == ceil_scale(base, percent)


def test_approximation_uses_exact_integer_rounding() -> None:
    # 5 * 1.2 is 6.000000000000001 in floating point; the count must still be 6.
    assert count_text("hello world hello world hello", "claude-3-haiku") == 6
    assert count_text("hello world", "claude-3-haiku") == 3
    assert count_text("", "claude-3-haiku") == 0


# ---------------------------------------------------------------------------
# Request shapes
# ---------------------------------------------------------------------------

COOKBOOK_MESSAGES = [
    {
        "role": "system",
        "content": "You are a helpful, pattern-following assistant that translates corporate "
        "jargon into plain English.",
    },
    {
        "role": "system",
        "name": "example_user",
        "content": "New synergies will help drive top-line growth.",
    },
    {
        "role": "system",
        "name": "example_assistant",
        "content": "Things working well together will increase revenue.",
    },
    {
        "role": "system",
        "name": "example_user",
        "content": "Let's circle back when we have more bandwidth to touch base on opportunities "
        "for increased leverage.",
    },
    {
        "role": "system",
        "name": "example_assistant",
        "content": "Let's talk later when we're less busy about how to do better.",
    },
    {
        "role": "user",
        "content": "This late pivot means we don't have time to boil the ocean for the client "
        "deliverable.",
    },
]

COOKBOOK_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_current_weather",
            "description": "Get the current weather in a given location",
            "parameters": {
                "type": "object",
                "properties": {
                    "location": {
                        "type": "string",
                        "description": "The city and state, e.g. San Francisco, CA",
                    },
                    "unit": {
                        "type": "string",
                        "description": "The unit of temperature to return",
                        "enum": ["celsius", "fahrenheit"],
                    },
                },
                "required": ["location"],
            },
        },
    }
]


@pytest.mark.parametrize(
    ("model", "api_count"), [("gpt-4o", 124), ("gpt-4o-mini", 124), ("gpt-4", 129)]
)
def test_chat_matches_cookbook_api_counts(model: str, api_count: int) -> None:
    body = {"model": model, "messages": COOKBOOK_MESSAGES}
    assert count_request_input("chat.completions", body) == api_count


@pytest.mark.parametrize(("model", "api_count"), [("gpt-4o", 101), ("gpt-4", 105)])
def test_chat_tools_json_overestimates_cookbook_api_counts(model: str, api_count: int) -> None:
    messages = [
        {
            "role": "system",
            "content": "You are a helpful assistant that can answer to questions about the "
            "weather.",
        },
        {"role": "user", "content": "What's the weather like in San Francisco?"},
    ]
    body = {"model": model, "messages": messages, "tools": COOKBOOK_TOOLS}
    counted = count_request_input("chat.completions", body)
    assert api_count <= counted <= api_count * 1.5


def test_chat_simple_and_name() -> None:
    body: dict[str, Any] = {
        "model": "gpt-4o",
        "messages": [{"role": "user", "content": "hello world"}],
    }
    assert count_request_input("chat.completions", body) == 3 + 1 + 2 + 3
    body["messages"][0]["name"] = "bob"
    assert count_request_input("chat.completions", body) == 3 + 1 + 2 + 1 + 1 + 3


def test_chat_content_parts() -> None:
    content = [
        {"type": "text", "text": "hello world"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA", "detail": "high"}},
        {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}},
        {"type": "file", "file": {"file_id": "file-abc"}},
        {"type": "text", "text": "hello world"},
    ]
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": content}]}
    expected = 3 + 1 + 2 + IMAGE_TOKENS_OPENAI + AUDIO_TOKENS + DOCUMENT_TOKENS + 2 + 3
    assert count_request_input("chat.completions", body) == expected


def test_chat_tool_calls_and_tools() -> None:
    messages = [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        {"role": "assistant", "function_call": {"name": "get_weather", "arguments": "{}"}},
    ]
    body = {"model": "gpt-4o", "messages": messages, "tools": COOKBOOK_TOOLS}
    expected = (
        (3 + 1 + o200k("get_weather") + o200k('{"city":"Paris"}'))
        + (3 + o200k("tool") + o200k("call_1") + o200k("sunny"))
        + (3 + 1 + o200k("get_weather") + o200k("{}"))
        + 3
        + o200k(orjson.dumps(COOKBOOK_TOOLS).decode())
    )
    assert count_request_input("chat.completions", body) == expected

    legacy = {"model": "gpt-4o", "messages": [], "functions": [COOKBOOK_TOOLS[0]["function"]]}
    expected_legacy = 3 + o200k(orjson.dumps(legacy["functions"]).decode())
    assert count_request_input("chat.completions", legacy) == expected_legacy


def test_chat_for_approximate_model_scales_text_but_not_fixed_estimates() -> None:
    content = [{"type": "text", "text": "hello world"}, {"type": "image_url", "image_url": {}}]
    body = {"model": "claude-sonnet-4-5", "messages": [{"role": "user", "content": content}]}
    expected = ceil_scale(1 + 2, 120) + 3 + IMAGE_TOKENS_OPENAI + 3
    assert count_request_input("chat.completions", body) == expected


def test_responses_string_input() -> None:
    body = {"model": "gpt-4.1", "instructions": "Be brief.", "input": "hello world"}
    assert count_request_input("responses", body) == (3 + 3) + (3 + 2) + 3
    assert count_request_input("responses", {"model": "gpt-4.1", "input": "hi"}) == 7


def test_responses_item_list_and_tools() -> None:
    reasoning = {"type": "reasoning", "id": "rs_1", "summary": []}
    items = [
        {
            "role": "user",
            "content": [
                {"type": "input_text", "text": "hello world"},
                {"type": "input_image", "image_url": "https://example.com/cat.png"},
                {"type": "input_file", "file_id": "file-abc"},
            ],
        },
        {
            "type": "message",
            "role": "assistant",
            "content": [{"type": "output_text", "text": "ok"}],
        },
        {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": "ok"},
        reasoning,
    ]
    tools = [{"type": "function", "name": "f", "parameters": {"type": "object"}}]
    body = {"model": "gpt-5", "input": items, "tools": tools}
    expected = (
        5 * 3
        + (1 + 2 + IMAGE_TOKENS_OPENAI + DOCUMENT_TOKENS)
        + (1 + 1)
        + (1 + 1)
        + 1
        + o200k(orjson.dumps(reasoning).decode())
        + 3
        + o200k(orjson.dumps(tools).decode())
    )
    assert count_request_input("responses", body) == expected


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("hello world", 2),
        (["hello world", "hello world hello world hello"], 7),
        ([15339, 1917, 0], 3),
        ([[15339, 1917], [1, 2, 3, 4]], 6),
        ([], 0),
        (None, 0),
    ],
)
def test_completions_and_embeddings_prompt_shapes(prompt: Any, expected: int) -> None:
    body = {"model": "gpt-3.5-turbo-instruct", "prompt": prompt}
    assert count_request_input("completions", body) == expected
    body = {"model": "text-embedding-3-small", "input": prompt}
    assert count_request_input("embeddings", body) == expected


def test_completions_suffix_counts() -> None:
    body = {"model": "gpt-3.5-turbo-instruct", "prompt": "hello world", "suffix": "hello world"}
    assert count_request_input("completions", body) == 4


def test_token_id_prompts_are_not_scaled_for_approximate_models() -> None:
    body = {"model": "mistral-embed", "input": [[1, 2, 3, 4]]}
    assert count_request_input("embeddings", body) == 4


def test_anthropic_messages_simple() -> None:
    body = {
        "model": "claude-sonnet-4-5",
        "system": "Be brief.",
        "messages": [{"role": "user", "content": "hello world"}],
    }
    assert count_request_input("messages", body, at_least_as="claude") == ceil_scale(3 + 2, 120) + 3


def test_anthropic_messages_blocks() -> None:
    tools = [{"name": "get_weather", "input_schema": {"type": "object"}}]
    pdf = {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0="}
    body = {
        "model": "claude-opus-4-1",
        "system": [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "hello world"},
                    {"type": "image", "source": {"type": "url", "url": "https://x/y.png"}},
                    {"type": "document", "source": pdf},
                    {
                        "type": "document",
                        "title": "Paris",
                        "source": {"type": "text", "media_type": "text/plain", "data": "sunny"},
                    },
                ],
            },
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "hello world", "signature": "sig"},
                    {"type": "tool_use", "id": "t1", "name": "get_weather", "input": {}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "t1", "content": "sunny"},
                    {
                        "type": "tool_result",
                        "tool_use_id": "t1",
                        "content": [{"type": "text", "text": "ok"}, {"type": "image"}],
                    },
                ],
            },
        ],
        "tools": tools,
    }
    text = (
        o200k("Be brief.")
        + (2 + o200k("Paris") + o200k("sunny"))
        + (2 + o200k("get_weather") + o200k("{}"))
        + (o200k("sunny") + o200k("ok"))
        + o200k(orjson.dumps(tools).decode())
    )
    fixed = 3 * 3 + IMAGE_TOKENS_ANTHROPIC + DOCUMENT_TOKENS + IMAGE_TOKENS_ANTHROPIC
    counted = count_request_input("messages", body, at_least_as="claude")
    assert counted == ceil_scale(text, 120) + fixed


def test_anthropic_api_uses_at_least_the_claude_factor() -> None:
    body = {"model": "deepseek-chat", "messages": [{"role": "user", "content": "hello world"}]}
    assert count_request_input("messages", body, at_least_as="claude") == ceil_scale(2, 120) + 3
    body["model"] = "gpt-4o"
    assert count_request_input("messages", body, at_least_as="claude") == ceil_scale(2, 120) + 3


@pytest.mark.parametrize(
    "endpoint", ["chat.completions", "responses", "completions", "embeddings", "messages"]
)
def test_missing_fields_count_zero(endpoint: str) -> None:
    assert count_request_input(endpoint, {"model": "gpt-4o"}) == 0


def test_unknown_endpoint_counts_the_whole_body() -> None:
    body = {"model": "gpt-4o", "input": "hello world", "voice": "alloy"}
    expected = o200k(orjson.dumps(body).decode())
    assert count_request_input("audio.speech", body) == expected


def _deeply_nested(depth: int) -> list[Any]:
    nested: list[Any] = []
    for _ in range(depth):
        nested = [nested]
    return nested


@pytest.mark.parametrize(
    ("endpoint", "body"),
    [
        ("chat.completions", {"messages": "hello world"}),
        ("chat.completions", {"messages": [1, None, "x", {"content": {"weird": True}}]}),
        ("chat.completions", {"messages": [{"role": "user", "content": [{"type": "?"}, 5]}]}),
        ("chat.completions", {"messages": [{"role": "assistant", "tool_calls": "nope"}]}),
        ("chat.completions", {"model": 123, "messages": [{"content": 2**70}]}),
        ("responses", {"input": {"a": 1}, "instructions": ["x"]}),
        ("responses", {"input": [None, 3, {"type": "item_reference", "id": "msg_1"}]}),
        ("completions", {"prompt": [1, "a", [1, 2], [1, "b"], None, True, {"x": 1}]}),
        ("embeddings", {"input": 3.5}),
        ("messages", {"system": {"x": 1}, "messages": [{"content": [{"type": "image"}, 7]}]}),
        ("messages", {"messages": [{"content": [{"type": "document", "source": "?"}]}]}),
        ("messages", {"messages": {"role": "user"}}),
        ("messages", {"messages": [{"content": [{"type": "x", "v": _deeply_nested(5000)}]}]}),
        ("chat.completions", ["not", "a", "dict"]),
    ],
)
def test_unknown_shapes_never_raise(endpoint: str, body: Any) -> None:
    counted = count_request_input(endpoint, body)
    assert isinstance(counted, int)
    assert counted > 0


# ---------------------------------------------------------------------------
# Async, non-blocking counting
# ---------------------------------------------------------------------------


async def max_loop_gap(
    work: Callable[[], Awaitable[int]], tick: float = 0.001
) -> tuple[int, float, float, int]:
    """Run ``work`` while a coroutine sleeps ``tick`` in a loop.

    Returns the work's result, the largest gap between ticks, the work's duration and the
    number of ticks observed.
    """
    gaps: list[float] = []
    done = asyncio.Event()

    async def ticker() -> None:
        last = time.perf_counter()
        while not done.is_set():
            await asyncio.sleep(tick)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0.02)
    gaps.clear()
    started = time.perf_counter()
    result = await work()
    elapsed = time.perf_counter() - started
    done.set()
    await task
    return result, max(gaps, default=elapsed), elapsed, len(gaps)


GAP_LIMIT = 0.050


async def test_big_prompt_does_not_block_the_event_loop() -> None:
    # ~4 MB: large enough that counting it inline stalls the loop far beyond GAP_LIMIT.
    text = varied_text(4_000_000)
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": text}]}
    raw_len = len(orjson.dumps(body))

    result, max_gap, elapsed, ticks = await max_loop_gap(
        lambda: count_request_input_async("chat.completions", body, raw_len)
    )

    if elapsed < 2 * GAP_LIMIT:
        pytest.skip(f"counting took only {elapsed:.3f}s; too fast to expose a blocked loop")
    assert result == 3 + 1 + o200k(text) + 3
    assert max_gap < GAP_LIMIT, f"event loop stalled for {max_gap * 1000:.1f} ms"
    assert ticks >= 10


async def test_small_body_is_counted_inline(monkeypatch: pytest.MonkeyPatch) -> None:
    loop = asyncio.get_running_loop()

    def no_executor(*args: Any) -> Any:
        raise AssertionError("small bodies must not use the thread pool")

    monkeypatch.setattr(loop, "run_in_executor", no_executor)
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hello world"}]}
    assert await count_request_input_async("chat.completions", body) == 9
    assert await count_request_input_async("chat.completions", body, 100) == 9


@pytest.mark.parametrize(
    ("raw_len", "content", "encodings_loaded"),
    [
        (20_000, "hello world", True),
        (None, "hello world " * 2_000, True),
        (100, "hello world", False),
    ],
)
async def test_large_or_cold_bodies_use_the_thread_pool(
    monkeypatch: pytest.MonkeyPatch,
    raw_len: int | None,
    content: str,
    encodings_loaded: bool,
) -> None:
    loop = asyncio.get_running_loop()
    calls: list[tuple[Any, ...]] = []
    original = loop.run_in_executor

    def spy(executor: Any, func: Callable[..., int], *args: Any) -> Any:
        calls.append((*getattr(func, "args", ()), *args))
        return original(executor, func, *args)

    monkeypatch.setattr(loop, "run_in_executor", spy)
    if not encodings_loaded:
        monkeypatch.setattr(tokens, "_ENCODINGS", {})
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": content}]}
    counted = await count_request_input_async("chat.completions", body, raw_len)
    assert counted == count_request_input("chat.completions", body)
    assert calls == [("chat.completions", body)]

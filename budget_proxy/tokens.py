"""Offline, non-blocking input-token counting for budget reservations.

The proxy reserves budget for a request before forwarding it, so it needs the request's
input-token count up front, without network access (sidecars are often air-gapped) and
without stalling the event loop on huge prompts.

Encodings
    The BPE rank files for ``o200k_base`` and ``cl100k_base`` ship gzip-compressed in
    ``budget_proxy/data/tiktoken``. They are loaded with :mod:`importlib.resources`, checked
    against the sha256 values tiktoken itself pins, and turned into ``tiktoken.Encoding``
    objects with the official pattern strings and special tokens. tiktoken's own
    ``get_encoding`` is never called because it would try to download the files.

Exact vs. approximate models
    OpenAI models map to the encoding they really use, so their text counts are exact
    (``gpt-oss`` uses ``o200k_harmony``, which only adds special tokens, so ordinary text
    counts match ``o200k_base``). Every other family (Claude, Gemini, Mistral, Llama, ...)
    has a tokenizer we do not ship; its text is counted with ``o200k_base`` and multiplied by
    a calibration factor, rounded up: Claude x1.20 (Anthropic's tokenizer yields more tokens
    than o200k on English and code), Gemini x1.10, anything else x1.15. Overestimating is the
    safe direction: the count only reserves budget before the provider answers, and the
    provider's reported usage settles the exact cost afterwards.

Request shapes
    Chat-style requests follow the OpenAI cookbook formula (3 tokens per message, +1 per
    ``name``, +3 to prime the reply). Media that cannot be tokenized locally count as fixed
    estimates in the provider's own units, added after the factor is applied:
    ``IMAGE_TOKENS_OPENAI`` (a 1024x1024 high-detail image: 85 + 4 x 170 tiles),
    ``IMAGE_TOKENS_ANTHROPIC`` (Anthropic's ~1.15 megapixel maximum at width*height/750),
    ``AUDIO_TOKENS`` (about two minutes of speech at ~10 tokens per second) and
    ``DOCUMENT_TOKENS`` (a dense page of a PDF: extracted text plus the page image). Tool
    definitions count as their JSON text. A shape that is not recognised counts as the JSON
    text of the field it came in, and counting never raises on a malformed body.

Non-blocking
    :func:`count_request_input_async` counts small bodies inline and hands big ones to the
    default thread pool. tiktoken's Rust core releases the GIL while encoding, but building
    the Python list of token ids holds it (tens of ms per million tokens), so texts longer
    than ``_CHUNK_CHARS`` are encoded in pieces split at single spaces between two
    non-space characters: the pre-tokenizer always starts a new piece there, so the count
    is identical to encoding the whole text and the GIL is released between pieces.
"""

import asyncio
import binascii
import functools
import gzip
import hashlib
import json
import re
import threading
from collections.abc import Callable
from importlib import resources
from typing import Any, Final

import orjson
import tiktoken
from tiktoken_ext.openai_public import (
    ENDOFPROMPT,
    ENDOFTEXT,
    FIM_MIDDLE,
    FIM_PREFIX,
    FIM_SUFFIX,
)

__all__ = [
    "AUDIO_TOKENS",
    "CL100K_BASE",
    "DOCUMENT_TOKENS",
    "IMAGE_TOKENS_ANTHROPIC",
    "IMAGE_TOKENS_OPENAI",
    "INLINE_LIMIT_CHARS",
    "O200K_BASE",
    "TokenizerDataError",
    "approximation_factor",
    "count_request_input",
    "count_request_input_async",
    "count_text",
    "encoding_name_for_model",
    "get_encoding",
    "is_exact_model",
    "warm_up",
]

O200K_BASE: Final = "o200k_base"
CL100K_BASE: Final = "cl100k_base"

IMAGE_TOKENS_OPENAI: Final = 765
IMAGE_TOKENS_ANTHROPIC: Final = 1600
AUDIO_TOKENS: Final = 1200
DOCUMENT_TOKENS: Final = 3000

TOKENS_PER_MESSAGE: Final = 3
TOKENS_PER_NAME: Final = 1
REPLY_PRIMING_TOKENS: Final = 3

INLINE_LIMIT_CHARS: Final = 16_384
_CHUNK_CHARS: Final = 65_536

_DATA_PACKAGE: Final = "budget_proxy"

_EXPECTED_SHA256: dict[str, str] = {
    O200K_BASE: "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
    CL100K_BASE: "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
}

_PAT_STR: Final[dict[str, str]] = {
    O200K_BASE: "|".join(
        [
            r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
            r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
            r"""\p{N}{1,3}""",
            r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
            r"""\s*[\r\n]+""",
            r"""\s+(?!\S)""",
            r"""\s+""",
        ]
    ),
    CL100K_BASE: (
        r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+"""
        r"""| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
    ),
}

_SPECIAL_TOKENS: Final[dict[str, dict[str, int]]] = {
    O200K_BASE: {ENDOFTEXT: 199999, ENDOFPROMPT: 200018},
    CL100K_BASE: {
        ENDOFTEXT: 100257,
        FIM_PREFIX: 100258,
        FIM_MIDDLE: 100259,
        FIM_SUFFIX: 100260,
        ENDOFPROMPT: 100276,
    },
}

# Calibration factors in percent, so that rounding up is exact integer arithmetic.
_EXACT_PERCENT: Final = 100
_CLAUDE_PERCENT: Final = 120
_GEMINI_PERCENT: Final = 110
_OTHER_PERCENT: Final = 115

_O200K_PREFIXES: Final = (
    "gpt-4o",
    "gpt-4.1",
    "gpt-4.5",
    "gpt-5",
    "chatgpt-4o",
    "gpt-oss",
    "gpt-realtime",
)
_O_SERIES: Final = re.compile(r"o[134](?:[-.]|$)")
_CL100K_PREFIXES: Final = ("gpt-4-", "gpt-3.5", "gpt-35-", "text-embedding-3")
_CL100K_NAMES: Final = frozenset(
    {"gpt-4", "gpt-35-turbo", "text-embedding-ada-002", "davinci-002", "babbage-002"}
)
_VENDOR_DOT_PREFIX: Final = re.compile(
    r"^(?:(?:us|eu|apac|global)\.)?"
    r"(?:openai|anthropic|meta|mistral|cohere|amazon|ai21|deepseek|qwen|google|writer)\."
)
_VERSION_SUFFIX: Final = re.compile(r"[:@]")
_SPLIT_POINT: Final = re.compile(r"(?<=\S) (?=\S)")


class TokenizerDataError(RuntimeError):
    """The shipped rank files are missing or do not match the pinned hashes."""


# ---------------------------------------------------------------------------
# Encodings
# ---------------------------------------------------------------------------

_ENCODINGS: dict[str, tiktoken.Encoding] = {}
_LOAD_LOCKS: Final[dict[str, threading.Lock]] = {name: threading.Lock() for name in _PAT_STR}


def _read_rank_file(name: str) -> bytes:
    """Return the decompressed rank file shipped in the package."""
    resource = resources.files(_DATA_PACKAGE) / "data" / "tiktoken" / f"{name}.tiktoken.gz"
    try:
        return gzip.decompress(resource.read_bytes())
    except (OSError, EOFError) as exc:
        raise TokenizerDataError(f"cannot read the shipped {name} rank file: {exc}") from exc


def _parse_ranks(name: str, data: bytes) -> dict[bytes, int]:
    """Verify ``data`` against the pinned sha256 and parse ``base64token rank`` lines."""
    actual = hashlib.sha256(data).hexdigest()
    expected = _EXPECTED_SHA256[name]
    if actual != expected:
        raise TokenizerDataError(
            f"{name} rank file is corrupted or was replaced: sha256 {actual}, expected {expected}"
        )
    return {
        binascii.a2b_base64(token): int(rank)
        for token, rank in (line.split() for line in data.splitlines() if line)
    }


def _load_encoding(name: str) -> tiktoken.Encoding:
    encoding = tiktoken.Encoding(
        name=name,
        pat_str=_PAT_STR[name],
        mergeable_ranks=_parse_ranks(name, _read_rank_file(name)),
        special_tokens=dict(_SPECIAL_TOKENS[name]),
    )
    # The Rust core holds its own copy of the ranks; tiktoken keeps the Python dict only to
    # pickle the encoding, which the proxy never does. Dropped, o200k costs ~48 MB, not ~77.
    encoding._mergeable_ranks = {}
    return encoding


def get_encoding(name: str) -> tiktoken.Encoding:
    """Return the named encoding, loading it from package data once per process."""
    encoding = _ENCODINGS.get(name)
    if encoding is not None:
        return encoding
    lock = _LOAD_LOCKS.get(name)
    if lock is None:
        raise ValueError(f"unsupported encoding {name!r}; shipped: {sorted(_PAT_STR)}")
    with lock:
        encoding = _ENCODINGS.get(name)
        if encoding is None:
            encoding = _load_encoding(name)
            _ENCODINGS[name] = encoding
    return encoding


def warm_up() -> None:
    """Load every shipped encoding (tests, tools); the proxy loads each when first needed."""
    for name in _PAT_STR:
        get_encoding(name)


async def load_for(model: str) -> None:
    """Make sure the rank table ``model`` is counted with is loaded, loading it in a thread
    the first time: a table costs ~0.3 s of parsing (holding the GIL in short turns) and tens
    of MB, so a process loads only the tables its models need, and never on the event loop.
    After this, ``count_text`` for ``model`` runs without loading anything."""
    name = encoding_name_for_model(model)
    if name not in _ENCODINGS:
        await asyncio.to_thread(get_encoding, name)


# ---------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------


def _normalize_model(model: str) -> str:
    """Strip routing prefixes, fine-tune wrappers and version tags from a model name.

    ``openai/gpt-4o``, ``ft:gpt-4o-mini:org::id``, ``anthropic.claude-3-haiku-v1:0`` and
    ``claude-3-5-sonnet@20240620`` all reduce to the bare family name.
    """
    name = model.strip().lower().rsplit("/", 1)[-1]
    name = name.removeprefix("ft:")
    name = _VENDOR_DOT_PREFIX.sub("", name)
    return _VERSION_SUFFIX.split(name, maxsplit=1)[0]


def _exact_encoding(name: str) -> str | None:
    if name.startswith(_O200K_PREFIXES) or _O_SERIES.match(name):
        return O200K_BASE
    if name in _CL100K_NAMES or name.startswith(_CL100K_PREFIXES):
        return CL100K_BASE
    return None


def _factor_percent(model: str) -> int:
    name = _normalize_model(model)
    if _exact_encoding(name) is not None:
        return _EXACT_PERCENT
    if name.startswith("claude"):
        return _CLAUDE_PERCENT
    if name.startswith("gemini"):
        return _GEMINI_PERCENT
    return _OTHER_PERCENT


def encoding_name_for_model(model: str) -> str:
    """Name of the encoding used to count ``model``'s text (o200k_base when unknown)."""
    return _exact_encoding(_normalize_model(model)) or O200K_BASE


def is_exact_model(model: str) -> bool:
    """Whether ``model`` is tokenized by a shipped encoding, i.e. text counts are exact."""
    return _exact_encoding(_normalize_model(model)) is not None


def approximation_factor(model: str) -> float:
    """Multiplier applied to o200k counts for ``model`` (1.0 for exact models)."""
    return _factor_percent(model) / 100


def _scale(tokens: int, percent: int) -> int:
    return -(-tokens * percent // 100)


# ---------------------------------------------------------------------------
# Text
# ---------------------------------------------------------------------------


def _count_ordinary(encoding: tiktoken.Encoding, text: str) -> int:
    """Count ``text`` with special tokens treated as text, in GIL-friendly pieces."""
    if len(text) <= _CHUNK_CHARS:
        return len(encoding.encode_ordinary(text))
    total = 0
    start = 0
    while len(text) - start > _CHUNK_CHARS:
        match = _SPLIT_POINT.search(text, start + _CHUNK_CHARS)
        if match is None:
            break
        total += len(encoding.encode_ordinary(text[start : match.start()]))
        start = match.start()
    return total + len(encoding.encode_ordinary(text[start:]))


def count_text(text: str, model: str) -> int:
    """Tokens in ``text`` for ``model``; approximate families are scaled up (rounded up)."""
    encoding = get_encoding(encoding_name_for_model(model))
    return _scale(_count_ordinary(encoding, text), _factor_percent(model))


def _json_text(value: Any) -> str:
    try:
        return orjson.dumps(value).decode()
    except (TypeError, orjson.JSONEncodeError):
        return json.dumps(value, ensure_ascii=False, default=str)


# ---------------------------------------------------------------------------
# Requests
# ---------------------------------------------------------------------------


class _Tally:
    """Accumulates text tokens (scaled by the factor) and fixed tokens (already native)."""

    __slots__ = ("encoding", "fixed_tokens", "text_tokens")

    def __init__(self, encoding: tiktoken.Encoding) -> None:
        self.encoding = encoding
        self.text_tokens = 0
        self.fixed_tokens = 0

    def text(self, value: Any) -> None:
        if value is None:
            return
        if not isinstance(value, str):
            value = _json_text(value)
        self.text_tokens += _count_ordinary(self.encoding, value)

    def json(self, value: Any) -> None:
        if value is not None:
            self.text(_json_text(value))

    def fixed(self, tokens: int) -> None:
        self.fixed_tokens += tokens

    def total(self, percent: int) -> int:
        return _scale(self.text_tokens, percent) + self.fixed_tokens


def _tools(tally: _Tally, body: dict[str, Any]) -> None:
    for key in ("tools", "functions"):
        value = body.get(key)
        if value:
            tally.json(value)


def _function_call(tally: _Tally, call: Any) -> None:
    """A ``{"name", "arguments"}`` call (chat function_call, responses function_call)."""
    if isinstance(call, dict):
        tally.text(call.get("name"))
        tally.text(call.get("arguments"))
    else:
        tally.json(call)


def _chat_tool_calls(tally: _Tally, calls: Any) -> None:
    if not isinstance(calls, list):
        tally.json(calls)
        return
    for call in calls:
        if isinstance(call, dict) and isinstance(call.get("function"), dict):
            _function_call(tally, call["function"])
        elif isinstance(call, dict) and isinstance(call.get("custom"), dict):
            tally.text(call["custom"].get("name"))
            tally.text(call["custom"].get("input"))
        else:
            tally.json(call)


def _chat_content(tally: _Tally, content: Any) -> None:
    if not isinstance(content, list):
        tally.text(content)
        return
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            tally.text(part.get("text"))
        elif kind == "image_url":
            tally.fixed(IMAGE_TOKENS_OPENAI)
        elif kind == "input_audio":
            tally.fixed(AUDIO_TOKENS)
        elif kind == "file":
            tally.fixed(DOCUMENT_TOKENS)
        elif kind == "refusal":
            tally.text(part.get("refusal"))
        else:
            tally.text(part)


FieldCounter = Callable[[_Tally, Any], None]


def _message_list(tally: _Tally, body: dict[str, Any], fields: dict[str, FieldCounter]) -> None:
    """Chat-style `messages`: a per-message overhead, each field counted by its own counter
    (plain text otherwise), the reply priming, then the tools. Not a list: counted as JSON."""
    messages = body.get("messages")
    if isinstance(messages, list):
        for message in messages:
            tally.fixed(TOKENS_PER_MESSAGE)
            if not isinstance(message, dict):
                tally.json(message)
                continue
            for key, value in message.items():
                fields.get(key, _Tally.text)(tally, value)
        tally.fixed(REPLY_PRIMING_TOKENS)
    else:
        tally.json(messages)
    _tools(tally, body)


def _chat_name(tally: _Tally, name: Any) -> None:
    tally.text(name)
    if name is not None:
        tally.fixed(TOKENS_PER_NAME)


_CHAT_FIELDS: dict[str, FieldCounter] = {
    "content": _chat_content, "tool_calls": _chat_tool_calls, "function_call": _function_call,
    "name": _chat_name}


def _chat_completions(tally: _Tally, body: dict[str, Any]) -> None:
    _message_list(tally, body, _CHAT_FIELDS)


def _response_content(tally: _Tally, content: Any) -> None:
    if not isinstance(content, list):
        tally.text(content)
        return
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("input_text", "output_text"):
            tally.text(part.get("text"))
        elif kind == "input_image":
            tally.fixed(IMAGE_TOKENS_OPENAI)
        elif kind == "input_file":
            tally.fixed(DOCUMENT_TOKENS)
        elif kind == "input_audio":
            tally.fixed(AUDIO_TOKENS)
        elif kind == "refusal":
            tally.text(part.get("refusal"))
        else:
            tally.text(part)


def _response_item(tally: _Tally, item: Any) -> None:
    if not isinstance(item, dict):
        tally.text(item)
        return
    kind = item.get("type")
    if kind == "message" or (kind is None and "role" in item):
        tally.text(item.get("role"))
        _response_content(tally, item.get("content"))
    elif kind == "function_call":
        _function_call(tally, item)
    elif kind == "function_call_output":
        _response_content(tally, item.get("output"))
    else:
        tally.json(item)


def _responses(tally: _Tally, body: dict[str, Any]) -> None:
    instructions = body.get("instructions")
    items = body.get("input")
    if instructions is not None:
        tally.fixed(TOKENS_PER_MESSAGE)
        tally.text(instructions)
    if isinstance(items, list):
        for item in items:
            tally.fixed(TOKENS_PER_MESSAGE)
            _response_item(tally, item)
    elif items is not None:
        tally.fixed(TOKENS_PER_MESSAGE)
        tally.text(items)
    if instructions is not None or items is not None:
        tally.fixed(REPLY_PRIMING_TOKENS)
    _tools(tally, body)


def _prompt(tally: _Tally, prompt: Any) -> None:
    """A completions ``prompt`` / embeddings ``input``: str, [str], [int] or [[int]]."""
    if not isinstance(prompt, list):
        tally.text(prompt)
        return
    for element in prompt:
        if isinstance(element, int) and not isinstance(element, bool):
            tally.fixed(1)
        elif isinstance(element, list) and all(
            isinstance(token, int) and not isinstance(token, bool) for token in element
        ):
            tally.fixed(len(element))
        else:
            tally.text(element)


def _completions(tally: _Tally, body: dict[str, Any]) -> None:
    _prompt(tally, body.get("prompt"))
    tally.text(body.get("suffix"))


def _embeddings(tally: _Tally, body: dict[str, Any]) -> None:
    _prompt(tally, body.get("input"))


def _anthropic_blocks(tally: _Tally, content: Any) -> None:
    if isinstance(content, list):
        for block in content:
            _anthropic_block(tally, block)
    else:
        tally.text(content)


def _anthropic_block(tally: _Tally, block: Any) -> None:
    kind = block.get("type") if isinstance(block, dict) else None
    if kind == "text":
        tally.text(block.get("text"))
    elif kind == "image":
        tally.fixed(IMAGE_TOKENS_ANTHROPIC)
    elif kind == "tool_use":
        tally.text(block.get("name"))
        tally.json(block.get("input"))
    elif kind == "tool_result":
        _anthropic_blocks(tally, block.get("content"))
    elif kind == "thinking":
        tally.text(block.get("thinking"))
    elif kind == "document":
        _anthropic_document(tally, block)
    else:
        tally.text(block)


def _anthropic_document(tally: _Tally, block: dict[str, Any]) -> None:
    """Plain-text and inline-content documents are counted; PDFs and URLs are estimated."""
    tally.text(block.get("title"))
    tally.text(block.get("context"))
    source = block.get("source")
    if not isinstance(source, dict):
        source = {}
    kind = source.get("type")
    if kind == "text":
        tally.text(source.get("data"))
    elif kind == "content":
        _anthropic_blocks(tally, source.get("content"))
    else:
        tally.fixed(DOCUMENT_TOKENS)


def _messages(tally: _Tally, body: dict[str, Any]) -> None:
    _anthropic_blocks(tally, body.get("system"))
    messages = body.get("messages")
    if isinstance(messages, list):
        for message in messages:
            tally.fixed(TOKENS_PER_MESSAGE)
            if isinstance(message, dict):
                _anthropic_blocks(tally, message.get("content"))
            else:
                tally.json(message)
    else:
        tally.json(messages)
    _tools(tally, body)


def _gemini_parts(tally: _Tally, parts: Any) -> None:
    if not isinstance(parts, list):
        tally.json(parts)
        return
    for part in parts:
        if isinstance(part, dict) and isinstance(part.get("text"), str):
            tally.text(part["text"])
        elif isinstance(part, dict) and ("inlineData" in part or "fileData" in part):
            tally.fixed(DOCUMENT_TOKENS)  # an image, audio or a document: its size is unknown
        else:
            tally.json(part)


def _gemini(tally: _Tally, body: dict[str, Any]) -> None:
    """`generateContent`: `contents` of `{role, parts}`, `systemInstruction`, `tools`."""
    system = body.get("systemInstruction")
    if isinstance(system, dict):
        _gemini_parts(tally, system.get("parts"))
    else:
        tally.text(system)
    contents = body.get("contents")
    if isinstance(contents, list):
        for content in contents:
            tally.fixed(TOKENS_PER_MESSAGE)
            if isinstance(content, dict):
                _gemini_parts(tally, content.get("parts"))
            else:
                tally.json(content)
    else:
        tally.json(contents)
    _tools(tally, body)


def _ollama_images(tally: _Tally, images: Any) -> None:
    if isinstance(images, list):
        tally.fixed(IMAGE_TOKENS_OPENAI * len(images))
    elif images is not None:
        tally.json(images)


_OLLAMA_FIELDS: dict[str, FieldCounter] = {"images": _ollama_images, "tool_calls": _Tally.json}


def _ollama_chat(tally: _Tally, body: dict[str, Any]) -> None:
    """Ollama's `api/chat`: messages of `{role, content, images, tool_calls}`."""
    _message_list(tally, body, _OLLAMA_FIELDS)


def _ollama_generate(tally: _Tally, body: dict[str, Any]) -> None:
    """Ollama's `api/generate`: `prompt`, `system`, `suffix`, `images`."""
    for key in ("system", "prompt", "suffix", "template"):
        tally.text(body.get(key))
    _ollama_images(tally, body.get("images"))


_ENDPOINTS: Final = {
    "chat.completions": _chat_completions,
    "responses": _responses,
    "completions": _completions,
    "embeddings": _embeddings,
    "messages": _messages,
    "gemini": _gemini,
    "ollama.chat": _ollama_chat,
    "ollama.generate": _ollama_generate,
    "ollama.embed": _embeddings,
}


def _body_model(body: Any) -> str:
    model = body.get("model") if isinstance(body, dict) else None
    return model if isinstance(model, str) else ""


def _json_chars(value: Any) -> int:
    """Rough JSON text length of a value (strings, keys, scalars), without recursion."""
    total = 0
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            total += len(item)
        elif isinstance(item, dict):
            total += sum(len(key) for key in item if isinstance(key, str))
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
        elif isinstance(item, int):
            total += item.bit_length() // 3 + 2
        else:
            total += 24
    return total


def count_request_input(
    endpoint: str, body: dict[str, Any], *, at_least_as: str | None = None
) -> int:
    """Estimated input tokens of a request body, erring high; never raises on bad shapes.

    The text is scaled by the factor of the body's model, or of ``at_least_as`` when that is
    larger (an API family whose tokenizer is known whatever the model is called: Anthropic's
    requests count at least at Claude's rate). An unknown endpoint counts the JSON text of
    the whole body.
    """
    model = _body_model(body)
    percent = _factor_percent(model)
    if at_least_as is not None:
        percent = max(percent, _factor_percent(at_least_as))
    tally = _Tally(get_encoding(encoding_name_for_model(model)))
    try:
        handler = _ENDPOINTS.get(endpoint)
        if handler is not None and isinstance(body, dict):
            handler(tally, body)
        else:
            tally.json(body)
        return tally.total(percent)
    except Exception:
        # Too deeply nested or too odd to walk: a token is at least one UTF-8 byte and a
        # character at most four, so this bound is never below the real count of the text.
        return _scale(_json_chars(body) * 4, percent)


async def count_request_input_async(
    endpoint: str, body: dict[str, Any], raw_len: int | None = None, *,
    at_least_as: str | None = None,
) -> int:
    """:func:`count_request_input` without blocking the event loop on big bodies.

    ``raw_len`` is the size of the raw request body; when omitted it is estimated by walking
    ``body``. Bodies under ``INLINE_LIMIT_CHARS`` are counted inline once
    the encoding is loaded; anything else runs in the default thread pool.
    """
    size = raw_len if raw_len is not None else _json_chars(body)
    encoding_name = encoding_name_for_model(_body_model(body))
    if size < INLINE_LIMIT_CHARS and encoding_name in _ENCODINGS:
        return count_request_input(endpoint, body, at_least_as=at_least_as)
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(
        None, functools.partial(count_request_input, endpoint, body, at_least_as=at_least_as))

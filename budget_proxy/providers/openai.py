"""OpenAI's API: chat completions, responses, completions, embeddings, images and audio, and
the OpenAI-shaped APIs other hosts serve (`api = "openai"` with another base URL).

Streams are SSE. For chat and completions streams the proxy asks for usage
(`stream_options.include_usage`) when the client did not, and hides that extra chunk.
Images are priced per image by model, size and quality (or by tokens, gpt-image-1), speech
per input character, transcriptions and translations per second of audio: the worst case
(every image asked for; the upload's duration, or an upper bound of it) is reserved, the
call settled from what the answer reports (images returned, `duration`, `usage`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from math import ceil
from typing import Any, ClassVar

import orjson

from budget_proxy import tokens
from budget_proxy.config import ProviderConfig
from budget_proxy.providers import media
from budget_proxy.providers.base import (
    Adapter,
    Plan,
    body_model,
    choices_of,
    cost_comment,
    json_body,
    whole,
)
from budget_proxy.usage import NO_UNITS, Usage, from_openai
from budget_proxy.wire import UsageTap, as_dict, as_list

# path (relative to the API root) -> metered endpoint kind
ENDPOINTS = {
    "chat/completions": "chat.completions",
    "responses": "responses",
    "completions": "completions",
    "embeddings": "embeddings",
    "images/generations": "images.generations",
    "images/edits": "images.edits",
    "images/variations": "images.variations",
    "audio/speech": "audio.speech",
    "audio/transcriptions": "audio.transcriptions",
    "audio/translations": "audio.translations",
}
IMAGE_ENDPOINTS = frozenset({"images.generations", "images.edits", "images.variations"})
AUDIO_IN_ENDPOINTS = frozenset({"audio.transcriptions", "audio.translations"})
# multipart uploads: their fields are read from the form, not JSON
FORM_ENDPOINTS = frozenset({"images.edits", "images.variations", *AUDIO_IN_ENDPOINTS})
# the model OpenAI uses when an image request names none
DEFAULT_IMAGE_MODEL = "dall-e-2"
DEFAULT_IMAGE_SIZE = "1024x1024"
MEDIA_ENDPOINTS = frozenset({*IMAGE_ENDPOINTS, "audio.speech", *AUDIO_IN_ENDPOINTS})
MAX_AUDIO_S = 24 * 3600  # a reported duration beyond a day is not read
# built-in tools of the Responses API billed per call, and the output item each call is
BILLED_TOOLS = ("web_search", "web_search_preview", "file_search")
TOOL_CALL_ITEMS = {"web_search_call": "web_search", "file_search_call": "file_search"}
# calls of one tool held for a request that does not cap them (`max_tool_calls`)
WORST_TOOL_CALLS = 10
_DATED = re.compile(r"_\d{4}_\d{2}_\d{2}$")

# the request fields that cap the output, per endpoint (first present wins)
OUTPUT_CAPS: dict[str, tuple[str, ...]] = {
    "chat.completions": ("max_completion_tokens", "max_tokens"),
    "completions": ("max_tokens",),
    "responses": ("max_output_tokens",),
}
# endpoints whose `n` asks for several answers
CHOICE_ENDPOINTS = frozenset({"chat.completions", "completions", *IMAGE_ENDPOINTS})
# streams the proxy asks usage of (`stream_options.include_usage`)
USAGE_OPTION_ENDPOINTS = frozenset({"chat.completions", "completions"})

_ERROR_TYPES = {
    400: "invalid_request_error", 401: "invalid_request_error", 404: "invalid_request_error",
    413: "invalid_request_error", 429: "insufficient_quota", 503: "service_unavailable",
}


@dataclass(slots=True)
class OpenAITap(UsageTap):
    """Usage of chat, completions and embeddings answers (`usage`), their stream chunks,
    Responses API answers and events, and image and audio answers (their units)."""

    # the first stream chunk's `id`, `object`, `created`, `model`, `system_fingerprint`:
    # what a chunk the proxy writes (the end of a cut stream) repeats
    chunk_head: dict[str, Any] = field(default_factory=dict)

    def observe_json(self, body: dict[str, Any]) -> None:
        if self.endpoint in IMAGE_ENDPOINTS or self.endpoint in AUDIO_IN_ENDPOINTS:
            self._media(body)
            return
        usage = body.get("usage")
        if usage is not None:
            self.usage = from_openai(usage, output_expected=self.endpoint != "embeddings")
            if self.endpoint == "responses":
                self.usage = self._with_tool_calls(self.usage, body)
        model = body.get("model")
        if isinstance(model, str):
            self.model = model

    def _media(self, body: dict[str, Any]) -> None:
        """Images: as many as `data` holds, tokens from `usage` (gpt-image-1). Audio: the
        `duration` it reports (seconds), or its token `usage`; else the upload's duration."""
        usage = body.get("usage")
        tokens = (from_openai(usage, output_expected=False)
                  if isinstance(usage, dict) and usage.get("type") != "duration" else Usage())
        if self.endpoint in IMAGE_ENDPOINTS:
            images = body.get("data")
            count = len(images) if isinstance(images, list) else self.units.images
            self.usage = replace(tokens, images=min(count, self.units.images or count),
                                 image_size=self.units.image_size,
                                 image_quality=self.units.image_quality)
            return
        seconds = as_dict(usage).get("seconds") if as_dict(usage).get("type") == "duration" \
            else body.get("duration")
        if isinstance(usage, dict) and usage.get("type") == "tokens":
            self.usage = tokens
        elif (isinstance(seconds, int | float) and not isinstance(seconds, bool)
              and 0 <= seconds <= MAX_AUDIO_S):
            self.usage = replace(tokens, audio_ms=ceil(seconds * 1000))
        else:
            self.usage = replace(tokens, audio_ms=self.units.audio_ms)

    def observe_payload(self, name: str | None, payload: dict[str, Any]) -> bool:
        if self.endpoint in IMAGE_ENDPOINTS:  # a streamed image: its last event has usage
            if isinstance(payload.get("usage"), dict):
                self.usage = replace(from_openai(payload["usage"], output_expected=False),
                                     images=1, image_size=self.units.image_size,
                                     image_quality=self.units.image_quality)
            return True
        if self.endpoint == "responses":
            kind = name or payload.get("type")
            self._responses(kind if isinstance(kind, str) else None, payload)
            return True
        return self._chunk(payload)

    def _chunk(self, payload: dict[str, Any]) -> bool:
        model = payload.get("model")
        if isinstance(model, str):
            self.model = model
        if not self.chunk_head:
            self.chunk_head = {k: payload[k] for k in (
                "id", "object", "created", "model", "system_fingerprint") if k in payload}
        choices = payload.get("choices")
        for choice in as_list(choices):
            choice = as_dict(choice)
            delta = choice.get("delta")
            if isinstance(delta, dict):
                content = delta.get("content")
                if isinstance(content, str):
                    self.text_parts.append(content)
                for call in as_list(delta.get("tool_calls")):
                    args = as_dict(as_dict(call).get("function")).get("arguments")
                    if isinstance(args, str):
                        self.text_parts.append(args)
            elif isinstance(choice.get("text"), str):
                self.text_parts.append(choice["text"])
        usage = payload.get("usage")
        if usage is not None:
            self.usage = from_openai(usage, output_expected=self.endpoint != "embeddings")
            if self.strip_usage_chunk and not choices:
                return False
        return True

    def _responses(self, kind: str | None, payload: dict[str, Any]) -> None:
        if kind == "response.output_text.delta" and isinstance(payload.get("delta"), str):
            self.text_parts.append(payload["delta"])
        elif kind in ("response.completed", "response.incomplete", "response.failed"):
            response = as_dict(payload.get("response"))
            if response.get("usage") is not None:
                self.usage = self._with_tool_calls(from_openai(response["usage"]), response)
            if isinstance(response.get("model"), str):
                self.model = response["model"]

    def _with_tool_calls(self, usage: Usage, response: dict[str, Any]) -> Usage:
        """A Responses answer's usage with its built-in tool calls (its `output` items), each
        named as the request named the tool (`web_search_preview`)."""
        asked = dict(self.units.tool_calls)
        counts: dict[str, int] = {}
        for item in as_list(response.get("output")):
            tool = TOOL_CALL_ITEMS.get(str(as_dict(item).get("type")))
            if tool is None:
                continue
            named = next((t for t in asked if t.startswith(tool)), tool)
            counts[named] = counts.get(named, 0) + 1
        return replace(usage, tool_calls=tuple(sorted(counts.items()))) if counts else usage


def _data(payload: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def requested_max_output(endpoint: str, body: dict[str, Any]) -> int | None:
    """The output cap the request itself sets (per choice), if any; embeddings have none."""
    if endpoint == "embeddings":
        return 0
    for key in OUTPUT_CAPS.get(endpoint, ()):
        value = whole(body.get(key))
        if value is not None:
            return value
    return None


def plan_media(endpoint: str, raw: bytes, model: str | None) -> Plan:
    """Images and audio: the units the request can use. `model`: as the path names it (an
    Azure deployment), else read from the body (OpenAI's image default when absent)."""
    if endpoint in FORM_ENDPOINTS:
        fields = media.form_fields(raw)
        body: dict[str, Any] = {k: text_field for k in ("model", "n", "size", "quality",
                                                         "response_format")
                                if (text_field := media.text_field(fields, k)) is not None}
        if "n" in body:
            body["n"] = int(body["n"]) if body["n"].isdigit() and len(body["n"]) < 10 else None
    else:
        body = json_body(raw)
    if model is None:
        model = body_model(body) if not (endpoint in IMAGE_ENDPOINTS and "model" not in body) \
            else DEFAULT_IMAGE_MODEL
    if endpoint in IMAGE_ENDPOINTS:
        n = choices_of(body.get("n"))
        size, quality = body.get("size"), body.get("quality")
        units = Usage(images=n, image_size=size if isinstance(size, str) and len(size) < 32
                      else DEFAULT_IMAGE_SIZE,
                      image_quality=quality if isinstance(quality, str) and len(quality) < 32
                      else "")
        return Plan(endpoint=endpoint, model=model, body=body,
                    streaming=body.get("stream") is True, choices=n, units=units)
    if endpoint == "audio.speech":
        text = body.get("input")
        chars = len(text) if isinstance(text, str) else 0
        return Plan(endpoint=endpoint, model=model, body=body, streaming=False,
                    max_output_tokens=0, units=Usage(characters=chars))
    hold_ms, expected_ms = media.audio_ms(media.form_fields(raw).get("file", b""))
    return Plan(endpoint=endpoint, model=model, body={"model": model}, streaming=False,
                units=Usage(audio_ms=hold_ms), expected_units=Usage(audio_ms=expected_ms))


def tool_calls_asked(body: dict[str, Any]) -> tuple[tuple[str, int], ...]:
    """The built-in tools billed per call a Responses request enables, each with the most
    calls it may make (`max_tool_calls`, else `WORST_TOOL_CALLS`); dated names
    (`web_search_preview_2025_03_11`) count as their tool."""
    names = {_DATED.sub("", kind) for tool in as_list(body.get("tools"))
             if isinstance(kind := as_dict(tool).get("type"), str)}
    cap = whole(body.get("max_tool_calls"))
    most = WORST_TOOL_CALLS if cap is None else cap
    return tuple((name, most) for name in BILLED_TOOLS if name in names and most)


def plan_openai(endpoint: str, body: dict[str, Any], model: str) -> Plan:
    """The plan of an OpenAI-shaped JSON request whose model is known."""
    streaming = body.get("stream") is True
    strip_usage = rewritten = False
    if streaming and endpoint in USAGE_OPTION_ENDPOINTS:
        options = body.get("stream_options")
        if not (isinstance(options, dict) and options.get("include_usage")):
            body["stream_options"] = {**(options if isinstance(options, dict) else {}),
                                      "include_usage": True}
            strip_usage = rewritten = True
    return Plan(
        endpoint=endpoint, model=model, body=body, streaming=streaming,
        max_output_tokens=requested_max_output(endpoint, body),
        choices=choices_of(body.get("n")) if endpoint in CHOICE_ENDPOINTS else 1,
        strip_usage=strip_usage, rewritten=rewritten,
        units=Usage(tool_calls=tool_calls_asked(body)) if endpoint == "responses" else NO_UNITS,
    )


def openai_error(status: int, message: str, code: str | None) -> bytes:
    kind = _ERROR_TYPES.get(status, "server_error")
    return orjson.dumps({"error": {"message": message, "type": kind, "param": None,
                                   "code": code}})


class OpenAI(Adapter):
    api: ClassVar[str] = "openai"
    free_posts: ClassVar[tuple[str, ...]] = (
        "moderations", "files", "uploads", "uploads/*/parts", "uploads/*/complete",
        "uploads/*/cancel", "responses/input_tokens", "responses/*/cancel",
    )

    def api_root(self, rest: str) -> str:
        # `/openai/v1/...` and `/v1/...` both name the API root, whose base URL ends in /v1
        return rest[3:] if rest.startswith("v1/") else rest

    def endpoint_kind(self, path: str) -> str | None:
        return ENDPOINTS.get(path)

    def refused_reason(self, path: str) -> str:
        if path == "batches" or path.startswith("batches/"):
            return "batch jobs are not metered"
        if path == "realtime" or path.startswith("realtime/"):
            return "realtime sessions are not metered"
        return super().refused_reason(path)

    def plan(self, endpoint: str, path: str, query: str, raw: bytes,
             provider: ProviderConfig) -> Plan:
        if endpoint in MEDIA_ENDPOINTS:
            return plan_media(endpoint, raw, None)
        body = json_body(raw)
        return plan_openai(endpoint, body, body_model(body))

    def with_model(self, plan: Plan, model: str) -> Plan | None:
        if plan.endpoint in FORM_ENDPOINTS:
            return None  # a multipart body is forwarded as sent
        return Adapter.with_model(self, plan, model)

    async def count_input(self, plan: Plan, raw_len: int) -> int:
        if plan.endpoint in FORM_ENDPOINTS:
            return 0  # priced by image or by second; an uploaded image is not text
        if plan.endpoint in MEDIA_ENDPOINTS:
            prompt = plan.body.get("prompt") if plan.endpoint != "audio.speech" else \
                plan.body.get("input")
            return await tokens.count_request_input_async(
                "completions", {"model": plan.model, "prompt": prompt}, raw_len)
        return await Adapter.count_input(self, plan, raw_len)

    def error_body(self, status: int, message: str, *, code: str | None = None) -> bytes:
        return openai_error(status, message, code)

    def with_output_cap(self, plan: Plan, max_output_tokens: int) -> Plan | None:
        caps = OUTPUT_CAPS.get(plan.endpoint)
        if not caps or plan.endpoint in FORM_ENDPOINTS:
            return None
        key = next((k for k in caps if k in plan.body), caps[0])
        return replace(plan, body={**plan.body, key: max_output_tokens},
                       max_output_tokens=max_output_tokens, rewritten=True)

    def is_final_event(self, unit: bytes) -> bool:
        return len(unit) < 32 and unit.lstrip().startswith(b"data: [DONE]")

    def cut_events(self, tap: UsageTap, plan: Plan, usage: Usage, cost_usd: float) -> bytes:
        """Chat completions and completions: a last chunk whose every choice finishes with
        `length`, the usage chunk when the client asked for one, then `[DONE]`."""
        if plan.endpoint not in USAGE_OPTION_ENDPOINTS:
            return b""
        head = dict(tap.chunk_head) if isinstance(tap, OpenAITap) else {}
        chat = plan.endpoint == "chat.completions"
        head.setdefault("id", "budget-proxy-cut")
        head.setdefault("object", "chat.completion.chunk" if chat else "text_completion")
        head.setdefault("created", 0)
        head.setdefault("model", plan.model)
        end: dict[str, Any] = {"logprobs": None, "finish_reason": "length"}
        choices = [{"index": i, **({"delta": {}} if chat else {"text": ""}), **end}
                   for i in range(plan.choices)]
        asked = as_dict(plan.body.get("stream_options")).get("include_usage") is True
        out = [_data({**head, "choices": choices, **({"usage": None} if asked else {})})]
        if asked and not plan.strip_usage:
            out.append(_data({**head, "choices": [], "usage": {
                "prompt_tokens": usage.input_tokens, "completion_tokens": usage.output_tokens,
                "total_tokens": usage.input_tokens + usage.output_tokens}}))
        out += [cost_comment(cost_usd), b"data: [DONE]\n\n"]
        return b"".join(out)

    def tap(self, plan: Plan) -> UsageTap:
        tap = OpenAITap(plan.endpoint, strip_usage_chunk=plan.strip_usage,
                        units=plan.expected_units or plan.units)
        if plan.endpoint == "audio.speech":  # the answer is audio: its characters were sent
            tap.usage = plan.units
        return tap

"""The Budget Chat: a bounded tool-calling loop over the budget tools.

With `BUDGET_ASSISTANT_MODEL=provider/model` the assistant asks that model, offering the
budget tools the caller's role may run (the same functions MCP serves). Its calls go through
this proxy's own metered route (`/{provider}/v1/chat/completions` on the address the chat
request came in on) with `X-Budget-Component: budget-assistant`, so they are priced,
reserved, recorded and capped like any other component's. The loop is bounded by rounds
(`MAX_ROUNDS` model calls), tokens (`MAX_CALL_TOKENS` output per call, `MAX_CHAT_TOKENS` in
all) and time (`CHAT_TIMEOUT_S`); when a bound stops it, the answer says which.

Unset, the answer is the deterministic one (analysis, optimisation or model recommendation,
chosen by the question's words), and it says so. Figures are always computed by the tools,
never by the model.

The loop yields events: `status`, `tool_call`, `chunk` and finally `done` (the whole answer).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Literal

import aiohttp
import orjson
from pydantic import BaseModel, ConfigDict, Field

from budget_proxy import tools
from budget_proxy.api.common import Role
from budget_proxy.appkeys import PROXY, SETTINGS
from budget_proxy.schemas import NO_LLM_NOTE, AnalyzeRequest, RecommendModelRequest

COMPONENT = "budget-assistant"
MAX_ROUNDS = 6  # model calls per chat message
MAX_CALL_TOKENS = 1024  # output tokens asked for per model call
MAX_CHAT_TOKENS = 50_000  # tokens (in and out) the model may use for one chat message
CHAT_TIMEOUT_S = 120.0
MAX_TOOL_RESULT_CHARS = 12_000  # a tool result longer than this is cut before the model sees it
MAX_MESSAGE_CHARS = 8_000
SYSTEM_PROMPT = (
    "You are the budget assistant of budget-proxy, the proxy that meters and caps this "
    "organisation's LLM spend. Answer questions about spend, budgets, allocations, alerts and "
    "models by calling the tools; take every figure from a tool result, never estimate one "
    "yourself. Be brief and concrete.")
NARRATIVE_MAX_TOKENS = 400  # output tokens of an analyze/optimize narrative
NARRATIVE_TIMEOUT_S = 30.0
NARRATIVE_PROMPT = (
    "You are the budget assistant of budget-proxy. You are given figures it computed from its "
    "records, as JSON. Write a short narrative (at most 150 words, plain text, no headings) "
    "for the operator: what stands out and what to do first. Quote figures exactly as given; "
    "never compute, round differently or invent a figure.")
NO_MODEL_NOTE = ("No language model is configured (BUDGET_ASSISTANT_MODEL is unset): this "
                 "answer is computed from the proxy's records by fixed rules.")
Event = tuple[str, dict[str, Any]]
Stop = Literal["answered", "round_limit", "token_limit", "time_limit", "budget_refused",
               "model_error"]


class ChatTurn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["user", "assistant"]
    content: str = Field(max_length=MAX_MESSAGE_CHARS)


class ChatRequest(BaseModel):
    """Body of `POST /api/assistant/chat`."""

    model_config = ConfigDict(extra="forbid")

    message: str = Field(min_length=1, max_length=MAX_MESSAGE_CHARS)
    history: list[ChatTurn] = Field(default_factory=list, max_length=40)
    stream: bool = Field(False, description="Answer as SSE: status, tool_call, chunk, done.")


class ToolCallDone(BaseModel):
    name: str
    arguments: Any = None
    ok: bool
    result: Any = None


class ChatAnswer(BaseModel):
    answer: str
    llm_used: bool
    model: str | None = None
    tool_calls: list[ToolCallDone] = Field(default_factory=list)
    stopped: Stop = "answered"
    tokens_used: int = 0


# deterministic ---------------------------------------------------------------------------
def topic_of(message: str) -> Literal["recommend", "optimize", "analyze"]:
    """Which deterministic answer a question is about (the dashboard routes the same way)."""
    text = message.lower()
    if re.search(r"recommend|which model|what model|model for|best model", text):
        return "recommend"
    if re.search(r"optimi|save|saving|cheaper|reduce|spend less|cut", text):
        return "optimize"
    return "analyze"


async def deterministic(app: tools.State, req: ChatRequest) -> ChatAnswer:
    from budget_proxy.api import assistant  # the assistant module imports this one

    topic = topic_of(req.message)
    lines = [NO_MODEL_NOTE]
    if topic == "recommend":
        rec = assistant.recommend(app, RecommendModelRequest(task_description=req.message))
        lines.append(f"Task type: {rec.task_type} ({rec.complexity}).")
        lines += [f"- {o.provider}/{o.model}: ${o.cost_per_request:.6f} per request"
                  for o in rec.recommendations]
        call = ToolCallDone(name="recommend_model", arguments={"task_description": req.message},
                            ok=True)
    elif topic == "optimize":
        opt = await assistant.optimization(app, AnalyzeRequest())
        lines.append(f"Possible savings: ${opt.potential_savings_usd:.4f}."
                     if opt.recommendations else "Nothing to optimise in the recorded usage.")
        lines += [f"- {r.title}: {r.detail}" for r in opt.recommendations]
        call = ToolCallDone(name="optimize", arguments={}, ok=True)
    else:
        analysis = await assistant.analysis(app, AnalyzeRequest())
        lines += [f"- {f}" for f in analysis.findings]
        call = ToolCallDone(name="analyze", arguments={}, ok=True)
    return ChatAnswer(answer="\n".join(lines), llm_used=False, tool_calls=[call])


# with a model ----------------------------------------------------------------------------
def openai_tools(role: Role) -> list[dict[str, Any]]:
    return [{"type": "function", "function": {
        "name": t.name, "description": t.description, "parameters": t.input_schema()}}
        for t in tools.tools_for(role)]


def _error_message(body: bytes) -> str:
    try:
        data = orjson.loads(body)
        error = data.get("error", {}) if isinstance(data, dict) else {}
        return str(error.get("message") or body[:300].decode(errors="replace"))
    except (orjson.JSONDecodeError, AttributeError):
        return body[:300].decode(errors="replace")


async def run_tool_call(app: tools.State, call: dict[str, Any], role: Role) -> ToolCallDone:
    function = call.get("function") or {}
    name = str(function.get("name") or "")
    try:
        arguments = orjson.loads(function.get("arguments") or "{}")
    except orjson.JSONDecodeError:
        return ToolCallDone(name=name, arguments=function.get("arguments"), ok=False,
                            result={"error": "the arguments are not valid JSON"})
    try:
        result = await tools.call(app, name, arguments if isinstance(arguments, dict) else None,
                                  role)
    except tools.ToolError as exc:
        return ToolCallDone(name=name, arguments=arguments, ok=False,
                            result={"error": str(exc)})
    return ToolCallDone(name=name, arguments=arguments, ok=True, result=result)


@dataclass(frozen=True, slots=True)
class ModelReply:
    """One call to the assistant's model through the proxy's metered route."""

    message: dict[str, Any] | None  # the model's message; None when it did not answer
    tokens_used: int = 0
    stopped: Stop = "answered"
    error: str | None = None  # what to tell the user when there is no message


def assistant_model(app: tools.State) -> tuple[str, str, str | None]:
    """`(provider, model, why it cannot be used)` of `BUDGET_ASSISTANT_MODEL`."""
    spec = app[SETTINGS].assistant_model or ""
    provider_name, _, model = spec.partition("/")
    provider = app[PROXY].providers.get(provider_name)
    if provider is None or provider.api != "openai":
        return provider_name, model, (
            f"BUDGET_ASSISTANT_MODEL={spec}: the assistant speaks the OpenAI chat completions "
            f"API, and provider {provider_name!r} is "
            f"{'unknown' if provider is None else provider.api}")
    return provider_name, model, None


async def ask_model(
    app: tools.State, proxy_url: str, messages: list[dict[str, Any]], *, max_tokens: int,
    timeout_s: float, offered: list[dict[str, Any]] | None = None,
) -> ModelReply:
    """One chat completion from `BUDGET_ASSISTANT_MODEL`, sent to this proxy's own metered
    route as component budget-assistant (priced, reserved, recorded, capped like any other
    call), bounded by `max_tokens` of output and `timeout_s`. Never raises for a refusal,
    an error answer, an unreadable answer or a timeout: the reply says which."""
    provider_name, model, unusable = assistant_model(app)
    if unusable is not None:
        return ModelReply(None, stopped="model_error", error=unusable)
    url = f"{proxy_url}/{provider_name}/v1/chat/completions"
    headers = {"X-Budget-Component": COMPONENT, "Content-Type": "application/json"}
    body: dict[str, Any] = {"model": model, "messages": messages, "max_tokens": max_tokens}
    if offered is not None:
        body["tools"] = offered
    session: aiohttp.ClientSession = app[PROXY].session
    try:
        async with session.post(url, data=orjson.dumps(body), headers=headers,
                                timeout=aiohttp.ClientTimeout(total=timeout_s)) as resp:
            raw = await resp.read()
            status = resp.status
    except TimeoutError:
        return ModelReply(None, stopped="time_limit",
                          error=f"The model did not answer within {timeout_s:g} s.")
    except aiohttp.ClientError as exc:
        return ModelReply(None, stopped="model_error",
                          error=f"The model could not be reached: {exc}.")
    if status in (429, 403) and b"budget" in raw:
        return ModelReply(None, stopped="budget_refused", error=(
            "The assistant's own budget refused the call to the model (component "
            f"{COMPONENT}): {_error_message(raw)}"))
    if status != 200:
        return ModelReply(None, stopped="model_error",
                          error=f"The model answered HTTP {status}: {_error_message(raw)}")
    try:
        data = orjson.loads(raw)
        message = data["choices"][0]["message"]
        usage = data.get("usage") or {}
        tokens = int(usage.get("total_tokens") or 0)
        if not isinstance(message, dict):
            raise TypeError("message is not an object")
    except (orjson.JSONDecodeError, KeyError, IndexError, TypeError, ValueError,
            AttributeError):
        return ModelReply(None, stopped="model_error",
                          error="The model's answer could not be read.")
    return ModelReply(message, tokens_used=max(0, tokens))


async def with_model(app: tools.State, req: ChatRequest, role: Role,
                     proxy_url: str) -> AsyncIterator[Event]:
    """The tool-calling loop; the last event is `done` with the `ChatAnswer`."""
    spec = app[SETTINGS].assistant_model or ""
    answer = ChatAnswer(answer="", llm_used=False, model=spec)
    unusable = assistant_model(app)[2]
    if unusable is not None:
        answer.answer, answer.stopped = unusable, "model_error"
        yield "chunk", {"text": answer.answer}
        yield "done", answer.model_dump(mode="json")
        return
    messages: list[dict[str, Any]] = [{"role": "system", "content": SYSTEM_PROMPT},
                                      *(t.model_dump() for t in req.history),
                                      {"role": "user", "content": req.message}]
    offered = openai_tools(role)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + CHAT_TIMEOUT_S
    text: str | None = None
    for round_no in range(1, MAX_ROUNDS + 1):
        if loop.time() >= deadline:
            answer.stopped = "time_limit"
            break
        if answer.tokens_used >= MAX_CHAT_TOKENS:
            answer.stopped = "token_limit"
            break
        yield "status", {"round": round_no, "state": "asking the model"}
        reply = await ask_model(app, proxy_url, messages, max_tokens=MAX_CALL_TOKENS,
                                timeout_s=max(1.0, deadline - loop.time()), offered=offered)
        if reply.message is None:
            answer.stopped = reply.stopped
            text = None if reply.stopped == "time_limit" else reply.error
            break
        answer.llm_used = True
        answer.tokens_used += reply.tokens_used
        message = reply.message
        calls = message.get("tool_calls") or []
        if not calls:
            text = str(message.get("content") or "")
            answer.stopped = "answered"
            break
        messages.append({"role": "assistant", "content": message.get("content"),
                         "tool_calls": calls})
        for call in calls:
            done = await run_tool_call(app, call, role)
            answer.tool_calls.append(done)
            yield "tool_call", done.model_dump(mode="json")
            messages.append({"role": "tool", "tool_call_id": call.get("id", ""),
                             "content": orjson.dumps(done.result).decode()[
                                 :MAX_TOOL_RESULT_CHARS]})
    else:
        answer.stopped = "round_limit"
    if text is None:
        text = (f"I stopped before a final answer ({answer.stopped.replace('_', ' ')}: "
                f"{len(answer.tool_calls)} tool calls in {MAX_ROUNDS} rounds at most, "
                f"{answer.tokens_used} tokens used). The tool results above are exact.")
    answer.answer = text
    yield "chunk", {"text": text}
    yield "done", answer.model_dump(mode="json")


# narratives over computed figures ----------------------------------------------------------
class Narration(BaseModel):
    """What `analyze` and `optimize` add to their figures when BUDGET_ASSISTANT_MODEL is set:
    a short text by the model over those figures, which stay as computed."""

    llm_used: bool = Field(False, description="True when the narrative was written.")
    model: str | None = Field(None, description="BUDGET_ASSISTANT_MODEL, when set.")
    narrative: str | None = Field(
        None, description="The model's reading of the figures (they are computed, not its).")
    narrative_stopped: Stop | None = Field(
        None, description="Why there is no narrative (budget_refused, model_error, ...).")
    note: str = Field(description=f"How the answer was made. Without a model: {NO_LLM_NOTE}")


async def narrate(app: tools.State, proxy_url: str, kind: str, figures: dict[str, Any],
                  deterministic_note: str) -> Narration:
    """A narrative over `figures` (the computed answer, given to the model as data), in at
    most `NARRATIVE_MAX_TOKENS` tokens and `NARRATIVE_TIMEOUT_S` seconds, through the metered
    route as component budget-assistant. When the call fails or a budget refuses it, no
    narrative, and the note says why; the caller answers with its figures either way."""
    spec = app[SETTINGS].assistant_model
    data = orjson.dumps(figures).decode()
    if len(data) > MAX_TOOL_RESULT_CHARS:
        data = data[:MAX_TOOL_RESULT_CHARS] + " ... (cut)"
    messages = [{"role": "system", "content": NARRATIVE_PROMPT},
                {"role": "user", "content": f"The {kind} of budget-proxy, as JSON:\n{data}"}]
    reply = await ask_model(app, proxy_url, messages, max_tokens=NARRATIVE_MAX_TOKENS,
                            timeout_s=NARRATIVE_TIMEOUT_S)
    text = str((reply.message or {}).get("content") or "").strip()
    if reply.message is None or not text:
        why = reply.error or "The model answered with no text."
        return Narration(model=spec, narrative_stopped=reply.stopped if reply.message is None
                         else "model_error",
                         note=f"{deterministic_note} No narrative: {why}")
    return Narration(llm_used=True, model=spec, narrative=text, note=(
        "The figures are computed from this proxy's usage records, policies and price catalog "
        f"by fixed rules; the narrative was written by {spec} from those figures, given to it "
        "as data. Where the two differ, the figures are right."))


async def converse(app: tools.State, req: ChatRequest, role: Role,
                   proxy_url: str) -> AsyncIterator[Event]:
    """The events of one chat message: with the configured model, or deterministic."""
    if not app[SETTINGS].assistant_model:
        yield "status", {"state": "computing from the records (no model configured)"}
        answer = await deterministic(app, req)
        for call in answer.tool_calls:
            yield "tool_call", call.model_dump(mode="json")
        yield "chunk", {"text": answer.answer}
        yield "done", answer.model_dump(mode="json")
        return
    async for event in with_model(app, req, role, proxy_url):
        yield event

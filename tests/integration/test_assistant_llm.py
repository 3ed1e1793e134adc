"""Budget Chat with a model: the fake provider scripted to answer with tool calls; the loop
runs the tools, is bounded, and its own calls are metered as component budget-assistant."""

from __future__ import annotations

import httpx
import orjson
import pytest

from budget_proxy.tools.chat import COMPONENT, MAX_ROUNDS

MODEL = "openai/gpt-4o-mini"
CHAT_PATH = "/v1/chat/completions"


async def chat(proxy, body: dict, **kw) -> httpx.Response:
    async with httpx.AsyncClient(timeout=30) as client:
        return await client.post(f"{proxy.url}/api/assistant/chat", json=body, **kw)


async def assistant_records(proxy) -> list[dict]:
    resp = await proxy.api("GET", "/api/usage/records", params={"component": COMPONENT})
    assert resp.status_code == 200, resp.text
    return resp.json()


async def test_the_model_calls_the_tools_and_its_calls_are_metered(proxy_factory, fake):
    proxy = await proxy_factory(assistant_model=MODEL)
    await proxy.api("POST", "/api/policies", json={"period": "daily", "cost_limit": 5})
    fake.configure(tool_calls=[{"name": "budget_status", "arguments": {}},
                               {"name": "set_limit", "arguments": {"period": "weekly",
                                                                   "limit": 9}}],
                   tool_call_replies=1, reply_chunks=["You have ", "$5 a day."])
    resp = await chat(proxy, {"message": "How much budget is left today?"})
    assert resp.status_code == 200, resp.text
    answer = resp.json()
    assert answer["llm_used"] is True and answer["model"] == MODEL
    assert answer["answer"] == "You have $5 a day." and answer["stopped"] == "answered"
    status, limit = answer["tool_calls"]
    assert status["name"] == "budget_status" and status["ok"] is True
    assert status["result"]["policies"][0]["limit"] == 5
    assert limit["name"] == "set_limit" and limit["ok"] is True  # open admin API: admin role
    # the second model call saw the tool results
    second = fake.requests_to(CHAT_PATH)[1].body
    tool_msgs = [m for m in second["messages"] if m["role"] == "tool"]
    assert orjson.loads(tool_msgs[0]["content"])["policies"][0]["limit"] == 5
    assert {t["function"]["name"] for t in second["tools"]} >= {"budget_status", "set_limit"}
    records = await assistant_records(proxy)
    assert len(records) == 2 and {r["model"] for r in records} == {"gpt-4o-mini"}


async def test_a_model_calling_tools_forever_stops_at_the_round_limit(proxy_factory, fake):
    proxy = await proxy_factory(assistant_model=MODEL)
    fake.configure(tool_calls=[{"name": "list_alerts", "arguments": {}}], tool_call_replies=-1)
    answer = (await chat(proxy, {"message": "loop"})).json()
    assert answer["stopped"] == "round_limit" and answer["llm_used"] is True
    assert len(answer["tool_calls"]) == MAX_ROUNDS
    assert fake.count(CHAT_PATH) == MAX_ROUNDS
    assert "round limit" in answer["answer"]
    assert len(await assistant_records(proxy)) == MAX_ROUNDS


async def test_a_hard_limit_on_the_assistant_refuses_it_with_a_message(proxy_factory, fake):
    proxy = await proxy_factory(assistant_model=MODEL)
    await proxy.api("POST", "/api/policies", json={
        "period": "daily", "type": "hard_limit", "cost_limit": 0.000001,
        "component": COMPONENT})
    resp = await chat(proxy, {"message": "How is my spend?"})
    assert resp.status_code == 200, resp.text
    answer = resp.json()
    assert answer["stopped"] == "budget_refused" and answer["llm_used"] is False
    assert COMPONENT in answer["answer"] and "budget" in answer["answer"]
    assert fake.count(CHAT_PATH) == 0


async def test_viewer_is_offered_no_tool_that_changes_budgets(proxy_factory, fake):
    proxy = await proxy_factory(assistant_model=MODEL, admin_token="adm", viewer_token="view")
    fake.configure(tool_calls=[{"name": "set_limit", "arguments": {"period": "daily",
                                                                  "limit": 1}}],
                   tool_call_replies=1)
    resp = await chat(proxy, {"message": "cap it"}, headers={"Authorization": "Bearer view"})
    answer = resp.json()
    assert answer["tool_calls"][0]["ok"] is False
    assert "admin token" in answer["tool_calls"][0]["result"]["error"]
    offered = {t["function"]["name"] for t in fake.requests_to(CHAT_PATH)[0].body["tools"]}
    assert "set_limit" not in offered and "budget_status" in offered
    assert (await proxy.api("GET", "/api/policies",
                            headers={"Authorization": "Bearer adm"})).json() == []
    anon = await chat(proxy, {"message": "x"})
    assert anon.status_code == 401


async def test_bad_tool_arguments_from_the_model_are_reported_to_it(proxy_factory, fake):
    proxy = await proxy_factory(assistant_model=MODEL)
    fake.configure(tool_calls=[{"name": "get_usage", "arguments": {"period": "yearly"}},
                               {"name": "nope", "arguments": {}}], tool_call_replies=1)
    answer = (await chat(proxy, {"message": "usage?"})).json()
    bad, unknown = answer["tool_calls"]
    assert bad["ok"] is False and "period" in bad["result"]["error"]
    assert unknown["ok"] is False and "no tool" in unknown["result"]["error"]
    assert answer["stopped"] == "answered"


async def test_streamed_chat_sends_status_tool_call_chunk_done(proxy_factory, fake):
    proxy = await proxy_factory(assistant_model=MODEL)
    fake.configure(tool_calls=[{"name": "budget_status", "arguments": {}}],
                   tool_call_replies=1)
    resp = await chat(proxy, {"message": "status?", "stream": True})
    assert resp.status_code == 200 and resp.headers["content-type"].startswith(
        "text/event-stream")
    events = [block.split("\n")[0].removeprefix("event: ")
              for block in resp.text.strip().split("\n\n")]
    assert events == ["status", "tool_call", "status", "chunk", "done"]
    done = orjson.loads(resp.text.strip().split("\n\n")[-1].split("data: ", 1)[1])
    assert done["llm_used"] is True


async def test_without_a_model_the_chat_is_deterministic_and_says_so(proxy):
    answer = (await chat(proxy, {"message": "How can I spend less?"})).json()
    assert answer["llm_used"] is False and answer["model"] is None
    assert "BUDGET_ASSISTANT_MODEL is unset" in answer["answer"]
    assert answer["tool_calls"][0]["name"] == "optimize"
    rec = (await chat(proxy, {"message": "Which model should I use to summarise tickets?"}))
    assert rec.json()["tool_calls"][0]["name"] == "recommend_model"


@pytest.mark.parametrize(("body", "status"), [
    (b"{not json", 400),
    (b"[]", 400),
    (b'{"message": ""}', 422),
    (b'{"message": 5}', 422),
    (b'{"message": "hi", "stream": "yes please"}', 422),
    (b'{"message": "hi", "history": [{"role": "system", "content": "obey"}]}', 422),
    (b'{"message": "hi", "history": "nope"}', 422),
    (b'{"message": "' + b"x" * 9000 + b'"}', 422),
    (b'{"message": "hi", "extra": 1}', 422),
])
async def test_malformed_chat_bodies_are_refused(proxy, body, status):
    async with httpx.AsyncClient(timeout=30) as client:
        resp = await client.post(f"{proxy.url}/api/assistant/chat", content=body,
                                 headers={"Content-Type": "application/json"})
    assert resp.status_code == status, resp.text
    assert resp.json()["error"]["type"] in ("invalid_json", "validation_error")


@pytest.mark.parametrize("value", ["gpt-4o-mini", "openai/", "/gpt", "open ai/x", ""])
def test_assistant_model_must_name_provider_and_model(value):
    from pydantic import ValidationError

    from budget_proxy.config import Settings

    with pytest.raises(ValidationError, match="assistant_model"):
        Settings(assistant_model=value)


# analyze and optimize: a narrative over the computed figures -------------------------------
NARRATED = {"narrative", "llm_used", "model", "narrative_stopped", "note"}
CLOCK = {"since", "until"}  # the range ends now: it moves between two calls


async def record_spend(proxy, component: str = "codex", model: str = "gpt-4o") -> None:
    resp = await proxy.api("POST", "/api/usage/record", json={
        "provider": "openai", "model": model, "component": component,
        "input_tokens": 120_000, "output_tokens": 9_000})
    assert resp.status_code == 201, resp.text


def figures(answer: dict) -> dict:
    return {k: v for k, v in answer.items() if k not in NARRATED | CLOCK | {"engine"}}


async def assistant_answer(proxy, route: str, body: dict | None = None) -> dict:
    resp = await proxy.api("POST", f"/api/assistant/{route}", json=body or {})
    assert resp.status_code == 200, resp.text
    return resp.json()


@pytest.mark.parametrize("route", ["analyze", "optimize"])
async def test_the_narrative_is_added_over_figures_that_stay_computed(
        proxy_factory, fake, route):
    proxy = await proxy_factory(assistant_model=MODEL)
    await record_spend(proxy)
    await record_spend(proxy, component="writer", model="gpt-4o-mini")
    body = {"component": "codex", "days": 7}  # the assistant's own records stay outside
    fake.configure(reply_chunks=["You spent $999 ", "on gpt-4o; switch to gpt-4o-mini."])
    answer = await assistant_answer(proxy, route, body)
    assert answer["llm_used"] is True and answer["model"] == MODEL
    assert answer["engine"] == "deterministic"  # the figures' engine
    assert answer["narrative"] == "You spent $999 on gpt-4o; switch to gpt-4o-mini."
    assert answer["narrative_stopped"] is None and "figures are right" in answer["note"]
    # the model was given the computed figures as data, with an output bound and no tools
    (sent,) = [r.body for r in fake.requests_to(CHAT_PATH)]
    assert 0 < sent["max_tokens"] <= 1024 and "tools" not in sent
    given = orjson.loads(sent["messages"][1]["content"].split("\n", 1)[1])
    assert {k: v for k, v in given.items() if k not in CLOCK} == figures(answer)
    # the figures are the ones computed when the model fails, not the model's $999
    fake.configure(fail_next=[(500, "server_error")])
    without = await assistant_answer(proxy, route, body)
    assert without["llm_used"] is False and without["narrative"] is None
    assert without["narrative_stopped"] == "model_error" and "HTTP 500" in without["note"]
    assert figures(without) == figures(answer)
    total = answer["totals"]["total_cost"] if route == "analyze" else answer["total_cost"]
    assert 0 < total < 999
    records = await assistant_records(proxy)
    assert records and {r["component"] for r in records} == {COMPONENT}
    assert {r["model"] for r in records} == {"gpt-4o-mini"}


@pytest.mark.parametrize("route", ["analyze", "optimize"])
async def test_a_refused_narrative_leaves_the_computed_answer_with_a_note(
        proxy_factory, fake, route):
    proxy = await proxy_factory(assistant_model=MODEL)
    await record_spend(proxy)
    await proxy.api("POST", "/api/policies", json={
        "period": "daily", "type": "hard_limit", "cost_limit": 0.000001,
        "component": COMPONENT})
    answer = await assistant_answer(proxy, route)
    assert answer["llm_used"] is False and answer["narrative"] is None
    assert answer["narrative_stopped"] == "budget_refused"
    assert "No language model" in answer["note"] and COMPONENT in answer["note"]
    assert fake.count(CHAT_PATH) == 0
    assert (answer.get("findings") or answer.get("recommendations"))


@pytest.mark.parametrize(("knobs", "stopped", "said"), [
    ({"raw_next": [{"status": 200, "body": "not json"}]}, "model_error", "could not be read"),
    ({"raw_next": [{"status": 200, "body": '{"choices": []}'}]}, "model_error",
     "could not be read"),
    ({"raw_next": [{"status": 200, "body": '{"choices": [{"message": "hi"}]}'}]},
     "model_error", "could not be read"),
    ({"reply_chunks": [""]}, "model_error", "no text"),
    ({"fail_next": [(503, "server_error")]}, "model_error", "HTTP 503"),
])
async def test_a_broken_model_answer_never_breaks_analyze(proxy_factory, fake, knobs,
                                                          stopped, said):
    proxy = await proxy_factory(assistant_model=MODEL)
    fake.configure(**knobs)
    answer = await assistant_answer(proxy, "analyze")
    assert answer["llm_used"] is False and answer["narrative"] is None
    assert answer["narrative_stopped"] == stopped and said in answer["note"]
    assert answer["findings"] == ["No usage recorded in the last 30 days."]


async def test_a_slow_model_is_cut_at_the_narrative_time_bound(proxy_factory, fake,
                                                              monkeypatch):
    from budget_proxy.tools import chat as chat_module

    monkeypatch.setattr(chat_module, "NARRATIVE_TIMEOUT_S", 0.2)
    proxy = await proxy_factory(assistant_model=MODEL)
    fake.configure(response_delay_s=5)
    answer = await assistant_answer(proxy, "optimize")
    assert answer["narrative_stopped"] == "time_limit" and answer["llm_used"] is False
    assert "did not answer within 0.2 s" in answer["note"]


async def test_an_assistant_model_on_a_provider_it_cannot_speak_degrades(proxy_factory, fake):
    proxy = await proxy_factory(assistant_model="anthropic/claude-3-5-haiku-latest")
    answer = await assistant_answer(proxy, "analyze")
    assert answer["narrative_stopped"] == "model_error" and "anthropic" in answer["note"]
    assert fake.count() == 0

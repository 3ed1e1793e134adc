"""LangChain (`langchain-openai`): `ChatOpenAI` pointed at the proxy."""

from __future__ import annotations

import pytest

pytest.importorskip("langchain_openai")

import openai
from langchain_openai import ChatOpenAI

from tests.frameworks.conftest import ATTRIBUTION, CLIENT_KEY, Budgeted

MODEL = "gpt-4o-mini"


def chat(budgeted: Budgeted, **kw: object) -> ChatOpenAI:
    # the README's setup: base URL, attribution as default headers, no retries
    options: dict[str, object] = {"max_retries": 0, **kw}
    return ChatOpenAI(model=MODEL, base_url=budgeted.openai_base_url, api_key=CLIENT_KEY,
                      default_headers=ATTRIBUTION, **options)


async def test_call_reaches_the_provider_and_is_attributed(budgeted: Budgeted):
    reply = await chat(budgeted).ainvoke("hello")
    assert reply.content
    await budgeted.assert_recorded_once(MODEL)


async def test_refusal_raises_rate_limit_error_once(refusing: Budgeted):
    with pytest.raises(openai.RateLimitError) as err:
        await chat(refusing).ainvoke("hello")
    assert err.value.response.headers["x-should-retry"] == "false"
    assert int(err.value.response.headers["retry-after"]) > 0
    assert err.value.code == "budget_exceeded"
    await refusing.assert_refused_once()


async def test_default_retries_do_not_resend_a_refusal(refusing: Budgeted):
    # without max_retries ChatOpenAI keeps the OpenAI SDK's 2 retries; the SDK obeys
    # x-should-retry: false, so even then the refusal is not sent again
    model = ChatOpenAI(model=MODEL, base_url=refusing.openai_base_url, api_key=CLIENT_KEY,
                       default_headers=ATTRIBUTION)
    assert model.root_async_client.max_retries == 2
    with pytest.raises(openai.RateLimitError):
        await model.ainvoke("hello")
    await refusing.assert_refused_once()

"""The OpenAI Agents SDK (`openai-agents`): an `Agent` run on a client pointed at the proxy,
through the Responses API (the SDK's default) and through Chat Completions."""

from __future__ import annotations

import pytest

pytest.importorskip("agents")

import openai
from agents import (
    Agent,
    Model,
    OpenAIChatCompletionsModel,
    OpenAIResponsesModel,
    RunConfig,
    Runner,
)
from openai import AsyncOpenAI

from tests.frameworks.conftest import ATTRIBUTION, CLIENT_KEY, Budgeted

MODEL = "gpt-4o-mini"
# tracing would export each run to the provider's own endpoint, past the proxy
RUN = RunConfig(tracing_disabled=True)
APIS = [pytest.param(OpenAIResponsesModel, id="responses"),
        pytest.param(OpenAIChatCompletionsModel, id="chat_completions")]


def agent(budgeted: Budgeted, api: type[Model], **client: object) -> Agent:
    # the README's setup: one client with the base URL, the attribution headers and no retries
    options: dict[str, object] = {"max_retries": 0, **client}
    openai_client = AsyncOpenAI(base_url=budgeted.openai_base_url, api_key=CLIENT_KEY,
                                default_headers=ATTRIBUTION, **options)  # type: ignore[arg-type]
    model = api(model=MODEL, openai_client=openai_client)  # type: ignore[call-arg]
    return Agent(name="assistant", instructions="Answer briefly.", model=model)


@pytest.mark.parametrize("api", APIS)
async def test_run_reaches_the_provider_and_is_attributed(budgeted: Budgeted, api: type[Model]):
    result = await Runner.run(agent(budgeted, api), "hello", run_config=RUN)
    assert result.final_output
    await budgeted.assert_recorded_once(MODEL)


@pytest.mark.parametrize("api", APIS)
async def test_refusal_raises_rate_limit_error_once(refusing: Budgeted, api: type[Model]):
    with pytest.raises(openai.RateLimitError) as err:
        await Runner.run(agent(refusing, api), "hello", run_config=RUN)
    assert err.value.response.headers["x-should-retry"] == "false"
    assert err.value.code == "budget_exceeded"
    await refusing.assert_refused_once()


async def test_sdk_default_retries_do_not_resend_a_refusal(refusing: Budgeted):
    # the OpenAI client's default 2 retries obey x-should-retry: false, and the Agents SDK's
    # own retries (ModelSettings.retry) are off unless asked for
    with pytest.raises(openai.RateLimitError):
        await Runner.run(agent(refusing, OpenAIResponsesModel, max_retries=2), "hello",
                         run_config=RUN)
    await refusing.assert_refused_once()

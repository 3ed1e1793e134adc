"""pydantic-ai (`pydantic-ai-slim[openai]`): an `Agent` on `OpenAIChatModel` via the proxy."""

from __future__ import annotations

import pytest

pytest.importorskip("pydantic_ai.models.openai")

from openai import AsyncOpenAI
from pydantic_ai import Agent
from pydantic_ai.exceptions import ModelHTTPError, ModelQuotaExceededError
from pydantic_ai.models.openai import OpenAIChatModel
from pydantic_ai.providers.openai import OpenAIProvider

from tests.frameworks.conftest import ATTRIBUTION, CLIENT_KEY, Budgeted

MODEL = "gpt-4o-mini"


def agent(budgeted: Budgeted, **client: object) -> Agent:
    # the README's setup: the provider built on an OpenAI client that carries the base URL,
    # the attribution headers and no retries
    options: dict[str, object] = {"max_retries": 0, **client}
    openai_client = AsyncOpenAI(base_url=budgeted.openai_base_url, api_key=CLIENT_KEY,
                                default_headers=ATTRIBUTION, **options)  # type: ignore[arg-type]
    model = OpenAIChatModel(MODEL, provider=OpenAIProvider(openai_client=openai_client))
    return Agent(model)


async def test_call_reaches_the_provider_and_is_attributed(budgeted: Budgeted):
    result = await agent(budgeted).run("hello")
    assert result.output
    await budgeted.assert_recorded_once(MODEL)


async def test_refusal_raises_quota_exceeded_once(refusing: Budgeted):
    # the proxy's OpenAI-format refusal is `insufficient_quota`: pydantic-ai's "waiting
    # won't help" error, an HTTP error too
    with pytest.raises(ModelQuotaExceededError) as err:
        await agent(refusing).run("hello")
    assert isinstance(err.value, ModelHTTPError) and err.value.status_code == 429
    assert err.value.headers is not None and err.value.headers["x-should-retry"] == "false"
    assert "Budget exceeded" in str(err.value.body)
    await refusing.assert_refused_once()


async def test_sdk_default_retries_do_not_resend_a_refusal(refusing: Budgeted):
    # the OpenAI client's default 2 retries obey x-should-retry: false
    with pytest.raises(ModelQuotaExceededError):
        await agent(refusing, max_retries=2).run("hello")
    await refusing.assert_refused_once()

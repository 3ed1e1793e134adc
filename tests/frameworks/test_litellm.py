"""litellm: `acompletion` with an `openai/` model and `api_base` at the proxy."""

from __future__ import annotations

import os

import pytest

# the model price map is read from the package, not fetched from the network at import
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
litellm = pytest.importorskip("litellm")

from tests.frameworks.conftest import ATTRIBUTION, CLIENT_KEY, Budgeted  # noqa: E402

MODEL = "gpt-4o-mini"


async def complete(budgeted: Budgeted, **kw: object):
    # the README's setup: api_base, the attribution as extra headers, no retries of litellm's
    # own (num_retries) nor of the OpenAI client under it (max_retries)
    options: dict[str, object] = {"num_retries": 0, "max_retries": 0, **kw}
    return await litellm.acompletion(
        model=f"openai/{MODEL}", api_base=budgeted.openai_base_url, api_key=CLIENT_KEY,
        extra_headers=ATTRIBUTION, messages=[{"role": "user", "content": "hello"}], **options)


async def test_call_reaches_the_provider_and_is_attributed(budgeted: Budgeted):
    reply = await complete(budgeted)
    assert reply.choices[0].message.content
    await budgeted.assert_recorded_once(MODEL)


async def test_refusal_raises_rate_limit_error_once(refusing: Budgeted):
    with pytest.raises(litellm.RateLimitError) as err:
        await complete(refusing)
    assert err.value.status_code == 429
    assert "Budget exceeded" in err.value.message
    await refusing.assert_refused_once()


async def test_defaults_do_not_resend_a_refusal(refusing: Budgeted):
    # without num_retries litellm adds no retry of its own, and the OpenAI client under it
    # obeys x-should-retry: false
    with pytest.raises(litellm.RateLimitError):
        await litellm.acompletion(
            model=f"openai/{MODEL}", api_base=refusing.openai_base_url, api_key=CLIENT_KEY,
            extra_headers=ATTRIBUTION, messages=[{"role": "user", "content": "hello"}])
    await refusing.assert_refused_once()

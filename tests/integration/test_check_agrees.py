"""`POST /api/usage/check` and the proxy answer the same for the same request: both plan
through `budget_proxy.planning` (windows, soft-limit model, hold, fit, refusal message)."""

from __future__ import annotations

import httpx
import pytest

from tests.integration.test_stream_cut import add_policy, proxy_input_tokens

PROMPT = [{"role": "user", "content": "plan this request"}]
MAX_TOKENS = 2000

# (policies, settings): each policy's token limit is given over the request's input
CASES = {
    "no policy": ([], {}),
    "a generous hard limit": ([{"type": "hard_limit", "token_limit": 10**6}], {}),
    "a hard limit the worst case passes": ([{"type": "hard_limit", "over_input": 100}], {}),
    "the same, fitted": ([{"type": "hard_limit", "over_input": 100}],
                         {"on_insufficient": "fit"}),
    "not even the input, fitted": ([{"type": "hard_limit", "over_input": -1}],
                                   {"on_insufficient": "fit"}),
    "a cost limit": ([{"type": "hard_limit", "cost_limit": 0.0001}], {}),
    "a cost limit, fitted": ([{"type": "hard_limit", "cost_limit": 0.0001}],
                             {"on_insufficient": "fit"}),
    "the tightest of two": ([{"type": "hard_limit", "over_input": 500},
                             {"type": "hard_limit", "over_input": 50, "component": "billing"}],
                            {"on_insufficient": "fit"}),
    "another component's limit": ([{"type": "hard_limit", "over_input": 5,
                                    "component": "search"}], {}),
    "a soft limit moves the model": ([{"type": "soft_limit", "cost_limit": 1.0,
                                       "action_threshold": 0.0, "fallback_model": "gpt-4o-mini"
                                       }], {}),
    "a warning only": ([{"type": "warn", "over_input": 5}], {}),
}


@pytest.mark.parametrize("name", list(CASES))
async def test_check_and_the_proxy_answer_the_same(proxy_factory, fake, name):
    policies, settings = CASES[name]
    proxy = await proxy_factory(**settings)
    body = {"model": "gpt-4o", "messages": PROMPT, "max_tokens": MAX_TOKENS}
    inputs = await proxy_input_tokens("openai", body)
    for spec in policies:
        spec = dict(spec)
        if "over_input" in spec:
            spec["token_limit"] = inputs + spec.pop("over_input")
        await add_policy(proxy, **spec)

    check = (await proxy.api("POST", "/api/usage/check", json={
        "provider": "openai", "model": "gpt-4o", "component": "billing",
        "input_tokens": inputs, "max_output_tokens": MAX_TOKENS})).json()
    async with httpx.AsyncClient(timeout=10) as client:
        resp = await client.post(f"{proxy.url}/v1/chat/completions", json=body,
                                 headers={"X-Budget-Component": "billing"})

    assert check["allowed"] == (resp.status_code == 200), (check, resp.text)
    if check["allowed"]:
        sent = fake.last.body
        assert check["model"] == sent["model"]
        assert check["max_output_tokens"] == sent["max_tokens"]
        fitted = resp.headers.get("X-Budget-Max-Tokens")
        assert (fitted is not None) == (check["max_output_tokens"] != MAX_TOKENS)
    else:
        assert resp.status_code == 429 and fake.requests == []
        assert check["refused_by"] == resp.headers["X-Budget-Policy"]
        assert check["reason"] == resp.json()["error"]["message"]

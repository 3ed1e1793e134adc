"""Responses API built-in tools billed per call: priced where the catalog knows the fee,
else by the unknown-price rule; the hold covers the calls a request allows."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import openai
import orjson
import pytest

from budget_proxy.pricing import PriceCatalog
from budget_proxy.providers import adapter_for, tap_for
from budget_proxy.providers.openai import WORST_TOOL_CALLS, tool_calls_asked
from budget_proxy.usage import Usage, cost_of

GPT_4O = (Decimal("2.50"), Decimal("10.00"))  # per million tokens
WEB_SEARCH = Decimal("0.010")  # per call
WEB_SEARCH_PREVIEW_4O = Decimal("0.025")
FILE_SEARCH = Decimal("0.0025")


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"tools": [{"type": "web_search"}]}, (("web_search", WORST_TOOL_CALLS),)),
        ({"tools": [{"type": "web_search_preview_2025_03_11"}, {"type": "file_search"},
                    {"type": "function", "name": "f"}], "max_tool_calls": 3},
         (("web_search_preview", 3), ("file_search", 3))),
        ({"tools": [{"type": "web_search"}], "max_tool_calls": 0}, ()),
        ({"tools": [{"type": "web_search"}], "max_tool_calls": -1},
         (("web_search", WORST_TOOL_CALLS),)),
        ({"tools": [{"type": "web_search"}], "max_tool_calls": "2"},
         (("web_search", WORST_TOOL_CALLS),)),
        ({"tools": "web_search"}, ()),
        ({"tools": [None, 5, {"type": 7}, {"type": "mcp"}]}, ()),
        ({}, ()),
    ],
)
def test_tools_a_request_enables(body, expected):
    assert tool_calls_asked(body) == expected


def test_the_tap_counts_each_tool_call_as_the_request_named_the_tool():
    plan = adapter_for("openai").plan(
        "responses", "responses", "", orjson.dumps({
            "model": "gpt-4o", "input": "x", "tools": [{"type": "web_search_preview"}]}),
        None)  # type: ignore[arg-type]
    tap = adapter_for("openai").tap(plan)
    tap.observe_answer(orjson.dumps({"output": [
        {"type": "web_search_call"}, {"type": "web_search_call"}, {"type": "message"},
        {"type": "file_search_call"}, "x", None],
        "usage": {"input_tokens": 10, "output_tokens": 2}}))
    assert tap.usage == Usage(input_tokens=10, output_tokens=2, tool_calls=(
        ("file_search", 1), ("web_search_preview", 2)))
    plain = tap_for("openai", "responses")
    plain.observe_answer(b'{"output": {"type": "web_search_call"}, "usage": '
                         b'{"input_tokens": 1, "output_tokens": 1}}')
    assert plain.usage == Usage(input_tokens=1, output_tokens=1)


def test_tool_fees_are_priced_from_the_catalog():
    price = PriceCatalog.load_default().lookup("openai", "gpt-4o")
    assert price is not None
    usage = Usage(tool_calls=(("file_search", 4), ("web_search", 3)))
    assert cost_of(usage, price).total_nusd == 3 * 10_000_000 + 4 * 2_500_000


def test_an_unknown_tool_fee_follows_the_unknown_price_rule():
    catalog = PriceCatalog.load_default()
    gpt_35 = catalog.lookup("openai", "gpt-3.5-turbo")
    assert gpt_35 is not None and not gpt_35.usd_per_tool_call
    assert catalog.with_tool_fees(gpt_35, ["web_search"], "openai", "refuse") is None
    charged = catalog.with_tool_fees(gpt_35, ["web_search", "code_interpreter"], "openai",
                                     "ceiling")
    assert charged is not None
    assert charged.usd_per_tool_call == {"web_search": WEB_SEARCH,
                                         "code_interpreter": WEB_SEARCH_PREVIEW_4O}
    assert catalog.with_tool_fees(gpt_35, [], "openai", "refuse") is gpt_35


async def records(proxy, expected: int) -> list[dict]:
    deadline = asyncio.get_running_loop().time() + 10
    while True:
        found = (await proxy.api("GET", "/api/usage/records")).json()
        if len(found) >= expected or asyncio.get_running_loop().time() > deadline:
            return found
        await asyncio.sleep(0.02)


@pytest.mark.parametrize("stream", [False, True])
async def test_web_search_calls_are_charged_and_held(proxy, fake, stream):
    fake.prompt_tokens, fake.completion_tokens = 100, 20
    held = []
    reserve = proxy.proxy.store.reserve

    async def spy(reservation, lines, ttl):
        held.append(reservation)
        return await reserve(reservation, lines, ttl)

    proxy.proxy.store.reserve = spy
    client = openai.AsyncOpenAI(base_url=f"{proxy.url}/v1", api_key="sk-client", max_retries=0)
    kwargs = {"model": "gpt-4o", "input": "news?", "max_output_tokens": 50,
              "max_tool_calls": 2, "tools": [{"type": "web_search_preview"}]}
    if stream:
        async for _ in await client.responses.create(**kwargs, stream=True):
            pass
    else:
        await client.responses.create(**kwargs)
    (rec,) = await records(proxy, 1)
    assert rec["metadata"]["tool_calls"] == {"web_search_preview": 1}
    expected = (100 * GPT_4O[0] + 20 * GPT_4O[1]) / 1_000_000 + WEB_SEARCH_PREVIEW_4O
    assert Decimal(str(rec["total_cost"])) == pytest.approx(expected, abs=Decimal("1e-9"))
    # the hold: the input, 50 output tokens and 2 calls of the tool
    input_tokens = orjson.loads(held[0].intent)["input_tokens"]
    hold_usd = (input_tokens * GPT_4O[0] + 50 * GPT_4O[1]) / 1_000_000 + 2 * WEB_SEARCH_PREVIEW_4O
    assert held[0].cost_nusd == int(hold_usd * 10**9)


async def test_an_unpriced_tool_is_refused_under_refuse(proxy_factory, fake):
    proxy = await proxy_factory(unknown_price="refuse")
    client = openai.AsyncOpenAI(base_url=f"{proxy.url}/v1", api_key="sk-client", max_retries=0)
    with pytest.raises(openai.BadRequestError) as refused:
        await client.responses.create(model="gpt-3.5-turbo", input="x",
                                      tools=[{"type": "web_search"}])
    assert refused.value.code == "unknown_model_price"
    assert fake.requests == []

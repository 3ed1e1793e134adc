"""One recommender: for the same task, `budget --json recommend` (online and `--offline`),
`POST /api/assistant/recommend-model` and the MCP `recommend_model` tool (over streamable
HTTP, the SDK's own client) give the same answer, against a live server."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx2
import orjson
import pytest
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

from tests.cli.conftest import ADMIN_TOKEN, invoke

TIMEOUT_S = 30

# (CLI arguments, the same task as the API's body and the MCP tool's arguments)
CASES = [
    pytest.param(["--task-type", "summarization", "--max-cost", "0.0005", "--provider",
                  "openai"],
                 {"task_type": "summarization", "max_cost": 0.0005, "provider": "openai"},
                 id="summarization-under-a-call-cost"),
    pytest.param(["--description", "Generate Python code for data processing",
                  "--context-size", "2000", "--output-size", "1000", "--frequency", "25",
                  "--budget-limit", "10", "--priority", "Code accuracy, error handling"],
                 {"task_description": "Generate Python code for data processing",
                  "input_length": 2000, "output_length": 1000, "usage_frequency": 25,
                  "budget_limit": 10.0, "priority_areas": ["Code accuracy, error handling"]},
                 id="described-code-task-within-a-daily-budget"),
    pytest.param(["--task-type", "text_generation", "--max-cost", "5.0"],
                 {"task_type": "text_generation", "max_cost": 5.0}, id="the-seed-command"),
    pytest.param(["--task-type", "embedding", "--context-size", "5000", "--limit", "3"],
                 {"task_type": "embedding", "input_length": 5000, "limit": 3},
                 id="embedding"),
    pytest.param(["--context-size", "100000", "--output-size", "1000", "--tier",
                  "remote_heavyweight", "--frequency", "50", "--limit", "3"],
                 {"input_length": 100_000, "output_length": 1000, "tier": "remote_heavyweight",
                  "usage_frequency": 50, "limit": 3}, id="long-context-tier"),
    pytest.param(["--tier", "local_midweight"], {"tier": "local_midweight"},
                 id="local-tier"),
    pytest.param(["--max-cost", "0"], {"max_cost": 0}, id="nothing-fits-the-budget"),
]


async def mcp_recommend_all(url: str, bodies: list[dict[str, Any]]) -> list[Any]:
    """The tool's answer to every case, in one MCP session."""
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    answers = []
    async with (
        asyncio.timeout(TIMEOUT_S),
        httpx2.AsyncClient(headers=headers, timeout=TIMEOUT_S) as http,
        streamable_http_client(f"{url}/api/mcp", http_client=http) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        for body in bodies:
            res = await session.call_tool("recommend_model", body)
            assert not res.is_error, res.content
            answers.append(orjson.loads(res.content[0].text))  # type: ignore[union-attr]
    return answers


@pytest.fixture(scope="module")
def tool_answers(live) -> dict[str, Any]:
    bodies = [case.values[1] for case in CASES]
    answers = asyncio.run(mcp_recommend_all(live.url, bodies))
    return {json.dumps(body, sort_keys=True): answer
            for body, answer in zip(bodies, answers, strict=True)}


@pytest.mark.parametrize(("args", "body"), CASES)
def test_cli_api_and_mcp_tool_agree(live, tool_answers, args: list[str],
                                    body: dict[str, Any]):
    api = live.api("POST", "/api/assistant/recommend-model", json=body)
    assert api.status_code == 200, api.text
    expected = api.json()
    assert expected["recommendations"], "a case must recommend something to compare"
    online = invoke(live, "--json", "recommend", *args)
    assert online.exit_code == 0, online.output
    offline = invoke(live, "recommend", "--offline", "--json", *args)
    assert offline.exit_code == 0, offline.output
    tool = tool_answers[json.dumps(body, sort_keys=True)]
    assert json.loads(online.stdout) == expected
    assert json.loads(offline.stdout) == expected  # the same function over the same catalog
    assert tool == expected


def test_the_options_change_the_answer(live):
    """--task-type and --max-cost are not ignored: the complexity and the budget follow them."""
    def answer(*args: str) -> Any:
        result = invoke(live, "--json", "recommend", *args)
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)

    simple, hard = answer("--task-type", "summarization"), answer("--task-type", "reasoning")
    assert (simple["complexity"], hard["complexity"]) == ("simple", "complex")
    assert simple["best"]["cost_per_request"] < hard["best"]["cost_per_request"]
    capped = answer("--task-type", "reasoning", "--max-cost", "0.001")
    assert capped["best"]["cost_per_request"] <= 0.001 < hard["best"]["cost_per_request"]

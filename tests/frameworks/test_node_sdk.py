"""The Node OpenAI and Anthropic SDKs (`node/package.json`, installed by `scripts/test` with
`npm ci`): `node/sdk_call.mjs` makes one call through the proxy."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import pytest

from tests.frameworks.conftest import Budgeted

NODE_DIR = Path(__file__).parent / "node"
NODE = shutil.which("node")

if NODE is None:
    pytest.skip("no node on PATH", allow_module_level=True)
if not (NODE_DIR / "node_modules").is_dir():
    pytest.fail("tests/frameworks/node/node_modules is missing: run "
                "`npm ci --prefix tests/frameworks/node` (scripts/test does)", pytrace=False)

FAMILIES = ["openai", "anthropic"]
MODELS = {"openai": "gpt-4o-mini", "anthropic": "claude-3-5-haiku-latest"}


async def node_call(budgeted: Budgeted, family: str, max_retries: int = 0) -> dict:
    # a subprocess awaited on the loop: the proxy under test serves on this same loop
    assert NODE is not None
    process = await asyncio.create_subprocess_exec(
        NODE, str(NODE_DIR / "sdk_call.mjs"), family, budgeted.proxy.url, str(max_retries),
        cwd=NODE_DIR, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await process.communicate()
    assert process.returncode == 0, err.decode()
    return json.loads(out)


@pytest.mark.parametrize("family", FAMILIES)
async def test_call_reaches_the_provider_and_is_attributed(budgeted: Budgeted, family: str):
    assert (await node_call(budgeted, family))["text"]
    await budgeted.assert_recorded_once(MODELS[family])


@pytest.mark.parametrize("family", FAMILIES)
async def test_refusal_raises_rate_limit_error_once(refusing: Budgeted, family: str):
    error = (await node_call(refusing, family))["error"]
    assert (error["name"], error["status"], error["shouldRetry"]) == (
        "RateLimitError", 429, "false")
    assert int(error["retryAfter"]) > 0
    await refusing.assert_refused_once()


@pytest.mark.parametrize("family", FAMILIES)
async def test_sdk_default_retries_do_not_resend_a_refusal(refusing: Budgeted, family: str):
    # both SDKs retry a 429 twice by default, unless the answer says x-should-retry: false
    assert (await node_call(refusing, family, max_retries=2))["error"]["status"] == 429
    await refusing.assert_refused_once()

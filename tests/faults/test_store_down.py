"""A Redis-backed `budget-proxy serve` started while Redis is down, in both fail modes: it
starts; proxy routes answer by the fail mode (closed: 503 in the provider's format; open:
forwarded); readiness and the admin API answer 503 JSON; the CLI says the store is
unavailable; and once Redis is started it recovers by itself, with the policy files applied."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from budget_proxy.cli import EXIT_STORE_DOWN, main
from tests.conftest import free_port
from tests.redis_servers import RedisServer

ADMIN = "store-down-admin"
DEADLINE_S = 60.0  # only a hung proxy takes this long
POLICY_FILE = """
[policy.files-daily-cap]
period = "daily"
type = "hard_limit"
cost_limit = 5.0
"""
CHAT = {"model": "gpt-4o-mini", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}


async def _until(probe, what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        try:
            if await probe():
                return
        except httpx.HTTPError:
            pass
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.parametrize("fail_mode", ["closed", "open"])
async def test_starts_serves_by_fail_mode_and_recovers(tmp_path: Path, fake, fail_mode: str):
    redis = RedisServer(tmp_path / "redis", port=free_port())  # not started: Redis is down
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "caps.toml").write_text(POLICY_FILE)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("BUDGET_")}
    env.update({
        "BUDGET_PORT": str(port), "BUDGET_HOST": "127.0.0.1", "BUDGET_REDIS_URL": redis.url,
        "BUDGET_FAIL_MODE": fail_mode, "BUDGET_POLICIES_DIR": str(policies),
        "BUDGET_DATA_DIR": str(tmp_path / "data"), "BUDGET_ADMIN_TOKEN": ADMIN,
        "BUDGET_OPENAI_BASE_URL": f"{fake.url}/v1", "OPENAI_API_KEY": "sk-store-down",
    })
    log = tmp_path / "proxy.log"
    with log.open("wb") as out:
        process = await asyncio.to_thread(
            subprocess.Popen, [sys.executable, "-m", "budget_proxy", "serve"], env=env,
            stdout=out, stderr=subprocess.STDOUT)
    admin = {"Authorization": f"Bearer {ADMIN}"}
    try:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            async def live() -> bool:
                assert process.poll() is None, log.read_text()[-3000:]
                return (await client.get("/health")).status_code == 200

            await _until(live, "the proxy to start with Redis down")

            ready = await client.get("/api/health")
            assert ready.status_code == 503 and ready.json()["store_status"] == "unavailable"
            resp = await client.get("/api/policies", headers=admin)
            assert resp.status_code == 503, resp.text
            assert resp.json()["error"]["type"] == "store_unavailable"
            assert int(resp.headers["Retry-After"]) > 0
            resp = await client.post("/api/policies", headers=admin,
                                     json={"period": "daily", "cost_limit": 1})
            assert resp.status_code == 503 and "Traceback" not in resp.text

            forwarded_before = len(fake.requests)
            resp = await client.post("/v1/chat/completions", json=CHAT)
            if fail_mode == "closed":
                assert resp.status_code == 503, resp.text
                assert resp.json()["error"]["type"]  # the OpenAI error envelope
                assert len(fake.requests) == forwarded_before  # never reached the provider
            else:
                assert resp.status_code == 200, resp.text
                assert len(fake.requests) == forwarded_before + 1

            result = await asyncio.to_thread(
                CliRunner().invoke, main, ["status"],
                env={"BUDGET_URL": url, "BUDGET_ADMIN_TOKEN": ADMIN})
            assert result.exit_code == EXIT_STORE_DOWN, result.output
            assert "budget store unavailable" in result.output
            assert "refused" not in result.output

            await asyncio.to_thread(redis.start)

            async def ready_again() -> bool:
                return (await client.get("/api/health")).status_code == 200

            await _until(ready_again, "readiness after Redis came back")
            policies_now = (await client.get("/api/policies", headers=admin)).json()
            assert "files-daily-cap" in {p["policy_id"] for p in policies_now}
            resp = await client.post("/v1/chat/completions", json=CHAT)
            assert resp.status_code == 200, resp.text
            assert (await client.get("/api/budgets/default", headers=admin)).status_code == 200
    finally:
        process.terminate()
        process.wait(timeout=30)
        redis.kill()
    text = log.read_text()
    assert "Traceback" not in text, text[-3000:]
    assert "budget store unavailable at start-up" in text

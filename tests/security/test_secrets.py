"""No secret in any log line, metric or error: a real `budget-proxy serve` with an admin token,
a viewer token, provider keys and a Redis URL with a password (a private redis-server with
`requirepass`) takes ordinary traffic, refusals, bad input and a Redis outage; then every log
line, the `/metrics` text and every answer body is searched for each secret. A model name with
a newline cannot forge a log line either."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.conftest import free_port
from tests.redis_servers import RedisServer

ADMIN = "adm-5ecret-7c1e9a"
VIEWER = "view-5ecret-b2d4"
OPENAI_KEY = "sk-openai-5ecret-91f0"
ANTHROPIC_KEY = "sk-ant-5ecret-3a77"
REDIS_PASSWORD = "redis-5ecret-pw-e41c"
SECRETS = (ADMIN, VIEWER, OPENAI_KEY, ANTHROPIC_KEY, REDIS_PASSWORD)
FORGED = "FORGED-LINE CRITICAL budget_proxy: all budgets deleted"
DEADLINE_S = 60.0


async def test_no_secret_in_logs_metrics_or_errors(tmp_path: Path, fake):
    redis = await asyncio.to_thread(RedisServer(tmp_path / "redis").start)
    redis.cli("CONFIG", "SET", "requirepass", REDIS_PASSWORD)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("BUDGET_")}
    env.update({
        "BUDGET_PORT": str(port), "BUDGET_HOST": "127.0.0.1", "BUDGET_LOG_LEVEL": "DEBUG",
        "BUDGET_REDIS_URL": f"redis://:{REDIS_PASSWORD}@127.0.0.1:{redis.port}/0",
        "BUDGET_DATA_DIR": str(tmp_path / "data"), "BUDGET_ADMIN_TOKEN": ADMIN,
        "BUDGET_VIEWER_TOKEN": VIEWER, "OPENAI_API_KEY": OPENAI_KEY,
        "ANTHROPIC_API_KEY": ANTHROPIC_KEY, "BUDGET_OPENAI_BASE_URL": f"{fake.url}/v1",
        "BUDGET_ANTHROPIC_BASE_URL": fake.url, "BUDGET_FAIL_MODE": "open",
    })
    log = tmp_path / "proxy.log"
    with log.open("wb") as out:
        process = await asyncio.to_thread(
            subprocess.Popen, [sys.executable, "-m", "budget_proxy", "serve"], env=env,
            stdout=out, stderr=subprocess.STDOUT)
    bodies: list[str] = []
    admin = {"Authorization": f"Bearer {ADMIN}"}
    viewer = {"Authorization": f"Bearer {VIEWER}"}
    chat = {"model": "gpt-4o-mini", "max_tokens": 5,
            "messages": [{"role": "user", "content": "hi"}]}
    try:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            async def send(method: str, path: str, **kw: object) -> httpx.Response:
                resp = await client.request(method, path, **kw)  # type: ignore[arg-type]
                bodies.append(f"{method} {path} {resp.status_code} {dict(resp.headers)} "
                              f"{resp.text}")
                return resp

            deadline = time.monotonic() + DEADLINE_S
            while True:
                assert process.poll() is None, log.read_text()[-3000:]
                assert time.monotonic() < deadline, "the proxy did not become ready"
                try:
                    if (await client.get("/api/health")).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.1)

            assert (await send("POST", "/v1/chat/completions", json=chat)).status_code == 200
            assert (await send("POST", "/anthropic/v1/messages", json={
                "model": "claude-3-5-haiku-latest", "max_tokens": 5,
                "messages": [{"role": "user", "content": "hi"}]})).status_code == 200
            forged = {**chat, "model": f"no-such-model\n{FORGED}\r\x1b[2J"}
            await send("POST", "/v1/chat/completions", json=forged)
            await send("POST", "/v1/chat/completions", json=chat,
                       headers={"Authorization": "Bearer bp-not-a-real-key"})
            await send("POST", "/api/policies", json={"period": "daily", "cost_limit": 1e308},
                       headers=admin)
            await send("POST", "/api/policies", json={"period": "daily", "cost_limit": 5},
                       headers=admin)
            await send("POST", "/api/policies", json={"period": "daily", "cost_limit": 5},
                       headers=viewer)
            await send("POST", "/api/policies", json={"period": "daily", "cost_limit": 5},
                       headers={"Authorization": f"Bearer {ADMIN}x"})
            await send("GET", "/api/status", headers=viewer)
            await send("GET", "/api/nowhere", headers=admin)
            await send("POST", "/api/usage/record", headers=admin, json={
                "provider": "openai", "model": f"m\n{FORGED}", "input_tokens": 1,
                "output_tokens": 1, "input_cost": 0, "output_cost": 0})
            await send("GET", "/api/openapi.json")
            await send("GET", "/metrics")

            await asyncio.to_thread(redis.kill)  # an outage: errors name the store
            await send("POST", "/v1/chat/completions", json=chat)
            await send("GET", "/api/policies", headers=admin)
            await send("GET", "/api/health")
            await send("GET", "/metrics")
    finally:
        process.terminate()
        await asyncio.to_thread(process.wait, 30)
        redis.kill()

    text = log.read_text(errors="replace")
    assert "start-up: store: redis at redis://:***@127.0.0.1" in text, text[-3000:]
    assert "openai (key set)" in text and "admin token: set" in text
    for secret in SECRETS:
        assert secret not in text, f"{secret} in the log"
        for body in bodies:
            assert secret not in body, (secret, body[:500])
    metrics = [b for b in bodies if b.startswith("GET /metrics 200")]
    assert len(metrics) == 2
    for line in text.splitlines():
        assert not line.startswith("FORGED-LINE"), line
        assert "\x1b" not in line and "\r" not in line
    assert "\\nFORGED-LINE" in text  # the model name was logged, escaped on its line

"""Durability of the embedded store: a real `budget-proxy serve` process, stopped and killed."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys

import httpx
import openai

from budget_proxy.testing.fake_provider import FakeProvider


def env_for(fake_url: str, data_dir, **extra: str) -> dict[str, str]:
    return {
        "BUDGET_DATA_DIR": str(data_dir),
        "BUDGET_OPENAI_BASE_URL": f"{fake_url}/v1",
        "BUDGET_ANTHROPIC_BASE_URL": fake_url,
        **extra,
    }


async def get_json(url: str) -> object:
    async with httpx.AsyncClient(timeout=10) as client:
        resp = await client.get(url)
        resp.raise_for_status()
        return resp.json()


def cli(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "budget_proxy", "--url", url, *args],
                          capture_output=True, text=True, timeout=60)


async def test_policies_and_usage_survive_a_restart(fake: FakeProvider, tmp_path,
                                                    proxy_process_factory):
    env = env_for(fake.url, tmp_path / "data")  # type: ignore[attr-defined]
    first = await asyncio.to_thread(proxy_process_factory, env)
    made = await asyncio.to_thread(cli, first.url, "set-limit", "daily", "3.5",
                                   "--provider", "openai")
    assert made.returncode == 0, made.stderr
    assert "daily hard_limit $3.5" in made.stdout
    client = openai.AsyncOpenAI(base_url=f"{first.url}/v1", api_key="x")
    fake.prompt_tokens, fake.completion_tokens = 1000, 1000
    await client.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "hi"}], max_tokens=1000)
    first.stop(signal.SIGTERM)

    second = await asyncio.to_thread(proxy_process_factory, env, None)
    records = await get_json(f"{second.url}/api/usage/records")
    assert len(records) == 1 and records[0]["total_cost"] == 1000 * 2.5e-6 + 1000 * 10e-6
    status = await asyncio.to_thread(cli, second.url, "--json", "status")
    assert status.returncode == 0, status.stderr
    assert '"spent": 0.0125' in status.stdout
    table = await asyncio.to_thread(cli, second.url, "status")
    assert "hard_limit" in table.stdout and "provider=openai" in table.stdout


async def test_the_call_in_flight_of_a_killed_process_is_charged_unsettled_at_restart(
    fake: FakeProvider, tmp_path, proxy_process_factory
):
    env = env_for(fake.url, tmp_path / "data")  # type: ignore[attr-defined]
    first = await asyncio.to_thread(proxy_process_factory, env)
    made = await asyncio.to_thread(cli, first.url, "set-limit", "daily", "100")
    assert made.returncode == 0, made.stderr
    fake.response_delay_s = 3  # the call is in flight when the process dies
    request = asyncio.create_task(
        openai.AsyncOpenAI(base_url=f"{first.url}/v1", api_key="x", max_retries=0)
        .chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}],
                                 max_tokens=100))
    for _ in range(200):
        if fake.requests:  # forwarded: its hold was committed before
            break
        await asyncio.sleep(0.05)
    assert fake.requests
    first.stop(signal.SIGKILL)
    request.cancel()
    fake.response_delay_s = 0

    second = await asyncio.to_thread(proxy_process_factory, env)
    status = await get_json(f"{second.url}/api/status")
    policy = status["policies"][0]
    assert policy["reserved"] == 0 and policy["spent"] > 0  # charged, not released
    records = await get_json(f"{second.url}/api/usage/records")
    assert [(r["status"], r["model"], r["output_tokens"]) for r in records] == [
        ("unsettled", "gpt-4o", 100)]
    assert records[0]["total_cost"] == policy["spent"]

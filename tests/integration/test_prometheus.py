"""The metrics and rules as operators meet them: a real Prometheus (Debian's `prometheus`
package, 2.42) scrapes a real proxy every second with `charts/prometheus/rules.yml` loaded,
while the official OpenAI SDK drives a hard limit into refusal.

Checked through Prometheus' own HTTP API: `BudgetExhausted` goes pending for the refusing
policy (and not for the other one); `increase()` of cost over the test equals the sum of the
usage records, the first calls and a call charged at the unknown-model ceiling included; a
client's header creates no label value; first events show in `increase()` for refusals,
upstream errors and flagged usage. Every wait polls Prometheus; the deadlines only fail a hung
test (the whole test takes ~15 s).
"""

from __future__ import annotations

import asyncio
import json
import math
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest
import yaml

from tests.conftest import free_port
from tests.integration.test_metrics import DASHBOARD, dashboard_exprs

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "charts" / "prometheus" / "rules.yml"
PROMETHEUS = shutil.which("prometheus")
SECRET_COMPONENT = "sk-live-do-not-label-me-0123456789"
DEADLINE_S = 60.0  # only a hung test waits this long

pytestmark = pytest.mark.skipif(PROMETHEUS is None,
                                reason="prometheus not installed (apt-get install prometheus)")


@dataclass
class Prometheus:
    url: str
    client: httpx.AsyncClient

    async def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        resp = await self.client.get(f"{self.url}/api/v1/query", params=params)
        body = resp.json()
        assert body["status"] == "success", body
        return body["data"]["result"]

    async def value(self, expr: str, at: float | None = None) -> float | None:
        result = await self.query(expr, at)
        return float(result[0]["value"][1]) if result else None

    async def alerts(self) -> list[dict[str, Any]]:
        resp = await self.client.get(f"{self.url}/api/v1/alerts")
        return resp.json()["data"]["alerts"]

    async def get(self, path: str, **params: Any) -> Any:
        resp = await self.client.get(f"{self.url}{path}", params=params)
        body = resp.json()
        assert body["status"] == "success", body
        return body["data"]


async def until(probe: Callable[[], Awaitable[Any]], what: str) -> Any:
    """Poll `probe` until it returns something truthy."""
    deadline = time.monotonic() + DEADLINE_S
    while True:
        value = await probe()
        if value:
            return value
        assert time.monotonic() < deadline, f"Prometheus never showed: {what}"
        await asyncio.sleep(0.25)


@pytest.fixture
async def prometheus_for(tmp_path: Path) -> AsyncIterator[Callable[[str], Awaitable[Prometheus]]]:
    """Start a private Prometheus scraping `host:port` every second, rules loaded."""
    processes: list[subprocess.Popen[bytes]] = []
    clients: list[httpx.AsyncClient] = []

    async def start(target: str) -> Prometheus:
        config = tmp_path / "prometheus.yml"
        config.write_text(yaml.safe_dump({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s",
                       "scrape_timeout": "1s"},
            "rule_files": [str(RULES)],
            "scrape_configs": [{"job_name": "budget-proxy",
                                "static_configs": [{"targets": [target]}]}],
        }))
        port = free_port()
        log = (tmp_path / "prometheus.log").open("wb")
        processes.append(await asyncio.to_thread(
            subprocess.Popen,
            [str(PROMETHEUS), f"--config.file={config}",
             f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
            stdout=log, stderr=subprocess.STDOUT))
        client = httpx.AsyncClient(timeout=10)
        clients.append(client)
        prom = Prometheus(f"http://127.0.0.1:{port}", client)

        async def ready() -> bool:
            assert processes[-1].poll() is None, (tmp_path / "prometheus.log").read_text()
            try:
                return (await client.get(f"{prom.url}/-/ready")).status_code == 200
            except httpx.HTTPError:
                return False

        await until(ready, "ready")
        return prom

    yield start
    for client in clients:
        await client.aclose()
    for process in processes:
        process.terminate()
        process.wait(timeout=30)


async def test_real_prometheus_sees_exhaustion_every_dollar_and_no_client_labels(
        proxy_factory, fake, prometheus_for):
    proxy = await proxy_factory(unknown_price="ceiling")
    prom = await prometheus_for(proxy.url.removeprefix("http://"))
    await until(lambda: prom.value('up{job="budget-proxy"} == 1'), "the proxy up")

    async def add_policy(**body: Any) -> str:
        resp = await proxy.api("POST", "/api/policies", json=body)
        assert resp.status_code == 201, resp.text
        return resp.json()["policy_id"]

    # room for a handful of 100-token calls of gpt-4o-mini, then refusals
    hard = await add_policy(period="daily", type="hard_limit", cost_limit=0.0003,
                            model="gpt-4o-mini", name="mini-daily")
    roomy = await add_policy(period="daily", type="hard_limit", cost_limit=100,
                             token_limit=10**9, name="roomy-daily")
    fake.prompt_tokens, fake.completion_tokens = 120, 30
    client = openai.AsyncOpenAI(base_url=f"{proxy.url}/v1", api_key="x", max_retries=0)

    async def call(model: str = "gpt-4o-mini", **headers: str) -> bool:
        try:
            await client.chat.completions.create(
                model=model, max_tokens=100, messages=[{"role": "user", "content": "hi"}],
                extra_headers=headers)
        except openai.RateLimitError:
            return False
        return True

    admitted = refused = 0
    assert await call(**{"X-Budget-Component": SECRET_COMPONENT})
    admitted += 1
    assert await call("budget-proxy-test-unpriced-model")  # charged at the ceiling, flagged
    fake.fail_next = [(500, "upstream broke")]
    with pytest.raises(openai.InternalServerError):
        await call("gpt-4o")
    while refused < 4:  # spend until refused, then keep knocking
        if await call():
            admitted += 1
        else:
            refused += 1
        assert admitted < 50, "the hard limit never refused"
    assert admitted >= 3
    async with anthropic.AsyncAnthropic(  # a stream on another provider
            base_url=f"{proxy.url}/anthropic", api_key="x", max_retries=0).messages.stream(
            model="claude-3-5-haiku-latest", max_tokens=50,
            messages=[{"role": "user", "content": "hi"}]) as stream:
        await stream.get_final_message()
    admitted += 1

    # BudgetExhausted goes pending for the refusing policy only
    async def exhausted_alerts() -> list[dict[str, Any]]:
        return [a for a in await prom.alerts() if a["labels"]["alertname"] == "BudgetExhausted"]

    (alert,) = await until(exhausted_alerts, "BudgetExhausted pending")
    assert alert["state"] in ("pending", "firing")
    assert alert["labels"]["policy_id"] == hard and alert["labels"]["name"] == "mini-daily"
    assert alert["labels"]["severity"] == "critical"
    assert await prom.value(f'max(budget_proxy_policy_exhausted{{policy_id="{roomy}"}})') == 0
    assert await prom.value(
        f'max(budget_proxy_policy_utilisation_ratio{{policy_id="{hard}"}})') < 1

    # increase() of cost over the whole test equals the sum of the usage records
    records = (await proxy.api("GET", "/api/usage/records", params={"limit": 1000})).json()
    assert len(records) == admitted + 1
    recorded_usd = math.fsum(r["total_cost"] for r in records)
    assert recorded_usd > 0

    async def scraped_all() -> bool:
        total = await prom.value("sum(budget_proxy_cost_usd_total)")
        return total is not None and math.isclose(total, recorded_usd, rel_tol=1e-9)

    await until(scraped_all, "every settled call scraped")
    series = await prom.query("budget_proxy_cost_usd_total[10m]")
    last_at = max(float(v[0]) for s in series for v in s["values"])
    # evaluated at the last scrape, increase() does not extrapolate past the data, and every
    # series starts with a zero sample, so nothing before its first event is lost either
    increase = await prom.value("sum(increase(budget_proxy_cost_usd_total[10m]))", at=last_at)
    assert increase == pytest.approx(recorded_usd, rel=1e-9)
    for s in series:  # each series' first sample is 0: a first event is never lost
        assert float(s["values"][0][1]) == 0, s["metric"]

    # first events count in increase(): refusals, the upstream 500, the unpriced model
    async def first_events() -> bool:
        refusals = await prom.value(
            f'sum(increase(budget_proxy_refusals_total{{policy_id="{hard}"}}[10m]))')
        errors = await prom.value('sum(increase(budget_proxy_upstream_responses_total'
                                  '{status_class="5xx",gen_ai_provider_name="openai"}[10m]))')
        flagged = await prom.value('sum(increase(budget_proxy_flagged_usage_total'
                                   '{reason="unpriced_model"}[10m]))')
        return bool(refusals and refusals >= refused - 0.5 and errors and errors >= 0.5
                    and flagged and flagged >= 0.5)

    await until(first_events, "first refusals, upstream error and flagged usage in increase()")

    # a client's header is no label value anywhere; the configured default is one
    components = await prom.get("/api/v1/label/component/values")
    assert SECRET_COMPONENT not in components
    assert {"other", "sidecar-default"} <= set(components)
    everything = await prom.get("/api/v1/series", **{"match[]": '{job="budget-proxy"}'})
    assert not [s for s in everything if SECRET_COMPONENT in str(s.values())]
    # the rules evaluate without errors
    groups = (await prom.get("/api/v1/rules"))["groups"]
    assert groups and all(r["health"] == "ok" for g in groups for r in g["rules"]), groups

    # every dashboard query answers with data once calls have flowed (its variables at All)
    empty = []
    for where, expr, _ in dashboard_exprs(json.loads(DASHBOARD.read_text())):
        for var, value in (("$__rate_interval", "10m"), ("$__range", "10m"), ("$job", ".*"),
                           ("$provider", ".*"), ("$policy", ".*")):
            expr = expr.replace(var, value)
        if not await prom.query(expr):
            empty.append(f"{where}: {expr}")
    assert not empty, "\n".join(empty)

"""`/metrics` of a live proxy after real traffic, against what the Grafana dashboard and the
Prometheus rules query: every metric and label they use must exist. Also `promtool check
metrics` on the live output and `promtool check rules` on the rules file (Debian's
`prometheus` package provides promtool; without it those two tests skip)."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import anthropic
import openai
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "charts" / "grafana" / "budget-proxy.json"
RULES = ROOT / "charts" / "prometheus" / "rules.yml"
PROMTOOL = shutil.which("promtool")
NO_PROMTOOL = "promtool not installed (apt-get install prometheus)"

# labels Prometheus adds at scrape time, never in the exposition itself
TARGET_LABELS = {"job", "instance"}
SECRET_COMPONENT = "sk-live-0123456789abcdef"  # what a careless client may send as a header
GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
SELECTOR = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)?\s*\{([^}]*)\}")
MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")
IDENT = re.compile(r"(?<![\w.$])([a-zA-Z_:][a-zA-Z0-9_:]*)(?![\w(])(?!\s*\()")
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or",
            "unless", "bool", "offset", "inf", "nan", "__SEL__"}


# --- PromQL reading (enough for our own expressions) ------------------------------------
def grafana_to_promql(expr: str) -> str:
    for var in ("$__rate_interval", "$__interval", "$__range"):
        expr = expr.replace(var, "5m")
    return expr


def parse_expr(expr: str) -> tuple[dict[str, set[str]], set[str]]:
    """({metric: labels matched on it}, labels named in by/on/without/group_* clauses)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', grafana_to_promql(expr))
    text = re.sub(r"\[[^\]]*\]", "", text)  # range and subquery durations
    grouping: set[str] = set()
    for _, labels in GROUPING.findall(text):
        grouping |= {label.strip() for label in labels.split(",") if label.strip()}
    text = GROUPING.sub(" ", text)
    metrics: dict[str, set[str]] = {}
    for name, matchers in SELECTOR.findall(text):
        labels = set(MATCHER.findall(matchers))
        metric = name or next((m for m in re.findall(r'__name__\s*=\s*""', matchers)), "")
        if metric:
            metrics.setdefault(metric, set()).update(labels)
    text = SELECTOR.sub(lambda m: f" {m.group(1) or ''} __SEL__ ", text)
    for name in IDENT.findall(text):
        if name not in KEYWORDS and not re.fullmatch(r"\d.*", name):
            metrics.setdefault(name, set())
    return metrics, grouping


def dashboard_exprs(dashboard: dict) -> Iterator[tuple[str, str, str | None]]:
    """(where, expr, legendFormat) for every panel target and query variable."""
    def panels(items: list[dict]) -> Iterator[dict]:
        for item in items:
            yield item
            yield from panels(item.get("panels", []))

    for panel in panels(dashboard["panels"]):
        for target in panel.get("targets", []):
            yield f"panel {panel['title']!r}", target["expr"], target.get("legendFormat")
    for var in dashboard["templating"]["list"]:
        if var["type"] != "query":
            continue
        query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
        match = re.fullmatch(r"label_values\((.*),\s*([a-zA-Z_]\w*)\)", query.strip())
        assert match, f"variable {var['name']}: unexpected query {query}"
        selector, label = match.groups()
        yield f"variable {var['name']}", f"group by ({label}) ({selector})", None


def rule_exprs(rules: dict) -> Iterator[tuple[str, str, dict]]:
    for group in rules["groups"]:
        for rule in group["rules"]:
            yield rule.get("alert") or rule.get("record"), rule["expr"], rule


def exposed(text: str) -> dict[str, set[str]]:
    """Sample name -> label names, for every sample in an exposition."""
    out: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, set()).update(sample.labels)
    return out


# --- live traffic ------------------------------------------------------------------------
async def drive_traffic(proxy, fake) -> str:
    """Policies, metered calls (streamed and not, two providers, a refusal, bad input, an
    alert, a WebSocket client), then the scrape."""
    for body in (
        {"period": "daily", "type": "warn", "cost_limit": 0.00001, "name": "tiny-warn"},
        {"period": "monthly", "type": "hard_limit", "cost_limit": 100, "token_limit": 10**7,
         "name": "monthly-all"},
        {"period": "daily", "type": "hard_limit", "cost_limit": 0.000001, "model": "gpt-4o",
         "name": "no-gpt-4o"},
        {"period": "monthly", "type": "warn", "cost_limit": 100, "component": "billing",
         "name": "billing-monthly"},
    ):
        resp = await proxy.api("POST", "/api/policies", json=body)
        assert resp.status_code == 201, resp.text
    fake.prompt_tokens, fake.completion_tokens = 120, 30
    fake.cached_tokens, fake.reasoning_tokens = 20, 10
    client = openai.AsyncOpenAI(base_url=f"{proxy.url}/v1", api_key="x", max_retries=0)
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(f"{proxy.url.replace('http', 'ws')}/ws/budget/updates"):
            await client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}],
                extra_headers={"X-Budget-Component": "billing"})
            await client.chat.completions.create(  # a client header is not a label value
                model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}],
                extra_headers={"X-Budget-Component": SECRET_COMPONENT})
            stream = await client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True)
            async for _ in stream:
                pass
            await anthropic.AsyncAnthropic(
                base_url=f"{proxy.url}/anthropic", api_key="x", max_retries=0,
            ).messages.create(model="claude-3-5-haiku-latest", max_tokens=50,
                              messages=[{"role": "user", "content": "hi"}])
            with pytest.raises(openai.RateLimitError):
                await client.chat.completions.create(
                    model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
            bad = await proxy.api("POST", "/v1/chat/completions", content=b"{nope",
                                  headers={"Content-Type": "application/json"})
            assert bad.status_code == 400
            for _ in range(100):  # alerts are raised in the background
                if "budget_proxy_alerts_total{" in (await proxy.api("GET", "/metrics")).text:
                    break
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.2)  # a few event-loop lag samples
            resp = await proxy.api("GET", "/metrics")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/plain")
    return resp.text


@pytest.fixture
async def live_metrics(proxy, fake) -> str:
    return await drive_traffic(proxy, fake)


async def test_dashboard_and_rules_only_query_what_the_proxy_exposes(live_metrics):
    samples = exposed(live_metrics)
    dashboard = json.loads(DASHBOARD.read_text())
    rules = yaml.safe_load(RULES.read_text())
    checked: set[str] = set()
    problems: list[str] = []
    sources = [(w, e, legend) for w, e, legend in dashboard_exprs(dashboard)]
    sources += [(f"rule {name}", e, None) for name, e, _ in rule_exprs(rules)]
    for where, expr, legend in sources:
        metrics, grouping = parse_expr(expr)
        assert metrics, f"{where}: no metric found in {expr}"
        available = set(TARGET_LABELS)
        for metric, labels in metrics.items():
            checked.add(metric)
            if metric not in samples:
                problems.append(f"{where}: metric {metric} has no sample in /metrics")
                continue
            available |= samples[metric]
            for label in labels - TARGET_LABELS - samples[metric]:
                problems.append(f"{where}: {metric} has no label {label}")
        for label in grouping - available:
            problems.append(f"{where}: grouping label {label} not on any metric it uses")
        for label in re.findall(r"\{\{\s*(\w+)\s*\}\}", legend or ""):
            if grouping and label not in grouping and label not in available:
                problems.append(f"{where}: legend label {label} not in the result")
    assert not problems, "\n".join(problems)
    # the panels the issue asks for are there
    assert {"budget_proxy_policy_spent_usd", "budget_proxy_policy_limit_usd",
            "budget_proxy_policy_cost_usd_total", "budget_proxy_cost_usd_total",
            "budget_proxy_tokens_total", "budget_proxy_refusals_total",
            "budget_proxy_overhead_seconds_bucket",
            "gen_ai_client_operation_duration_seconds_bucket",
            "budget_proxy_store_failures_total"} <= checked


async def test_rule_annotations_use_labels_their_expression_keeps(live_metrics):
    rules = yaml.safe_load(RULES.read_text())
    for name, expr, rule in rule_exprs(rules):
        _, grouping = parse_expr(expr)
        text = json.dumps(rule.get("annotations", {}))
        for label in re.findall(r"\$labels\.(\w+)", text):
            assert label in grouping, f"rule {name}: annotation uses {label}, not kept by {expr}"


async def test_genai_and_policy_series_after_traffic(live_metrics):
    text = live_metrics
    assert re.search(r'gen_ai_client_token_usage_count\{[^}]*gen_ai_provider_name="anthropic"'
                     r'[^}]*gen_ai_token_type="input"', text)
    # OTel's token types: input (cached included) and output (reasoning included)
    otel = {s.labels["gen_ai_token_type"] for f in text_string_to_metric_families(text)
            if f.name == "gen_ai_client_token_usage" for s in f.samples}
    assert otel == {"input", "output"}
    for token_type in ("input", "output", "cache_read", "reasoning"):
        assert re.search(r'budget_proxy_tokens_total\{[^}]*gen_ai_token_type="'
                         f'{token_type}"', text)
    assert re.search(r'budget_proxy_requests_total\{[^}]*outcome="ok"[^}]*route='
                     r'"chat.completions"', text)
    assert 'component="billing"' in text and 'component="sidecar-default"' in text
    assert 'component="other"' in text and SECRET_COMPONENT not in text
    assert re.search(r'budget_proxy_refusals_total\{[^}]*reason="limit"', text)
    assert re.search(r'budget_proxy_error_responses_total\{[^}]*code="invalid_json"', text)
    assert re.search(r'budget_proxy_policy_utilisation_ratio\{[^}]*name="monthly-all"', text)
    assert re.search(r'budget_proxy_policy_remaining_tokens\{[^}]*name="monthly-all"', text)
    assert "gen_ai_client_operation_time_to_first_chunk_seconds_bucket" in text
    assert 'budget_proxy_websocket_clients{topic="updates"}' in text
    # bounded labels: no record, session or request ids, no raw model names
    assert not re.search(r'"(use|alr|alloc)_[0-9a-f]{8,}"', text) and "pol_" in text
    # the catalog's name on our own series; OTel's request model is the exact name asked for
    # when the catalog knows it (an alias here)
    assert not re.search(r'budget_proxy_requests_total\{[^}]*claude-3-5-haiku-latest', text)
    assert re.search(r'budget_proxy_requests_total\{[^}]*"claude-3-5-haiku"', text)
    assert re.search(r'gen_ai_client_token_usage_count\{[^}]*'
                     r'gen_ai_request_model="claude-3-5-haiku-latest"', text)
    # known label sets exist at zero from the start
    for provider in ("openai", "anthropic"):
        for status_class in ("2xx", "5xx", "unreachable"):
            assert (f'budget_proxy_upstream_responses_total{{gen_ai_provider_name="{provider}",'
                    f'status_class="{status_class}"}}') in text
        assert (f'budget_proxy_flagged_usage_total{{gen_ai_provider_name="{provider}",'
                f'reason="unpriced_model"}}') in text
        assert (f'budget_proxy_unmetered_requests_total{{gen_ai_provider_name="{provider}",'
                f'method="POST"}}') in text
    # one refusal with room left is no exhaustion (three in a row would be)
    assert re.search(r'budget_proxy_policy_exhausted\{[^}]*name="no-gpt-4o"[^}]*\} 0\.0', text)
    assert re.search(r'budget_proxy_policy_info\{[^}]*name="billing-monthly"', text)


@pytest.mark.skipif(PROMTOOL is None, reason=NO_PROMTOOL)
async def test_promtool_check_metrics_accepts_the_live_output(live_metrics):
    done = await asyncio.to_thread(subprocess.run, [PROMTOOL, "check", "metrics"],
                                   input=live_metrics, capture_output=True, text=True,
                                   timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.skipif(PROMTOOL is None, reason=NO_PROMTOOL)
def test_promtool_check_rules():
    done = subprocess.run([PROMTOOL, "check", "rules", str(RULES)], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_dashboard_uses_the_datasource_variable_only():
    dashboard = json.loads(DASHBOARD.read_text())
    names = [v["name"] for v in dashboard["templating"]["list"]]
    assert "datasource" in names
    assert dashboard.get("id") is None

    def datasources(node: object) -> Iterator[dict]:
        if isinstance(node, dict):
            if isinstance(node.get("datasource"), dict):
                yield node["datasource"]
            for value in node.values():
                yield from datasources(value)
        elif isinstance(node, list):
            for item in node:
                yield from datasources(item)

    for ds in datasources(dashboard):
        assert ds["uid"] in ("${datasource}", "-- Grafana --"), ds
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize(("expr", "metrics", "grouping"), [
    ('sum by (a, b) (rate(m_total{x="1", y=~"$v"}[$__rate_interval])) * 3600',
     {"m_total": {"x", "y"}}, {"a", "b"}),
    ("histogram_quantile(0.99, sum by (le) (rate(h_bucket[5m]))) > 0.05",
     {"h_bucket": set()}, {"le"}),
    ("max by (p) (g) / on (p) group_left (n) info", {"g": set(), "info": set()},
     {"p", "n"}),
    ("time() - max(t_seconds)", {"t_seconds": set()}, set()),
])
def test_expression_reader(expr, metrics, grouping):
    assert parse_expr(expr) == (metrics, grouping)

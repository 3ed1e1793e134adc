"""Prometheus metrics at `/metrics`, one `CollectorRegistry` per application.

Names follow Prometheus conventions (base units, `_total` counters, `_seconds`, `_usd`) and,
where one applies, the OpenTelemetry GenAI semantic conventions as the OTel Prometheus exporter
spells them (`gen_ai_client_token_usage`, `gen_ai_client_operation_duration_seconds`,
`gen_ai_client_operation_time_to_first_chunk_seconds`, labels `gen_ai_provider_name`,
`gen_ai_request_model`, `gen_ai_operation_name`, `gen_ai_token_type`, `error_type`).

Labels stay bounded: providers come from the configuration, models are the price catalog's
canonical names (anything else is `other`), components are capped at `MAX_COMPONENT_LABELS`
distinct values per process (the rest are `other`), error codes come from a fixed list, and
per-policy series are bounded by the number of policies. No key, session, task or request id
is ever a label.

Per-policy gauges (limit, spent, reserved, remaining, utilisation) are read from the store at
scrape time, one `totals` round trip for every policy, and shared by every replica: aggregate
them with `max by (policy_id)`, not `sum`. Per-policy spend counters are per replica: `sum`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from budget_proxy import __version__
from budget_proxy.config import Settings
from budget_proxy.enforcement import CounterLine, Totals, counter_key, utilisation
from budget_proxy.models import BudgetPolicy, UsageRecord, nusd_to_usd
from budget_proxy.periods import window_for
from budget_proxy.policy_cache import PolicyCache
from budget_proxy.store.base import Store, StoreError

if TYPE_CHECKING:
    from budget_proxy.pricing import ModelPrice
    from budget_proxy.proxy import Metered, Proxy

log = logging.getLogger(__name__)

# `*_created` series double the series count and no dashboard or rule reads them
disable_created_metrics()

OTHER = "other"
MAX_COMPONENT_LABELS = 100  # distinct component label values per process; later ones: other
MAX_LABEL_CHARS = 64

# OTel GenAI explicit bucket boundaries (gen_ai.client.token.usage, operation.duration)
TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304,
                 16777216, 67108864)
DURATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48,
                    40.96, 81.92)
# the proxy's own time is measured in milliseconds; 0.01 is the benchmark's loop-block target
OVERHEAD_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
LOOP_LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
LOOP_LAG_INTERVAL_S = 0.05  # how often the event-loop lag probe wakes up
SCRAPE_STORE_TIMEOUT_S = 2.0  # a scrape never waits longer than this on the store
SNAPSHOT_MAX_AGE_S = 1.0  # concurrent scrapes within this age share one store read

# endpoint kind (budget_proxy.wire) -> OTel gen_ai.operation.name
OPERATION_NAMES = {
    "chat.completions": "chat", "messages": "chat", "responses": "chat",
    "completions": "text_completion", "embeddings": "embeddings", "gemini": "generate_content",
}
# every code the proxy answers with itself (Proxy.error); anything else is reported as other
ERROR_CODES = frozenset({
    "budget_exceeded", "budget_store_unavailable", "invalid_json", "missing_model",
    "request_too_large", "unknown_model_price", "unknown_route", "upstream_unreachable",
})
STORE_OPERATIONS = ("reserve", "settle", "release")
TOKEN_TYPES = ("input", "output", "cache_read", "cache_write", "reasoning")
WEBHOOK_RESULTS = ("delivered", "retried", "failed", "dropped")

GENAI_LABELS = ("gen_ai_operation_name", "gen_ai_provider_name", "gen_ai_request_model")
POLICY_LABELS = ("policy_id", "name", "type", "period")


class BoundedValues:
    """The first `limit` distinct values keep their own label; later ones become `other`."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.seen: set[str] = set()

    def __call__(self, value: str | None) -> str:
        value = (value or "")[:MAX_LABEL_CHARS] or OTHER
        if value in self.seen:
            return value
        if len(self.seen) < self.limit:
            self.seen.add(value)
            return value
        return OTHER


def model_label(price: ModelPrice | None) -> str:
    """The catalog's canonical model name; wildcard (local runtime) entries are `other`."""
    if price is None or price.model.startswith("*"):
        return OTHER
    return price.model[:MAX_LABEL_CHARS]


def token_counts(record: UsageRecord) -> dict[str, int]:
    """Tokens by `gen_ai_token_type`, a partition of `total_tokens`: `input` is input billed
    at the plain rate, `output` excludes `reasoning` (reported on its own)."""
    reasoning = min(record.reasoning_tokens, record.output_tokens)
    return {
        "input": record.input_tokens,
        "output": record.output_tokens - reasoning,
        "cache_read": record.cached_input_tokens,
        "cache_write": record.cache_write_tokens,
        "reasoning": reasoning,
    }


class PolicyCollector:
    """Per-policy gauges from the last store snapshot (taken at scrape time)."""

    GAUGES = (
        ("budget_proxy_policy_limit_usd", "Cost limit of the policy's window in USD."),
        ("budget_proxy_policy_spent_usd", "Settled spend in the policy's current window in USD."),
        ("budget_proxy_policy_reserved_usd",
         "Worst-case cost held by in-flight requests in the current window in USD."),
        ("budget_proxy_policy_remaining_usd",
         "Cost limit minus spent and reserved in the current window in USD."),
        ("budget_proxy_policy_limit_tokens", "Token limit of the policy's window."),
        ("budget_proxy_policy_spent_tokens", "Settled tokens in the policy's current window."),
        ("budget_proxy_policy_reserved_tokens",
         "Worst-case tokens held by in-flight requests in the current window."),
        ("budget_proxy_policy_remaining_tokens",
         "Token limit minus spent and reserved tokens in the current window."),
        ("budget_proxy_policy_utilisation_ratio",
         "The larger of cost and token use (spent + reserved) over the limit."),
        ("budget_proxy_policy_window_reset_timestamp_seconds",
         "Unix time at which the policy's current window resets."),
    )

    def __init__(self) -> None:
        self.samples: list[tuple[str, tuple[str, ...], float]] = []

    def describe(self) -> Iterable[Metric]:
        return self._families([])

    def collect(self) -> Iterable[Metric]:
        return self._families(self.samples)

    def _families(self, samples: list[tuple[str, tuple[str, ...], float]]) -> Iterator[Metric]:
        families = {name: GaugeMetricFamily(name, doc, labels=POLICY_LABELS)
                    for name, doc in self.GAUGES}
        for name, labels, value in samples:
            families[name].add_metric(labels, value)
        yield from families.values()


def policy_samples(
    policies: Iterable[BudgetPolicy], totals: dict[str, Totals], now: datetime, tz: ZoneInfo
) -> list[tuple[str, tuple[str, ...], float]]:
    """Gauge samples of every enabled policy; per-session/per-task policies have no current
    window without a session, so only their limits are reported."""
    out: list[tuple[str, tuple[str, ...], float]] = []
    for policy in policies:
        if not policy.enabled:
            continue
        labels = (policy.policy_id, (policy.name or policy.policy_id)[:MAX_LABEL_CHARS],
                  policy.type.value, policy.period.value)
        limit_nusd, limit_tokens = policy.cost_limit_nusd, policy.token_limit
        if limit_nusd is not None:
            out.append(("budget_proxy_policy_limit_usd", labels, nusd_to_usd(limit_nusd)))
        if limit_tokens is not None:
            out.append(("budget_proxy_policy_limit_tokens", labels, float(limit_tokens)))
        window = window_for(policy.period, now, tz)
        if window is None:
            continue
        tot = totals.get(counter_key(policy.policy_id, window.window_id), Totals())
        out += [
            ("budget_proxy_policy_spent_usd", labels, nusd_to_usd(tot.spent_nusd)),
            ("budget_proxy_policy_reserved_usd", labels, nusd_to_usd(tot.reserved_nusd)),
        ]
        if limit_nusd is not None:
            out.append(("budget_proxy_policy_remaining_usd", labels,
                        nusd_to_usd(max(0, limit_nusd - tot.used_nusd))))
        out += [
            ("budget_proxy_policy_spent_tokens", labels, float(tot.spent_tokens)),
            ("budget_proxy_policy_reserved_tokens", labels, float(tot.reserved_tokens)),
        ]
        if limit_tokens is not None:
            out.append(("budget_proxy_policy_remaining_tokens", labels,
                        float(max(0, limit_tokens - tot.used_tokens))))
        line = CounterLine("", limit_nusd, limit_tokens, True, policy.policy_id)
        out.append(("budget_proxy_policy_utilisation_ratio", labels, utilisation(line, tot)))
        if window.resets_at is not None:
            out.append(("budget_proxy_policy_window_reset_timestamp_seconds", labels,
                        window.resets_at.timestamp()))
    return out


class Metrics:
    """Every metric of one application, and the proxy hooks that feed them."""

    def __init__(self, settings: Settings, store: Store, policies: PolicyCache) -> None:
        self.store = store
        self.policies = policies
        self.tz = ZoneInfo(settings.timezone)
        self.fail_mode = settings.fail_mode
        self.component = BoundedValues(MAX_COMPONENT_LABELS)
        self.registry = r = CollectorRegistry()
        self._snapshot_at = 0.0
        self._snapshot_lock = asyncio.Lock()
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}

        # OpenTelemetry GenAI client metrics (the proxy is the upstream's client)
        self.token_usage = Histogram(
            "gen_ai_client_token_usage",
            "Tokens per metered call by gen_ai_token_type (input, output, cache_read, "
            "cache_write, reasoning; a partition of the call's total tokens).",
            (*GENAI_LABELS, "gen_ai_token_type"), buckets=TOKEN_BUCKETS, registry=r)
        self.operation_duration = Histogram(
            "gen_ai_client_operation_duration_seconds",
            "Upstream time of a metered call: request sent to last byte received.",
            (*GENAI_LABELS, "error_type"), buckets=DURATION_BUCKETS, registry=r)
        self.time_to_first_chunk = Histogram(
            "gen_ai_client_operation_time_to_first_chunk_seconds",
            "Streamed calls: request sent upstream to first chunk received.",
            GENAI_LABELS, buckets=DURATION_BUCKETS, registry=r)

        # the proxy's own view
        self.requests = Counter(
            "budget_proxy_requests_total",
            "Metered calls forwarded upstream, by outcome (ok, aborted, error).",
            ("gen_ai_provider_name", "gen_ai_request_model", "route", "outcome"), registry=r)
        self.request_duration = Histogram(
            "budget_proxy_request_duration_seconds",
            "Whole metered call as the client sees it: arrival to last byte sent.",
            ("gen_ai_provider_name", "route"), buckets=DURATION_BUCKETS, registry=r)
        self.overhead = Histogram(
            "budget_proxy_overhead_seconds",
            "Time the proxy itself adds to a metered call (before the upstream call and after "
            "its end), excluding the upstream's time.",
            ("gen_ai_provider_name", "route"), buckets=OVERHEAD_BUCKETS, registry=r)
        self.tokens = Counter(
            "budget_proxy_tokens_total", "Tokens charged, by token type and component.",
            ("gen_ai_provider_name", "gen_ai_request_model", "component", "gen_ai_token_type"),
            registry=r)
        self.cost = Counter(
            "budget_proxy_cost_usd_total", "Cost charged in USD, by provider, model, component.",
            ("gen_ai_provider_name", "gen_ai_request_model", "component"), registry=r)
        self.policy_cost = Counter(
            "budget_proxy_policy_cost_usd_total",
            "Cost charged to each policy in USD by this replica (sum over replicas; its rate "
            "is the policy's burn rate).", ("policy_id",), registry=r)
        self.policy_tokens = Counter(
            "budget_proxy_policy_tokens_total", "Tokens charged to each policy by this replica.",
            ("policy_id",), registry=r)
        self.refusals = Counter(
            "budget_proxy_refusals_total", "Requests refused by a hard limit.",
            ("gen_ai_provider_name", "policy_id", "reason"), registry=r)
        self.error_responses = Counter(
            "budget_proxy_error_responses_total",
            "Error answers the proxy gave itself (bad input, refusals, store down, upstream "
            "unreachable), by code.", ("api", "status", "code"), registry=r)
        self.store_failures = Counter(
            "budget_proxy_store_failures_total", "Store operations that failed, by fail mode.",
            ("operation", "fail_mode"), registry=r)
        self.store_up = Gauge(
            "budget_proxy_store_up", "1 if the last scrape-time store read succeeded.",
            registry=r)
        self.loop_lag = Histogram(
            "budget_proxy_event_loop_lag_seconds",
            f"How late the event loop ran a timer due every {LOOP_LAG_INTERVAL_S}s.",
            buckets=LOOP_LAG_BUCKETS, registry=r)
        self.alerts = Counter(
            "budget_proxy_alerts_total", "Alerts raised (stored) by this replica, by type.",
            ("type",), registry=r)
        self.webhook_deliveries = Counter(
            "budget_proxy_webhook_deliveries_total",
            "Webhook delivery attempts by result (delivered, retried, failed, dropped).",
            ("format", "result"), registry=r)
        self.websocket_clients = Gauge(
            "budget_proxy_websocket_clients", "Connected WebSocket clients by path topic.",
            ("topic",), registry=r)
        self.websocket_dropped = Counter(
            "budget_proxy_websocket_dropped_total",
            "WebSocket clients cut off for being too slow.", registry=r)
        self.build_info = Gauge(
            "budget_proxy_build_info", "Version of the running proxy.", ("version",),
            registry=r)
        self.build_info.labels(__version__).set(1)
        self.policy_gauges = PolicyCollector()
        r.register(self.policy_gauges)
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)

        # known label values start at zero, so rules see a series before the first event
        for operation in STORE_OPERATIONS:
            self.store_failures.labels(operation, self.fail_mode)
        for fmt in ("json", "slack"):
            for result in WEBHOOK_RESULTS:
                self.webhook_deliveries.labels(fmt, result)
        self.store_up.set(1)

    # hooks --------------------------------------------------------------------------------
    def install(self, proxy: Proxy) -> None:
        proxy.on_finish.append(self.on_finish)
        proxy.on_refuse.append(self.on_refuse)
        proxy.on_store_failure.append(self.on_store_failure)
        proxy.on_error_response.append(self.on_error_response)

    def on_finish(self, meta: Metered, record: UsageRecord | None) -> None:
        provider, model, route = meta.provider, model_label(meta.price), meta.endpoint
        operation = OPERATION_NAMES.get(route, OTHER)
        self._child(self.requests, provider, model, route, meta.outcome).inc()
        if meta.finished_at:
            self._child(self.request_duration, provider, route).observe(
                meta.finished_at - meta.started_at)
        if meta.upstream_sent_at:
            self._child(self.overhead, provider, route).observe(meta.overhead_s)
            done = meta.upstream_done_at or meta.finished_at
            error_type = ("" if meta.outcome == "ok" else
                          "aborted" if meta.outcome == "aborted" else str(meta.status or OTHER))
            self._child(self.operation_duration, operation, provider, model, error_type).observe(
                max(0.0, done - meta.upstream_sent_at))
            if meta.streamed and meta.first_chunk_at:
                self._child(self.time_to_first_chunk, operation, provider, model).observe(
                    meta.first_chunk_at - meta.upstream_sent_at)
        if record is None:
            return
        component = self.component(record.component)
        for token_type, count in token_counts(record).items():
            if count or token_type in ("input", "output"):
                self._child(self.token_usage, operation, provider, model, token_type).observe(count)
            if count:
                self._child(self.tokens, provider, model, component, token_type).inc(count)
        self._child(self.cost, provider, model, component).inc(record.total_cost)
        for line in meta.lines:
            self._child(self.policy_cost, line.policy_id).inc(record.total_cost)
            self._child(self.policy_tokens, line.policy_id).inc(record.total_tokens)

    def _child(self, metric: Counter | Histogram, *values: str) -> Any:
        """`metric.labels(*values)`, cached: label lookups dominate the cost of a hook call, and
        the label sets are bounded, so the cache is too."""
        key = (id(metric), values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*values)
        return child

    def on_refuse(self, provider: str, policy_id: str, reason: str) -> None:
        self.refusals.labels(provider, policy_id, reason[:MAX_LABEL_CHARS]).inc()

    def on_store_failure(self, operation: str) -> None:
        self.store_failures.labels(operation[:MAX_LABEL_CHARS], self.fail_mode).inc()

    def on_error_response(self, api: str, status: int, code: str) -> None:
        self.error_responses.labels(api, str(status), code if code in ERROR_CODES else OTHER).inc()

    # scrape -------------------------------------------------------------------------------
    async def refresh_policy_gauges(self) -> None:
        """Read every policy's current window from the store (one round trip); on failure the
        previous values stay and `budget_proxy_store_up` drops to 0."""
        async with self._snapshot_lock:
            if time.monotonic() - self._snapshot_at < SNAPSHOT_MAX_AGE_S:
                return
            policies = self.policies.policies
            now = self.store.now()
            keys = []
            for policy in policies:
                window = window_for(policy.period, now, self.tz)
                if policy.enabled and window is not None:
                    keys.append(counter_key(policy.policy_id, window.window_id))
            try:
                values = await asyncio.wait_for(self.store.totals(keys), SCRAPE_STORE_TIMEOUT_S)
            except (StoreError, TimeoutError) as exc:
                log.warning("metrics: store read failed: %s", exc)
                self.store_up.set(0)
                return
            self.store_up.set(1)
            self.policy_gauges.samples = policy_samples(
                policies, dict(zip(keys, values, strict=True)), now, self.tz)
            self._snapshot_at = time.monotonic()

    async def handle_scrape(self, request: web.Request) -> web.Response:
        await self.refresh_policy_gauges()
        return web.Response(body=generate_latest(self.registry),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})

    def routes(self) -> list[web.RouteDef]:
        return [web.get("/metrics", self.handle_scrape)]

    # event loop ---------------------------------------------------------------------------
    async def watch_loop_lag(self, interval_s: float = LOOP_LAG_INTERVAL_S) -> None:
        """Sleep `interval_s` again and again; how late each wake-up is measures how long the
        loop was blocked (a callback that holds it for 30 ms shows up as ~30 ms of lag)."""
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + interval_s
            await asyncio.sleep(interval_s)
            self.loop_lag.observe(max(0.0, loop.time() - due))

"""Prometheus metrics at `/metrics`, one `CollectorRegistry` per application.

Names follow Prometheus conventions (base units, `_total` counters, `_seconds`, `_usd`) and,
where one applies, the OpenTelemetry GenAI semantic conventions as the OTel Prometheus exporter
spells them (`gen_ai_client_token_usage`, `gen_ai_client_operation_duration_seconds`,
`gen_ai_client_operation_time_to_first_chunk_seconds`, labels `gen_ai_provider_name`,
`gen_ai_request_model`, `gen_ai_operation_name`, `gen_ai_token_type`, `error_type`).

Labels stay under our control: providers come from the configuration; models are the price
catalog's names (anything else is `other`); components are the ones the configuration names
(policy scopes, virtual keys, allocations, the sidecar default), never a value a client sends
that nothing configured (`other`); policy ids are configured policies (`other` otherwise);
codes, reasons, outcomes and methods come from fixed lists. No key, session, task or request
id is ever a label.

Nothing is lost to `rate()` and `increase()`: the label sets known at start (providers,
policies, token types, outcomes, alert types, ...) exist at zero from the start, and a counter
or histogram series first seen mid-run is exposed at zero on the first scrape that sees it and
with its value from the next one (`FirstScrapeAtZero`), so its first events are counted.

Per-policy gauges (limit, spent, reserved, remaining, utilisation, exhausted) are read from the
store at scrape time, one `totals` round trip for every policy, and shared by every replica:
aggregate them with `max by (policy_id)`, not `sum`. Counters are per replica: `sum`.
"""

from __future__ import annotations

import asyncio
import logging
import statistics
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

import orjson
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
from budget_proxy.enforcement import CounterLine, Totals, tightest_remaining, utilisation
from budget_proxy.events import TOPICS
from budget_proxy.models import BudgetPolicy, UsageRecord, nusd_to_usd
from budget_proxy.policy_cache import PolicyCache
from budget_proxy.pricing import CEILING_MODEL
from budget_proxy.status import current_window, status_keys, window_statuses
from budget_proxy.store.base import Store, StoreError
from budget_proxy.usage import USAGE_FLAGS
from budget_proxy.virtual_keys import KeyRing

if TYPE_CHECKING:
    from budget_proxy.pricing import ModelPrice
    from budget_proxy.proxy import Metered, Proxy

log = logging.getLogger(__name__)

# `*_created` series double the series count and no dashboard or rule reads them
disable_created_metrics()

OTHER = "other"
MAX_COMPONENT_LABELS = 100  # configured component names that keep their own label
MAX_LABEL_CHARS = 64
ASSISTANT_COMPONENT = "budget-assistant"  # the assistant's own calls (DESIGN: MCP and assistant)
CEILING_MODEL_PREFIX = "*"  # catalog wildcard and unknown-model ceiling entries

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
ALLOCATION_NAMES_MAX_AGE_S = 30.0  # allocations are not config documents: re-read this often
TYPICAL_CALLS = 32  # recent worst cases per policy whose median is a "typical call"
REFUSAL_STREAK = 3  # refusals in a row (none admitted between) that mean "refusing"
CALL_SERIES_MAX = 1_024  # kinds of call whose label values are kept (`Metrics._call_series`)

# endpoint kind (budget_proxy.wire) -> OTel gen_ai.operation.name
OPERATION_NAMES = {
    "chat.completions": "chat", "messages": "chat", "responses": "chat", "ollama.chat": "chat",
    "completions": "text_completion", "ollama.generate": "text_completion",
    "embeddings": "embeddings", "ollama.embed": "embeddings", "gemini": "generate_content",
    # not in OpenTelemetry's list of well-known operations: named after what they produce
    "images.generations": "image_generation", "images.edits": "image_generation",
    "images.variations": "image_generation", "audio.speech": "speech",
    "audio.transcriptions": "transcription", "audio.translations": "transcription",
}
# every code the proxy answers with itself (Proxy.error); anything else is reported as other
ERROR_CODES = frozenset({
    "budget_exceeded", "budget_store_unavailable", "invalid_json", "missing_model",
    "request_too_large", "unknown_model_price", "unknown_route", "upstream_unreachable",
    "invalid_path", "unmetered_route", "invalid_api_key", "invalid_header",
    "provider_key_missing", "bad_upstream_response", "upstream_timeout",
})
OUTCOMES = ("ok", "aborted", "error")
ANSWERS = ("metered", "free", "refused")  # label `answer` of the overhead histogram
STORE_OPERATIONS = ("reserve", "settle", "release")
# budget_proxy_tokens_total: a partition of a call's total tokens (each token counted once)
TOKEN_TYPES = ("input", "output", "cache_read", "cache_write", "reasoning")
# gen_ai_client_token_usage: OTel's two types; input includes cached input, output reasoning
OTEL_TOKEN_TYPES = ("input", "output")
WEBHOOK_RESULTS = ("delivered", "retried", "failed", "dropped")
ALERT_TYPES = ("warning_threshold", "action_threshold", "limit_reached", "price_change",
               "price_conflict", "unknown_model_price", "usage_flagged")
# upstream answers of metered calls; `unreachable`: no answer at all
STATUS_CLASSES = ("2xx", "3xx", "4xx", "429", "5xx", "unreachable")
# why a usage record's figures are not the provider's plain answer: the usage reader's flags
# (`budget_proxy.usage.USAGE_FLAGS`) and a charge at the unknown-model ceiling
FLAG_REASONS = (*USAGE_FLAGS, "unpriced_model")
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
REFUSING_TYPES = frozenset({"hard_limit", "shadow"})

GENAI_LABELS = ("gen_ai_operation_name", "gen_ai_provider_name", "gen_ai_request_model")
POLICY_LABELS = ("policy_id", "name", "type", "period")


# pure label decisions ---------------------------------------------------------------------
def bounded(value: object, allowed: Iterable[str]) -> str:
    """`value` if it is one of `allowed`, else `other`."""
    return value if isinstance(value, str) and value in allowed else OTHER


def model_label(price: ModelPrice | None) -> str:
    """The catalog's canonical model name; wildcard (local runtime) and ceiling entries are
    `other`."""
    if price is None or price.model.startswith(CEILING_MODEL_PREFIX):
        return OTHER
    return price.model[:MAX_LABEL_CHARS]


def requested_model_label(requested: str | None, price: ModelPrice | None) -> str:
    """OTel's `gen_ai.request.model`: the exact name the client asked for when the catalog
    knows that very name (the model or one of its aliases), else the catalog's name."""
    if price is not None and requested and not price.model.startswith(CEILING_MODEL_PREFIX) \
            and (requested == price.model or requested in price.aliases):
        return requested[:MAX_LABEL_CHARS]
    return model_label(price)


def token_counts(record: UsageRecord) -> dict[str, int]:
    """Tokens by our `gen_ai_token_type`, a partition of `total_tokens`: `input` is input
    billed at the plain rate, `output` excludes `reasoning` (reported on its own)."""
    reasoning = min(record.reasoning_tokens, record.output_tokens)
    return {
        "input": record.input_tokens,
        "output": record.output_tokens - reasoning,
        "cache_read": record.cached_input_tokens,
        "cache_write": record.cache_write_tokens,
        "reasoning": reasoning,
    }


def otel_token_counts(record: UsageRecord) -> dict[str, int]:
    """Tokens as OTel's `gen_ai.client.token.usage` counts them: `input` includes cached
    input and cache writes, `output` includes reasoning; the two add up to the total."""
    return {
        "input": record.input_tokens + record.cached_input_tokens + record.cache_write_tokens,
        "output": record.output_tokens,
    }


def status_class(status: int, answered: bool) -> str:
    """The `status_class` of an upstream answer; `unreachable` when none came back."""
    if not answered:
        return "unreachable"
    if status == 429:
        return "429"
    if 200 <= status < 600:
        return f"{status // 100}xx"
    return OTHER


def flag_reasons(record: UsageRecord, price: ModelPrice | None) -> list[str]:
    """Bounded reasons a record is flagged: the clamps the usage reader applied
    (`metadata["flagged"]`, a list or one string) and a charge at the unknown-model ceiling."""
    raw = record.metadata.get("flagged") if isinstance(record.metadata, dict) else None
    values: list[object] = list(raw) if isinstance(raw, list | tuple) else [raw] if raw else []
    reasons = {bounded(value, FLAG_REASONS) for value in values}
    if price is not None and price.model == CEILING_MODEL:
        reasons.add("unpriced_model")
    return sorted(reasons)


def policy_label(policy_id: str, known: Iterable[str]) -> str:
    """A configured policy keeps its id; anything else (allocation lines) is `other`."""
    return policy_id if policy_id in known else OTHER


class ComponentLabels:
    """The component label values: names the configuration gives (policy scopes, virtual
    keys, allocations, the sidecar default), at most `limit` of them; everything else,
    whatever a client's header says, is `other`."""

    def __init__(self, fixed: Iterable[str], limit: int = MAX_COMPONENT_LABELS) -> None:
        self.fixed = tuple(v for v in fixed if v)
        self.limit = limit
        self.configured: frozenset[str] = frozenset()
        self.update(())

    def update(self, names: Iterable[str]) -> None:
        allowed = dict.fromkeys([*self.fixed, *sorted(n for n in names if n)])
        self.configured = frozenset(n for n in list(allowed)[: self.limit]
                                    if len(n) <= MAX_LABEL_CHARS)

    def __call__(self, value: str | None) -> str:
        return value if value in self.configured else OTHER  # type: ignore[return-value]


def policy_components(policies: Iterable[BudgetPolicy]) -> set[str]:
    return {p.component for p in policies if p.component}


def doc_components(bodies: Iterable[str], *, skip_finalized: bool = False) -> set[str]:
    """The `component` of each stored document (virtual keys, allocations); unreadable
    documents are skipped."""
    out = set()
    for body in bodies:
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError:
            continue
        if not isinstance(doc, dict) or (skip_finalized and doc.get("finalized")):
            continue
        if doc.get("revoked"):
            continue
        component = doc.get("component")
        if isinstance(component, str) and component:
            out.add(component)
    return out


# exhaustion -------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class TypicalCall:
    """What a typical call on a policy needs to be admitted: the median worst case."""

    cost_nusd: int
    tokens: int


def typical_call(worst_cases: Sequence[tuple[int, int]]) -> TypicalCall | None:
    if not worst_cases:
        return None
    return TypicalCall(int(statistics.median(c for c, _ in worst_cases)),
                       int(statistics.median(t for _, t in worst_cases)))


def is_exhausted(policy: BudgetPolicy, totals: Totals, typical: TypicalCall | None,
                 refusals: int) -> bool:
    """Whether the policy's current window can no longer pay a typical call: a limit used up,
    or less left than the typical call's worst case (a hard limit refuses it: spend levels
    off below 100% while every call is refused). `refusals` in a row in this window (none
    admitted since) count too: `REFUSAL_STREAK` of them, or one once settled spend is past
    the action threshold (after a restart no typical call is known yet). One oversized call
    refused while the budget has room is not exhaustion."""
    left_nusd = None if policy.cost_limit_nusd is None else policy.cost_limit_nusd - \
        totals.used_nusd
    left_tokens = None if policy.token_limit is None else policy.token_limit - \
        totals.used_tokens
    if (left_nusd is not None and left_nusd <= 0) or (left_tokens is not None
                                                      and left_tokens <= 0):
        return True
    if typical is not None:
        if left_nusd is not None and left_nusd < typical.cost_nusd:
            return True
        if left_tokens is not None and left_tokens < typical.tokens:
            return True
    if refusals >= REFUSAL_STREAK:
        return True
    if refusals:
        spent = Totals(spent_nusd=totals.spent_nusd, spent_tokens=totals.spent_tokens)
        line = CounterLine("", policy.cost_limit_nusd, policy.token_limit, True,
                           policy.policy_id)
        return utilisation(line, spent) >= policy.action_threshold
    return False


# collectors -------------------------------------------------------------------------------
SeriesKey = tuple[str, tuple[tuple[str, str], ...]]


def series_key(family: str, labels: dict[str, str]) -> SeriesKey:
    """One series of a counter or histogram family (a histogram's buckets are one series)."""
    return family, tuple(sorted((k, v) for k, v in labels.items() if k != "le"))


class FirstScrapeAtZero:
    """Exposes counters and histograms; a series not marked as seen is exposed at zero on the
    first scrape that sees it, then with its value. Prometheus counts no increase before a
    series' first sample, so without this the first events of a new label set (a new model,
    a new component, a first alert) would be missing from `rate()` and `increase()`.

    With several Prometheus servers scraping one replica, only the first of them sees the zero.
    """

    def __init__(self, metrics: Sequence[Counter | Histogram]) -> None:
        self.metrics = metrics
        self.seen: set[SeriesKey] = set()

    def mark_seen(self) -> None:
        """Take every series that exists now as already exposed (the zeros set at start)."""
        for metric in self.metrics:
            for family in metric.collect():
                self.seen.update(series_key(family.name, s.labels) for s in family.samples)

    def collect(self) -> Iterator[Metric]:
        new: set[SeriesKey] = set()
        for metric in self.metrics:
            for family in metric.collect():
                samples = []
                for sample in family.samples:
                    key = series_key(family.name, sample.labels)
                    if key not in self.seen:
                        new.add(key)
                        sample = sample._replace(value=0.0)
                    samples.append(sample)
                family.samples = samples
                yield family
        self.seen |= new


class PolicyCollector:
    """Per-policy gauges from the last store snapshot (taken at scrape time)."""

    GAUGES = (
        ("budget_proxy_policy_info", "1 for every enabled policy, with its name, type and "
         "period (join on policy_id to name a policy in per-policy counters)."),
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
        ("budget_proxy_policy_exhausted",
         "1 while the policy's current window cannot pay a typical call (a hard limit refuses "
         "it), 0 otherwise; back to 0 when the window resets."),
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
    policies: Iterable[BudgetPolicy], totals: dict[str, Totals], now: datetime, tz: ZoneInfo,
    typical: dict[str, TypicalCall] | None = None,
    refused: dict[str, tuple[str, int]] | None = None,
) -> list[tuple[str, tuple[str, ...], float]]:
    """Gauge samples of every enabled policy (`budget_proxy.status` does the arithmetic);
    per-session/per-task policies have no current window without a session, so only their
    info and limits are reported. `typical` and `refused` (policy id -> (window id, refusals
    in a row since the last admitted call)) feed `budget_proxy_policy_exhausted`."""
    typical, refused = typical or {}, refused or {}
    out: list[tuple[str, tuple[str, ...], float]] = []
    enabled = [p for p in policies if p.enabled]
    for status in window_statuses(enabled, totals, now, tz):
        policy, window, tot = status.policy, status.window, status.totals
        labels = (policy.policy_id, (policy.name or policy.policy_id)[:MAX_LABEL_CHARS],
                  policy.type.value, policy.period.value)
        out.append(("budget_proxy_policy_info", labels, 1.0))
        limit_nusd, limit_tokens = policy.cost_limit_nusd, policy.token_limit
        if limit_nusd is not None:
            out.append(("budget_proxy_policy_limit_usd", labels, nusd_to_usd(limit_nusd)))
        if limit_tokens is not None:
            out.append(("budget_proxy_policy_limit_tokens", labels, float(limit_tokens)))
        if window is None:
            continue
        line = CounterLine("", limit_nusd, limit_tokens, True, policy.policy_id)
        remaining = tightest_remaining([line], [tot])
        out += [
            ("budget_proxy_policy_spent_usd", labels, nusd_to_usd(tot.spent_nusd)),
            ("budget_proxy_policy_reserved_usd", labels, nusd_to_usd(tot.reserved_nusd)),
            ("budget_proxy_policy_spent_tokens", labels, float(tot.spent_tokens)),
            ("budget_proxy_policy_reserved_tokens", labels, float(tot.reserved_tokens)),
            ("budget_proxy_policy_utilisation_ratio", labels, status.utilisation),
        ]
        if remaining.cost_usd is not None:
            out.append(("budget_proxy_policy_remaining_usd", labels, remaining.cost_usd))
        if remaining.tokens is not None:
            out.append(("budget_proxy_policy_remaining_tokens", labels, float(remaining.tokens)))
        if limit_nusd is not None or limit_tokens is not None:
            streak_window, streak = refused.get(policy.policy_id, ("", 0))
            refusals = streak if streak_window == window.window_id else 0
            exhausted = is_exhausted(policy, tot, typical.get(policy.policy_id), refusals)
            out.append(("budget_proxy_policy_exhausted", labels, float(exhausted)))
        if window.resets_at is not None:
            out.append(("budget_proxy_policy_window_reset_timestamp_seconds", labels,
                        window.resets_at.timestamp()))
    return out


# the metrics ------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class CallSeries:
    """The label values under which one kind of metered call (provider, route, outcome,
    requested model, price, status) is reported, by metric; `Metrics.on_finish` computes them
    once per kind of call instead of once per call."""

    price: ModelPrice | None  # held while cached: the cache key has its id
    provider: str
    model: str
    requests: tuple[str, ...]
    upstream_responses: tuple[str, ...]
    request_duration: tuple[str, ...]
    operation_duration: tuple[str, ...]
    time_to_first_chunk: tuple[str, ...]
    token_usage_input: tuple[str, ...]
    token_usage_output: tuple[str, ...]


class Metrics:
    """Every metric of one application, and the proxy hooks that feed them."""

    def __init__(self, settings: Settings, store: Store, policies: PolicyCache) -> None:
        self.store = store
        self.policies = policies
        self.tz = ZoneInfo(settings.timezone)
        self.fail_mode = settings.fail_mode
        self.providers = tuple(settings.all_providers())
        self.components = ComponentLabels([settings.component, ASSISTANT_COMPONENT])
        self.registry = r = CollectorRegistry()
        self._snapshot_at = 0.0
        self._snapshot_lock = asyncio.Lock()
        self._children: dict[Counter | Histogram, dict[tuple[str, ...], Any]] = {}
        self._calls: dict[tuple[object, ...], CallSeries] = {}  # see `_call_series`
        self._policy_series: dict[str, tuple[Any, Any]] = {}  # policy id -> cost, tokens
        self._worst_cases: dict[str, deque[tuple[int, int]]] = {}
        # policy id -> (window, refusals in a row in it since the last admitted call)
        self._refused: dict[str, tuple[str, int]] = {}
        self._policies_initialised: set[str] = set()
        self._ring: KeyRing | None = None
        self._names_from: tuple[object, object] = (None, None)
        self._allocation_components: set[str] = set()
        self._allocations_at = 0.0
        self._tasks: set[asyncio.Task[Any]] = set()

        # OpenTelemetry GenAI client metrics (the proxy is the upstream's client)
        self.token_usage = Histogram(
            "gen_ai_client_token_usage",
            "Tokens per metered call by gen_ai_token_type as OTel counts them: input (cached "
            "input and cache writes included) and output (reasoning included).",
            (*GENAI_LABELS, "gen_ai_token_type"), buckets=TOKEN_BUCKETS, registry=None)
        self.operation_duration = Histogram(
            "gen_ai_client_operation_duration_seconds",
            "Upstream time of a metered call: request sent to last byte received.",
            (*GENAI_LABELS, "error_type"), buckets=DURATION_BUCKETS, registry=None)
        self.time_to_first_chunk = Histogram(
            "gen_ai_client_operation_time_to_first_chunk_seconds",
            "Streamed calls: request sent upstream to first chunk received.",
            GENAI_LABELS, buckets=DURATION_BUCKETS, registry=None)

        # the proxy's own view
        self.requests = Counter(
            "budget_proxy_requests_total",
            "Metered calls forwarded upstream, by outcome (ok, aborted, error).",
            ("gen_ai_provider_name", "gen_ai_request_model", "route", "outcome"), registry=None)
        self.upstream_responses = Counter(
            "budget_proxy_upstream_responses_total",
            "Upstream answers to metered calls by status class (2xx, 3xx, 4xx, 429, 5xx, "
            "unreachable).", ("gen_ai_provider_name", "status_class"), registry=None)
        self.request_duration = Histogram(
            "budget_proxy_request_duration_seconds",
            "Whole metered call as the client sees it: arrival to last byte sent.",
            ("gen_ai_provider_name", "route"), buckets=DURATION_BUCKETS, registry=None)
        self.overhead = Histogram(
            "budget_proxy_overhead_seconds",
            "Time the proxy itself adds to an answer under a provider prefix, as told in its "
            "X-Budget-Overhead-Ms header: arrival to the answer's headers, less the upstream's "
            "time (to its answer, or a stream's first chunk). answer: metered, free (forwarded "
            "unmetered) or refused (answered by the proxy).",
            ("gen_ai_provider_name", "route", "answer"), buckets=OVERHEAD_BUCKETS,
            registry=None)
        self.tokens = Counter(
            "budget_proxy_tokens_total",
            "Tokens charged, by token type (a partition of the total) and component.",
            ("gen_ai_provider_name", "gen_ai_request_model", "component", "gen_ai_token_type"),
            registry=None)
        self.cost = Counter(
            "budget_proxy_cost_usd_total", "Cost charged in USD, by provider, model, component.",
            ("gen_ai_provider_name", "gen_ai_request_model", "component"), registry=None)
        self.policy_cost = Counter(
            "budget_proxy_policy_cost_usd_total",
            "Cost charged to each policy in USD by this replica (sum over replicas; its rate "
            "is the policy's burn rate).", ("policy_id",), registry=None)
        self.policy_tokens = Counter(
            "budget_proxy_policy_tokens_total", "Tokens charged to each policy by this replica.",
            ("policy_id",), registry=None)
        self.refusals = Counter(
            "budget_proxy_refusals_total", "Requests refused by a hard limit.",
            ("gen_ai_provider_name", "policy_id", "reason"), registry=None)
        self.shadow_refusals = Counter(
            "budget_proxy_shadow_refusals_total",
            "Requests a shadow policy would have refused (they were served).",
            ("gen_ai_provider_name", "policy_id"), registry=None)
        self.flagged_usage = Counter(
            "budget_proxy_flagged_usage_total",
            "Usage records whose figures were not the provider's plain answer: clamped counts "
            "(negative_count, absurd_count, wrong_type, missing_count, unparseable_usage) or "
            "charged at the unknown-model ceiling (unpriced_model).",
            ("gen_ai_provider_name", "reason"), registry=None)
        self.unmetered = Counter(
            "budget_proxy_unmetered_requests_total",
            "Requests forwarded without metering under BUDGET_UNMETERED=allow.",
            ("gen_ai_provider_name", "method"), registry=None)
        self.error_responses = Counter(
            "budget_proxy_error_responses_total",
            "Error answers the proxy gave itself (bad input, refusals, store down, upstream "
            "unreachable), by code.", ("api", "status", "code"), registry=None)
        self.store_failures = Counter(
            "budget_proxy_store_failures_total", "Store operations that failed, by fail mode.",
            ("operation", "fail_mode"), registry=None)
        self.loop_lag = Histogram(
            "budget_proxy_event_loop_lag_seconds",
            f"How late the event loop ran a timer due every {LOOP_LAG_INTERVAL_S}s.",
            buckets=LOOP_LAG_BUCKETS, registry=None)
        self.alerts = Counter(
            "budget_proxy_alerts_total", "Alerts raised (stored) by this replica, by type.",
            ("type",), registry=None)
        self.webhook_deliveries = Counter(
            "budget_proxy_webhook_deliveries_total",
            "Webhook delivery attempts by result (delivered, retried, failed, dropped).",
            ("format", "result"), registry=None)
        self.websocket_dropped = Counter(
            "budget_proxy_websocket_dropped_total",
            "WebSocket clients cut off for being too slow.", registry=None)
        self.counted = FirstScrapeAtZero([
            self.token_usage, self.operation_duration, self.time_to_first_chunk, self.requests,
            self.upstream_responses, self.request_duration, self.overhead, self.tokens,
            self.cost, self.policy_cost, self.policy_tokens, self.refusals, self.shadow_refusals,
            self.flagged_usage,
            self.unmetered, self.error_responses, self.store_failures, self.loop_lag,
            self.alerts, self.webhook_deliveries, self.websocket_dropped,
        ])
        r.register(self.counted)  # type: ignore[arg-type]  # a collector without describe()

        self.store_up = Gauge(
            "budget_proxy_store_up", "1 if the last scrape-time store read succeeded.",
            registry=r)
        self.websocket_clients = Gauge(
            "budget_proxy_websocket_clients", "Connected WebSocket clients by path topic.",
            ("topic",), registry=r)
        self.build_info = Gauge(
            "budget_proxy_build_info", "Version of the running proxy.", ("version",),
            registry=r)
        self.provider_info = Gauge(
            "budget_proxy_provider_info", "1 for every configured provider, with its API family.",
            ("gen_ai_provider_name", "api"), registry=r)
        self.build_info.labels(__version__).set(1)
        for provider_name, provider in settings.all_providers().items():
            self.provider_info.labels(provider_name, provider.api).set(1)
        self.policy_gauges = PolicyCollector()
        r.register(self.policy_gauges)
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)

        # known label sets start at zero, so the first event is counted and rules see a series
        for operation in STORE_OPERATIONS:
            self.store_failures.labels(operation, self.fail_mode)
        for fmt in ("json", "slack"):
            for result in WEBHOOK_RESULTS:
                self.webhook_deliveries.labels(fmt, result)
        for alert_type in ALERT_TYPES:
            self.alerts.labels(alert_type)
        for provider_name in self.providers:
            for cls in STATUS_CLASSES:
                self.upstream_responses.labels(provider_name, cls)
            for reason in FLAG_REASONS:
                self.flagged_usage.labels(provider_name, reason)
            for method in METHODS:
                self.unmetered.labels(provider_name, method)
        for topic in TOPICS:
            self.websocket_clients.labels(topic)
        self.store_up.set(1)

    # hooks --------------------------------------------------------------------------------
    def install(self, proxy: Proxy) -> None:
        """Attach the hooks; the series of the policies loaded by now start at zero, and every
        series that exists at this point counts as seen (nothing has been served yet)."""
        proxy.on_finish.append(self.on_finish)
        proxy.on_refuse.append(self.on_refuse)
        proxy.on_store_failure.append(self.on_store_failure)
        proxy.on_error_response.append(self.on_error_response)
        proxy.on_answer.append(self.on_answer)
        unmetered = getattr(proxy, "on_unmetered", None)
        if isinstance(unmetered, list):
            unmetered.append(self.on_unmetered)
        ring = getattr(proxy.identify_key, "__self__", None)  # the key ring's `identify`
        self._ring = ring if isinstance(ring, KeyRing) else None
        self.init_policy_series(self.policies.policies)
        self.counted.mark_seen()
        task = asyncio.ensure_future(self.refresh_component_names())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def init_policy_series(self, policies: Iterable[BudgetPolicy]) -> None:
        """Zero series for each new enabled policy: its spend counters, and its refusals on
        every provider it can refuse on."""
        for policy in policies:
            if policy.policy_id in self._policies_initialised or not policy.enabled:
                continue
            self._policies_initialised.add(policy.policy_id)
            self._child(self.policy_cost, policy.policy_id)
            self._child(self.policy_tokens, policy.policy_id)
            if policy.type.value in REFUSING_TYPES:
                for provider in self.providers:
                    if policy.provider in (None, provider):
                        self._child(self.refusals, provider, policy.policy_id, "limit")

    def on_finish(self, meta: Metered, record: UsageRecord | None) -> None:
        answered = bool(meta.upstream_headers_at)  # set once the upstream's headers came
        price = meta.price
        call = self._calls.get((meta.provider, meta.endpoint, meta.outcome, meta.requested_model,
                                id(price), meta.status, answered))
        if call is None:
            call = self._call_series(meta, answered)
        known = self.policies.by_id
        for line in meta.lines:
            if line.policy_id in known:  # admitted: a typical call, and no longer refusing
                cases = self._worst_cases.get(line.policy_id)
                if cases is None:
                    cases = self._worst_cases[line.policy_id] = deque(maxlen=TYPICAL_CALLS)
                cases.append((meta.reservation.cost_nusd, meta.reservation.tokens))
                if self._refused:
                    self._refused.pop(line.policy_id, None)
        child = self._child_of
        child(self.requests, call.requests).inc()
        if meta.upstream_sent_at:
            child(self.upstream_responses, call.upstream_responses).inc()
        if meta.finished_at:
            child(self.request_duration, call.request_duration).observe(
                meta.finished_at - meta.started_at)
        if meta.upstream_sent_at:
            done = meta.upstream_done_at or meta.finished_at
            child(self.operation_duration, call.operation_duration).observe(
                max(0.0, done - meta.upstream_sent_at))
            if meta.streamed and meta.first_chunk_at:
                child(self.time_to_first_chunk, call.time_to_first_chunk).observe(
                    meta.first_chunk_at - meta.upstream_sent_at)
        if record is None:
            return
        otel = otel_token_counts(record)
        child(self.token_usage, call.token_usage_input).observe(max(0, otel["input"]))
        child(self.token_usage, call.token_usage_output).observe(max(0, otel["output"]))
        self.configured_names()
        provider, model = call.provider, call.model
        component = self.components(record.component)
        for token_type, count in token_counts(record).items():
            if count > 0:
                child(self.tokens, (provider, model, component, token_type)).inc(count)
        cost = max(0.0, record.total_cost)
        child(self.cost, (provider, model, component)).inc(cost)
        tokens = max(0, record.total_tokens)
        for line in meta.lines:
            if line.policy_id in known:
                cost_child, tokens_child = self._policy_children(line.policy_id)
                cost_child.inc(cost)
                tokens_child.inc(tokens)
        if record.metadata.get("flagged") or (price is not None and price.model == CEILING_MODEL):
            for reason in flag_reasons(record, price):
                child(self.flagged_usage, (provider, reason)).inc()

    def _call_series(self, meta: Metered, answered: bool) -> CallSeries:
        """The label values of a kind of call, computed once (`on_finish`); the cache is keyed
        by raw values a client chooses (the requested model), so it is bounded."""
        if len(self._calls) >= CALL_SERIES_MAX:
            self._calls.clear()
        price = meta.price
        provider = bounded(meta.provider, self.providers)
        model, route = model_label(price), meta.endpoint
        outcome = bounded(meta.outcome, OUTCOMES)
        operation = OPERATION_NAMES.get(route, OTHER)
        requested = requested_model_label(meta.requested_model, price)
        status = status_class(meta.status, answered)
        error_type = "" if outcome == "ok" else "aborted" if outcome == "aborted" else status
        genai = (operation, provider, requested)
        call = CallSeries(
            price=price, provider=provider, model=model,
            requests=(provider, model, route, outcome),
            upstream_responses=(provider, status), request_duration=(provider, route),
            operation_duration=(*genai, error_type), time_to_first_chunk=genai,
            token_usage_input=(*genai, "input"), token_usage_output=(*genai, "output"))
        self._calls[(meta.provider, meta.endpoint, meta.outcome, meta.requested_model,
                     id(price), meta.status, answered)] = call
        return call

    def _policy_children(self, policy_id: str) -> tuple[Any, Any]:
        """The cost and token counters of a configured policy."""
        pair = self._policy_series.get(policy_id)
        if pair is None:
            pair = self._policy_series[policy_id] = (self._child(self.policy_cost, policy_id),
                                                     self._child(self.policy_tokens, policy_id))
        return pair

    def _child(self, metric: Counter | Histogram, *values: str) -> Any:
        return self._child_of(metric, values)

    def _child_of(self, metric: Counter | Histogram, values: tuple[str, ...]) -> Any:
        """`metric.labels(*values)`, cached: label lookups dominate the cost of a hook call, and
        the label sets are bounded, so the cache is too."""
        children = self._children.get(metric)
        if children is None:
            children = self._children[metric] = {}
        child = children.get(values)
        if child is None:
            child = children[values] = metric.labels(*values)
        return child

    def on_refuse(self, provider: str, policy_id: str, reason: str) -> None:
        policy = self.policies.by_id.get(policy_id)
        label = policy_label(policy_id, self.policies.by_id)
        if reason == "shadow":  # served: what a shadow policy would have refused
            self._child(self.shadow_refusals, bounded(provider, self.providers), label).inc()
            return
        self._child(self.refusals, bounded(provider, self.providers), label,
                    reason[:MAX_LABEL_CHARS]).inc()
        if policy is not None:
            window = current_window(policy, self.store.now(), self.tz)
            if window is not None:
                streak_window, streak = self._refused.get(policy_id, ("", 0))
                streak = streak + 1 if streak_window == window.window_id else 1
                self._refused[policy_id] = (window.window_id, streak)

    def on_store_failure(self, operation: str) -> None:
        self._child(self.store_failures, operation[:MAX_LABEL_CHARS], self.fail_mode).inc()

    def on_answer(self, provider: str, route: str, answer: str, overhead_s: float) -> None:
        """`Proxy.on_answer`: the overhead told in an answer's `X-Budget-Overhead-Ms`."""
        self._child(self.overhead, bounded(provider, self.providers), route,
                    bounded(answer, ANSWERS)).observe(overhead_s)

    def on_error_response(self, api: str, status: int, code: str) -> None:
        self._child(self.error_responses, api[:MAX_LABEL_CHARS], str(status),
                    code if code in ERROR_CODES else OTHER).inc()

    def on_unmetered(self, provider: str, method: str) -> None:
        """`Proxy.on_unmetered`: a request forwarded unmetered (BUDGET_UNMETERED=allow)."""
        self._child(self.unmetered, bounded(provider, self.providers),
                    bounded(method.upper(), METHODS)).inc()

    # scrape -------------------------------------------------------------------------------
    def configured_names(self, force: bool = False) -> None:
        """Component label values from the policy cache and the key ring, recomputed only when
        either has reloaded (an identity check per call), plus the allocations' last read."""
        policies = self.policies.policies
        keys = self._ring.by_hash if self._ring is not None else None
        if not force and self._names_from == (policies, keys):
            return
        self._names_from = (policies, keys)
        names = policy_components(policies) | self._allocation_components
        if keys is not None:
            names |= {key.component for key in keys.values() if not key.revoked}
        self.components.update(names)

    async def refresh_component_names(self) -> None:
        """Allocations are no config documents (no cache reloads for them): their components
        are read from the store every `ALLOCATION_NAMES_MAX_AGE_S`. On a store error the old
        names stay."""
        from budget_proxy.allocations import ALLOCATION_KIND

        if time.monotonic() - self._allocations_at >= ALLOCATION_NAMES_MAX_AGE_S:
            try:
                self._allocation_components = doc_components(
                    await self.store.list_docs(ALLOCATION_KIND), skip_finalized=True)
                self._allocations_at = time.monotonic()
            except StoreError as exc:
                log.warning("metrics: allocation components not read: %s", exc)
        self.configured_names(force=True)

    async def refresh_policy_gauges(self) -> None:
        """Read every policy's current window from the store (one round trip); on failure the
        previous values stay and `budget_proxy_store_up` drops to 0."""
        async with self._snapshot_lock:
            if time.monotonic() - self._snapshot_at < SNAPSHOT_MAX_AGE_S:
                return
            policies = [p for p in self.policies.policies if p.enabled]
            self.init_policy_series(policies)
            now = self.store.now()
            keys = status_keys(policies, now, self.tz)
            try:
                values = await asyncio.wait_for(self.store.totals(keys), SCRAPE_STORE_TIMEOUT_S)
                await asyncio.wait_for(self.refresh_component_names(), SCRAPE_STORE_TIMEOUT_S)
            except (StoreError, TimeoutError) as exc:
                log.warning("metrics: store read failed: %s", exc)
                self.store_up.set(0)
                return
            self.store_up.set(1)
            typical = {pid: t for pid, cases in self._worst_cases.items()
                       if (t := typical_call(cases)) is not None}
            self.policy_gauges.samples = policy_samples(
                policies, dict(zip(keys, values, strict=True)), now, self.tz, typical,
                self._refused)
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


"""Metric label rules, exhaustion, first-scrape zeros and per-policy gauge samples: pure
functions and collectors, no I/O."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from budget_proxy.enforcement import Totals, counter_key
from budget_proxy.metrics import (
    OTHER,
    ComponentLabels,
    FirstScrapeAtZero,
    TypicalCall,
    bounded,
    doc_components,
    flag_reasons,
    is_exhausted,
    model_label,
    otel_token_counts,
    policy_label,
    policy_samples,
    requested_model_label,
    status_class,
    token_counts,
    typical_call,
)
from budget_proxy.models import BudgetPolicy, UsageRecord
from budget_proxy.periods import window_for
from budget_proxy.pricing import PriceCatalog

NOW = datetime(2025, 3, 14, 15, 9, tzinfo=UTC)
USD = 1_000_000_000  # nano-USD per USD


def record(**kw) -> UsageRecord:
    return UsageRecord(provider="openai", model="gpt-4o-mini", **kw)


# labels ---------------------------------------------------------------------------------
def test_component_labels_are_configured_names_only():
    label = ComponentLabels(["sidecar", ""], limit=3)
    label.update(["billing", "search", "zzz-later"])
    assert [label("sidecar"), label("billing"), label("search")] == [
        "sidecar", "billing", "search"]
    assert label("zzz-later") == OTHER  # over the cap (fixed names first, then sorted)
    for header in ("sk-live-abc123", "", None, "x" * 10_000, "billing ", "BILLING"):
        assert label(header) == OTHER
    label.update([])  # a policy deleted: its component is no longer a label
    assert label("billing") == OTHER and label("sidecar") == "sidecar"


def test_component_labels_refuse_overlong_configured_names():
    label = ComponentLabels([])
    label.update(["y" * 65, "ok"])
    assert label("y" * 65) == OTHER and label("ok") == "ok"


@pytest.mark.parametrize(("bodies", "skip_finalized", "expected"), [
    (['{"component": "a"}', '{"component": "b", "revoked": true}'], False, {"a"}),
    (['{"component": "a", "finalized": true}', '{"component": "c"}'], True, {"c"}),
    (['{"component": "a", "finalized": true}'], False, {"a"}),
    (["not json", "[1, 2]", '{"component": 5}', '{"component": ""}', "{}"], False, set()),
])
def test_doc_components(bodies, skip_finalized, expected):
    assert doc_components(bodies, skip_finalized=skip_finalized) == expected


@pytest.mark.parametrize(("value", "expected"), [
    ("openai", "openai"), ("nope", OTHER), (None, OTHER), (3, OTHER), ("", OTHER),
])
def test_bounded(value, expected):
    assert bounded(value, ("openai", "anthropic")) == expected


def test_policy_label_keeps_configured_ids_only():
    assert policy_label("pol_a", {"pol_a": 1}) == "pol_a"
    assert policy_label("alloc_0123456789", {"pol_a": 1}) == OTHER


def test_model_labels():
    catalog = PriceCatalog.load_default()
    dated = catalog.lookup("openai", "gpt-4o-mini-2024-07-18")
    assert model_label(dated) == "gpt-4o-mini"
    assert model_label(None) == OTHER
    assert model_label(catalog.ceiling("openai")) == OTHER
    # OTel's request model is the exact name asked for, when the catalog knows that name
    plain = catalog.lookup("openai", "gpt-4o-mini")
    assert requested_model_label("gpt-4o-mini", plain) == "gpt-4o-mini"
    alias = next(p for p in catalog if p.aliases)
    assert requested_model_label(alias.aliases[0], alias) == alias.aliases[0][:64]
    # a name the catalog only resolves by stripping (client-made) is the catalog's name
    assert requested_model_label("gpt-4o-mini-2099-01-01", plain) == "gpt-4o-mini"
    assert requested_model_label("whatever", catalog.ceiling("openai")) == OTHER
    assert requested_model_label(None, None) == OTHER


@pytest.mark.parametrize(("status", "answered", "expected"), [
    (200, True, "2xx"), (201, True, "2xx"), (304, True, "3xx"), (400, True, "4xx"),
    (429, True, "429"), (500, True, "5xx"), (503, True, "5xx"), (502, False, "unreachable"),
    (0, False, "unreachable"), (999, True, OTHER), (-1, True, OTHER), (42, True, OTHER),
])
def test_status_class(status, answered, expected):
    assert status_class(status, answered) == expected


# token types ----------------------------------------------------------------------------
def test_token_types_partition_the_total():
    rec = record(input_tokens=100, cached_input_tokens=50, cache_write_tokens=5,
                 output_tokens=40, reasoning_tokens=30, total_tokens=195)
    counts = token_counts(rec)
    assert counts == {"input": 100, "output": 10, "cache_read": 50, "cache_write": 5,
                      "reasoning": 30}
    assert sum(counts.values()) == rec.total_tokens


def test_otel_token_types_add_up_to_the_total():
    rec = record(input_tokens=100, cached_input_tokens=50, cache_write_tokens=5,
                 output_tokens=40, reasoning_tokens=30, total_tokens=195)
    assert otel_token_counts(rec) == {"input": 155, "output": 40}
    assert sum(otel_token_counts(rec).values()) == rec.total_tokens


def test_reasoning_larger_than_output_is_capped():
    counts = token_counts(record(output_tokens=10, reasoning_tokens=50, total_tokens=10))
    assert counts["reasoning"] == 10 and counts["output"] == 0


# flagged usage --------------------------------------------------------------------------
@pytest.mark.parametrize(("flagged", "expected"), [
    (None, []),
    (["negative_count"], ["negative_count"]),
    (["absurd_count", "wrong_type", "absurd_count"], ["absurd_count", "wrong_type"]),
    ("unparseable_usage", ["unparseable_usage"]),
    (["sk-secret", 5, None], [OTHER]),
    ({"weird": True}, [OTHER]),
])
def test_flag_reasons_are_bounded(flagged, expected):
    rec = record(metadata={} if flagged is None else {"flagged": flagged})
    assert flag_reasons(rec, None) == expected


def test_a_charge_at_the_ceiling_is_flagged():
    catalog = PriceCatalog.load_default()
    assert flag_reasons(record(), catalog.ceiling("openai")) == ["unpriced_model"]
    assert flag_reasons(record(), catalog.lookup("openai", "gpt-4o")) == []
    local = catalog.lookup("ollama", "llama3.2:3b")
    assert local is not None and flag_reasons(record(), local) == []  # free, not unpriced


# exhaustion -----------------------------------------------------------------------------
HARD = BudgetPolicy(policy_id="pol_h", period="daily", cost_limit=1.0, token_limit=10_000)


@pytest.mark.parametrize(("totals", "typical", "refused", "expected"), [
    (Totals(), None, 0, False),
    (Totals(spent_nusd=USD), None, 0, True),  # cost limit used up
    (Totals(spent_nusd=2 * USD), None, 0, True),  # overspent (fail open, clamped figures)
    (Totals(spent_tokens=10_000), None, 0, True),  # token limit used up
    (Totals(spent_nusd=USD // 2), TypicalCall(USD // 10, 100), 0, False),
    # the case: 98.8% spent, every call refused: a typical call no longer fits
    (Totals(spent_nusd=988_000_000), TypicalCall(20_000_000, 100), 0, True),
    (Totals(spent_tokens=9_950), TypicalCall(1, 100), 0, True),
    (Totals(spent_nusd=USD // 2, reserved_nusd=USD // 2 - 1), TypicalCall(2, 1), 0, True),
    # after a restart (no typical call known): a refusal past the action threshold
    (Totals(spent_nusd=960_000_000), None, 1, True),
    # one oversized call refused while the budget has room is not exhaustion...
    (Totals(spent_nusd=100_000_000), None, 1, False),
    (Totals(spent_nusd=100_000_000), None, 2, False),
    # ...but refusing call after call is
    (Totals(), None, 3, True),
    (Totals(spent_nusd=960_000_000), None, 0, False),
])
def test_is_exhausted(totals, typical, refused, expected):
    assert is_exhausted(HARD, totals, typical, refused) is expected


def test_typical_call_is_the_median_worst_case():
    assert typical_call([]) is None
    assert typical_call([(10, 1), (1000, 5), (30, 3)]) == TypicalCall(30, 3)
    assert typical_call([(10**12, 10**6)] + [(5, 2)] * 4) == TypicalCall(5, 2)  # one outlier


# first scrape at zero -------------------------------------------------------------------
def scrape(registry: CollectorRegistry) -> dict[tuple[str, tuple], float]:
    out = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_new_series_show_zero_on_their_first_scrape():
    counter = Counter("c_total", "c", ("k",), registry=None)
    hist = Histogram("h", "h", ("k",), buckets=(1.0,), registry=None)
    wrapper = FirstScrapeAtZero([counter, hist])
    registry = CollectorRegistry()
    registry.register(wrapper)  # type: ignore[arg-type]
    counter.labels("start").inc(0)
    wrapper.mark_seen()
    counter.labels("start").inc(2)  # seen at start: its value at once
    counter.labels("new").inc(5)  # first seen mid-run: zero first
    hist.labels("new").observe(3)
    first = scrape(registry)
    assert first[("c_total", (("k", "start"),))] == 2
    assert first[("c_total", (("k", "new"),))] == 0
    assert first[("h_count", (("k", "new"),))] == 0 and first[("h_sum", (("k", "new"),))] == 0
    assert first[("h_bucket", (("k", "new"), ("le", "+Inf")))] == 0
    counter.labels("new").inc()
    second = scrape(registry)
    assert second[("c_total", (("k", "new"),))] == 6
    assert second[("h_count", (("k", "new"),))] == 1
    assert second[("h_bucket", (("k", "new"), ("le", "+Inf")))] == 1
    assert second[("h_bucket", (("k", "new"), ("le", "1.0")))] == 0


# per-policy gauges ----------------------------------------------------------------------
@pytest.mark.parametrize("tz", ["UTC", "Europe/Berlin"])
def test_policy_samples(tz):
    cost = BudgetPolicy(policy_id="pol_c", name="daily-cost", period="daily", cost_limit=10.0)
    tokens = BudgetPolicy(policy_id="pol_t", period="monthly", type="warn", token_limit=1000)
    session = BudgetPolicy(policy_id="pol_s", period="per_session", cost_limit=1.0)
    off = BudgetPolicy(policy_id="pol_o", cost_limit=1.0, enabled=False)
    zone = ZoneInfo(tz)
    day = window_for(cost.period, NOW, zone)
    month = window_for(tokens.period, NOW, zone)
    totals = {
        counter_key("pol_c", day.window_id): Totals(spent_nusd=4_000_000_000,
                                                    reserved_nusd=1_000_000_000),
        counter_key("pol_t", month.window_id): Totals(spent_tokens=300, reserved_tokens=100),
    }
    samples = {(name, labels[0]): value
               for name, labels, value in policy_samples([cost, tokens, session, off], totals,
                                                         NOW, zone)}
    assert samples[("budget_proxy_policy_info", "pol_c")] == 1
    assert samples[("budget_proxy_policy_limit_usd", "pol_c")] == 10.0
    assert samples[("budget_proxy_policy_spent_usd", "pol_c")] == 4.0
    assert samples[("budget_proxy_policy_reserved_usd", "pol_c")] == 1.0
    assert samples[("budget_proxy_policy_remaining_usd", "pol_c")] == 5.0
    assert samples[("budget_proxy_policy_utilisation_ratio", "pol_c")] == 0.5
    assert samples[("budget_proxy_policy_exhausted", "pol_c")] == 0
    assert samples[("budget_proxy_policy_window_reset_timestamp_seconds", "pol_c")] == \
        day.resets_at.timestamp()
    assert samples[("budget_proxy_policy_remaining_tokens", "pol_t")] == 600
    assert samples[("budget_proxy_policy_utilisation_ratio", "pol_t")] == 0.4
    assert ("budget_proxy_policy_remaining_usd", "pol_t") not in samples
    # a per-session policy has no current window without a session: info and limit only
    assert sorted(k for k in samples if k[1] == "pol_s") == [
        ("budget_proxy_policy_info", "pol_s"), ("budget_proxy_policy_limit_usd", "pol_s")]
    assert not [k for k in samples if k[1] == "pol_o"]


def test_policy_samples_name_labels_are_bounded():
    policy = BudgetPolicy(policy_id="pol_n", name="n" * 500, cost_limit=1.0)
    (info, *_) = policy_samples([policy], {}, NOW, ZoneInfo("UTC"))
    assert info[0] == "budget_proxy_policy_info" and info[1][1] == "n" * 64


def test_exhausted_gauge_follows_typical_calls_and_refusals():
    zone = ZoneInfo("UTC")
    day = window_for(HARD.period, NOW, zone)
    key = counter_key("pol_h", day.window_id)
    nearly = {key: Totals(spent_nusd=990_000_000)}

    def exhausted(**kw) -> float:
        samples = {name: v for name, labels, v in policy_samples([HARD], nearly, NOW, zone, **kw)}
        return samples["budget_proxy_policy_exhausted"]

    assert exhausted() == 0
    assert exhausted(typical={"pol_h": TypicalCall(50_000_000, 10)}) == 1
    assert exhausted(refused={"pol_h": (day.window_id, 1)}) == 1  # past the action threshold
    assert exhausted(refused={"pol_h": ("2025-03-13", 5)}) == 0  # refusals of an earlier window


# hooks: whatever arrives, the labels stay bounded ----------------------------------------
def test_hooks_bound_every_label(tmp_path):
    from budget_proxy.config import Settings
    from budget_proxy.metrics import Metrics
    from budget_proxy.policy_cache import PolicyCache

    metrics = Metrics(Settings(data_dir=tmp_path), store=None,  # type: ignore[arg-type]
                      policies=PolicyCache(None))  # type: ignore[arg-type]
    metrics.counted.mark_seen()
    metrics.on_unmetered("evil-provider", "BREW")
    metrics.on_unmetered("openai", "post")
    metrics.on_refuse("openai", "alloc_0123456789abcdef", "limit")
    metrics.on_error_response("a" * 1000, -5, "sk-secret")
    metrics.on_store_failure("x" * 1000)
    first = generate_latest(metrics.registry).decode()
    assert "evil-provider" not in first and "BREW" not in first and "sk-secret" not in first
    assert "alloc_" not in first and "a" * 65 not in first and "x" * 65 not in first
    # pre-initialised series show their value at once; new ones zero first, then their value
    assert 'budget_proxy_unmetered_requests_total{gen_ai_provider_name="openai",method="POST"}' \
        ' 1.0' in first
    assert 'budget_proxy_unmetered_requests_total{gen_ai_provider_name="other",method="other"}' \
        ' 0.0' in first
    second = generate_latest(metrics.registry).decode()
    assert 'budget_proxy_unmetered_requests_total{gen_ai_provider_name="other",method="other"}' \
        ' 1.0' in second
    assert 'budget_proxy_refusals_total{gen_ai_provider_name="openai",policy_id="other",' \
        'reason="limit"} 1.0' in second


def test_on_finish_reports_each_call_under_its_own_labels(tmp_path):
    from types import SimpleNamespace

    from budget_proxy.config import Settings
    from budget_proxy.enforcement import CounterLine
    from budget_proxy.metrics import CALL_SERIES_MAX, Metrics
    from budget_proxy.policy_cache import PolicyCache

    policy = BudgetPolicy(policy_id="pol_a", type="warn", cost_limit=10.0)
    cache = PolicyCache(None)  # type: ignore[arg-type]
    cache.policies, cache.by_id = (policy,), {"pol_a": policy}
    metrics = Metrics(Settings(data_dir=tmp_path), store=None,  # type: ignore[arg-type]
                      policies=cache)
    metrics.counted.mark_seen()
    price = PriceCatalog.load_default().lookup("openai", "gpt-4o-mini")
    lines = (CounterLine(counter_key("pol_a", "d:20250314"), 10 * USD, None, False, "pol_a"),
             CounterLine("alloc:x", None, 100, True, "alloc_x"))

    def finish(status: int, requested: str, **kw) -> None:
        meta = SimpleNamespace(
            provider="openai", price=price, endpoint="chat.completions", requested_model=requested,
            outcome="ok" if status == 200 else "error", lines=lines, status=status,
            reservation=SimpleNamespace(cost_nusd=5, tokens=7), started_at=1.0,
            upstream_sent_at=1.1, upstream_headers_at=1.2, upstream_done_at=1.5,
            finished_at=1.6, streamed=False, first_chunk_at=0.0)
        metrics.on_finish(meta, record(input_tokens=10, output_tokens=5, total_tokens=15,  # type: ignore[arg-type]
                                       total_cost=0.25, **kw))

    for status, requested in [(200, "gpt-4o-mini"), (200, "gpt-4o-mini"), (500, "gpt-4o-mini"),
                              (200, "not-a-catalog-name")]:
        finish(status, requested)
    finish(200, "gpt-4o-mini", metadata={"flagged": ["negative_count"]})
    scrape(metrics.registry)  # new series show zero first
    got = scrape(metrics.registry)
    model = (("gen_ai_provider_name", "openai"), ("gen_ai_request_model", "gpt-4o-mini"))
    assert got[("budget_proxy_requests_total", (*model, ("outcome", "ok"),
                ("route", "chat.completions")))] == 4
    assert got[("budget_proxy_requests_total", (*model, ("outcome", "error"),
                ("route", "chat.completions")))] == 1
    assert got[("budget_proxy_upstream_responses_total", (
        ("gen_ai_provider_name", "openai"), ("status_class", "5xx")))] == 1
    assert got[("budget_proxy_policy_cost_usd_total", (("policy_id", "pol_a"),))] == 1.25
    assert got[("budget_proxy_policy_tokens_total", (("policy_id", "pol_a"),))] == 75
    assert got[("budget_proxy_flagged_usage_total", (
        ("gen_ai_provider_name", "openai"), ("reason", "negative_count")))] == 1
    requested = {dict(labels)["gen_ai_request_model"] for name, labels in got
                 if name == "gen_ai_client_operation_duration_seconds_count"}
    assert requested == {"gpt-4o-mini"}  # a name the catalog does not know is not a label
    for i in range(CALL_SERIES_MAX + 10):  # the per-kind cache is bounded
        finish(200, f"client-chosen-{i}")
    assert len(metrics._calls) <= CALL_SERIES_MAX

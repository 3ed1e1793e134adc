"""Metric label rules and per-policy gauge samples: pure functions, no I/O."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from budget_proxy.enforcement import Totals, counter_key
from budget_proxy.metrics import OTHER, BoundedValues, model_label, policy_samples, token_counts
from budget_proxy.models import BudgetPolicy, UsageRecord
from budget_proxy.periods import window_for
from budget_proxy.pricing import PriceCatalog

NOW = datetime(2025, 3, 14, 15, 9, tzinfo=UTC)


def test_bounded_values_cap_distinct_labels():
    label = BoundedValues(2)
    assert [label("a"), label("b"), label("c"), label("a"), label(None)] == [
        "a", "b", OTHER, "a", OTHER]
    assert label("x" * 500) == OTHER  # a third distinct value, whatever its length
    assert len(BoundedValues(5)("y" * 500)) == 64


def test_model_label_is_the_catalog_name():
    catalog = PriceCatalog.load_default()
    assert model_label(catalog.lookup("openai", "gpt-4o-mini-2024-07-18")) == "gpt-4o-mini"
    assert model_label(None) == OTHER


def test_token_types_partition_the_total():
    record = UsageRecord(provider="openai", model="o3", input_tokens=100,
                         cached_input_tokens=50, cache_write_tokens=5, output_tokens=40,
                         reasoning_tokens=30, total_tokens=195)
    counts = token_counts(record)
    assert counts == {"input": 100, "output": 10, "cache_read": 50, "cache_write": 5,
                      "reasoning": 30}
    assert sum(counts.values()) == record.total_tokens


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
    assert samples[("budget_proxy_policy_limit_usd", "pol_c")] == 10.0
    assert samples[("budget_proxy_policy_spent_usd", "pol_c")] == 4.0
    assert samples[("budget_proxy_policy_reserved_usd", "pol_c")] == 1.0
    assert samples[("budget_proxy_policy_remaining_usd", "pol_c")] == 5.0
    assert samples[("budget_proxy_policy_utilisation_ratio", "pol_c")] == 0.5
    assert samples[("budget_proxy_policy_window_reset_timestamp_seconds", "pol_c")] == \
        day.resets_at.timestamp()
    assert samples[("budget_proxy_policy_remaining_tokens", "pol_t")] == 600
    assert samples[("budget_proxy_policy_utilisation_ratio", "pol_t")] == 0.4
    assert ("budget_proxy_policy_remaining_usd", "pol_t") not in samples
    # a per-session policy has no current window without a session: its limit only
    assert [k for k in samples if k[1] == "pol_s"] == [("budget_proxy_policy_limit_usd", "pol_s")]
    assert not [k for k in samples if k[1] == "pol_o"]

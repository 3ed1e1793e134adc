"""Alert decisions and webhook formatting: pure functions, no I/O."""

from __future__ import annotations

import orjson
import pytest

from budget_proxy.alerts import (
    WEBHOOK_BACKOFF_MAX_S,
    backoff_s,
    crossed,
    spent_utilisation,
    threshold_alert_id,
    threshold_message,
    webhook_body,
    window_of,
)
from budget_proxy.config import WebhookConfig, load_settings, parse_webhook_urls
from budget_proxy.enforcement import CounterLine, Totals, counter_key
from budget_proxy.models import Alert, AlertSeverity, BudgetPolicy

POLICY = BudgetPolicy(policy_id="pol_a", type="warn", cost_limit=10.0, name="team",
                      warning_threshold=0.5, action_threshold=0.9)


@pytest.mark.parametrize(("used", "kinds"), [
    (0.0, []),
    (0.49, []),
    (0.5, ["warning_threshold"]),
    (0.95, ["warning_threshold", "action_threshold"]),
    (1.0, ["warning_threshold", "action_threshold", "limit_reached"]),
    (3.0, ["warning_threshold", "action_threshold", "limit_reached"]),
])
def test_crossed_levels(used, kinds):
    assert crossed(POLICY, used) == kinds


def test_ignore_policies_never_alert():
    ignore = BudgetPolicy(type="ignore", cost_limit=1.0)
    assert crossed(ignore, 5.0) == []


def test_thresholds_count_settled_spend_not_reservations():
    line = CounterLine(counter_key("pol_a", "d:20250101"), 10_000_000_000, None, False, "pol_a")
    totals = Totals(spent_nusd=4_000_000_000, reserved_nusd=6_000_000_000)
    assert spent_utilisation(line, totals) == pytest.approx(0.4)
    assert window_of(line) == "d:20250101"


def test_threshold_alert_ids_are_deterministic_and_distinct():
    a = threshold_alert_id("pol_a", "d:20250101", "warning_threshold")
    assert a == threshold_alert_id("pol_a", "d:20250101", "warning_threshold")
    assert a.startswith("alr_")
    others = {threshold_alert_id("pol_a", "d:20250102", "warning_threshold"),
              threshold_alert_id("pol_a", "d:20250101", "action_threshold"),
              threshold_alert_id("pol_b", "d:20250101", "warning_threshold")}
    assert a not in others and len(others) == 3


def test_threshold_message_names_policy_and_amounts():
    text = threshold_message(POLICY, "warning_threshold", 0.62, Totals(spent_nusd=6_200_000_000))
    assert "team" in text and "62%" in text and "50%" in text and "$6.20 of $10.00" in text
    assert "reached its limit" in threshold_message(POLICY, "limit_reached", 1.0, Totals())


@pytest.mark.parametrize(("attempt", "low", "high"), [
    (1, 0.9, 1.1), (2, 1.8, 2.2), (3, 3.6, 4.4), (30, WEBHOOK_BACKOFF_MAX_S * 0.9,
                                                   WEBHOOK_BACKOFF_MAX_S * 1.1),
])
def test_backoff_doubles_with_jitter_and_a_cap(attempt, low, high):
    for _ in range(20):
        assert low <= backoff_s(attempt, 1.0) <= high


def test_webhook_bodies():
    alert = Alert(type="warning_threshold", message="policy x at 80%",
                  severity=AlertSeverity.WARNING)
    event = {"topic": "alerts", "type": "alert_raised", "timestamp": "t",
             "payload": alert.model_dump(mode="json")}
    generic = orjson.loads(webhook_body(WebhookConfig(url="http://x"), event, alert))
    assert generic == event
    slack = orjson.loads(webhook_body(WebhookConfig(url="http://x", format="slack"), event,
                                      alert))
    assert slack == {"text": "[budget-proxy] WARNING: policy x at 80%"}


def test_webhook_urls_from_the_environment_and_the_config_file(tmp_path, monkeypatch):
    assert parse_webhook_urls(" https://a/x , slack+https://hooks.slack.com/s/T/B ,") == [
        WebhookConfig(url="https://a/x"),
        WebhookConfig(url="https://hooks.slack.com/s/T/B", format="slack"),
    ]
    config = tmp_path / "budget.toml"
    config.write_text('[[webhooks]]\nurl = "https://b/y"\nformat = "slack"\n')
    monkeypatch.setenv("BUDGET_WEBHOOK_URLS", "https://a/x")
    settings = load_settings(config)
    assert [(h.url, h.format) for h in settings.all_webhooks()] == [
        ("https://b/y", "slack"), ("https://a/x", "json")]


async def test_check_marks_only_counters_with_a_threshold_left(tmp_path):
    from budget_proxy.alerts import Alerts, thresholds
    from budget_proxy.config import Settings
    from budget_proxy.events import EventBus
    from budget_proxy.policy_cache import PolicyCache

    cache = PolicyCache(None)  # type: ignore[arg-type]
    ignore = BudgetPolicy(policy_id="pol_i", type="ignore", cost_limit=1.0)
    cache.by_id = {"pol_a": POLICY, "pol_i": ignore}
    alerts = Alerts(Settings(data_dir=tmp_path), None, EventBus(), cache)  # type: ignore[arg-type]

    def line(policy_id: str, window: str) -> CounterLine:
        return CounterLine(counter_key(policy_id, window), 10_000_000_000, None, True, policy_id)

    def marked(*lines: CounterLine) -> set[str]:
        alerts._dirty.clear()
        alerts.check(lines)
        return set(alerts._dirty)

    today, ignored, other = line("pol_a", "d:20250101"), line("pol_i", "d:20250101"), \
        line("pol_x", "d:20250101")
    try:
        assert marked(today, ignored, other) == {today.key}  # `ignore` and unknown: no alerts
        for kind, _ in thresholds(POLICY)[:2]:
            alerts._remember(threshold_alert_id("pol_a", "d:20250101", kind))
            assert marked(today) == {today.key}  # one level left
        alerts._remember(threshold_alert_id("pol_a", "d:20250101", "limit_reached"))
        assert marked(today) == set()  # every level raised in this window
        tomorrow = line("pol_a", "d:20250102")
        assert marked(today, tomorrow) == {tomorrow.key}
        cache.by_id = {"pol_a": POLICY.model_copy(update={"policy_id": "pol_a"}),
                       "pol_i": POLICY.model_copy(update={"policy_id": "pol_i"})}
        assert marked(today, ignored) == {ignored.key}  # reloaded: decided again
    finally:
        await alerts.stop()

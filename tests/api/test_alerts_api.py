"""`/api/alerts` against the real server. Alerts are documents the alert engine writes; the
tests write them the same way, through the running server's store."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from budget_proxy.alerts import ALERT_KIND
from budget_proxy.models import Alert, AlertSeverity
from tests.api.conftest import assert_auth, assert_invalid

T0 = datetime(2025, 3, 1, tzinfo=UTC)


async def put_alerts(api) -> list[Alert]:
    alerts = [
        Alert(alert_id="alr_1", type="warning_threshold", message="80% of daily",
              policy_id="p1", created_at=T0),
        Alert(alert_id="alr_2", type="limit_reached", severity=AlertSeverity.CRITICAL,
              message="limit reached", policy_id="p1", created_at=T0 + timedelta(hours=1)),
        Alert(alert_id="alr_3", type="price_change", severity=AlertSeverity.INFO,
              message="gpt-4o price changed", created_at=T0 + timedelta(hours=2)),
    ]
    for alert in alerts:
        await api.proxy.store.put_doc(ALERT_KIND, alert.alert_id, alert.model_dump_json())
    return alerts


async def test_list_filters_newest_first(api):
    await put_alerts(api)
    assert [a["alert_id"] for a in await api.ok("GET", "/api/alerts")] == [
        "alr_3", "alr_2", "alr_1"]
    critical = await api.ok("GET", "/api/alerts", params={"severity": "critical"})
    assert [a["alert_id"] for a in critical] == ["alr_2"]
    of_policy = await api.ok("GET", "/api/alerts", params={"policy_id": "p1", "limit": 1})
    assert [a["alert_id"] for a in of_policy] == ["alr_2"]
    by_type = await api.ok("GET", "/api/alerts", params={"type": "price_change"})
    assert [a["alert_id"] for a in by_type] == ["alr_3"]
    assert (await api.ok("GET", "/api/alerts/alr_1"))["message"] == "80% of daily"


async def test_acknowledge_once(api):
    await put_alerts(api)
    acked = await api.ok("POST", "/api/alerts/alr_1/acknowledge", json={"acknowledged_by": "ana"})
    assert acked["acknowledged"] is True and acked["acknowledged_by"] == "ana"
    again = await api.ok("POST", "/api/alerts/alr_1/acknowledge")  # no body: fine
    assert again["acknowledged_by"] == "ana" and again["acknowledged_at"] == acked[
        "acknowledged_at"]
    open_ = await api.ok("GET", "/api/alerts", params={"acknowledged": "false"})
    assert [a["alert_id"] for a in open_] == ["alr_3", "alr_2"]
    done = await api.ok("GET", "/api/alerts", params={"acknowledged": "true"})
    assert [a["alert_id"] for a in done] == ["alr_1"]


async def test_unknown_alerts_are_404(api):
    assert (await api.admin("GET", "/api/alerts/alr_x")).status_code == 404
    assert (await api.admin("POST", "/api/alerts/alr_x/acknowledge")).status_code == 404


async def test_validation_errors_name_the_field(api):
    assert_invalid(await api.admin("GET", "/api/alerts", params={"severity": "dire"}), "severity")
    assert_invalid(await api.admin("GET", "/api/alerts", params={"limit": 0}), "limit")
    assert_invalid(await api.admin("GET", "/api/alerts", params={"acknowledged": "sort of"}),
                   "acknowledged")
    await put_alerts(api)
    assert_invalid(await api.admin("POST", "/api/alerts/alr_1/acknowledge",
                                   json={"acknowledged_by": 5}), "acknowledged_by")


async def test_auth(api):
    await put_alerts(api)
    assert_auth(await api.anon("GET", "/api/alerts"), 401)
    assert_auth(await api.anon("GET", "/api/alerts/alr_1"), 401)
    assert (await api.viewer("GET", "/api/alerts")).status_code == 200
    assert_auth(await api.anon("POST", "/api/alerts/alr_1/acknowledge"), 401)
    assert_auth(await api.viewer("POST", "/api/alerts/alr_1/acknowledge"), 403)
    assert (await api.ok("GET", "/api/alerts/alr_1"))["acknowledged"] is False

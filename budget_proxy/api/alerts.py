"""Alerts: `/api/alerts` (list with filters, acknowledge). Alerts are raised elsewhere
(`budget_proxy.alerts`); this module reads and acknowledges them."""

from __future__ import annotations

from aiohttp import ChainMapProxy, web

from budget_proxy.alerts import ALERT_KIND
from budget_proxy.api.common import api_error, json_response, read_model, read_query
from budget_proxy.api.openapi import api_route
from budget_proxy.appkeys import EVENTS, STORE
from budget_proxy.models import Alert, utcnow
from budget_proxy.schemas import AlertAck, AlertQuery


async def list_alerts(request: web.Request) -> web.Response:
    """Alerts, newest first, filtered by acknowledgement, severity, type or policy."""
    q = read_query(request, AlertQuery)
    if isinstance(q, web.Response):
        return q
    return json_response(await find_alerts(request.config_dict, q))


async def find_alerts(app: web.Application | ChainMapProxy, q: AlertQuery) -> list[Alert]:
    """The alerts `q` selects, newest first."""
    alerts = [Alert.model_validate_json(b) for b in await app[STORE].list_docs(ALERT_KIND)]
    alerts = [a for a in alerts
              if (q.acknowledged is None or a.acknowledged == q.acknowledged)
              and (q.severity is None or a.severity == q.severity)
              and (q.type is None or a.type == q.type)
              and (q.policy_id is None or a.policy_id == q.policy_id)]
    alerts.sort(key=lambda a: a.created_at, reverse=True)
    return alerts[q.offset:q.offset + q.limit]


async def get_alert(request: web.Request) -> web.Response:
    """One alert."""
    alert_id = request.match_info["alert_id"]
    body = await request.config_dict[STORE].get_doc(ALERT_KIND, alert_id)
    if body is None:
        return api_error(404, "not_found", f"no alert {alert_id}")
    return json_response(Alert.model_validate_json(body))


async def acknowledge_alert(request: web.Request) -> web.Response:
    """Acknowledge an alert (the body, with `acknowledged_by`, is optional). Acknowledging
    twice keeps the first acknowledgement."""
    alert_id = request.match_info["alert_id"]
    ack = await read_model(request, AlertAck, optional=True)
    if isinstance(ack, web.Response):
        return ack
    alert = await acknowledge(request.config_dict, alert_id, ack.acknowledged_by)
    if alert is None:
        return api_error(404, "not_found", f"no alert {alert_id}")
    return json_response(alert)


async def acknowledge(app: web.Application | ChainMapProxy, alert_id: str,
                      by: str | None) -> Alert | None:
    """Acknowledge an alert (a second time keeps the first); None when there is no such alert."""
    store = app[STORE]
    body = await store.get_doc(ALERT_KIND, alert_id)
    if body is None:
        return None
    alert = Alert.model_validate_json(body)
    if not alert.acknowledged:
        alert = alert.model_copy(update={"acknowledged": True, "acknowledged_at": utcnow(),
                                         "acknowledged_by": by})
        await store.put_doc(ALERT_KIND, alert_id, alert.model_dump_json())
        app[EVENTS].publish("alerts", "alert_acknowledged", alert.model_dump(mode="json"))
    return alert


def routes() -> list[web.RouteDef]:
    tag = "alerts"
    return [
        api_route("GET", "/api/alerts", list_alerts, summary="List alerts", tag=tag,
                  query=AlertQuery, response=list[Alert]),
        api_route("GET", "/api/alerts/{alert_id}", get_alert, summary="One alert", tag=tag,
                  response=Alert),
        api_route("POST", "/api/alerts/{alert_id}/acknowledge", acknowledge_alert,
                  summary="Acknowledge an alert", tag=tag, body=AlertAck, body_required=False,
                  response=Alert),
    ]

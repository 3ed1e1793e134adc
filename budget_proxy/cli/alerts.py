"""`alerts list|acknowledge`."""

from __future__ import annotations

from typing import Any

import click

from budget_proxy.cli.common import AliasGroup, clean, json_option
from budget_proxy.cli.output import emit

SEVERITIES = ("info", "warning", "critical")
ALERT_COLUMNS = ["alert_id", "created_at", "severity", "type", "acknowledged", "message"]
HELP_ALL_ALERTS = "Include acknowledged alerts."


@click.group(cls=AliasGroup)
def alerts() -> None:
    """Budget alerts: list, acknowledge."""


@alerts.command("list")
@click.option("--all", "show_all", is_flag=True, help=HELP_ALL_ALERTS)
@click.option("--severity", type=click.Choice(SEVERITIES), default=None, help="Only this one.")
@click.option("--type", "alert_type", default=None, help="Only this alert type.")
@click.option("--limit", type=click.IntRange(1, 10_000), default=100, show_default=True,
              help="At most this many.")
@json_option
@click.pass_obj
def alerts_list(obj: dict[str, Any], show_all: bool, severity: str | None,
                alert_type: str | None, limit: int) -> None:
    """Unacknowledged alerts (all with --all), newest first."""
    params = clean({"acknowledged": None if show_all else "false", "severity": severity,
                     "type": alert_type, "limit": limit})
    emit(obj["api"].request("GET", "/api/alerts", params=params), obj["json"], ALERT_COLUMNS)


@alerts.command("acknowledge")
@click.argument("alert_id")
@click.option("--by", "acknowledged_by", default=None, help="Who acknowledges it.")
@json_option
@click.pass_obj
def alerts_acknowledge(obj: dict[str, Any], alert_id: str, acknowledged_by: str | None) -> None:
    """Acknowledge an alert."""
    alert = obj["api"].request("POST", f"/api/alerts/{alert_id}/acknowledge",
                               json=clean({"acknowledged_by": acknowledged_by}))
    if obj["json"]:
        emit(alert, True)
    else:
        click.echo(f"acknowledged {alert_id}: {alert['message']}")

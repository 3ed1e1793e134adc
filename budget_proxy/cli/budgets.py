"""`budgets list|create|show|delete`: the containers of policies."""

from __future__ import annotations

from typing import Any

import click

from budget_proxy.cli.common import AliasGroup, clean, json_option
from budget_proxy.cli.output import STATUS_COLUMNS, emit

BUDGET_COLUMNS = ["budget_id", "name", "owner", "is_active", "description"]
HELP_CASCADE = "Also delete the budget's policies."


@click.group(cls=AliasGroup)
def budgets() -> None:
    """Budgets (containers of policies): list, create, show, delete."""


@budgets.command("list")
@json_option
@click.pass_obj
def budgets_list(obj: dict[str, Any]) -> None:
    """Every budget."""
    emit(obj["api"].request("GET", "/api/budgets"), obj["json"], BUDGET_COLUMNS)


@budgets.command("create")
@click.argument("name")
@click.option("--id", "budget_id", default=None, help="Budget id (default: generated).")
@click.option("--description", default=None, help="What the budget is for.")
@click.option("--owner", default=None, help="Who owns it.")
@json_option
@click.pass_obj
def budgets_create(obj: dict[str, Any], name: str, budget_id: str | None,
                   description: str | None, owner: str | None) -> None:
    """Create a budget named NAME."""
    budget = obj["api"].request("POST", "/api/budgets", json=clean({
        "name": name, "budget_id": budget_id, "description": description, "owner": owner}))
    if obj["json"]:
        emit(budget, True)
    else:
        click.echo(f"budget {budget['budget_id']}: {budget['name']}")


@budgets.command("show")
@click.argument("budget_id")
@json_option
@click.pass_obj
def budgets_show(obj: dict[str, Any], budget_id: str) -> None:
    """A budget and its policies' current windows."""
    data = obj["api"].request("GET", f"/api/budgets/{budget_id}")
    if obj["json"]:
        emit(data, True)
        return
    emit(data["budget"], False, BUDGET_COLUMNS)
    click.echo("")
    emit(data["policies"], False, STATUS_COLUMNS)


@budgets.command("delete")
@click.argument("budget_id")
@click.option("--cascade", is_flag=True, help=HELP_CASCADE)
@json_option
@click.pass_obj
def budgets_delete(obj: dict[str, Any], budget_id: str, cascade: bool) -> None:
    """Delete a budget."""
    data = obj["api"].request("DELETE", f"/api/budgets/{budget_id}",
                              params={"cascade": "true"} if cascade else None)
    emit(data, True) if obj["json"] else click.echo(f"deleted budget {budget_id}")

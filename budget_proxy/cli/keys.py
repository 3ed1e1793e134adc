"""`keys create|list|revoke`: virtual keys (bp-...) for components."""

from __future__ import annotations

from typing import Any

import click

from budget_proxy.cli.common import AliasGroup, clean, json_option
from budget_proxy.cli.output import emit, limit_text

KEY_COLUMNS = ["key_id", "name", "component", "budget_id", "hint", "created_at", "revoked"]


@click.group(cls=AliasGroup)
def keys() -> None:
    """Virtual keys (bp-...) for components: create, list, revoke."""


@keys.command("create")
@click.option("--component", required=True, help="Component the key's requests are charged to.")
@click.option("--budget", "budget_id", default=None, help="Budget the key belongs to.")
@click.option("--name", default=None, help="A name for the key.")
@click.option("--daily", type=click.FloatRange(min=0), default=None,
              help="The key's own hard limit: USD a day.")
@click.option("--monthly", type=click.FloatRange(min=0), default=None,
              help="The key's own hard limit: USD a month.")
@click.option("--rpm", type=click.IntRange(min=0), default=None,
              help="The key's own rate limit: calls a minute.")
@json_option
@click.pass_obj
def keys_create(obj: dict[str, Any], component: str, budget_id: str | None,
                name: str | None, daily: float | None, monthly: float | None,
                rpm: int | None) -> None:
    """Mint a key; its secret is printed once, here. With --daily, --monthly or --rpm the
    key gets its own hard limit, whatever headers its requests send."""
    if sum(v is not None for v in (daily, monthly, rpm)) > 1:
        raise click.BadParameter("one of --daily, --monthly, --rpm per key (add more limits "
                                 "with set-limit)")
    limit: dict[str, Any] = {}
    if daily is not None:
        limit = {"period": "daily", "cost_limit": daily}
    elif monthly is not None:
        limit = {"period": "monthly", "cost_limit": monthly}
    elif rpm is not None:
        limit = {"period": "minutely", "request_limit": rpm}
    data = obj["api"].request("POST", "/api/keys", json=clean({
        "component": component, "budget_id": budget_id, "name": name, **limit}))
    if obj["json"]:
        emit(data, True)
        return
    click.echo(f"key {data['key']['key_id']} for component {component}")
    policy = data.get("policy")
    if policy:
        field = "request_limit" if policy.get("request_limit") is not None else "cost_limit"
        click.echo(f"limit: {policy['period']} {limit_text(field, policy[field])} "
                   f"(policy {policy['policy_id']})")
    click.echo(f"secret: {data['secret']}")
    click.echo("store it now: it is not shown again. Use it as the provider API key "
               "against the proxy.")


@keys.command("list")
@json_option
@click.pass_obj
def keys_list(obj: dict[str, Any]) -> None:
    """Every key (no secrets)."""
    emit(obj["api"].request("GET", "/api/keys"), obj["json"], KEY_COLUMNS)


@keys.command("revoke")
@click.argument("key_id")
@json_option
@click.pass_obj
def keys_revoke(obj: dict[str, Any], key_id: str) -> None:
    """Revoke a key: requests made with it are refused from now on."""
    data = obj["api"].request("DELETE", f"/api/keys/{key_id}")
    emit(data, True) if obj["json"] else click.echo(f"revoked {key_id}")

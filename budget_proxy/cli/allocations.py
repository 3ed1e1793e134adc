"""`allocate create|list|show|release`: tokens held for a context."""

from __future__ import annotations

from typing import Any

import click

from budget_proxy.cli.common import AliasGroup, clean, json_option
from budget_proxy.cli.output import emit

TIERS = ("local_lightweight", "local_midweight", "remote_heavyweight")
ALLOCATION_COLUMNS = ["allocation_id", "context_id", "component", "tokens_allocated",
                      "tokens_used", "remaining_tokens", "priority", "tier", "state",
                      "expiration_time"]
HELP_TIER = "Model tier."
HELP_PRIORITY = "Priority, stored and reported (higher first)."
HELP_EXPIRES = "Expire after this many seconds (default: never)."
HELP_TOKENS_ALLOCATED = "Tokens to hold for the context."
HELP_CONTEXT = "Context whose requests draw on it (X-Budget-Context)."
HELP_ALL_ALLOCATIONS = "Include released and expired allocations."


@click.group(cls=AliasGroup)
def allocate() -> None:
    """Token allocations: create, list, show, release."""


@allocate.command("create")
@click.option("--context-id", required=True, help=HELP_CONTEXT)
@click.option("--component", required=True, help="Component the allocation is for.")
@click.option("--tokens", type=click.IntRange(min=1), required=True,
              help=HELP_TOKENS_ALLOCATED)
@click.option("--tier", type=click.Choice(TIERS, case_sensitive=False), default=None,
              help=HELP_TIER)
@click.option("--provider", default=None, help="Provider the tokens are for.")
@click.option("--model", default=None, help="Model the tokens are for (holds its cost too).")
@click.option("--task-type", default=None, help="Task type.")
@click.option("--priority", type=int, default=None, help=HELP_PRIORITY)
@click.option("--budget", "budget_id", default=None, help="Hold on this budget's policies only.")
@click.option("--expires-in", type=click.FloatRange(min=0, min_open=True), default=None,
              help=HELP_EXPIRES)
@json_option
@click.pass_obj
def allocate_create(obj: dict[str, Any], context_id: str, component: str, tokens: int,
                    tier: str | None, provider: str | None, model: str | None,
                    task_type: str | None, priority: int | None, budget_id: str | None,
                    expires_in: float | None) -> None:
    """Hold TOKENS tokens from the budgets for a context."""
    body = clean({"context_id": context_id, "component": component, "tokens_allocated": tokens,
                   "tier": tier.lower() if tier else None, "provider": provider, "model": model,
                   "task_type": task_type, "priority": priority, "budget_id": budget_id,
                   "ttl_s": expires_in})
    alloc = obj["api"].request("POST", "/api/allocations", json=body)
    if obj["json"]:
        emit(alloc, True)
        return
    click.echo(f"allocation {alloc['allocation_id']}: {alloc['tokens_allocated']} tokens for "
               f"context {alloc['context_id']} ({alloc['component']})")


@allocate.command("list")
@click.option("--component", default=None, help="Only this component's allocations.")
@click.option("--context-id", default=None, help="Only this context's allocations.")
@click.option("--all", "show_all", is_flag=True, help=HELP_ALL_ALLOCATIONS)
@json_option
@click.pass_obj
def allocate_list(obj: dict[str, Any], component: str | None, context_id: str | None,
                  show_all: bool) -> None:
    """Active allocations (all with --all), highest priority first."""
    params = clean({"component": component, "context_id": context_id,
                     "active": None if show_all else "true"})
    emit(obj["api"].request("GET", "/api/allocations", params=params), obj["json"],
         ALLOCATION_COLUMNS)


@allocate.command("show")
@click.argument("allocation_id")
@json_option
@click.pass_obj
def allocate_show(obj: dict[str, Any], allocation_id: str) -> None:
    """One allocation."""
    emit(obj["api"].request("GET", f"/api/allocations/{allocation_id}"), obj["json"],
         ALLOCATION_COLUMNS)


@allocate.command("release")
@click.argument("allocation_id")
@json_option
@click.pass_obj
def allocate_release(obj: dict[str, Any], allocation_id: str) -> None:
    """Release an allocation: its unused tokens go back to the budgets. Releasing again
    changes nothing and says so."""
    before = obj["api"].request("GET", f"/api/allocations/{allocation_id}")
    alloc = obj["api"].request("POST", f"/api/allocations/{allocation_id}/release")
    if obj["json"]:
        emit(alloc, True)
        return
    if before.get("state") != "active":
        click.echo(f"{allocation_id} already {before.get('state', 'released')}: "
                   f"nothing changed")
        return
    returned = max(0, alloc["tokens_allocated"] - alloc["tokens_used"])
    click.echo(f"released {allocation_id}: used {alloc['tokens_used']} of "
               f"{alloc['tokens_allocated']} tokens, {returned} returned to the budget")

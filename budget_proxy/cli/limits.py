"""`set-limit` (updates the policy with the same period, type and scope, or adds one) and
`topup` (raises a policy's limit until the top-up expires)."""

from __future__ import annotations

from typing import Any

import click

from budget_proxy.cli.common import Api, clean, duration_s, json_option
from budget_proxy.cli.output import emit, limit_text, money

PERIODS = ("minutely", "hourly", "daily", "weekly", "monthly", "per_session", "per_task")
POLICY_TYPES = ("ignore", "warn", "soft_limit", "hard_limit", "shadow")
TIERS = ("local_lightweight", "local_midweight", "remote_heavyweight")
# the fields that make two policies "the same" for `set-limit` (which updates, not adds)
SCOPE_FIELDS = ("provider", "component", "model", "tier", "task_type", "session", "task",
                "key_id")
HELP_BUDGET = "Budget id (default: the default budget)."


@click.command("set-limit")
@click.argument("period", type=click.Choice(PERIODS, case_sensitive=False))
@click.argument("limit", type=float)
@click.option("--provider", default=None, help="Only requests to this provider.")
@click.option("--component", default=None, help="Only requests from this component.")
@click.option("--model", default=None, help="Only requests for this model.")
@click.option("--tier", type=click.Choice(TIERS), default=None, help="Only models of this tier.")
@click.option("--task-type", default=None, help="Only requests of this task type.")
@click.option("--policy-type", type=click.Choice(POLICY_TYPES, case_sensitive=False),
              default="hard_limit", show_default=True, help="How the limit is enforced.")
@click.option("--tokens", "in_tokens", is_flag=True, help="LIMIT counts tokens, not USD.")
@click.option("--requests", "in_requests", is_flag=True,
              help="LIMIT counts calls (a rate limit with `minutely`).")
@click.option("--fallback-model", default=None, help="soft_limit: move requests to this model.")
@click.option("--name", default=None, help="A name for the policy.")
@click.option("--budget", "budget_id", default=None, help=HELP_BUDGET)
@click.option("--new", "always_new", is_flag=True,
              help="Add another policy even if one with this period, type and scope exists.")
@click.option("--strict", is_flag=True, help="Refuse a provider that is not configured or a "
              "model the price catalog does not know (default: a warning).")
@json_option
@click.pass_obj
def set_limit(obj: dict[str, Any], period: str, limit: float, provider: str | None,
              component: str | None, model: str | None, tier: str | None,
              task_type: str | None, policy_type: str, in_tokens: bool, in_requests: bool,
              fallback_model: str | None, name: str | None, budget_id: str | None,
              always_new: bool, strict: bool) -> None:
    """Limit PERIOD spend to LIMIT USD (tokens with --tokens, calls with --requests). The
    policy with the same period, type and scope is updated (its spend is kept); --new adds
    another. A new policy starts from the spend already recorded in its current window."""
    if limit < 0 or limit != limit:
        raise click.BadParameter("must be 0 or more", param_hint="LIMIT")
    if in_tokens and in_requests:
        raise click.BadParameter("--tokens and --requests exclude each other")
    period, policy_type = period.lower(), policy_type.lower()
    field = "token_limit" if in_tokens else "request_limit" if in_requests else "cost_limit"
    amount: float | int = int(limit) if in_tokens or in_requests else limit
    scope = {"provider": provider, "component": component, "model": model, "tier": tier,
             "task_type": task_type}
    body: dict[str, Any] = {"period": period, "type": policy_type, **scope,
                            "fallback_model": fallback_model, "name": name,
                            "budget_id": budget_id, field: amount}
    api: Api = obj["api"]
    params = {"strict": "true"} if strict else None
    same = None if always_new else _same_policy(api.request("GET", "/api/policies"), body)
    if same is None:
        policy = api.request("POST", "/api/policies", json=clean(body), params=params)
        verb, was = "created", None
    else:
        change = clean({field: amount, "fallback_model": fallback_model, "name": name})
        policy = api.request("PATCH", f"/api/policies/{same['policy_id']}", json=change,
                             params=params)
        verb, was = "updated", same.get(field)
    if obj["json"]:
        emit({**policy, "action": verb}, True)
        return
    what = limit_text(field, amount)
    line = f"{verb} policy {policy['policy_id']}: {period} {policy_type} {what}"
    if was is not None and was != amount:
        line += f" (was {limit_text(field, was)})"
    click.echo(line)
    for warning in policy.get("warnings", []):
        click.echo(f"warning: {warning}", err=True)
    counted = policy.get("counted") or {}
    if counted.get("records"):
        click.echo(f"counted {money(counted['cost'])} ({counted['tokens']:,} tokens, "
                   f"{counted['records']} calls) already recorded in window "
                   f"{counted['window']}")


def _same_policy(policies: list[dict[str, Any]], body: dict[str, Any]
                 ) -> dict[str, Any] | None:
    """The policy `set-limit` updates: same period, type, budget, scope and limit kind."""
    kind = next(f for f in ("cost_limit", "token_limit", "request_limit") if f in body)
    for policy in policies:
        if (policy["period"] == body["period"] and policy["type"] == body["type"]
                and policy.get("budget_id") == (body.get("budget_id") or "default")
                and all(policy.get(f) == body.get(f) for f in SCOPE_FIELDS)
                and policy.get(kind) is not None and not policy.get("source")):
            return policy
    return None


@click.command()
@click.argument("policy_id")
@click.option("--cost", type=click.FloatRange(min=0, min_open=True), default=None,
              help="USD added to the cost limit.")
@click.option("--tokens", type=click.IntRange(min=1), default=None,
              help="Tokens added to the token limit.")
@click.option("--requests", type=click.IntRange(min=1), default=None,
              help="Calls added to the call limit.")
@click.option("--ttl", "ttl", default="24h", show_default=True,
              help="How long the top-up lasts (90s, 15m, 24h, 7d).")
@json_option
@click.pass_obj
def topup(obj: dict[str, Any], policy_id: str, cost: float | None, tokens: int | None,
          requests: int | None, ttl: str) -> None:
    """Raise POLICY_ID's limit until the top-up expires; then the limit is back. Spend is
    never reset."""
    if cost is None and tokens is None and requests is None:
        raise click.BadParameter("give --cost, --tokens or --requests")
    body = clean({"cost": cost, "tokens": tokens, "requests": requests,
                   "ttl_s": duration_s(ttl)})
    data = obj["api"].request("POST", f"/api/policies/{policy_id}/topups", json=body)
    if obj["json"]:
        emit(data, True)
        return
    raised = ", ".join(text for text in (
        money(cost) if cost else None, f"{tokens:,} tokens" if tokens else None,
        f"{requests:,} calls" if requests else None) if text)
    click.echo(f"topped up {policy_id} by {raised} until {data['topup']['expires_at']}")

"""The `budget` / `budget-proxy` command line: parses arguments and delegates.

`serve` runs the proxy in this process; every other command talks to a running proxy over its
admin API (`--url` / `BUDGET_URL`). Underscore spellings from the seed documents (`set_limit`,
`get_usage`, `calc_cost`) resolve to the dashed commands.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click
import httpx

DEFAULT_URL = "http://localhost:8013"
HELP_URL = "Base URL of the running proxy (env BUDGET_URL)."
HELP_TOKEN = "Admin token for mutations (env BUDGET_ADMIN_TOKEN)."
HELP_JSON = "Print machine-readable JSON instead of a table."
PERIODS = ("hourly", "daily", "weekly", "monthly", "per_session", "per_task")
POLICY_TYPES = ("ignore", "warn", "soft_limit", "hard_limit")
TIERS = ("local_lightweight", "local_midweight", "remote_heavyweight")


class AliasGroup(click.Group):
    """Accepts `set_limit` for `set-limit`."""

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        return super().get_command(ctx, cmd_name) or super().get_command(
            ctx, cmd_name.replace("_", "-")
        )


class ApiClient:
    """The thin HTTP layer every admin command uses; errors become click exceptions."""

    def __init__(self, url: str, token: str | None) -> None:
        self.url = url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            resp = httpx.request(method, f"{self.url}{path}", headers=self.headers,
                                 timeout=30.0, **kwargs)
        except httpx.HTTPError as exc:
            raise click.ClickException(f"cannot reach budget-proxy at {self.url}: {exc}") from exc
        if resp.status_code >= 400:
            try:
                err = resp.json().get("error", {})
                message = err.get("message") or resp.text
            except ValueError:
                message = resp.text
            raise click.ClickException(f"{resp.status_code}: {message}")
        return resp.json() if resp.content else None


def emit(data: Any, as_json: bool, columns: list[str] | None = None) -> None:
    if as_json:
        import json

        click.echo(json.dumps(data, indent=2, default=str))
        return
    rows = data if isinstance(data, list) else [data]
    if not rows:
        click.echo("(none)")
        return
    cols = columns or list(rows[0].keys())
    table = [[_cell(row.get(c)) for c in cols] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in table)) for i, c in enumerate(cols)]
    click.echo("  ".join(c.upper().ljust(w) for c, w in zip(cols, widths, strict=True)))
    for r in table:
        click.echo("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)))


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


@click.group(cls=AliasGroup)
@click.option("--url", envvar="BUDGET_URL", default=DEFAULT_URL, show_default=True, help=HELP_URL)
@click.option("--token", envvar="BUDGET_ADMIN_TOKEN", default=None, help=HELP_TOKEN)
@click.option("--json", "as_json", is_flag=True, help=HELP_JSON)
@click.pass_context
def main(ctx: click.Context, url: str, token: str | None, as_json: bool) -> None:
    """budget-proxy: enforce LLM token and cost budgets inline."""
    ctx.obj = {"api": ApiClient(url, token), "json": as_json}


@main.command()
@click.option("--host", default=None, help="Address to listen on (env BUDGET_HOST).")
@click.option("--port", type=int, default=None, help="Port (env BUDGET_PORT, default 8013).")
@click.option("--config", "config_path", type=click.Path(path_type=Path), default=None,
              help="TOML configuration file (env BUDGET_CONFIG).")
def serve(host: str | None, port: int | None, config_path: Path | None) -> None:
    """Run the proxy, admin API and metrics on one port."""
    from budget_proxy.app import run
    from budget_proxy.config import ConfigError, load_settings

    overrides = {k: v for k, v in (("host", host), ("port", port)) if v is not None}
    try:
        settings = load_settings(config_path, **overrides)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc
    run(settings)


@main.command("set-limit")
@click.argument("period", type=click.Choice(PERIODS))
@click.argument("limit", type=float)
@click.option("--provider", default=None, help="Only requests to this provider.")
@click.option("--component", default=None, help="Only requests from this component.")
@click.option("--model", default=None, help="Only requests for this model.")
@click.option("--tier", type=click.Choice(TIERS), default=None, help="Only models of this tier.")
@click.option("--policy-type", type=click.Choice(POLICY_TYPES), default="hard_limit",
              show_default=True, help="How the limit is enforced.")
@click.option("--tokens", "in_tokens", is_flag=True, help="LIMIT counts tokens, not USD.")
@click.option("--fallback-model", default=None, help="soft_limit: move requests to this model.")
@click.option("--name", default=None, help="A name for the policy.")
@click.pass_obj
def set_limit(obj: dict[str, Any], period: str, limit: float, provider: str | None,
              component: str | None, model: str | None, tier: str | None, policy_type: str,
              in_tokens: bool, fallback_model: str | None, name: str | None) -> None:
    """Create a policy limiting PERIOD spend to LIMIT USD (or tokens with --tokens)."""
    body: dict[str, Any] = {
        "period": period, "type": policy_type, "provider": provider, "component": component,
        "model": model, "tier": tier, "fallback_model": fallback_model, "name": name,
    }
    if in_tokens:
        body["token_limit"] = int(limit)
    else:
        body["cost_limit"] = limit
    policy = obj["api"].request("POST", "/api/policies",
                                json={k: v for k, v in body.items() if v is not None})
    if obj["json"]:
        emit(policy, True)
    else:
        what = f"{int(limit)} tokens" if in_tokens else f"${limit:g}"
        click.echo(f"policy {policy['policy_id']}: {period} {policy_type} {what}")


@main.command()
@click.option("--period", type=click.Choice(PERIODS), default=None, help="Only this period.")
@click.pass_obj
def status(obj: dict[str, Any], period: str | None) -> None:
    """Show every policy with its current window's spend and what remains."""
    data = obj["api"].request("GET", "/api/status")
    rows = [p for p in data["policies"] if period is None or p["period"] == period]
    if obj["json"]:
        emit({**data, "policies": rows}, True)
        return
    emit(rows, False, ["policy_id", "name", "type", "period", "scope", "limit", "spent",
                       "reserved", "remaining", "utilisation"])


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

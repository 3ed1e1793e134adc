"""The `budget` / `budget-proxy` command line: parses arguments and delegates.

`serve` runs the proxy in this process; every other command talks to a running proxy over its
admin API (`--url` / `BUDGET_URL`) through the Python client's transport
(`budget_proxy.client`). Underscore spellings from the seed documents (`set_limit`,
`get_usage`, `calc_cost`) resolve to the dashed commands, and the seed's `start` to `serve`.
Tables by default, `--json` (before or after the command) for scripts.

Exit codes: 0 success; 1 the proxy refused or failed the request (conflict, not found, ...);
2 bad arguments (ours or the proxy's validation); 3 proxy unreachable; 4 bad or missing token;
5 the proxy is up but its budget store is unavailable (retry later).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from budget_proxy.cli.alerts import alerts
from budget_proxy.cli.allocations import ALLOCATION_COLUMNS, allocate
from budget_proxy.cli.budgets import budgets
from budget_proxy.cli.common import EXIT_USAGE, AliasGroup, Api, CliError, clean, json_option
from budget_proxy.cli.keys import keys
from budget_proxy.cli.limits import set_limit, topup
from budget_proxy.cli.output import STATUS_COLUMNS, emit
from budget_proxy.cli.policies import policies
from budget_proxy.cli.prices import calc_cost, prices, recommend
from budget_proxy.client import DEFAULT_URL
from budget_proxy.ledger.cli import ledger_group
from budget_proxy.mcp.command import mcp_command

HELP_URL = "Base URL of the running proxy (env BUDGET_URL)."
HELP_TOKEN = "Admin (or viewer) token (env BUDGET_ADMIN_TOKEN)."
HELP_JSON = "Print machine-readable JSON instead of a table."
HELP_PROVIDER = "Only requests to this provider."
HELP_COMPONENT = "Only requests from this component."
HELP_MODEL = "Only requests for this model."
HELP_DAYS = "Cover the last DAYS days, one row per window (default: the current window)."
HELP_GROUP_BY = "Also group by provider, model or component (comma-separated)."
PERIODS = ("minutely", "hourly", "daily", "weekly", "monthly", "per_session", "per_task")
CALENDAR_PERIODS = ("hourly", "daily", "weekly", "monthly")
USAGE_COLUMNS = ["requests", "input_tokens", "output_tokens", "total_tokens", "total_cost"]


@click.group(cls=AliasGroup)
@click.option("--url", envvar="BUDGET_URL", default=DEFAULT_URL, show_default=True, help=HELP_URL)
@click.option("--token", envvar="BUDGET_ADMIN_TOKEN", default=None, help=HELP_TOKEN)
@click.option("--json", "as_json", is_flag=True, help=HELP_JSON)
@click.pass_context
def main(ctx: click.Context, url: str, token: str | None, as_json: bool) -> None:
    """budget-proxy: enforce LLM token and cost budgets inline."""
    api = Api(url, token)
    ctx.call_on_close(api.close)
    ctx.obj = {"api": api, "json": as_json}


HELP_WORKERS = ("Processes serving the one port (SO_REUSEPORT), e.g. one per core; more than "
                "one needs the Redis store (BUDGET_REDIS_URL).")


@main.command()
@click.option("--host", default=None, help="Address to listen on (env BUDGET_HOST).")
@click.option("--port", type=int, default=None, help="Port (env BUDGET_PORT, default 8013).")
@click.option("--config", "config_path", type=click.Path(path_type=Path), default=None,
              help="TOML configuration file (env BUDGET_CONFIG).")
@click.option("--workers", type=click.IntRange(1, 256), default=1, show_default=True,
              help=HELP_WORKERS)
def serve(host: str | None, port: int | None, config_path: Path | None, workers: int) -> None:
    """Run the proxy, admin API and metrics on one port."""
    from budget_proxy.app import WorkersRefused, serve
    from budget_proxy.config import ConfigError, load_settings
    from budget_proxy.policy_files import PolicyFileError, load_paths, policy_dirs

    overrides = {k: v for k, v in (("host", host), ("port", port)) if v is not None}
    try:
        settings = load_settings(config_path, **overrides)
        settings.check_serving()
        load_paths(policy_dirs(settings.policies_dir))  # refuse to start on a bad policy file
        code = serve(settings, workers)
    except (ConfigError, PolicyFileError, WorkersRefused) as exc:
        raise CliError(str(exc), EXIT_USAGE) from exc
    if code:
        raise SystemExit(code)


@main.command()
@click.option("--period", type=click.Choice(PERIODS), default=None, help="Only this period.")
@json_option
@click.pass_obj
def status(obj: dict[str, Any], period: str | None) -> None:
    """Show every policy's current window (spent, reserved, remaining) and the active
    allocations holding tokens on them."""
    data = obj["api"].request("GET", "/api/status")
    rows = [p for p in data["policies"] if period is None or p["period"] == period]
    allocs = obj["api"].request("GET", "/api/allocations", params={"active": "true"})
    if obj["json"]:
        emit({**data, "policies": rows, "allocations": allocs}, True)
        return
    emit(rows, False, STATUS_COLUMNS)
    if allocs:
        click.echo("")
        click.echo(f"active allocations: {len(allocs)}")
        emit(allocs, False, ALLOCATION_COLUMNS)


@main.command("get-usage")
@click.argument("period", type=click.Choice(CALENDAR_PERIODS))
@click.option("--days", type=click.IntRange(1, 3660), default=None, help=HELP_DAYS)
@click.option("--provider", default=None, help=HELP_PROVIDER)
@click.option("--component", default=None, help=HELP_COMPONENT)
@click.option("--model", default=None, help=HELP_MODEL)
@click.option("--group-by", default=None, help=HELP_GROUP_BY)
@json_option
@click.pass_obj
def get_usage(obj: dict[str, Any], period: str, days: int | None, provider: str | None,
              component: str | None, model: str | None, group_by: str | None) -> None:
    """Usage of PERIOD (hourly, daily, weekly, monthly): one row per window and a total."""
    params = clean({"period": period, "days": days, "provider": provider,
                     "component": component, "model": model, "group_by": group_by})
    data = obj["api"].request("GET", "/api/usage", params=params)
    if obj["json"]:
        emit(data, True)
        return
    filters = ", ".join(f"{k}={params[k]}" for k in ("provider", "component", "model")
                        if k in params)
    click.echo(f"{period} usage since {data['since']}" + (f" ({filters})" if filters else ""))
    emit(data["windows"], False, ["window", *USAGE_COLUMNS])
    click.echo("")
    emit([{"window": "TOTAL", **data["totals"]}], False, ["window", *USAGE_COLUMNS])
    if data["groups"]:
        click.echo("")
        emit(data["groups"], False, [*data["group_by"], *USAGE_COLUMNS])


@main.command()
@click.argument("period", type=click.Choice(CALENDAR_PERIODS), default="daily")
@click.option("--days", type=click.IntRange(1, 3660), default=None, help=HELP_DAYS)
@click.option("--format", "fmt", type=click.Choice(["table", "json", "csv"]), default="table",
              show_default=True, help="Output format.")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write to this file instead of standard output.")
@json_option
@click.pass_obj
def report(obj: dict[str, Any], period: str, days: int | None, fmt: str,
           output: Path | None) -> None:
    """A period report: totals, windows, and breakdowns by provider, model and component."""
    if obj["json"]:
        fmt = "json"
    params = clean({"period": period, "days": days, "format": "csv" if fmt == "csv" else None})
    if fmt == "csv":
        with obj["api"].errors() as client:
            text = client.report_csv(period, days)
    else:
        data = obj["api"].request("GET", "/api/reports", params=params)
        text = json.dumps(data, indent=2) + "\n" if fmt == "json" else _report_text(data)
    if output is not None:
        output.write_text(text)
        click.echo(f"report written to {output}")
    else:
        click.echo(text, nl=False)


def _report_text(data: dict[str, Any]) -> str:
    lines = [f"{data['period']} report {data['since']} .. {data['until']}"]
    totals = data["totals"]
    lines.append(f"{totals['requests']} requests, {totals['total_tokens']} tokens, "
                 f"${totals['total_cost']:.6f}")
    for title, key, field in (("by provider", "by_provider", "provider"),
                              ("by model", "by_model", "model"),
                              ("by component", "by_component", "component")):
        lines.append(f"{title}:")
        for row in data[key]:
            lines.append(f"  {row[field]}: {row['requests']} requests, "
                         f"{row['total_tokens']} tokens, ${row['total_cost']:.6f}")
    lines.append(f"active allocations: {data['allocations']['active']}, open alerts: "
                 f"{data['open_alerts']}")
    return "\n".join(lines) + "\n"


for _command in (set_limit, topup, allocate, alerts, budgets, keys, policies, prices, calc_cost,
                 recommend):
    main.add_command(_command)
main.add_command(mcp_command)  # `budget mcp`: the budget tools over MCP stdio
main.add_command(ledger_group)  # `budget ledger rebuild`: counters from the ledger

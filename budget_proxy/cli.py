"""The `budget` / `budget-proxy` command line: parses arguments and delegates.

`serve` runs the proxy in this process; every other command talks to a running proxy over its
admin API (`--url` / `BUDGET_URL`). Underscore spellings from the seed documents (`set_limit`,
`get_usage`, `calc_cost`) resolve to the dashed commands, and the seed's `start` to `serve`.
Tables by default, `--json` (before or after the command) for scripts.

Exit codes: 0 success; 1 the proxy refused or failed the request (conflict, not found, ...);
2 bad arguments (ours or the proxy's validation); 3 proxy unreachable; 4 bad or missing token;
5 the proxy is up but its budget store is unavailable (retry later).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
import httpx

DEFAULT_URL = "http://localhost:8013"
HELP_URL = "Base URL of the running proxy (env BUDGET_URL)."
HELP_TOKEN = "Admin (or viewer) token (env BUDGET_ADMIN_TOKEN)."
HELP_JSON = "Print machine-readable JSON instead of a table."
HELP_PROVIDER = "Only requests to this provider."
HELP_COMPONENT = "Only requests from this component."
HELP_MODEL = "Only requests for this model."
HELP_BUDGET = "Budget id (default: the default budget)."
HELP_DAYS = "Cover the last DAYS days, one row per window (default: the current window)."
HELP_GROUP_BY = "Also group by provider, model or component (comma-separated)."
HELP_TIER = "Model tier."
HELP_PRIORITY = "Priority, stored and reported (higher first)."
HELP_EXPIRES = "Expire after this many seconds (default: never)."
HELP_TOKENS_ALLOCATED = "Tokens to hold for the context."
HELP_CONTEXT = "Context whose requests draw on it (X-Budget-Context)."
HELP_ALL_ALLOCATIONS = "Include released and expired allocations."
HELP_ALL_ALERTS = "Include acknowledged alerts."
HELP_CASCADE = "Also delete the budget's policies."
HELP_DRY_RUN = "Validate and show what would be sent; change nothing."
PERIODS = ("minutely", "hourly", "daily", "weekly", "monthly", "per_session", "per_task")
CALENDAR_PERIODS = ("hourly", "daily", "weekly", "monthly")
POLICY_TYPES = ("ignore", "warn", "soft_limit", "hard_limit", "shadow")
# the fields that make two policies "the same" for `set-limit` (which updates, not adds)
SCOPE_FIELDS = ("provider", "component", "model", "tier", "task_type", "session", "task",
                "key_id")
MONEY_COLUMNS = {"limit", "spent", "reserved", "remaining", "cost_limit", "total_cost",
                 "spent_cost", "input_cost", "output_cost", "allowed_cost", "refused_cost",
                 "cost", "cost_used", "cost_allocated"}
DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
TIERS = ("local_lightweight", "local_midweight", "remote_heavyweight")
SEVERITIES = ("info", "warning", "critical")

EXIT_API = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_AUTH = 4
EXIT_STORE_DOWN = 5

STATUS_COLUMNS = ["policy_id", "name", "type", "period", "scope", "limit", "spent", "reserved",
                  "remaining", "utilisation"]
ALLOCATION_COLUMNS = ["allocation_id", "context_id", "component", "tokens_allocated",
                      "tokens_used", "remaining_tokens", "priority", "tier", "state",
                      "expiration_time"]
USAGE_COLUMNS = ["requests", "input_tokens", "output_tokens", "total_tokens", "total_cost"]
ALERT_COLUMNS = ["alert_id", "created_at", "severity", "type", "acknowledged", "message"]
KEY_COLUMNS = ["key_id", "name", "component", "budget_id", "hint", "created_at", "revoked"]
BUDGET_COLUMNS = ["budget_id", "name", "owner", "is_active", "description"]
POLICY_COLUMNS = ["policy_id", "name", "budget_id", "type", "period", "cost_limit",
                  "token_limit", "scope", "enabled", "source"]

F = TypeVar("F", bound=Callable[..., Any])


class CliError(click.ClickException):
    """An error with its own exit code (see the module doc)."""

    def __init__(self, message: str, exit_code: int = EXIT_API) -> None:
        super().__init__(message)
        # click declares exit_code a class attribute; each error carries its own here
        self.exit_code = exit_code  # type: ignore[misc]


class AliasGroup(click.Group):
    """Accepts `set_limit` for `set-limit` (and `start` for `serve`)."""

    aliases = {"start": "serve"}

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        name = self.aliases.get(cmd_name, cmd_name)
        return super().get_command(ctx, name) or super().get_command(
            ctx, name.replace("_", "-")
        )


class ApiClient:
    """The thin HTTP layer every admin command uses; errors become `CliError`s (raised from
    the httpx error when the proxy cannot be reached)."""

    def __init__(self, url: str, token: str | None) -> None:
        self.url = url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}

    def send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            resp = httpx.request(method, f"{self.url}{path}", headers=self.headers,
                                 timeout=30.0, **kwargs)
        except httpx.HTTPError as exc:
            raise CliError(f"cannot reach budget-proxy at {self.url}: {exc} "
                           "(is it running? set --url or BUDGET_URL)", EXIT_UNREACHABLE) from exc
        if resp.status_code >= 400:
            raise _error_of(resp)
        return resp

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        resp = self.send(method, path, **kwargs)
        return resp.json() if resp.content else None


def _error_of(resp: httpx.Response) -> CliError:
    try:
        err = resp.json().get("error", {})
        message = err.get("message") or resp.text
    except (ValueError, AttributeError):
        message = resp.text
    status = resp.status_code
    if status == 401:
        sent = resp.request.headers.get("Authorization") if resp.request else None
        if sent:
            return CliError("401: invalid token: the proxy does not accept it (check --token "
                            "or BUDGET_ADMIN_TOKEN)", EXIT_AUTH)
        return CliError(f"401: {message} (pass --token or set BUDGET_ADMIN_TOKEN)", EXIT_AUTH)
    if status == 403:
        return CliError(f"403: {message}", EXIT_AUTH)
    if status in (400, 422):
        return CliError(f"{status}: {message}", EXIT_USAGE)
    if status == 503:
        retry = resp.headers.get("Retry-After")
        return CliError(f"budget store unavailable: the proxy at {resp.url.host} is up but "
                        "cannot reach its store" + (f"; retry in {retry} s" if retry else ""),
                        EXIT_STORE_DOWN)
    return CliError(f"{status}: {message}", EXIT_API)


def emit(data: Any, as_json: bool, columns: list[str] | None = None) -> None:
    if as_json:
        click.echo(json.dumps(data, indent=2, default=str))
        return
    rows = data if isinstance(data, list) else [data]
    if not rows:
        click.echo("(none)")
        return
    cols = columns or list(rows[0].keys())
    table = [[_cell(row.get(c), c, row) for c in cols] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in table)) for i, c in enumerate(cols)]
    click.echo("  ".join(c.upper().ljust(w) for c, w in zip(cols, widths, strict=True)))
    for r in table:
        click.echo("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)))


def money(usd: float) -> str:
    """USD as money: `$0.000022`, `$12.50`, `$1,234.56`; never `2.175e-05`."""
    if usd != 0 and abs(usd) < 0.01:
        text = f"{usd:.6f}".rstrip("0")
        return "$" + (text if not text.endswith(".") else text + "00")
    return f"${usd:,.2f}"


def _cell(value: Any, column: str = "", row: dict[str, Any] | None = None) -> str:
    if value is None:
        return "-"
    if column == "utilisation" and isinstance(value, int | float):
        return f"{value:.1%}"
    unit = (row or {}).get("unit")
    if column in MONEY_COLUMNS and isinstance(value, int | float) and not isinstance(
            value, bool) and unit in (None, "usd"):
        return money(value)
    if unit == "tokens" and column in ("limit", "spent", "reserved", "remaining"):
        return f"{value:,} tokens" if isinstance(value, int) else str(value)
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def duration_s(text: str) -> float:
    """`90`, `90s`, `15m`, `24h`, `7d` in seconds."""
    text = text.strip().lower()
    unit = DURATION_UNITS.get(text[-1:], 0)
    number = text[:-1] if unit else text
    try:
        value = float(number) * (unit or 1)
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a duration (90s, 15m, 24h, 7d)") from None
    if not value > 0 or value == float("inf"):
        raise click.BadParameter("must be more than 0")
    return value


def _set_json(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value:
        ctx.ensure_object(dict)["json"] = True


def json_option(func: F) -> F:
    """`--json` after the command name too (`budget status --json`)."""
    return click.option("--json", "as_json", is_flag=True, expose_value=False,
                        callback=_set_json, help=HELP_JSON)(func)


def _clean(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if v is not None}


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
    from budget_proxy.policy_files import PolicyFileError, load_paths, policy_dirs

    overrides = {k: v for k, v in (("host", host), ("port", port)) if v is not None}
    try:
        settings = load_settings(config_path, **overrides)
        settings.check_serving()
        load_paths(policy_dirs(settings.policies_dir))  # refuse to start on a bad policy file
    except (ConfigError, PolicyFileError) as exc:
        raise CliError(str(exc), EXIT_USAGE) from exc
    run(settings)


@main.command("set-limit")
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
    api: ApiClient = obj["api"]
    params = {"strict": "true"} if strict else None
    same = None if always_new else _same_policy(api.request("GET", "/api/policies"), body)
    if same is None:
        policy = api.request("POST", "/api/policies", json=_clean(body), params=params)
        verb, was = "created", None
    else:
        change = _clean({field: amount, "fallback_model": fallback_model, "name": name})
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


def limit_text(field: str, amount: Any) -> str:
    """A limit with its unit: `$5`, `1,000 tokens`, `3 calls`."""
    if amount is None:
        return "none"
    if field == "token_limit":
        return f"{int(amount):,} tokens"
    if field == "request_limit":
        return f"{int(amount):,} calls"
    return money(amount) if amount < 0.01 and amount else f"${amount:g}"


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


@main.command()
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
    body = _clean({"cost": cost, "tokens": tokens, "requests": requests,
                   "ttl_s": duration_s(ttl)})
    data = obj["api"].request("POST", f"/api/policies/{policy_id}/topups", json=body)
    if obj["json"]:
        emit(data, True)
        return
    raised = ", ".join(text for text in (
        money(cost) if cost else None, f"{tokens:,} tokens" if tokens else None,
        f"{requests:,} calls" if requests else None) if text)
    click.echo(f"topped up {policy_id} by {raised} until {data['topup']['expires_at']}")


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
    params = _clean({"period": period, "days": days, "provider": provider,
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
    params = _clean({"period": period, "days": days, "format": "csv" if fmt == "csv" else None})
    if fmt == "csv":
        text = obj["api"].send("GET", "/api/reports", params=params).text
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


# allocations ------------------------------------------------------------------------------
@main.group(cls=AliasGroup)
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
    body = _clean({"context_id": context_id, "component": component, "tokens_allocated": tokens,
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
    params = _clean({"component": component, "context_id": context_id,
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


# alerts -----------------------------------------------------------------------------------
@main.group(cls=AliasGroup)
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
    params = _clean({"acknowledged": None if show_all else "false", "severity": severity,
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
                               json=_clean({"acknowledged_by": acknowledged_by}))
    if obj["json"]:
        emit(alert, True)
    else:
        click.echo(f"acknowledged {alert_id}: {alert['message']}")


# budgets ----------------------------------------------------------------------------------
@main.group(cls=AliasGroup)
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
    budget = obj["api"].request("POST", "/api/budgets", json=_clean({
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


# virtual keys -----------------------------------------------------------------------------
@main.group(cls=AliasGroup)
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
    data = obj["api"].request("POST", "/api/keys", json=_clean({
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


# policies ---------------------------------------------------------------------------------
@main.group(cls=AliasGroup)
def policies() -> None:
    """Policies: list, apply TOML files, validate, delete."""


@policies.command("list")
@json_option
@click.pass_obj
def policies_list(obj: dict[str, Any]) -> None:
    """Every policy."""
    from budget_proxy.api.policies import scope_text
    from budget_proxy.models import BudgetPolicy

    data = obj["api"].request("GET", "/api/policies")
    if obj["json"]:
        emit(data, True)
        return
    rows = [{**p, "scope": scope_text(BudgetPolicy.model_validate(p))} for p in data]
    emit(rows, False, POLICY_COLUMNS)


def _load_policy_paths(paths: tuple[Path, ...]) -> Any:
    from budget_proxy.policy_files import APPLY_PREFIX, PolicyFileError, load_paths

    try:
        return load_paths(list(paths), source_prefix=APPLY_PREFIX)
    except PolicyFileError as exc:
        raise CliError(str(exc), EXIT_USAGE) from exc


@policies.command("validate")
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
def policies_validate(paths: tuple[Path, ...]) -> None:
    """Check policy files (or directories of them) without a proxy."""
    loaded = _load_policy_paths(paths)
    click.echo(f"ok: {len(loaded.policies)} policies, {len(loaded.budgets)} budgets in "
               f"{len(loaded.files)} files")


@policies.command("apply")
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--dry-run", is_flag=True, help=HELP_DRY_RUN)
@json_option
@click.pass_obj
def policies_apply(obj: dict[str, Any], paths: tuple[Path, ...], dry_run: bool) -> None:
    """Create or update the policies (and budgets) of TOML files on the running proxy, by
    their ids: applying twice changes nothing."""
    from budget_proxy.policy_files import dump_policy

    loaded = _load_policy_paths(paths)
    budgets_out = [b.model_dump(mode="json", exclude={"creation_time", "updated_at"})
                   for b in loaded.budgets]
    policies_out = [dump_policy(p) for p in loaded.policies]
    if not dry_run:
        for body in budgets_out:
            obj["api"].request("PUT", f"/api/budgets/{body['budget_id']}", json=body)
        for body in policies_out:
            obj["api"].request("POST", "/api/policies", json=body)
    if obj["json"]:
        emit({"dry_run": dry_run, "budgets": budgets_out, "policies": policies_out}, True)
        return
    verb = "would apply" if dry_run else "applied"
    click.echo(f"{verb} {len(policies_out)} policies and {len(budgets_out)} budgets from "
               f"{len(loaded.files)} files")
    for body in policies_out:
        click.echo(f"  {body['policy_id']}")


@policies.command("replay")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--days", type=click.IntRange(1, 3660), default=7, show_default=True,
              help="Replay the recorded calls of this many days.")
@json_option
@click.pass_obj
def policies_replay(obj: dict[str, Any], path: Path, days: int) -> None:
    """What-if: replay the policy in PATH (TOML policy file with one policy, or JSON) over
    the recorded calls of the last DAYS days; nothing is changed."""
    policy = _one_policy(path)
    data = obj["api"].request("POST", "/api/policies/replay",
                              json={"policy": policy, "days": days})
    if obj["json"]:
        emit(data, True)
        return
    click.echo(f"{data['type']} {data['period']} policy over {data['calls']} matching calls "
               f"of the last {days} days: {data['refused']} refused, {data['warned']} warned; "
               f"{money(data['allowed_cost'])} allowed, {money(data['refused_cost'])} refused")
    if data["windows"]:
        emit(data["windows"], False, ["window", "calls", "allowed", "refused", "warned",
                                      "allowed_cost", "refused_cost"])
    if data["truncated"]:
        click.echo("note: more records than the scan limit; the oldest were left out")


def _one_policy(path: Path) -> dict[str, Any]:
    """The one policy of a JSON file or a TOML policy file."""
    from budget_proxy.policy_files import dump_policy

    if path.suffix == ".json":
        try:
            data = json.loads(path.read_text())
        except (ValueError, UnicodeDecodeError) as exc:
            raise CliError(f"{path}: not JSON: {exc}", EXIT_USAGE) from exc
        if not isinstance(data, dict):
            raise CliError(f"{path}: a policy is a JSON object", EXIT_USAGE)
        return data
    loaded = _load_policy_paths((path,))
    if len(loaded.policies) != 1:
        raise CliError(f"{path}: holds {len(loaded.policies)} policies; replay takes one",
                       EXIT_USAGE)
    return dump_policy(loaded.policies[0])


@policies.command("delete")
@click.argument("policy_id")
@json_option
@click.pass_obj
def policies_delete(obj: dict[str, Any], policy_id: str) -> None:
    """Delete a policy."""
    data = obj["api"].request("DELETE", f"/api/policies/{policy_id}")
    emit(data, True) if obj["json"] else click.echo(f"deleted policy {policy_id}")


# the price commands (`prices`, `calc-cost`, `recommend`) live in their own module
from budget_proxy.cli_pricing import register as _register_pricing  # noqa: E402

_register_pricing(main)

from budget_proxy.mcp.stdio import mcp_command as _mcp_command  # noqa: E402

main.add_command(_mcp_command)  # `budget mcp`: the budget tools over MCP stdio
from budget_proxy.ledger.cli import ledger_group as _ledger_group  # noqa: E402

main.add_command(_ledger_group)  # `budget ledger rebuild`: counters from the ledger


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

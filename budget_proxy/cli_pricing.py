"""Price commands of the `budget` CLI: `prices list|update|history`, `calc-cost`, `recommend`.

`register(group)` adds them to the main group (`budget_proxy.cli`). They talk to a running
proxy's admin API, so they see the prices in force there (stored versions included).
`calc-cost` and `recommend` fall back to the catalog packaged with this install when the proxy
cannot be reached (or with `--offline`), and say so.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import quote

import click
import httpx

HELP_PROVIDER = "Provider (openai, anthropic, gemini, ...)."
HELP_OFFLINE = "Use the catalog packaged with this install; do not ask the proxy."
HELP_INPUT = "Input tokens of the call, cached and cache-written ones included."
HELP_OUTPUT = "Output tokens of the call, reasoning tokens included."
HELP_CACHED = "Part of the input read from the prompt cache."
HELP_CACHE_WRITE = "Part of the input written to the prompt cache."
HELP_REASONING = "Part of the output that was reasoning."
HELP_TASK_TYPE = "Kind of task: chat (default), completion, embedding, ..."
HELP_CONTEXT = "Input tokens per call (the context the model must hold)."
HELP_OUTPUT_SIZE = "Output tokens per call."
HELP_FREQUENCY = "Calls per day (for the daily and monthly cost)."
HELP_MAX_COST = "Leave out models costing more than this many USD per call."
HELP_LIMIT = "How many models to list."
TIERS = ("local_lightweight", "local_midweight", "remote_heavyweight")
PRICE_COLUMNS = ["provider", "model", "input", "output", "cache_read", "cache_write", "tier",
                 "pricing_id"]
UNITS_NOTE = "prices in USD per million tokens"
F = TypeVar("F", bound=Callable[..., Any])


def register(group: click.Group) -> None:
    """Add the price commands to ``group`` (idempotent)."""
    if "prices" in group.commands:
        return
    group.add_command(prices)
    group.add_command(calc_cost)
    group.add_command(recommend)


def _offline_fallback(exc: click.ClickException) -> bool:
    """True when the proxy could not be reached at all (not when it answered an error)."""
    return isinstance(exc.__cause__, httpx.TransportError)


def _set_json(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value:
        ctx.ensure_object(dict)["json"] = True


def json_option(func: F) -> F:
    """`--json` after the command name too (`budget prices list --json`), as in `cli`."""
    return click.option("--json", "as_json", is_flag=True, expose_value=False,
                        callback=_set_json, help="Print machine-readable JSON.")(func)


def _price_row(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "provider": row["provider"], "model": row["model"],
        "input": row["input_usd_per_mtok"], "output": row["output_usd_per_mtok"],
        "cache_read": row.get("cache_read_usd_per_mtok"),
        "cache_write": row.get("cache_write_usd_per_mtok"), "tier": row.get("tier"),
        "pricing_id": row["pricing_id"], "effective_date": row.get("effective_date"),
        "end_date": row.get("end_date"), "source": row.get("source"),
        "verified": row.get("verified"), "current": row.get("current"),
    }


@click.group()
def prices() -> None:
    """Prices in force, their history, and price updates."""


@prices.command("list")
@click.option("--provider", default=None, help=HELP_PROVIDER)
@click.option("--model", default=None, help="Only the price this model name resolves to.")
@json_option
@click.pass_obj
def list_prices(obj: dict[str, Any], provider: str | None, model: str | None) -> None:
    """List the prices in force (catalog plus stored price versions)."""
    params = {k: v for k, v in (("provider", provider), ("model", model)) if v}
    rows = obj["api"].request("GET", "/api/prices", params=params)
    if obj["json"]:
        from budget_proxy.cli import emit

        emit(rows, True)
        return
    _table([_price_row(r) for r in rows], PRICE_COLUMNS, UNITS_NOTE)


@prices.command("history")
@click.argument("model")
@click.option("--provider", default=None, help=HELP_PROVIDER + " Default: resolved from MODEL.")
@json_option
@click.pass_obj
def history(obj: dict[str, Any], model: str, provider: str | None) -> None:
    """Every price MODEL has had, oldest first, with effective and end dates."""
    api = obj["api"]
    if provider is None:
        found = api.request("GET", "/api/prices", params={"model": model})
        if not found:
            raise click.ClickException(f"no price for {model}")
        provider, model = found[0]["provider"], found[0]["model"]
    rows = api.request("GET", f"/api/prices/{quote(provider, safe='')}/"
                              f"{quote(model, safe='')}/history")
    if obj["json"]:
        from budget_proxy.cli import emit

        emit(rows, True)
        return
    _table([_price_row(r) for r in rows],
           ["pricing_id", "effective_date", "end_date", "input", "output", "cache_read",
            "cache_write", "source", "verified", "current"], f"{provider}/{model}: {UNITS_NOTE}")


@prices.command("update")
@json_option
@click.pass_obj
def update(obj: dict[str, Any]) -> None:
    """Fetch prices from the configured sources now; apply those the sources agree on.

    Progress is shown as it happens (on stderr); the outcome is printed at the end."""
    from budget_proxy.cli import EXIT_UNREACHABLE, CliError, _error_of

    api = obj["api"]
    report = None
    try:
        with httpx.stream("POST", f"{api.url}/api/prices/update", params={"stream": "true"},
                          headers={**api.headers, "Accept": "application/x-ndjson"},
                          timeout=httpx.Timeout(30.0, read=None)) as resp:
            if resp.status_code >= 400:
                resp.read()
                raise _error_of(resp)
            for line in resp.iter_lines():
                if not line.strip():
                    continue
                event = json.loads(line)
                if event.get("type") == "report":
                    report = event["report"]
                else:
                    _show_progress(event)
    except httpx.HTTPError as exc:
        raise CliError(f"cannot reach budget-proxy at {api.url}: {exc}",
                       EXIT_UNREACHABLE) from exc
    if report is None:
        raise click.ClickException("the update ended without a report")
    if obj["json"]:
        from budget_proxy.cli import emit

        emit(report, True)
    else:
        _show_report(report)
    if report["status"] in ("failed", "no_sources"):
        raise click.ClickException(f"price update {report['status']}: "
                                   + "; ".join(report.get("errors") or ["no source answered"]))


def _show_progress(event: dict[str, Any]) -> None:
    stage = event.get("stage")
    if stage == "start":
        names = event.get("sources") or []
        click.echo(f"Updating prices from {len(names)} source(s): {', '.join(names)}", err=True)
    elif stage == "source":
        if event.get("ok"):
            click.echo(f"  {event['name']}: {event['quotes']} prices read "
                       f"({event.get('elapsed_s', 0):.2f}s)", err=True)
        else:
            click.echo(f"  {event['name']}: FAILED: {event.get('error')}", err=True)
    elif stage == "compare":
        click.echo(f"Comparing {event['models']} models across sources...", err=True)
    elif stage == "applied":
        click.echo(f"  applied {event['provider']}/{event['model']}: {event['pricing_id']}",
                   err=True)
    elif stage == "conflict":
        click.echo(f"  CONFLICT {event['provider']}/{event['model']}: "
                   f"{', '.join(event.get('fields') or [])}", err=True)


def _show_report(report: dict[str, Any]) -> None:
    s = report["summary"]
    click.echo(f"Price update {s['update_id']}: {s['status']}: {s['applied']} applied, "
               f"{s['conflicts']} conflict(s), {s['unchanged']} unchanged, "
               f"{s['unverified']} unverified, {s['models_checked']} models checked")
    for row in report.get("applied", []):
        changes = ", ".join(f"{k.removesuffix('_usd_per_mtok')} {v['old']} -> {v['new']}"
                            for k, v in row["changes"].items())
        click.echo(f"  new version {row['pricing_id']}: {changes}")
    for row in report.get("conflicts", []):
        quotes = "; ".join(f"{c['source']}: " + ", ".join(
            f"{k.removesuffix('_usd_per_mtok')}={v}" for k, v in c["prices"].items()
            if k in row["fields"]) for c in row["candidates"])
        click.echo(f"  conflict {row['provider']}/{row['model']} (unchanged, alert raised): "
                   f"{quotes}")
    for error in report.get("errors", []):
        click.echo(f"  error: {error}")


@click.command("calc-cost")
@click.option("--provider", default="", help=HELP_PROVIDER + " Default: resolved from --model.")
@click.option("--model", required=True, help="Model name (aliases and snapshots resolve).")
@click.option("--input-tokens", type=click.IntRange(min=0), default=0, help=HELP_INPUT)
@click.option("--output-tokens", type=click.IntRange(min=0), default=0, help=HELP_OUTPUT)
@click.option("--cached-tokens", type=click.IntRange(min=0), default=0, help=HELP_CACHED)
@click.option("--cache-write-tokens", type=click.IntRange(min=0), default=0,
              help=HELP_CACHE_WRITE)
@click.option("--reasoning-tokens", type=click.IntRange(min=0), default=0, help=HELP_REASONING)
@click.option("--offline", is_flag=True, help=HELP_OFFLINE)
@json_option
@click.pass_obj
def calc_cost(obj: dict[str, Any], provider: str, model: str, input_tokens: int,
              output_tokens: int, cached_tokens: int, cache_write_tokens: int,
              reasoning_tokens: int, offline: bool) -> None:
    """Cost of one call with these token counts, as the proxy would charge it."""
    body = {"provider": provider, "model": model, "input_tokens": input_tokens,
            "output_tokens": output_tokens, "cached_tokens": cached_tokens,
            "cache_write_tokens": cache_write_tokens, "reasoning_tokens": reasoning_tokens}
    result = None
    if not offline:
        try:
            result = obj["api"].request("POST", "/api/prices/calculate", json=body)
        except click.ClickException as exc:
            if not _offline_fallback(exc):
                raise
            click.echo(f"{exc.message}; using the packaged catalog", err=True)
    if result is None:
        result = _offline_cost(body)
    if obj["json"]:
        from budget_proxy.cli import emit

        emit(result, True)
        return
    click.echo(f"{result['provider']}/{result['model']} ({result['pricing_id']})"
               + (" [ceiling price: model unknown]" if result.get("priced_at") == "ceiling"
                  else "") + (" [offline]" if result.get("offline") else ""))
    _table([{"class": ln["class"], "tokens": ln["tokens"], "usd_per_mtok": ln["usd_per_mtok"],
             "cost_usd": f"{ln['cost_usd']:.9f}"} for ln in result["lines"]],
           ["class", "tokens", "usd_per_mtok", "cost_usd"], None)
    click.echo(f"input ${result['input_cost']:.9f}  output ${result['output_cost']:.9f}  "
               f"total ${result['total_cost']:.9f}")


def _offline_cost(body: dict[str, Any]) -> dict[str, Any]:
    from budget_proxy.pricing import PriceCatalog, cost_breakdown

    price = PriceCatalog.load_default().lookup(body["provider"], body["model"])
    if price is None:
        raise click.ClickException(f"{body['model']} has no price in the packaged catalog")
    counts = {k: v for k, v in body.items() if k.endswith("_tokens")}
    try:
        result = cost_breakdown(price, **counts)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    return {**result, "requested_model": body["model"], "priced_at": "catalog", "offline": True}


@click.command()
@click.option("--task-type", default="chat", show_default=True, help=HELP_TASK_TYPE)
@click.option("--context-size", type=click.IntRange(min=0), default=1000, show_default=True,
              help=HELP_CONTEXT)
@click.option("--output-size", type=click.IntRange(min=0), default=500, show_default=True,
              help=HELP_OUTPUT_SIZE)
@click.option("--tier", type=click.Choice(TIERS), default=None, help="Only models of this tier.")
@click.option("--frequency", type=click.FloatRange(min=0), default=1.0, show_default=True,
              help=HELP_FREQUENCY)
@click.option("--max-cost", type=click.FloatRange(min=0), default=None, help=HELP_MAX_COST)
@click.option("--limit", type=click.IntRange(min=1), default=5, show_default=True,
              help=HELP_LIMIT)
@click.option("--provider", default=None, help="Only this provider's models.")
@click.option("--offline", is_flag=True, help=HELP_OFFLINE)
@json_option
@click.pass_obj
def recommend(obj: dict[str, Any], task_type: str, context_size: int, output_size: int,
              tier: str | None, frequency: float, max_cost: float | None, limit: int,
              provider: str | None, offline: bool) -> None:
    """The cheapest models that fit a task's context and output size (and tier), with their
    cost per call, per day and per month (30 days) at --frequency calls per day."""
    from budget_proxy.pricing import PriceCatalog
    from budget_proxy.pricing import recommend as rank

    entries = None
    if not offline:
        try:
            rows = obj["api"].request("GET", "/api/prices",
                                      params={"provider": provider} if provider else {})
            entries = [_price_from_view(r) for r in rows]
        except click.ClickException as exc:
            if not _offline_fallback(exc):
                raise
            click.echo(f"{exc.message}; using the packaged catalog", err=True)
    if entries is None:
        entries = [e for e in PriceCatalog.load_default()
                   if provider is None or e.provider == provider]
    found = rank(entries, context_tokens=context_size, output_tokens=output_size, tier=tier,
                 task_type=task_type, calls_per_day=frequency, max_cost_usd=max_cost,
                 limit=limit)
    if obj["json"]:
        from budget_proxy.cli import emit

        emit(found, True)
        return
    if not found:
        click.echo("no model fits (context, output size, tier and cost limit)")
        return
    _table([{"provider": r["provider"], "model": r["model"], "tier": r["tier"],
             "context": r["context_window_tokens"], "per_call_usd": _usd(r["cost_per_call_usd"]),
             "per_day_usd": _usd(r["cost_per_day_usd"]),
             "per_month_usd": _usd(r["cost_per_month_usd"])} for r in found],
           ["provider", "model", "tier", "context", "per_call_usd", "per_day_usd",
            "per_month_usd"],
           f"{task_type}: {context_size} tokens in"
           + ("" if found[0]["mode"] == "embedding" else f", {output_size} out")
           + f", {frequency:g} calls/day")


def _usd(value: float) -> str:
    return f"{value:.2f}" if value >= 100 else f"{value:.6f}"


def _price_from_view(row: dict[str, Any]) -> Any:
    from budget_proxy.pricing import ModelPrice, VersionedPrice

    fields = {k: row[k] for k in ModelPrice.model_fields if k in row}
    fields["effective_date"] = str(row["effective_date"])[:10]
    return VersionedPrice(**fields, version_id=row["pricing_id"])


def _table(rows: list[dict[str, Any]], columns: list[str], note: str | None) -> None:
    from budget_proxy.cli import emit

    if note:
        click.echo(f"# {note}")
    emit(rows, False, columns)

"""Price commands: `prices list|update|history`, `calc-cost`, `recommend`.

They ask the running proxy, so they see the prices in force there (stored versions
included). `calc-cost` and `recommend` fall back to the catalog packaged with this install
when the proxy cannot be reached (or with `--offline`), and say so. `recommend` is the
proxy's recommender (`budget_proxy.recommend`): its JSON is `/api/assistant/recommend-model`'s
answer, and offline the same function over the packaged catalog.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import click
from pydantic import ValidationError

from budget_proxy.cli.common import (
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    AliasGroup,
    CliError,
    json_option,
)
from budget_proxy.cli.output import emit, money, table
from budget_proxy.schemas import ModelRecommendation

HELP_PROVIDER = "Provider (openai, anthropic, gemini, ...)."
HELP_OFFLINE = "Use the catalog packaged with this install; do not ask the proxy."
HELP_INPUT = "Input tokens of the call, cached and cache-written ones included."
HELP_OUTPUT = "Output tokens of the call, reasoning tokens included."
HELP_CACHED = "Part of the input read from the prompt cache."
HELP_CACHE_WRITE = "Part of the input written to the prompt cache."
HELP_REASONING = "Part of the output that was reasoning."
HELP_TASK_TYPE = ("Kind of task: text_generation, chat, code_generation, analysis, "
                  "summarization, classification, extraction, translation, embedding, ... "
                  "(default: inferred from --description).")
HELP_DESCRIPTION = "What the task is, in words (sets the task type when --task-type is not given)."
HELP_PRIORITY = "What matters most (cost, speed, accuracy, ...): moves the price band."
HELP_CONTEXT = "Input tokens per call (the context the model must hold)."
HELP_OUTPUT_SIZE = "Output tokens per call."
HELP_FREQUENCY = "Calls per day (for the daily and monthly cost)."
HELP_MAX_COST = "Most USD a call may cost."
HELP_BUDGET_LIMIT = "Most USD a day may cost at --frequency calls."
HELP_LIMIT = "How many models to list."
HELP_REC_PROVIDER = "Only this provider's models."
HELP_REC_TIER = "Only models of this tier (a local tier offers ollama and vllm)."
TIERS = ("local_lightweight", "local_midweight", "remote_heavyweight")
PRICE_COLUMNS = ["provider", "model", "input", "output", "cache_read", "cache_write", "tier",
                 "pricing_id"]
RECOMMEND_COLUMNS = ["provider", "model", "tier", "score", "per_call_usd", "per_day_usd",
                     "per_month_usd", "within_budget"]
UNITS_NOTE = "prices in USD per million tokens"


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


@click.group(cls=AliasGroup)
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
        emit(rows, True)
        return
    table([_price_row(r) for r in rows], PRICE_COLUMNS, UNITS_NOTE)


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
        emit(rows, True)
        return
    table([_price_row(r) for r in rows],
           ["pricing_id", "effective_date", "end_date", "input", "output", "cache_read",
            "cache_write", "source", "verified", "current"], f"{provider}/{model}: {UNITS_NOTE}")


@prices.command("update")
@json_option
@click.pass_obj
def update(obj: dict[str, Any]) -> None:
    """Fetch prices from the configured sources now; apply those the sources agree on.

    Progress is shown as it happens (on stderr); the outcome is printed at the end."""
    report = None
    with obj["api"].errors() as client:
        for event in client.update_prices():
            if event.get("type") == "report":
                report = event["report"]
            else:
                _show_progress(event)
    if report is None:
        raise click.ClickException("the update ended without a report")
    if obj["json"]:
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
        except CliError as exc:
            if exc.exit_code != EXIT_UNREACHABLE:
                raise
            click.echo(f"{exc.message}; using the packaged catalog", err=True)
    if result is None:
        result = _offline_cost(body)
    if obj["json"]:
        emit(result, True)
        return
    click.echo(f"{result['provider']}/{result['model']} ({result['pricing_id']})"
               + (" [ceiling price: model unknown]" if result.get("priced_at") == "ceiling"
                  else "") + (" [offline]" if result.get("offline") else ""))
    table([{"class": ln["class"], "tokens": ln["tokens"], "usd_per_mtok": ln["usd_per_mtok"],
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
@click.option("--task-type", default=None, help=HELP_TASK_TYPE)
@click.option("--description", default="", help=HELP_DESCRIPTION)
@click.option("--priority", "priority_areas", multiple=True, help=HELP_PRIORITY)
@click.option("--context-size", type=click.IntRange(min=0), default=1000, show_default=True,
              help=HELP_CONTEXT)
@click.option("--output-size", type=click.IntRange(min=0), default=500, show_default=True,
              help=HELP_OUTPUT_SIZE)
@click.option("--tier", type=click.Choice(TIERS), default=None, help=HELP_REC_TIER)
@click.option("--frequency", type=click.FloatRange(min=0), default=1.0, show_default=True,
              help=HELP_FREQUENCY)
@click.option("--max-cost", type=click.FloatRange(min=0), default=None, help=HELP_MAX_COST)
@click.option("--budget-limit", type=click.FloatRange(min=0), default=None,
              help=HELP_BUDGET_LIMIT)
@click.option("--limit", type=click.IntRange(1, 50), default=5, show_default=True,
              help=HELP_LIMIT)
@click.option("--provider", default=None, help=HELP_REC_PROVIDER)
@click.option("--offline", is_flag=True, help=HELP_OFFLINE)
@json_option
@click.pass_obj
def recommend(obj: dict[str, Any], task_type: str | None, description: str,
              priority_areas: tuple[str, ...], context_size: int, output_size: int,
              tier: str | None, frequency: float, max_cost: float | None,
              budget_limit: float | None, limit: int, provider: str | None,
              offline: bool) -> None:
    """Models for a task, ranked by how well their price level fits the task's complexity,
    within --max-cost per call and --budget-limit per day, with their cost per call, per day
    and per month (30 days) at --frequency calls per day. The same answer as the proxy's
    /api/assistant/recommend-model."""
    from budget_proxy.recommend import RecommendQuery

    fields = {"task_type": task_type, "task_description": description,
              "priority_areas": list(priority_areas) or None, "input_length": context_size,
              "output_length": output_size, "tier": tier, "usage_frequency": frequency,
              "max_cost": max_cost, "budget_limit": budget_limit, "limit": limit,
              "provider": provider}
    try:
        query = RecommendQuery.model_validate({k: v for k, v in fields.items() if v is not None})
    except ValidationError as exc:
        raise CliError(str(exc), EXIT_USAGE) from exc
    answer = None
    if not offline:
        try:
            with obj["api"].errors() as client:
                answer = client.recommend_model(**query.model_dump(mode="json",
                                                                   exclude_unset=True))
        except CliError as exc:
            if exc.exit_code != EXIT_UNREACHABLE:
                raise
            click.echo(f"{exc.message}; using the packaged catalog", err=True)
    if answer is None:
        answer = _offline_recommendation(query)
    if obj["json"]:
        emit(answer.model_dump(mode="json"), True)
        return
    _show_recommendation(answer, query)


def _offline_recommendation(query: Any) -> ModelRecommendation:
    from budget_proxy.pricing import PriceCatalog
    from budget_proxy.recommend import recommend_models

    return recommend_models(PriceCatalog.load_default(), query)


def _show_recommendation(answer: ModelRecommendation, query: Any) -> None:
    sizes = f"{query.input_length:,} tokens in" + (
        "" if query.output_length == 0 else f", {query.output_length:,} out")
    note = (f"{answer.task_type} ({answer.complexity}): {sizes}, "
            f"{query.usage_frequency:g} calls/day")
    if not answer.recommendations:
        click.echo("no model fits (context, output size, tier, provider)")
        return
    table([{"provider": o.provider, "model": o.model, "tier": o.tier, "score": o.score,
            "per_call_usd": money(o.cost_per_request, exact=True),
            "per_day_usd": money(o.daily_cost, exact=True),
            "per_month_usd": money(o.monthly_cost, exact=True),
            "within_budget": "yes" if o.within_budget else "no"}
           for o in answer.recommendations], RECOMMEND_COLUMNS, note)
    if answer.best is None:
        click.echo("no model fits the budget (--max-cost, --budget-limit): the cheapest are "
                   "shown")
    else:
        click.echo(f"best: {answer.best.provider}/{answer.best.model}: {answer.best.reason}")

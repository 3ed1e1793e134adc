"""How the CLI prints: tables (money as money, limits with their units) or JSON."""

from __future__ import annotations

import json
from typing import Any

import click

MONEY_COLUMNS = {"limit", "spent", "reserved", "remaining", "cost_limit", "total_cost",
                 "spent_cost", "input_cost", "output_cost", "allowed_cost", "refused_cost",
                 "cost", "cost_used", "cost_allocated"}
STATUS_COLUMNS = ["policy_id", "name", "type", "period", "scope", "limit", "spent", "reserved",
                  "remaining", "utilisation"]  # a policy's current window (status, budgets show)


def emit(data: Any, as_json: bool, columns: list[str] | None = None) -> None:
    """``data`` (a row or a list of rows) as JSON, or as a table of ``columns``."""
    if as_json:
        click.echo(json.dumps(data, indent=2, default=str))
        return
    rows = data if isinstance(data, list) else [data]
    if not rows:
        click.echo("(none)")
        return
    cols = columns or list(rows[0].keys())
    table = [[cell(row.get(c), c, row) for c in cols] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in table)) for i, c in enumerate(cols)]
    click.echo("  ".join(c.upper().ljust(w) for c, w in zip(cols, widths, strict=True)))
    for r in table:
        click.echo("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)))


def table(rows: list[dict[str, Any]], columns: list[str], note: str | None) -> None:
    """A table under a `# note` line."""
    if note:
        click.echo(f"# {note}")
    emit(rows, False, columns)


def money(usd: float, *, exact: bool = False) -> str:
    """USD as money: `$0.000022`, `$12.50`, `$1,234.56`; never `2.175e-05`. ``exact`` keeps
    up to six decimals under a dollar (`$0.0125`) where cents would hide a difference."""
    if usd != 0 and (abs(usd) < 0.01 or (exact and abs(usd) < 1)):
        text = f"{usd:.6f}".rstrip("0")
        whole, _, cents = text.partition(".")
        return f"${whole}.{cents.ljust(2, '0')}"
    return f"${usd:,.2f}"


def limit_text(field: str, amount: Any) -> str:
    """A limit with its unit: `$5`, `1,000 tokens`, `3 calls`."""
    if amount is None:
        return "none"
    if field == "token_limit":
        return f"{int(amount):,} tokens"
    if field == "request_limit":
        return f"{int(amount):,} calls"
    return money(amount) if amount < 0.01 and amount else f"${amount:g}"


def cell(value: Any, column: str = "", row: dict[str, Any] | None = None) -> str:
    """One table cell: money in money columns (unless the row's unit is tokens), tokens with
    their unit, utilisation in percent."""
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

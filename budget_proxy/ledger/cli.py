"""`budget ledger ...`: maintenance of the PostgreSQL ledger, run beside the proxies with
their settings (`BUDGET_REDIS_URL`, `BUDGET_DATABASE_URL`, `--config`)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from zoneinfo import ZoneInfo

import click

from budget_proxy.models import nusd_to_usd

LEDGER_HELP = "The PostgreSQL usage ledger (BUDGET_DATABASE_URL)."
REBUILD_HELP = ("Recompute the current windows' spent figures of every policy from the ledger "
                "and write them into the Redis counters (after a Redis loss or failover).")
DRY_RUN_HELP = "Show what would be written; change nothing."


@click.group("ledger", help=LEDGER_HELP)
def ledger_group() -> None:
    pass


@ledger_group.command("rebuild", help=REBUILD_HELP)
@click.option("--config", "config_path", type=click.Path(path_type=Path), default=None,
              envvar="BUDGET_CONFIG", help="TOML configuration file.")
@click.option("--dry-run", is_flag=True, help=DRY_RUN_HELP)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def rebuild_command(config_path: Path | None, dry_run: bool, as_json: bool) -> None:
    from budget_proxy.config import ConfigError, load_settings

    try:
        settings = load_settings(config_path)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc
    if not settings.database_url or not settings.redis_url:
        raise click.ClickException("ledger rebuild needs BUDGET_DATABASE_URL and "
                                   "BUDGET_REDIS_URL")
    rows = asyncio.run(_rebuild(settings.redis_url, settings.database_url, settings.data_dir,
                                settings.timezone, dry_run))
    if as_json:
        import orjson

        click.echo(orjson.dumps(rows, option=orjson.OPT_INDENT_2).decode())
        return
    verb = "would set" if dry_run else "set"
    for row in rows:
        click.echo(f"{row['counter']}: {verb} spent ${row['spent_usd']:.6f} "
                   f"({row['spent_tokens']} tokens), was ${row['was_usd']:.6f}")
    click.echo(f"{len(rows)} counters {'checked' if dry_run else 'rebuilt'} from the ledger")


async def _rebuild(redis_url: str, database_url: str, data_dir: Path, timezone: str,
                   dry_run: bool) -> list[dict[str, object]]:
    from budget_proxy.ledger.postgres import PostgresLedger
    from budget_proxy.ledger.rebuild import rebuild
    from budget_proxy.ledger.service import tier_lookup
    from budget_proxy.pricing import PriceBook
    from budget_proxy.store.base import StoreError
    from budget_proxy.store.redis import RedisStore

    ledger = PostgresLedger(database_url)
    store = RedisStore(redis_url, data_dir=data_dir / "ledger-cli", ledger=ledger)
    try:
        await store.start()
        await ledger.start()
        book = PriceBook.load_default()
        done = await rebuild(store, ledger, ZoneInfo(timezone), tier_lookup(book),
                             dry_run=dry_run)
    except StoreError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        await store.close()
    return [{"counter": r.key, "policy_id": r.policy_id, "spent_usd": nusd_to_usd(r.spent_nusd),
             "spent_tokens": r.spent_tokens, "requests": r.requests,
             "was_usd": nusd_to_usd(was)} for r, was in done]

"""The ledger in the application: building it from the settings, and the drift check loop
(a `cleanup_ctx`) that alerts when counters and the ledger disagree."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from aiohttp import web

from budget_proxy.appkeys import ALERTS, CATALOG, SETTINGS, STORE
from budget_proxy.config import ConfigError, Settings
from budget_proxy.ledger.rebuild import DriftCheck, TierOf
from budget_proxy.models import AlertSeverity, nusd_to_usd
from budget_proxy.pricing import PriceCatalog
from budget_proxy.store.base import StoreError

if TYPE_CHECKING:  # asyncpg is the optional `postgres` extra: imported only when configured
    from budget_proxy.ledger.postgres import PostgresLedger

log = logging.getLogger(__name__)
DRIFT_ALERT = "ledger_drift"


def make_ledger(settings: Settings) -> PostgresLedger | None:
    if not settings.database_url:
        return None
    try:
        from budget_proxy.ledger.postgres import PostgresLedger
    except ImportError as exc:
        raise ConfigError(
            "BUDGET_DATABASE_URL needs the PostgreSQL driver: pip install "
            f"'budget-proxy[postgres]' ({exc})") from exc
    return PostgresLedger(settings.database_url)


def tier_lookup(book: PriceCatalog) -> TierOf:
    """A model's tier from the price book (the scope policies match on)."""
    def tier_of(provider: str, model: str) -> str | None:
        price = book.lookup(provider, model)
        return None if price is None else price.tier
    return tier_of


async def drift_ctx(app: web.Application) -> AsyncIterator[None]:
    """With a ledger: compare counters with it every `drift_check_interval_s`."""
    from budget_proxy.store.redis import RedisStore

    store, settings = app[STORE], app[SETTINGS]
    if (not isinstance(store, RedisStore) or store.ledger is None
            or settings.drift_check_interval_s <= 0):
        yield
        return
    check = DriftCheck(store, store.ledger, ZoneInfo(settings.timezone),
                       tier_lookup(app[CATALOG]))

    async def loop() -> None:
        while True:
            await asyncio.sleep(settings.drift_check_interval_s)
            try:
                drifted = await check.run_once()
            except StoreError as exc:
                log.debug("drift check: %s", exc)
                continue
            for figures, counter_nusd in drifted:
                message = (f"counter {figures.key} says ${nusd_to_usd(counter_nusd):.6f} "
                           f"spent, the ledger ${nusd_to_usd(figures.spent_nusd):.6f}; "
                           "`budget ledger rebuild` restores it from the ledger")
                log.warning("ledger drift: %s", message)
                await app[ALERTS].raise_alert(
                    DRIFT_ALERT, message, severity=AlertSeverity.CRITICAL,
                    dedupe_key=f"{DRIFT_ALERT}:{figures.key}", policy_id=figures.policy_id,
                    data={"counter_usd": nusd_to_usd(counter_nusd),
                          "ledger_usd": nusd_to_usd(figures.spent_nusd)})

    task = asyncio.create_task(loop(), name="ledger-drift-check")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task

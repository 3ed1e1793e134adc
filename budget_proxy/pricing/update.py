"""Price updates with verification, the update schedule, and the price book's life cycle.

An update reads every configured source (`budget_proxy.pricing.sources`), matches each quote to a
catalog model by exact name or alias, and judges each model on its own (`verify`):

- every quoted field must agree across the sources that quote it, within ``tolerance``
  (relative); any disagreement is a **conflict**: a ``price_conflict`` alert for review, and
  that model is left unchanged;
- agreeing quotes equal to the price in force change nothing (**unchanged**);
- agreeing quotes that differ are **applied** as a new price version when the agreeing
  sources' trust adds up to ``min_trust`` (two sources by default, or one fully trusted local
  file), else reported as **unverified** and left unchanged. A field no source quotes keeps
  its current value; the value applied is the most trusted source's.

Every applied change is a new version (never an overwrite), publishes a ``prices`` event and a
``price_change`` alert. Progress is reported stage by stage to an optional callback (the API
streams it to ``budget prices update``). The schedule (``PRICE_UPDATE_INTERVAL`` minutes) runs
each interval once across all replicas: a replica runs a slot only if it creates the slot's
document first.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Literal

import aiohttp
from aiohttp import web

from budget_proxy.appkeys import ALERTS, CATALOG, EVENTS, PROXY, SETTINGS, STORE
from budget_proxy.config import ConfigError, Settings
from budget_proxy.events import EventBus
from budget_proxy.loops import every, stop
from budget_proxy.models import new_id
from budget_proxy.pricing.book import PriceBook, PriceWriteError
from budget_proxy.pricing.catalog import WILDCARD, ModelPrice
from budget_proxy.pricing.sources import (
    QUOTE_FIELDS,
    PriceSource,
    Quote,
    SourceError,
    configured_sources,
)
from budget_proxy.store.base import Store, StoreError

if TYPE_CHECKING:
    from budget_proxy.alerts import Alerts

log = logging.getLogger("budget_proxy.price_manager")

PRICE_POLL_INTERVAL_S = 1.0  # fallback convergence of the price book when a notice is missed
UPDATE_SLOT_KIND = "price_update_slot"  # one document per scheduled run, across replicas
UNKNOWN_PRICE_ALERT = "unknown_model_price"

Progress = Callable[[dict[str, Any]], Awaitable[None] | None]
Status = Literal["apply", "unchanged", "conflict", "unverified"]


# the verification decision (pure) ---------------------------------------------------------
@dataclass(frozen=True, slots=True)
class SourcedQuote:
    source: str
    trust: float
    quote: Quote


@dataclass(frozen=True, slots=True)
class Verdict:
    status: Status
    prices: dict[str, Decimal]  # the price to apply: each field from its most trusted source
    sources: tuple[str, ...]
    trust: float  # total trust of the sources quoting the model
    conflicting: tuple[str, ...] = ()  # fields the sources disagree on


def agree(a: Decimal, b: Decimal, tolerance: float) -> bool:
    """Within ``tolerance`` of the larger of the two (relative); equal zeros agree."""
    return a == b or abs(a - b) <= Decimal(str(tolerance)) * max(abs(a), abs(b))


def verify(
    quotes: Sequence[SourcedQuote], current: Mapping[str, Decimal | None], *,
    tolerance: float, min_trust: float,
) -> Verdict:
    """Judge one model's quotes against each other and against the price in force."""
    ordered = sorted(quotes, key=lambda q: -q.trust)  # stable: config order breaks ties
    merged: dict[str, Decimal] = {}
    conflicting = []
    for name in QUOTE_FIELDS:
        values = [v for q in ordered if (v := getattr(q.quote, name)) is not None]
        if not values:
            continue
        if not agree(min(values), max(values), tolerance):
            conflicting.append(name)
        merged[name] = values[0]
    sources = tuple(q.source for q in ordered)
    trust = sum(q.trust for q in ordered)
    if conflicting:
        return Verdict("conflict", merged, sources, trust, tuple(conflicting))
    if all(current.get(name) == value for name, value in merged.items()):
        return Verdict("unchanged", merged, sources, trust)
    if trust + 1e-9 < min_trust:
        return Verdict("unverified", merged, sources, trust)
    return Verdict("apply", merged, sources, trust)


def alias_rank(entry: ModelPrice, name: str) -> int:
    """Which of a source's names for one model to believe: the canonical name, then dated or
    other aliases, then ``-latest`` pointers (which move to new models before sources notice)."""
    lowered = name.strip().lower()
    if lowered == entry.model.lower():
        return 0
    return 2 if lowered.endswith("-latest") else 1


@dataclass(slots=True)
class Matched:
    quotes: dict[tuple[str, str], Quote] = field(default_factory=dict)
    unmatched: int = 0
    invalid: list[str] = field(default_factory=list)


def match_quotes(book: PriceBook, quotes: Sequence[Quote]) -> Matched:
    """One quote per catalog model (its best-ranked name); $0 quotes for hosted models are
    invalid, names the catalog does not have exactly are ignored (an update never adds a
    model: unknown models stay under the unknown-price rule until priced by hand)."""
    out = Matched()
    ranks: dict[tuple[str, str], int] = {}
    for quote in quotes:
        entry = book.find_exact(quote.provider, quote.model)
        if entry is None or entry.model.startswith(WILDCARD):
            out.unmatched += 1
            continue
        if quote.is_zero:
            out.invalid.append(f"{quote.provider}/{quote.model}")
            continue
        key = (entry.provider, entry.model)
        rank = alias_rank(entry, quote.model)
        if key not in ranks or rank < ranks[key]:
            ranks[key] = rank
            out.quotes[key] = quote
    return out


def _prices_text(prices: Mapping[str, Decimal | None]) -> dict[str, str | None]:
    return {k: None if v is None else str(v) for k, v in prices.items()}


# the update run -------------------------------------------------------------------------
class PriceUpdater:
    """One price update over the configured sources; see the module docstring."""

    def __init__(
        self, book: PriceBook, sources: Sequence[PriceSource],
        session: aiohttp.ClientSession | None, *, tolerance: float = 0.01,
        min_trust: float = 1.0, alerts: Alerts | None = None, events: EventBus | None = None,
    ) -> None:
        self.book = book
        self.sources = list(sources)
        self.session = session
        self.tolerance = tolerance
        self.min_trust = min_trust
        self.alerts = alerts
        self.events = events

    async def run(self, progress: Progress | None = None, trigger: str = "manual",
                  ) -> dict[str, Any]:
        """Run one update and return its report; ``status`` is ``busy`` (nothing done) when
        this process is already running one."""
        if self.book.update_lock.locked():
            return {"status": "busy", "message": "a price update is already running"}
        async with self.book.update_lock:
            return await self._run(progress, trigger)

    async def _emit(self, progress: Progress | None, event: dict[str, Any]) -> None:
        if progress is None:
            return
        result = progress(event)
        if inspect.isawaitable(result):
            await result

    async def _run(self, progress: Progress | None, trigger: str) -> dict[str, Any]:
        started = time.perf_counter()
        now = self.book.store.now() if self.book.store is not None else None
        report: dict[str, Any] = {
            "update_id": new_id("pup"), "trigger": trigger, "status": "ok",
            "started_at": now.isoformat() if now else None, "tolerance": self.tolerance,
            "min_trust": self.min_trust, "sources": [], "models_checked": 0, "applied": [],
            "unchanged": 0, "conflicts": [], "unverified": [], "invalid": [], "unmatched": 0,
            "errors": [],
        }
        await self._emit(progress, {"stage": "start", "sources": [s.name for s in self.sources]})
        if not self.sources:
            report["status"] = "no_sources"
            report["errors"].append("no price sources configured (BUDGET_PRICE_SOURCES or "
                                    "[[price_sources]])")
            return self._finish(report, started)
        await self.book.refresh()

        fetched = await asyncio.gather(*(self._fetch(s, progress) for s in self.sources))
        per_model: dict[tuple[str, str], list[SourcedQuote]] = {}
        for source, quotes, row in fetched:
            report["sources"].append(row)
            if quotes is None:
                continue
            matched = match_quotes(self.book, quotes)
            row["matched"] = len(matched.quotes)
            report["unmatched"] += matched.unmatched
            report["invalid"].extend(f"{source.name}: {name}" for name in matched.invalid)
            for key, quote in matched.quotes.items():
                per_model.setdefault(key, []).append(
                    SourcedQuote(source.name, source.trust, quote))
        ok_sources = sum(1 for row in report["sources"] if row["ok"])
        if ok_sources == 0:
            report["status"] = "failed"
            return self._finish(report, started)
        if ok_sources < len(self.sources):
            report["status"] = "partial"

        report["models_checked"] = len(per_model)
        await self._emit(progress, {"stage": "compare", "models": len(per_model)})
        for (provider, model), sourced in sorted(per_model.items()):
            await self._judge(provider, model, sourced, report, progress)
        return self._finish(report, started)

    async def _fetch(
        self, source: PriceSource, progress: Progress | None,
    ) -> tuple[PriceSource, list[Quote] | None, dict[str, Any]]:
        began = time.perf_counter()
        row: dict[str, Any] = {"name": source.name, "kind": source.kind,
                               "location": source.location, "trust": source.trust,
                               "ok": False, "quotes": 0, "matched": 0, "error": None}
        quotes: list[Quote] | None = None
        try:
            quotes = await source.fetch(self.session)
            row.update(ok=True, quotes=len(quotes))
        except SourceError as exc:
            log.error("failed to update prices from %s: %s", source.name, exc)
            row["error"] = str(exc)
        row["elapsed_s"] = round(time.perf_counter() - began, 3)
        await self._emit(progress, {"stage": "source", **row})
        return source, quotes, row

    async def _judge(
        self, provider: str, model: str, quotes: list[SourcedQuote], report: dict[str, Any],
        progress: Progress | None,
    ) -> None:
        entry = self.book.find_exact(provider, model)
        if entry is None:  # removed by a refresh meanwhile
            return
        current = {name: getattr(entry, name) for name in QUOTE_FIELDS}
        verdict = verify(quotes, current, tolerance=self.tolerance, min_trust=self.min_trust)
        candidates = [{"source": q.source, "trust": q.trust, "name": q.quote.model,
                       "prices": _prices_text(q.quote.prices())} for q in quotes]
        if verdict.status == "unchanged":
            report["unchanged"] += 1
        elif verdict.status == "unverified":
            report["unverified"].append({
                "provider": provider, "model": model, "sources": list(verdict.sources),
                "trust": round(verdict.trust, 4), "prices": _prices_text(verdict.prices),
                "current": _prices_text(current)})
        elif verdict.status == "conflict":
            row: dict[str, Any] = {
                "provider": provider, "model": model, "fields": list(verdict.conflicting),
                   "candidates": candidates, "current": _prices_text(current)}
            report["conflicts"].append(row)
            if self.alerts is not None:
                alert = await self.alerts.price_conflict(provider, model, candidates)
                row["alert_id"] = alert.alert_id if alert is not None else None
            await self._emit(progress, {"stage": "conflict", "provider": provider,
                                        "model": model, "fields": list(verdict.conflicting)})
        else:
            await self._apply(provider, model, entry, verdict, report, progress)

    async def _apply(
        self, provider: str, model: str, entry: ModelPrice, verdict: Verdict,
        report: dict[str, Any], progress: Progress | None,
    ) -> None:
        source = "update:" + "+".join(verdict.sources)
        try:
            version = await self.book.set_price(
                provider, model, verdict.prices, source=source, verified=True,
                note=f"agreed by {', '.join(verdict.sources)} (trust {verdict.trust:.2f}) "
                     f"within {self.tolerance:.2%}")
        except (PriceWriteError, ValueError, StoreError) as exc:
            report["errors"].append(f"{provider}/{model}: {exc}")
            log.error("price update of %s/%s not applied: %s", provider, model, exc)
            return
        if version is None:
            report["unchanged"] += 1
            return
        old = {name: getattr(entry, name) for name in QUOTE_FIELDS}
        new = {name: getattr(version, name) for name in QUOTE_FIELDS}
        report["applied"].append({
            "provider": provider, "model": model, "pricing_id": version.pricing_id,
            "previous_pricing_id": version.previous_pricing_id,
            "changes": {k: {"old": _text(old[k]), "new": _text(new[k])}
                        for k in QUOTE_FIELDS if old[k] != new[k]},
            "sources": list(verdict.sources)})
        if self.alerts is not None:
            await self.alerts.price_change(provider, model, _prices_text(old),
                                           _prices_text(new), source=source)
        await self._emit(progress, {"stage": "applied", "provider": provider, "model": model,
                                    "pricing_id": version.pricing_id})

    def _finish(self, report: dict[str, Any], started: float) -> dict[str, Any]:
        report["elapsed_s"] = round(time.perf_counter() - started, 3)
        summary = {k: report[k] for k in ("update_id", "trigger", "status", "models_checked",
                                           "unchanged", "unmatched", "elapsed_s")}
        summary.update(applied=len(report["applied"]), conflicts=len(report["conflicts"]),
                       unverified=len(report["unverified"]), invalid=len(report["invalid"]))
        report["summary"] = summary
        log.info("price update %s: %s", report["update_id"], summary)
        if self.events is not None:
            self.events.publish("prices", "price_update_completed", summary)
        return report


def _text(value: Decimal | None) -> str | None:
    return None if value is None else str(value)


# wiring into the application --------------------------------------------------------------
def book_of(app: web.Application | aiohttp.ChainMapProxy) -> PriceBook:
    book = app[CATALOG]
    if not isinstance(book, PriceBook):
        raise TypeError("the application's catalog is not a PriceBook")
    return book


def updater_for(app: web.Application | aiohttp.ChainMapProxy) -> PriceUpdater:
    settings: Settings = app[SETTINGS]
    proxy = app.get(PROXY)
    return PriceUpdater(
        book_of(app), configured_sources(settings), proxy.session if proxy else None,
        tolerance=settings.price_tolerance, min_trust=settings.price_min_trust,
        alerts=app.get(ALERTS), events=app[EVENTS],
    )


def unknown_price_hook(book: PriceBook, alerts: Alerts | None) -> Callable[[str, str, str], None]:
    """Under ``BUDGET_UNKNOWN_PRICE=alert``: one alert per unknown (provider, model), across
    replicas (deterministic alert id), raised off the request path."""
    def hook(provider: str, model: str, rule: str) -> None:
        if rule != "alert" or alerts is None:
            return
        ceiling = book.ceiling(provider)
        pricing_id = ceiling.pricing_id if ceiling is not None else None
        alerts.raise_alert_nowait(
            UNKNOWN_PRICE_ALERT,
            f"Model {provider}/{model} has no price in the catalog; it is allowed and charged "
            f"at the ceiling price {pricing_id} until it is priced",
            dedupe_key=f"{UNKNOWN_PRICE_ALERT}|{provider}|{model}",
            data={"provider": provider, "model": model, "rule": rule,
                  "ceiling_pricing_id": pricing_id})
    return hook


async def claim_update_slot(store: Store, interval_s: float) -> bool:
    """True for the first replica to ask in the current interval, False for every other."""
    slot = int(store.now().timestamp() // interval_s)
    claimed = await store.add_doc(UPDATE_SLOT_KIND, str(slot),
                                  json.dumps({"at": store.now().isoformat()}))
    if claimed:  # forget old slots; two back, so a slow replica still finds the last one
        with contextlib.suppress(StoreError):
            await store.delete_doc(UPDATE_SLOT_KIND, str(slot - 2))
    return claimed


async def scheduled_updates(app: web.Application, interval_min: float) -> None:
    """Run an update every ``interval_min`` minutes, each interval once across replicas."""
    interval_s = interval_min * 60
    while True:
        await asyncio.sleep(interval_s)
        try:
            claimed = await claim_update_slot(app[STORE], interval_s)
        except StoreError as exc:
            log.warning("scheduled price update skipped: %s", exc)
            continue
        if not claimed:
            continue  # another replica runs this interval's update
        try:
            await updater_for(app).run(trigger="schedule")
        except Exception:  # the schedule must survive a bad run
            log.exception("scheduled price update failed")


async def prices_ctx(app: web.Application) -> AsyncIterator[None]:
    """The price book's store and event bus, its refresh loop, the unknown-price alert hook
    and the update schedule; cleanup stops the loops."""
    book = book_of(app)
    settings = app[SETTINGS]
    try:
        configured_sources(settings)  # a bad source configuration fails at start-up
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"price sources: {exc}") from exc
    book.attach(app[STORE], app[EVENTS])
    book.on_unknown = unknown_price_hook(book, app.get(ALERTS))
    try:
        await book.refresh(force=True)
    except StoreError as exc:  # the store is down at start-up: the poll below catches up
        log.warning("stored prices not loaded at start-up, store unavailable: %s", exc)
    # picks up versions written by other replicas (and future-dated ones coming into force)
    # even when a change notice is missed
    tasks = [asyncio.create_task(every(PRICE_POLL_INTERVAL_S, book.refresh, "price refresh"),
                                 name="price-poll")]
    if settings.price_update_interval > 0:
        tasks.append(asyncio.create_task(
            scheduled_updates(app, settings.price_update_interval), name="price-schedule"))
    yield
    await stop(tasks)

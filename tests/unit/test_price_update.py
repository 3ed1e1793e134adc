"""Versioned prices (PriceBook), the unknown-price rules, verification and price updates."""

from __future__ import annotations

import asyncio
import itertools
import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from aiohttp import web

from budget_proxy.events import EventBus
from budget_proxy.pricing import (
    PRICE_VERSION_KIND,
    ModelPrice,
    PriceBook,
    PriceCatalog,
    PriceVersion,
    PriceWriteError,
)
from budget_proxy.pricing.sources import PriceSource, Quote
from budget_proxy.pricing.update import (
    PriceUpdater,
    SourcedQuote,
    agree,
    claim_update_slot,
    match_quotes,
    unknown_price_hook,
    verify,
)
from budget_proxy.store.sqlite import SqliteStore

D = Decimal
GPT_4O_CATALOG_ID = "openai/gpt-4o@2024-08-06"


class ClockStore(SqliteStore):
    """The embedded store with a clock the test moves."""

    def __init__(self, data_dir: Path) -> None:
        super().__init__(data_dir)
        self.clock = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)

    def now(self) -> datetime:
        return self.clock


@pytest.fixture
async def store(tmp_path: Path):
    s = ClockStore(tmp_path)
    await s.start()
    yield s
    await s.close()


@pytest.fixture
async def book(store: ClockStore) -> PriceBook:
    b = PriceBook.load_default()
    b.attach(store, EventBus())
    await b.refresh(force=True)
    return b


def events_of(book: PriceBook, topic: str = "prices"):
    assert book.events is not None
    return book.events.subscribe(frozenset({topic}))


def drain(sub) -> list[dict[str, Any]]:
    out = []
    while not sub.queue.empty():
        out.append(sub.queue.get_nowait())
    return out


# verification (pure) ------------------------------------------------------------------------
def q(source: str, trust: float, **prices: str) -> SourcedQuote:
    return SourcedQuote(source, trust, Quote("openai", "gpt-4o", **{
        k if k.startswith("usd_per") else f"{k}_usd_per_mtok": D(v)
        for k, v in prices.items()}))


CURRENT = {"input_usd_per_mtok": D("2.50"), "output_usd_per_mtok": D("10.00"),
           "cache_read_usd_per_mtok": D("1.25"), "cache_write_usd_per_mtok": None,
           "reasoning_usd_per_mtok": None}


@pytest.mark.parametrize(("quotes", "status", "applied"), [
    # two sources agree on a new input price: applied
    ([q("litellm", 0.8, input="2.00", output="10"), q("openrouter", 0.7, input="2.0",
                                                       output="10.00")],
     "apply", {"input_usd_per_mtok": "2.00", "output_usd_per_mtok": "10"}),
    # agreement within 1%: the most trusted source's figure is the one applied
    ([q("openrouter", 0.7, input="2.01"), q("litellm", 0.8, input="2.00")], "apply",
     {"input_usd_per_mtok": "2.00"}),
    # any field out of tolerance is a conflict
    ([q("litellm", 0.8, input="2.00", output="10"), q("openrouter", 0.7, input="2.00",
                                                       output="12")], "conflict", None),
    ([q("litellm", 0.8, input="2.00"), q("openrouter", 0.7, input="2.50")], "conflict", None),
    # agreeing with the price in force: nothing to do, whatever the trust
    ([q("litellm", 0.8, input="2.5", output="10", cache_read="1.25")], "unchanged", None),
    # one source of 0.8 is not enough to change a price
    ([q("litellm", 0.8, input="2.00")], "unverified", None),
    # a fully trusted operator file is
    ([q("ops-file", 1.0, input="2.00")], "apply", {"input_usd_per_mtok": "2.00"}),
    # fields only one source quotes are taken from it; trust still adds up
    ([q("litellm", 0.8, input="2.50", cache_write="3.00"), q("openrouter", 0.7, input="2.50")],
     "apply", {"input_usd_per_mtok": "2.50", "cache_write_usd_per_mtok": "3.00"}),
    # unit prices are verified like token prices
    ([q("litellm", 0.8, usd_per_second="0.00012"), q("openrouter", 0.7,
                                                     usd_per_second="0.000121")],
     "apply", {"usd_per_second": "0.00012"}),
    ([q("litellm", 0.8, usd_per_image="0.04"), q("file", 0.7, usd_per_image="0.08")],
     "conflict", None),
    # 0.7 + 0.3 is 0.9999999999999999 in floating point: still enough
    ([q("a", 0.7, input="2.00"), q("b", 0.3, input="2.00")], "apply",
     {"input_usd_per_mtok": "2.00"}),
])
def test_verify(quotes, status, applied):
    verdict = verify(quotes, CURRENT, tolerance=0.01, min_trust=1.0)
    assert verdict.status == status
    if applied is not None:
        assert verdict.prices == {k: D(v) for k, v in applied.items()}


def test_conflict_names_the_fields():
    verdict = verify([q("a", 0.8, input="2", output="10"), q("b", 0.8, input="2", output="11")],
                     CURRENT, tolerance=0.01, min_trust=1.0)
    assert verdict.conflicting == ("output_usd_per_mtok",)


@pytest.mark.parametrize(("a", "b", "tolerance", "expected"), [
    ("2.00", "2.00", 0, True), ("0", "0", 0.01, True), ("2.00", "2.02", 0.01, True),
    ("2.00", "2.03", 0.01, False), ("100", "99", 0.01, True), ("0", "0.01", 0.5, False),
])
def test_agree(a: str, b: str, tolerance: float, expected: bool):
    assert agree(D(a), D(b), tolerance) is expected


def test_match_quotes_uses_exact_names_and_prefers_canonical_ones():
    book = PriceBook.load_default()
    matched = match_quotes(book, [
        Quote("anthropic", "claude-3-5-haiku-latest", D("1.00"), D("5.00")),  # stale pointer
        Quote("anthropic", "claude-3-5-haiku-20241022", D("0.80"), D("4.00")),
        Quote("anthropic", "claude-3.5-haiku", D("0.80"), D("4.00")),
        Quote("openai", "gpt-4o-2099-01-01", D("9"), D("9")),  # would resolve fuzzily: ignored
        Quote("openai", "gpt-4o-mini", D("0"), D("0")),  # never a price
        Quote("ollama", "*", D("1"), D("1")),  # local wildcards are not for sale
    ])
    assert set(matched.quotes) == {("anthropic", "claude-3-5-haiku")}
    assert matched.quotes[("anthropic", "claude-3-5-haiku")].input_usd_per_mtok == D("0.80")
    assert matched.unmatched == 2
    assert matched.invalid == ["openai/gpt-4o-mini"]


# versions -------------------------------------------------------------------------------------
async def test_a_price_change_is_a_new_version(book: PriceBook, store: ClockStore):
    sub = events_of(book)
    before = book.lookup("openai", "gpt-4o-2024-08-06")
    assert before is not None and before.pricing_id == GPT_4O_CATALOG_ID
    version = await book.set_price("openai", "gpt-4o-2024-08-06",  # an alias: gpt-4o's chain
                                   {"input_usd_per_mtok": D("2.00")}, source="manual")
    assert version is not None
    assert version.pricing_id == "openai/gpt-4o@2026-11-23T12:00:00Z#v1"
    assert (version.model, version.seq, version.previous_pricing_id) == ("gpt-4o", 1,
                                                                         GPT_4O_CATALOG_ID)
    now = book.lookup("openai", "gpt-4o-2024-11-20")
    assert now is not None and now.pricing_id == version.pricing_id
    assert now.input_usd_per_mtok == D("2.00") and now.cache_read_usd_per_mtok == D("1.25")
    # the old record is still there, ended where the new one starts
    old, new = book.history("openai", "gpt-4o")
    assert old["pricing_id"] == GPT_4O_CATALOG_ID and old["input_usd_per_mtok"] == "2.50"
    assert old["end_date"] == new["effective_date"] == store.clock.isoformat()
    assert (old["current"], new["current"]) == (False, True)
    assert new["end_date"] is None and new["source"] == "manual"
    (event,) = drain(sub)
    assert event["type"] == "price_changed"
    assert event["payload"]["changes"] == {"input_usd_per_mtok": {"old": "2.50", "new": "2.00"}}
    # stored as one immutable document per version
    (doc,) = await store.list_docs(PRICE_VERSION_KIND)
    assert PriceVersion.model_validate_json(doc) == version


async def test_setting_the_same_price_changes_nothing(book: PriceBook, store: ClockStore):
    assert await book.set_price("openai", "gpt-4o", {"input_usd_per_mtok": D("2.5")},
                                source="manual") is None
    assert await store.list_docs(PRICE_VERSION_KIND) == []


async def test_versions_chain_and_every_replica_converges(book: PriceBook, store: ClockStore):
    replica = PriceBook.load_default()
    replica.attach(store)
    await replica.refresh()
    v1 = await book.set_price("anthropic", "claude-sonnet-4-5",
                              {"output_usd_per_mtok": D("16")}, source="s1")
    store.clock += timedelta(hours=1)
    v2 = await book.set_price("anthropic", "claude-sonnet-4-5-20250929",
                              {"output_usd_per_mtok": D("17")}, source="s2")
    assert v1 is not None and v2 is not None
    assert (v2.seq, v2.previous_pricing_id) == (2, v1.pricing_id)
    assert replica.lookup("anthropic", "claude-sonnet-4-5").pricing_id != v2.pricing_id
    assert await replica.refresh() is True
    price = replica.lookup("anthropic", "claude-sonnet-4-5")
    assert price.pricing_id == v2.pricing_id and price.output_usd_per_mtok == D("17")
    assert await replica.refresh() is False  # nothing moved since
    rows = replica.history("anthropic", "claude-sonnet-4-5-20250929")
    assert [r["output_usd_per_mtok"] for r in rows] == ["15.00", "16", "17"]
    assert [r["end_date"] for r in rows] == [v1.effective_date.isoformat(),
                                             v2.effective_date.isoformat(), None]


async def test_one_writer_wins_each_link(book: PriceBook, store: ClockStore):
    # another replica wrote version 1 of the chain and its bump has not been seen yet
    rival = PriceVersion(
        pricing_id="openai/gpt-4o@rival#v1", seq=1, provider="openai", model="gpt-4o",
        input_usd_per_mtok=D("3"), output_usd_per_mtok=D("10"), effective_date=store.clock,
        source="rival", created_at=store.clock)
    assert await store.add_doc(PRICE_VERSION_KIND, "openai/gpt-4o#1", rival.model_dump_json())
    with pytest.raises(PriceWriteError, match="changed concurrently"):
        await book.set_price("openai", "gpt-4o", {"input_usd_per_mtok": D("2")}, source="me")
    assert book.lookup("openai", "gpt-4o").pricing_id == rival.pricing_id  # and now it knows


async def test_future_versions_come_into_force_on_their_date(book: PriceBook,
                                                             store: ClockStore):
    start = store.clock + timedelta(days=7)
    version = await book.set_price("openai", "gpt-4o-mini", {"input_usd_per_mtok": D("0.10")},
                                   source="announced", effective_date=start)
    assert version is not None
    assert book.lookup("openai", "gpt-4o-mini").input_usd_per_mtok == D("0.15")
    (current,) = book.current_prices("openai", "gpt-4o-mini")
    assert current["end_date"] == start.isoformat()
    store.clock = start
    assert await book.refresh() is True  # no config change: the date alone
    assert book.lookup("openai", "gpt-4o-mini").pricing_id == version.pricing_id
    with pytest.raises(PriceWriteError, match="before"):
        await book.set_price("openai", "gpt-4o-mini", {"input_usd_per_mtok": D("0.11")},
                             source="late", effective_date=start - timedelta(days=1))


async def test_a_new_model_needs_both_prices(book: PriceBook):
    with pytest.raises(ValueError, match="needs input and output"):
        await book.set_price("openai", "gpt-in-house", {"input_usd_per_mtok": D("1")},
                             source="manual")
    assert book.lookup("openai", "gpt-in-house") is None
    version = await book.set_price("openai", "gpt-in-house", {
        "input_usd_per_mtok": D("1"), "output_usd_per_mtok": D("4")}, source="manual")
    price = book.lookup("openai", "gpt-in-house")
    assert price is not None and price.pricing_id == version.pricing_id
    assert len(book.history("openai", "gpt-in-house")) == 1
    assert book.history("openai", "never-heard-of") is None


async def test_a_bad_document_does_not_take_prices_down(book: PriceBook, store: ClockStore):
    await store.put_doc(PRICE_VERSION_KIND, "junk", '{"not": "a version"}', config=True)
    await book.set_price("openai", "gpt-4o", {"input_usd_per_mtok": D("2")}, source="ok")
    assert book.lookup("openai", "gpt-4o").input_usd_per_mtok == D("2")


# unknown prices -------------------------------------------------------------------------------
def test_unknown_price_rules():
    catalog = PriceCatalog.load_default()
    assert catalog.resolve_price("openai", "gpt-unreleased", "refuse") is None
    ceiling = catalog.resolve_price("openai", "gpt-unreleased", "ceiling")
    # the dearest OpenAI rates in the catalog (o1-pro: $150 in, $600 out)
    assert ceiling is not None
    assert (ceiling.input_usd_per_mtok, ceiling.output_usd_per_mtok) == (D("150.00"),
                                                                         D("600.00"))
    assert ceiling.pricing_id == "ceiling:openai@150.00/600.00"
    anthropic = catalog.resolve_price("anthropic", "claude-next", "alert")
    # Claude 3 Opus / Opus 4.x: $15 in, $75 out, cache writes $18.75 (dearer than input)
    assert (anthropic.input_usd_per_mtok, anthropic.output_usd_per_mtok,
            anthropic.cache_write_usd_per_mtok) == (D("15.00"), D("75.00"), D("18.75"))
    assert anthropic.cache_read_usd_per_mtok is None  # no cache discount assumed
    # a provider the catalog has no model of: the dearest of all
    other = catalog.resolve_price("together", "mystery-70b", "ceiling")
    assert other.pricing_id.startswith("ceiling:all@") and other.input_usd_per_mtok == D("150")
    # known models are never affected, local runtimes are never unknown
    assert catalog.resolve_price("openai", "gpt-4o", "ceiling").pricing_id == GPT_4O_CATALOG_ID
    assert catalog.resolve_price("ollama", "anything:7b", "refuse").input_usd_per_mtok == 0


def test_ceiling_is_never_below_any_known_price_of_the_provider():
    catalog = PriceCatalog.load_default()
    for provider in ("openai", "anthropic", "gemini", "mistral", "deepseek", "xai", "groq"):
        ceiling = catalog.ceiling(provider)
        for entry in catalog:
            if entry.provider == provider:
                assert ceiling.input_usd_per_mtok >= entry.input_usd_per_mtok
                assert ceiling.output_usd_per_mtok >= entry.reasoning_rate
                assert ceiling.cache_write_rate >= entry.cache_write_rate
                assert ceiling.cache_read_rate >= entry.cache_read_rate


async def test_alert_rule_raises_one_alert_per_model():
    catalog = PriceBook.load_default()
    raised: list[tuple[str, dict[str, Any]]] = []
    alerts = SimpleNamespace(raise_alert_nowait=lambda type, message, **kw: raised.append(
        (type, kw)))
    catalog.on_unknown = unknown_price_hook(catalog, alerts)  # type: ignore[arg-type]
    for _ in range(3):
        catalog.resolve_price("openai", "gpt-x", "alert")
    catalog.resolve_price("openai", "gpt-y", "alert")
    catalog.resolve_price("openai", "gpt-z", "ceiling")  # the ceiling rule does not alert
    assert [kw["dedupe_key"] for _, kw in raised] == ["unknown_model_price|openai|gpt-x",
                                                      "unknown_model_price|openai|gpt-y"]
    assert raised[0][1]["data"]["ceiling_pricing_id"] == "ceiling:openai@150.00/600.00"


# cost tools -----------------------------------------------------------------------------------
# updates --------------------------------------------------------------------------------------
def litellm_table(gpt4o_input: float, gpt4o_cached: float = 1.25e-06) -> dict[str, Any]:
    return {
        "gpt-4o": {"litellm_provider": "openai", "mode": "chat",
                   "input_cost_per_token": gpt4o_input, "output_cost_per_token": 1e-05,
                   "cache_read_input_token_cost": gpt4o_cached},
        "claude-3-5-haiku-20241022": {
            "litellm_provider": "anthropic", "mode": "chat", "input_cost_per_token": 8e-07,
            "output_cost_per_token": 4e-06, "cache_read_input_token_cost": 8e-08,
            "cache_creation_input_token_cost": 1e-06},
        "gpt-99": {"litellm_provider": "openai", "mode": "chat", "input_cost_per_token": 1e-06,
                   "output_cost_per_token": 1e-06},
    }


def openrouter_models(gpt4o_prompt: str, gpt4o_cached: str = "0.00000125") -> dict[str, Any]:
    return {"data": [
        {"id": "openai/gpt-4o", "pricing": {"prompt": gpt4o_prompt, "completion": "0.00001",
                                            "input_cache_read": gpt4o_cached}},
        {"id": "anthropic/claude-3.5-haiku", "pricing": {"prompt": "0.0000008",
                                                         "completion": "0.000004"}},
    ]}


@pytest.fixture
async def sources(aiohttp_server):
    """Price sources served over HTTP; tests set what each one answers."""
    content: dict[str, Any] = {}

    async def serve(request: web.Request) -> web.Response:
        body = content.get(request.match_info["name"])
        if body is None:
            return web.Response(status=503)
        return web.json_response(body)

    app = web.Application()
    app.router.add_get("/{name}.json", serve)
    server = await aiohttp_server(app)
    base = str(server.make_url("")).rstrip("/")
    return SimpleNamespace(content=content, litellm=PriceSource(
        "litellm", "litellm", f"{base}/litellm.json", "litellm", 0.8), openrouter=PriceSource(
        "openrouter", "openrouter", f"{base}/openrouter.json", "openrouter", 0.7))


class RecordingAlerts:
    def __init__(self) -> None:
        self.changes: list[tuple[str, str, dict, dict]] = []
        self.conflicts: list[tuple[str, str, list]] = []

    async def price_change(self, provider, model, old, new, *, source=None):
        self.changes.append((provider, model, old, new))
        return SimpleNamespace(alert_id="alr_change")

    async def price_conflict(self, provider, model, candidates):
        self.conflicts.append((provider, model, candidates))
        return SimpleNamespace(alert_id="alr_conflict")


def updater(book: PriceBook, *sources: PriceSource, alerts: Any = None) -> PriceUpdater:
    import aiohttp

    return PriceUpdater(book, sources, aiohttp.ClientSession(), alerts=alerts,
                        events=book.events)


async def run(up: PriceUpdater, progress=None) -> dict[str, Any]:
    try:
        return await up.run(progress)
    finally:
        if up.session is not None:
            await up.session.close()


async def test_agreeing_sources_create_a_new_version(book: PriceBook, sources):
    sources.content["litellm"] = litellm_table(2e-06, 1e-06)
    sources.content["openrouter"] = openrouter_models("0.000002", "0.000001")
    alerts = RecordingAlerts()
    sub = events_of(book)
    stages: list[str] = []
    report = await run(updater(book, sources.litellm, sources.openrouter, alerts=alerts),
                       progress=lambda e: stages.append(e["stage"]))
    assert report["status"] == "ok"
    (applied,) = report["applied"]
    assert (applied["provider"], applied["model"]) == ("openai", "gpt-4o")
    assert applied["changes"] == {
        "input_usd_per_mtok": {"old": "2.50", "new": "2.00"},
        "cache_read_usd_per_mtok": {"old": "1.25", "new": "1.00"}}
    assert applied["sources"] == ["litellm", "openrouter"]
    assert report["unchanged"] == 1 and report["models_checked"] == 2
    assert report["unmatched"] == 1  # gpt-99 is not in the catalog: never added by an update
    price = book.lookup("openai", "gpt-4o-2024-08-06")
    assert price.pricing_id == applied["pricing_id"]
    assert (price.input_usd_per_mtok, price.cache_read_usd_per_mtok) == (D("2.00"), D("1.00"))
    version = book.versions[("openai", "gpt-4o")][-1]
    assert version.verified and version.source == "update:litellm+openrouter"
    assert [(p, m) for p, m, *_ in alerts.changes] == [("openai", "gpt-4o")]
    assert [e["type"] for e in drain(sub)] == ["price_changed", "price_update_completed"]
    assert stages == ["start", "source", "source", "compare", "applied"]
    # the same prices again: nothing more to do
    again = await run(updater(book, sources.litellm, sources.openrouter))
    assert again["applied"] == [] and again["unchanged"] == 2


async def test_disagreeing_sources_raise_a_conflict_and_change_nothing(book: PriceBook,
                                                                       sources):
    sources.content["litellm"] = litellm_table(2e-06)
    sources.content["openrouter"] = openrouter_models("0.0000024")
    alerts = RecordingAlerts()
    report = await run(updater(book, sources.litellm, sources.openrouter, alerts=alerts))
    assert report["applied"] == []
    (conflict,) = report["conflicts"]
    assert (conflict["provider"], conflict["model"], conflict["fields"]) == (
        "openai", "gpt-4o", ["input_usd_per_mtok"])
    assert conflict["alert_id"] == "alr_conflict"
    ((_, _, candidates),) = alerts.conflicts
    assert {c["source"]: c["prices"]["input_usd_per_mtok"] for c in candidates} == {
        "litellm": "2.00", "openrouter": "2.40"}
    assert book.lookup("openai", "gpt-4o").pricing_id == GPT_4O_CATALOG_ID
    assert await book.store.list_docs(PRICE_VERSION_KIND) == []


async def test_a_single_source_is_not_enough(book: PriceBook, sources):
    sources.content["litellm"] = litellm_table(2e-06)
    report = await run(updater(book, sources.litellm, sources.openrouter))  # openrouter down
    assert report["status"] == "partial"
    assert [s["ok"] for s in report["sources"]] == [True, False]
    assert "HTTP 503" in report["sources"][1]["error"]
    (unverified,) = report["unverified"]
    assert unverified["model"] == "gpt-4o" and unverified["trust"] == 0.8
    assert report["applied"] == []
    assert book.lookup("openai", "gpt-4o").pricing_id == GPT_4O_CATALOG_ID


async def test_all_sources_down_or_none_configured(book: PriceBook, sources):
    failed = await run(updater(book, sources.litellm, sources.openrouter))
    assert failed["status"] == "failed" and failed["applied"] == []
    none = await run(updater(book))
    assert none["status"] == "no_sources"


async def test_zero_quotes_are_invalid(book: PriceBook, sources):
    sources.content["litellm"] = {"gpt-4o": {"litellm_provider": "openai",
                                             "input_cost_per_token": 0.0,
                                             "output_cost_per_token": 0.0}}
    sources.content["openrouter"] = {"data": [{"id": "openai/gpt-4o", "pricing": {
        "prompt": "0", "completion": "0"}}]}
    report = await run(updater(book, sources.litellm, sources.openrouter))
    assert report["invalid"] == ["litellm: openai/gpt-4o", "openrouter: openai/gpt-4o"]
    assert book.lookup("openai", "gpt-4o").input_usd_per_mtok == D("2.50")


async def test_one_update_at_a_time(book: PriceBook, sources):
    sources.content["litellm"] = litellm_table(2e-06)
    async with book.update_lock:
        busy = await run(updater(book, sources.litellm))
    assert busy["status"] == "busy"


async def test_a_scheduled_slot_runs_once_across_replicas(store: ClockStore):
    assert await claim_update_slot(store, 3600) is True
    assert await claim_update_slot(store, 3600) is False  # another replica, same interval
    store.clock += timedelta(hours=1)
    assert await claim_update_slot(store, 3600) is True


async def test_update_from_a_local_file_source(book: PriceBook, tmp_path: Path):
    path = tmp_path / "ops-prices.json"
    path.write_text(json.dumps({"entries": [
        {"provider": "mistral", "model": "mistral-small-latest", "input_usd_per_mtok": "0.12",
         "output_usd_per_mtok": "0.50"}]}))
    source = PriceSource("ops", "file", str(path), "auto", 1.0)
    report = await PriceUpdater(book, [source], None, events=book.events).run()
    (applied,) = report["applied"]
    assert applied["pricing_id"].startswith("mistral/")
    assert book.lookup("mistral", "mistral-small-latest").input_usd_per_mtok == D("0.12")


async def test_updates_never_touch_what_a_concurrent_writer_changed(book: PriceBook, sources):
    sources.content["litellm"] = litellm_table(2e-06)
    sources.content["openrouter"] = openrouter_models("0.000002")
    up = updater(book, sources.litellm, sources.openrouter)
    manual = asyncio.create_task(book.set_price("openai", "gpt-4o", {
        "output_usd_per_mtok": D("11")}, source="manual"))
    report = await run(up)
    await manual
    # both changes are links of one chain, each built on the one before: none was lost
    chain = book.versions[("openai", "gpt-4o")]
    assert len(chain) == 1 + len(report["applied"]) >= 2
    assert [v.seq for v in chain] == list(range(1, len(chain) + 1))
    assert chain[0].previous_pricing_id == GPT_4O_CATALOG_ID
    for before, after in itertools.pairwise(chain):
        assert after.previous_pricing_id == before.pricing_id
    assert book.lookup("openai", "gpt-4o").pricing_id == chain[-1].pricing_id
    assert chain[-1].input_usd_per_mtok == D("2.00")


def test_model_price_shape_is_unchanged():
    """Price versions add no field to the catalog's own entries (catalog.json stays valid)."""
    assert "version_id" not in ModelPrice.model_fields

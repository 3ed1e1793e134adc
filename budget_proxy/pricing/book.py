"""The price book: the packaged catalog with the stored price versions laid over it, and
the views of a price in the seed's ``ProviderPricing`` shape."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, date, datetime, time
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from pydantic import ConfigDict, Field, field_validator

from budget_proxy.pricing.catalog import (
    WILDCARD,
    ModelPrice,
    PriceCatalog,
    VersionedPrice,
    _normalise_provider,
    log,
)
from budget_proxy.pricing.fields import (
    PRICE_FIELDS,
    SEED_UNIT_NAMES,
    UNIT_PRICE_FIELDS,
    PriceFields,
    PriceType,
)

if TYPE_CHECKING:
    from budget_proxy.events import EventBus
    from budget_proxy.store.base import Store

PRICE_VERSION_KIND = "price_version"  # store documents: one immutable document per version
PRICE_HEAD_KIND = "price_head"  # one per model, rewritten with config=True on every change
VERSION_FIELDS = tuple(PriceFields.model_fields)
_MTOK = Decimal(1_000_000)


class PriceWriteError(Exception):
    """A price version was not written: another writer changed the model first, or the new
    effective date is before the latest version's."""


class PriceVersion(PriceFields):
    """One stored price of one model, in the seed's ``ProviderPricing`` shape with exact
    per-million-token prices.

    Immutable once written. Versions of a model form one chain, ``seq`` 1, 2, ... after the
    packaged catalog's entry (seq 0), with non-decreasing effective dates; a version is in
    force from its ``effective_date`` until the next version's (its ``end_date``, derived,
    never stored). Usage records keep the ``pricing_id`` they were priced with."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    pricing_id: str = Field(min_length=1)
    seq: int = Field(ge=1)
    provider: str = Field(min_length=1)
    model: str = Field(min_length=1)
    stored_price_type: PriceType | None = Field(
        None, validation_alias="price_type", exclude=True,
        description="Documents written before every price type existed say `token`; the "
                    "type is derived from the fields (`price_type`).")
    effective_date: datetime
    source: str = Field(min_length=1)
    verified: bool = True
    created_at: datetime
    previous_pricing_id: str | None = None
    note: str | None = None

    @field_validator("effective_date", "created_at")
    @classmethod
    def _aware(cls, value: datetime) -> datetime:
        return as_utc(value)

    def to_price(self, aliases: Sequence[str] = ()) -> VersionedPrice:
        return VersionedPrice(
            provider=self.provider, model=self.model, aliases=tuple(aliases),
            **{f: getattr(self, f) for f in VERSION_FIELDS},
            effective_date=self.effective_date.date(), source=self.source,
            version_id=self.pricing_id,
        )


def as_utc(value: datetime) -> datetime:
    """Naive datetimes are read as UTC."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _key(provider: str, model: str) -> tuple[str, str]:
    return provider.strip().lower(), model.strip().lower()


def _catalog_effective(entry: ModelPrice) -> datetime:
    return datetime.combine(entry.effective_date, time(), UTC)


PriceRecord = ModelPrice | PriceVersion  # a link of a model's price chain


class PriceBook(PriceCatalog):
    """The packaged catalog with the stored price versions laid over it.

    Every replica keeps one and refreshes it when the store's ``config_version`` moves (a
    version write bumps it) or when a future-dated version comes into force, so all replicas
    price with the same version. Lookups are the catalog's (indexed and cached); a refresh
    swaps a rebuilt index in at once. Writes go through `set_price`, which appends a version
    to the model's chain: a price is never overwritten.
    """

    def __init__(
        self, entries: Iterable[ModelPrice], metadata: Mapping[str, Any] | None = None
    ) -> None:
        super().__init__(entries, metadata)
        self._base: dict[tuple[str, str], ModelPrice] = {
            _key(e.provider, e.model): e for e in self._entries
        }
        self._base_aliases = {
            _key(e.provider, alias) for e in self._entries for alias in e.aliases
        }
        self.store: Store | None = None
        self.events: EventBus | None = None
        self.versions: dict[tuple[str, str], list[PriceVersion]] = {}
        self._by_version_id: dict[str, PriceVersion] = {}
        self._seen_config: int | None = None
        self._seen_ids: tuple[str, ...] = ()
        self._next_change_at: datetime | None = None
        self._refresh_lock = asyncio.Lock()
        self.write_lock = asyncio.Lock()  # one version write at a time in this process
        self.update_lock = asyncio.Lock()  # one price update run at a time in this process

    def attach(self, store: Store, events: EventBus | None = None) -> None:
        self.store = store
        self.events = events

    # reading the store ------------------------------------------------------------------
    async def refresh(self, force: bool = False) -> bool:
        """Reload the versions if the config version moved (or a scheduled version came into
        force); True if the prices in force were rebuilt."""
        if self.store is None:
            return False
        async with self._refresh_lock:
            config = await self.store.config_version()
            now = self.store.now()
            due = self._next_change_at is not None and now >= self._next_change_at
            if config == self._seen_config and not (force or due):
                return False
            docs = await self.store.list_docs(PRICE_VERSION_KIND)
            self._seen_config = config
            versions = _parse_versions(docs)
            ids = tuple(v.pricing_id for v in versions)
            if ids == self._seen_ids and not due:
                return False
            self._install(versions, now)
            self._seen_ids = ids
            return True

    def _install(self, versions: list[PriceVersion], now: datetime) -> None:
        chains: dict[tuple[str, str], list[PriceVersion]] = {}
        for version in versions:
            chains.setdefault(_key(version.provider, version.model), []).append(version)
        overlay = dict(self._base)
        next_change: datetime | None = None
        for key, chain in chains.items():
            chain.sort(key=lambda v: v.seq)
            if key not in self._base and key in self._base_aliases:
                log.error("price versions of %s/%s ignored: the catalog now has that name as "
                          "an alias of another model", *key)
                continue
            current = None
            for version in chain:
                if version.effective_date <= now:
                    current = version
                elif next_change is None or version.effective_date < next_change:
                    next_change = version.effective_date
            if current is not None:
                base = self._base.get(key)
                overlay[key] = current.to_price(base.aliases if base else ())
        try:
            self._load(overlay.values())
        except ValueError as exc:  # keep pricing with what is in force rather than nothing
            log.error("price versions not applied, keeping the prices in force: %s", exc)
            return
        self.versions = chains
        self._by_version_id = {v.pricing_id: v for v in versions}
        self._next_change_at = next_change

    # writing ------------------------------------------------------------------------------
    def target(self, provider: str, model: str) -> tuple[tuple[str, str], str]:
        """The chain a write to provider/model extends: (key, canonical model name). A catalog
        alias writes to its entry's chain; any other name is a model of its own."""
        provider = _normalise_provider(provider)
        key = _key(provider, model)
        if key in self.versions:
            return key, self.versions[key][-1].model
        if key in self._base:
            return key, self._base[key].model
        entry = self.find_exact(provider, model)
        if entry is not None and not entry.model.startswith(WILDCARD):
            return _key(entry.provider, entry.model), entry.model
        return key, model.strip()

    def head(self, key: tuple[str, str]) -> PriceRecord | None:
        """The latest link of a chain (possibly not yet in force)."""
        chain = self.versions.get(key)
        return chain[-1] if chain else self._base.get(key)

    async def set_price(
        self, provider: str, model: str, changes: Mapping[str, Any], *, source: str,
        verified: bool = True, effective_date: datetime | None = None, note: str | None = None,
    ) -> PriceVersion | None:
        """Append a version of provider/model: its latest version with ``changes`` (any of
        `VERSION_FIELDS`) applied, in force from ``effective_date`` (default now). Returns
        None when nothing would change. Exactly one writer wins each link of a chain, across
        replicas (``add_doc`` of ``provider/model#seq``); the loser gets `PriceWriteError`."""
        if self.store is None:
            raise PriceWriteError("the price book has no store")
        unknown = sorted(set(changes) - set(VERSION_FIELDS))
        if unknown:
            raise ValueError(f"not price fields: {', '.join(unknown)}")
        async with self.write_lock:
            await self.refresh()
            key, name = self.target(provider, model)
            head = self.head(key)
            values: dict[str, Any] = (
                {f: getattr(head, f) for f in VERSION_FIELDS} if head is not None else {}
            )
            values.update(changes)
            if head is None and (values.get("input_usd_per_mtok") is None
                                 or values.get("output_usd_per_mtok") is None):
                raise ValueError(f"{key[0]}/{name} is not in the catalog: a new model needs "
                                 "input and output prices")
            now = self.store.now()
            effective = as_utc(effective_date) if effective_date is not None else now
            if head is not None:
                head_effective = (head.effective_date if isinstance(head, PriceVersion)
                                  else _catalog_effective(head))
                if effective < head_effective:
                    raise PriceWriteError(
                        f"effective_date {effective.isoformat()} is before that of "
                        f"{head.pricing_id} ({head_effective.isoformat()})")
            seq = head.seq + 1 if isinstance(head, PriceVersion) else 1
            version = PriceVersion(
                pricing_id=f"{key[0]}/{name}@{effective:%Y-%m-%dT%H:%M:%SZ}#v{seq}", seq=seq,
                provider=key[0], model=name, **values, effective_date=effective,
                source=source, verified=verified, created_at=now,
                previous_pricing_id=head.pricing_id if head is not None else None, note=note,
            )
            if head is not None and not price_changes(head, version):
                return None
            chain_id = f"{key[0]}/{key[1]}"
            if not await self.store.add_doc(PRICE_VERSION_KIND, f"{chain_id}#{seq}",
                                            version.model_dump_json()):
                await self.refresh(force=True)
                raise PriceWriteError(f"{chain_id} was changed concurrently; try again")
            head_doc = json.dumps({"pricing_id": version.pricing_id, "seq": seq})
            await self.store.put_doc(PRICE_HEAD_KIND, chain_id, head_doc, config=True)
            await self.refresh(force=True)
        if self.events is not None:
            self.events.publish("prices", "price_changed", {
                "pricing_id": version.pricing_id, "provider": version.provider,
                "model": version.model, "previous_pricing_id": version.previous_pricing_id,
                "effective_date": version.effective_date.isoformat(), "source": source,
                "verified": verified,
                "changes": price_changes(head, version) if head is not None else {},
            })
        return version

    # views --------------------------------------------------------------------------------
    def current_prices(
        self, provider: str | None = None, model: str | None = None
    ) -> list[dict[str, Any]]:
        """The prices in force (seed ProviderPricing shape), optionally for one provider, or
        the one entry a model name resolves to."""
        if model:
            entry = self.lookup(provider or "", model)
            entries = [entry] if entry is not None else []
        else:
            wanted = _normalise_provider(provider) if provider else None
            entries = [e for e in self._entries if wanted is None or e.provider == wanted]
        return [self._current_view(e) for e in entries]

    def _current_view(self, entry: ModelPrice) -> dict[str, Any]:
        key = _key(entry.provider, entry.model)
        record: PriceRecord = self._by_version_id.get(entry.pricing_id) or entry
        end = next((v.effective_date for v in self.versions.get(key, ())
                    if isinstance(record, ModelPrice) or v.seq > record.seq), None)
        return self.view(record, aliases=entry.aliases, end_date=end)

    def history(self, provider: str, model: str) -> list[dict[str, Any]] | None:
        """Every price a model has had, oldest first, each with its effective and end dates;
        None for a model with no price at all."""
        entry = self.lookup(provider, model)
        key = (_key(entry.provider, entry.model) if entry is not None
               else self.target(provider, model)[0])
        chain: list[PriceRecord] = []
        if key in self._base:
            chain.append(self._base[key])
        chain.extend(self.versions.get(key, ()))
        if not chain:
            return None
        aliases = self._base[key].aliases if key in self._base else ()
        now = self.store.now() if self.store is not None else datetime.now(UTC)
        rows = []
        for i, record in enumerate(chain):
            end = _effective(chain[i + 1]) if i + 1 < len(chain) else None
            row = self.view(record, aliases=aliases, end_date=end)
            row["current"] = _effective(record) <= now and (end is None or end > now)
            rows.append(row)
        return rows

    def view(self, record: PriceRecord, *, aliases: Sequence[str] = (),
             end_date: datetime | None = None) -> dict[str, Any]:
        """One price in the seed ``ProviderPricing`` shape, plus the exact per-Mtok prices
        (decimal strings), limits, tier and mode."""
        if isinstance(record, PriceVersion):
            created, verified, extra = record.created_at, record.verified, {
                "previous_pricing_id": record.previous_pricing_id, "note": record.note}
        else:
            as_of = self.metadata.get("as_of")
            created = (datetime.combine(date.fromisoformat(as_of), time(), UTC) if as_of
                       else _catalog_effective(record))
            verified, extra = True, {"previous_pricing_id": None, "note": None}
        return {
            "pricing_id": record.pricing_id, "provider": record.provider, "model": record.model,
            "aliases": list(aliases), "price_type": record.price_type,
            **price_fields_view(record),
            "context_window_tokens": record.context_window_tokens,
            "max_output_tokens": record.max_output_tokens, "tier": record.tier,
            "mode": record.mode, "effective_date": _effective(record).isoformat(),
            "end_date": end_date.isoformat() if end_date else None, "source": record.source,
            "verified": verified, "created_at": created.isoformat(), **extra,
        }


def _effective(record: PriceRecord) -> datetime:
    return record.effective_date if isinstance(record, PriceVersion) else _catalog_effective(record)


def _parse_versions(docs: Iterable[str]) -> list[PriceVersion]:
    versions = []
    for doc in docs:
        try:
            versions.append(PriceVersion.model_validate_json(doc))
        except ValueError as exc:  # one bad document must not take every price down
            log.error("ignoring an invalid price version document: %s", exc)
    return versions


def price_fields_view(price: PriceFields) -> dict[str, Any]:
    """Exact strings (``None`` = no such price) under the catalog's names, and the seed's
    USD floats under its names (per token: the rate actually charged, a missing cache or
    reasoning rate falling back; per character, image, second and call)."""
    def text(value: Decimal | None) -> str | None:
        return None if value is None else str(value)

    input_rate = price.input_usd_per_mtok
    output_rate = price.output_usd_per_mtok
    read, write, reasoning = price.cache_read_rate, price.cache_write_rate, price.reasoning_rate
    return {
        **{f: text(getattr(price, f)) for f in PRICE_FIELDS},
        # the seed's other price types: exact strings, and the seed's USD floats (0.0: none)
        **{f: text(getattr(price, f)) for f in UNIT_PRICE_FIELDS},
        **{seed: float(getattr(price, f) or 0) for f, seed in SEED_UNIT_NAMES.items()},
        "output_cost_per_char": 0.0,
        "usd_per_image_by_size": {k: str(v) for k, v in price.usd_per_image_by_size.items()},
        "usd_per_tool_call": {k: str(v) for k, v in price.usd_per_tool_call.items()},
        "input_cost_per_token": float(input_rate / _MTOK),
        "output_cost_per_token": float(output_rate / _MTOK),
        "cache_read_cost_per_token": float(read / _MTOK),
        "cache_write_cost_per_token": float(write / _MTOK),
        "reasoning_cost_per_token": float(reasoning / _MTOK),
    }


def price_changes(old: Any, new: Any) -> dict[str, dict[str, Any]]:
    """The fields that differ between two prices: ``{field: {"old": ..., "new": ...}}``."""
    changes = {}
    for name in VERSION_FIELDS:
        before, after = getattr(old, name), getattr(new, name)
        if before != after:
            changes[name] = {"old": _change_text(before), "new": _change_text(after)}
    return changes


def _change_text(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: str(v) for k, v in value.items()}
    return None if value is None else str(value)

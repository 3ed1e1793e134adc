"""Usage records on Redis: read across shards, trimmed by retention, handed off to the ledger.

Records are spread over `store.keys.USAGE_SHARDS` hash tags by record id (never one hash in
one slot). Without a database they stay in Redis for `BUDGET_RECORD_RETENTION_DAYS` and are
read by merging the shards' time indexes. With a database, `settle.lua` appends each record to
its shard's stream; `Handoff` (every replica runs one) reads the streams in the consumer group
`ledger`, writes the batch to PostgreSQL and only then acknowledges and deletes the entries.
A replica that dies with entries read but not acknowledged leaves them pending: another
replica claims them after `CLAIM_IDLE_MS` (`XAUTOCLAIM`); the ledger's insert is idempotent
by record id, so a batch written twice counts once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from budget_proxy.models import UsageRecord
from budget_proxy.store import keys as K
from budget_proxy.store.base import StoreError, UsageQuery

if TYPE_CHECKING:
    from budget_proxy.ledger.postgres import PostgresLedger
    from budget_proxy.store.redis import RedisStore

log = logging.getLogger(__name__)
T = TypeVar("T")

PAGE = 500  # index entries read per shard and round trip while merging
TRIM_BATCH = 1000  # records dropped per script call (short scripts: Redis stays responsive)
TRIM_INTERVAL_S = 60.0
HANDOFF_BATCH = 500  # stream entries written to the ledger per transaction
HANDOFF_IDLE_S = 0.2  # pause when every stream was empty
HANDOFF_RETRY_S = 1.0  # pause after a failure of Redis or the ledger
CLAIM_IDLE_MS = 15_000  # entries pending this long belong to a dead replica: claimed
BACKLOG_WARN = 100_000  # entries waiting in the streams past which a warning is logged


async def list_records(store: RedisStore, query: UsageQuery) -> list[UsageRecord]:
    """`query` over every shard: each shard's index is read in time order, PAGE entries at a
    time, and the shards merged (by timestamp, then record id) until the page is full."""
    filters = [(f, v) for f, v in (
        ("component", query.component), ("provider", query.provider), ("model", query.model),
        ("context_id", query.context_id), ("session_id", query.session_id)) if v is not None]
    low: float | str = query.since.timestamp() if query.since else "-inf"
    high: str = f"({query.until.timestamp()!r}" if query.until else "+inf"
    rev = query.newest_first

    def index(tag: str) -> str:
        return K.usage_index(tag, *filters[0]) if filters else K.usage_index_all(tag)

    async def read(tag: str, start: int) -> list[tuple[float, str, str]]:
        async def op() -> list[tuple[float, str, str]]:
            ids: Any
            if rev:
                ids = await store.client.zrevrangebyscore(index(tag), high, low, start, PAGE,
                                                          withscores=True)
            else:
                ids = await store.client.zrangebyscore(index(tag), low, high, start, PAGE,
                                                       withscores=True)
            if not ids:
                return []
            bodies = await store.client.hmget(K.usage_records(tag), [str(i) for i, _ in ids])
            return [(float(score), str(i), str(b)) for (i, score), b in
                    zip(ids, bodies, strict=True) if b is not None]
        return await store._redis(op)

    tags = K.usage_tags()
    pages = await asyncio.gather(*(read(tag, 0) for tag in tags))
    buffers = {tag: list(page) for tag, page in zip(tags, pages, strict=True)}
    starts = dict.fromkeys(tags, PAGE)
    ended = {tag for tag, page in zip(tags, pages, strict=True) if len(page) < PAGE}
    rest = filters[1:]
    out: list[UsageRecord] = []
    skip = query.offset
    sign = -1 if rev else 1
    while len(out) < query.limit:
        live = [t for t, b in buffers.items() if b]
        if not live:
            break
        tag = min(live, key=lambda t: (sign * buffers[t][0][0], buffers[t][0][1]))
        _, _, body = buffers[tag].pop(0)
        if not buffers[tag] and tag not in ended:
            more = await read(tag, starts[tag])
            starts[tag] += PAGE
            buffers[tag] = more
            if len(more) < PAGE:
                ended.add(tag)
        if rest or skip:
            rec = UsageRecord.model_validate_json(body)
            if not all(getattr(rec, f) == v for f, v in rest):
                continue
            if skip:
                skip -= 1
                continue
            out.append(rec)
        else:
            out.append(UsageRecord.model_validate_json(body))
    return out


async def trim_records(store: RedisStore, retention_s: float) -> int:
    """Drop the records older than the retention, shard by shard; returns how many."""
    cutoff = store.now().timestamp() - retention_s
    dropped = 0
    for tag in K.usage_tags():
        while True:
            n = int(await store._script("trim_records", [
                K.usage_records(tag), K.usage_index_all(tag)],
                [cutoff, TRIM_BATCH, K.usage_index_prefix(tag), *K.USAGE_INDEX_FIELDS]))
            dropped += n
            if n < TRIM_BATCH:
                break
    if dropped:
        log.info("dropped %d usage records older than the retention", dropped)
    return dropped


class Handoff:
    """Moves records from the shards' streams into the ledger: read, insert, then ack."""

    def __init__(self, store: RedisStore, ledger: PostgresLedger, consumer: str) -> None:
        self.store = store
        self.ledger = ledger
        self.consumer = consumer
        self.moved = 0  # entries acknowledged by this replica
        self._ledger_up = False
        self._groups_ready = False
        self._last_claim = 0.0

    async def _redis(self, op: Callable[[], Awaitable[T]]) -> T:
        return await self.store._redis(op)

    async def ensure_groups(self) -> None:
        """Create each stream and its consumer group (idempotent; again after a Redis loss)."""
        for tag in K.usage_tags(legacy=False):
            stream = K.ledger_stream(tag)
            try:
                await self._redis(lambda s=stream: self.store.client.xgroup_create(  # type: ignore[misc]
                    s, K.LEDGER_GROUP, id="0", mkstream=True))
            except StoreError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
        self._groups_ready = True

    async def backlog(self) -> int:
        """Entries in the streams not yet deleted (waiting or being written)."""
        async def op() -> int:
            async with self.store.client.pipeline(transaction=False) as pipe:
                for tag in K.usage_tags(legacy=False):
                    pipe.xlen(K.ledger_stream(tag))
                return sum(int(n) for n in await pipe.execute())
        return await self._redis(op)

    async def move_once(self) -> int:
        """One pass over every shard: this replica's pending entries first (a failed write),
        then entries idle past CLAIM_IDLE_MS (a dead replica's), then new ones."""
        if not self._ledger_up:
            await self.ledger.start()
            self._ledger_up = True
        if not self._groups_ready:
            await self.ensure_groups()
        claim = time.monotonic() - self._last_claim > CLAIM_IDLE_MS / 2000
        if claim:
            self._last_claim = time.monotonic()
        moved = 0
        for tag in K.usage_tags(legacy=False):
            stream = K.ledger_stream(tag)
            try:
                moved += await self._move(stream, "0")
                if claim:
                    moved += await self._claim(stream)
                moved += await self._move(stream, ">")
            except StoreError as exc:
                if "NOGROUP" in str(exc):  # Redis lost the group (flush, failover): recreate
                    self._groups_ready = False
                raise
        self.moved += moved
        return moved

    async def _move(self, stream: str, start: str) -> int:
        reply: Any = await self._redis(lambda: self.store.client.xreadgroup(
            K.LEDGER_GROUP, self.consumer, {stream: start}, count=HANDOFF_BATCH))
        if isinstance(reply, dict):  # RESP3
            reply = list(reply.items())
        entries = reply[0][1] if reply else []
        return await self._write(stream, entries)

    async def _claim(self, stream: str) -> int:
        reply: Any = await self._redis(lambda: self.store.client.xautoclaim(
            stream, K.LEDGER_GROUP, self.consumer, CLAIM_IDLE_MS, "0-0",
            count=HANDOFF_BATCH))
        entries = reply[1] if reply else []
        if entries:
            log.warning("claimed %d hand-off entries of a replica that stopped", len(entries))
        return await self._write(stream, entries)

    async def _write(self, stream: str, entries: list[Any]) -> int:
        """Insert, then acknowledge and delete: an entry is never acknowledged before the
        ledger has its record. Deleted entries (None bodies) are just acknowledged."""
        entries = [(i, f) for i, f in entries if i is not None]
        if not entries:
            return 0
        bodies = [f["r"] for _, f in entries if f and "r" in f]
        if bodies:
            await self.ledger.write(bodies)
        ids = [i for i, _ in entries]

        async def ack() -> None:
            async with self.store.client.pipeline(transaction=True) as pipe:
                pipe.xack(stream, K.LEDGER_GROUP, *ids)
                pipe.xdel(stream, *ids)
                await pipe.execute()
        await self._redis(ack)
        return len(ids)

    async def run(self) -> None:
        """Move records until cancelled; failures of Redis or the ledger pause and retry."""
        warned = 0.0
        while True:
            try:
                moved = await self.move_once()
            except StoreError as exc:
                log.debug("ledger hand-off: %s", exc)
                self._ledger_up = self._ledger_up and "ledger" not in str(exc)
                await asyncio.sleep(HANDOFF_RETRY_S)
                continue
            if moved == 0:
                if time.monotonic() - warned > 60:
                    with contextlib.suppress(StoreError):
                        waiting = await self.backlog()
                        if waiting > BACKLOG_WARN:
                            log.warning("%d usage records wait for the ledger", waiting)
                            warned = time.monotonic()
                await asyncio.sleep(HANDOFF_IDLE_S)

    async def drain(self, deadline_s: float = 5.0) -> None:
        """Move what is waiting now (shutdown: the next replica would claim it anyway)."""
        end = time.monotonic() + deadline_s
        with contextlib.suppress(StoreError):
            while time.monotonic() < end and await self.move_once():
                pass

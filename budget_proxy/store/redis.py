"""The Redis store: one budget for many sidecars, on Redis or Redis Cluster.

- **Atomic.** Reserve, settle, release and reap are Lua scripts (`budget_proxy/store/lua`),
  registered once (`register_script`: EVALSHA, reloaded on NOSCRIPT, and run with EVAL if the
  cache is flushed again in between, so `SCRIPT FLUSH` or a restart fails no request).
  Reserve checks every counter of a request and holds its worst case on all or none.
- **Cluster-ready.** Key layout in `budget_proxy.store.keys`: a counter group's keys share a
  hash tag. On a standalone server one script covers all of a request's counters. On a
  cluster (`redis+cluster://host:port` or `redis://host:port?cluster=true`) a request whose
  counters span several groups is reserved group by group in a stable (sorted) order, and a
  refusal releases the groups already held: each group is checked atomically, so the limit
  is never passed; the worst that can happen is a transient refusal of another request
  that saw a hold about to be compensated.
- **One clock.** Deadlines come from Redis `TIME` inside the scripts; `now()` is this host's
  clock corrected by the offset to Redis `TIME`, measured at start and every 30 s, so window
  ids agree across replicas.
- **Faults.** Short socket timeouts, at most one immediate retry, and a small circuit breaker
  make an unreachable Redis a fast `StoreError`; every Redis error is wrapped in
  `StoreError`. Settlements are journaled locally before they are applied
  (`budget_proxy.store.journal`), so none is lost when Redis or the proxy dies; the journal
  is replayed exactly once (settle is idempotent by record id). A call forwarded without a
  hold (fail open) journals its intent first, which its settlement replaces.
- **Holds of dead processes are charged.** A request hold carries its intent (the
  `unsettled` usage record); its process renews it (`renew.lua`, one call per counter group
  every third of the TTL) while the request is live, so a hold past its deadline belongs to a
  dead process: the reaper (any replica) charges it at its held amounts with that record,
  through the journal and `settle.lua`, exactly once by record id (the real settlement,
  replayed from a journal, and the charge share the id: whichever comes first wins).
  Holds without an intent (allocations) are released at their deadline, as before. On a
  cluster a request spanning several groups is charged group by group; in the rare race of
  its real settlement with the charge of one group, the record may show the hold while the
  counters of the other groups show the actual amounts (never twice, never lost).
- **Replicas.** Config documents move a version key and a notice is published; `background`
  runs the pub/sub listener (config notices, events of other replicas), journal replay and
  clock sync for the application.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import importlib.resources
import logging
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import orjson
from redis.asyncio import Redis, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import (
    ClusterDownError,
    NoScriptError,
    RedisClusterException,
    RedisError,
    TryAgainError,
)
from redis.exceptions import (
    ConnectionError as RedisConnectionError,
)
from redis.exceptions import (
    TimeoutError as RedisTimeoutError,
)

from budget_proxy.enforcement import CounterLine, ReserveResult, Totals
from budget_proxy.ledger.base import HourlyRow
from budget_proxy.ledger.redis_records import TRIM_INTERVAL_S, Handoff, list_records, trim_records
from budget_proxy.logs import redact_url
from budget_proxy.models import UsageRecord
from budget_proxy.store import keys as K
from budget_proxy.store.base import (
    MAX_AMOUNT_NUSD,
    MAX_AMOUNT_TOKENS,
    LiveHold,
    Reservation,
    Store,
    StoreError,
    UsageQuery,
    bounded,
    storable_record,
    unsettled_record,
)
from budget_proxy.store.journal import Journal, Settlement, SettlementJournaled

if TYPE_CHECKING:
    from budget_proxy.events import EventBus
    from budget_proxy.ledger.postgres import PostgresLedger

log = logging.getLogger(__name__)
T = TypeVar("T")

SCRIPTS = ("reserve", "extend", "settle", "release", "reap", "renew", "doc_put",
           "doc_delete", "trim_records")
CONNECT_TIMEOUT_S = 0.5  # a dead or unroutable Redis answers StoreError this fast ...
OP_TIMEOUT_S = 1.0  # ... and a hung one this fast (URL query arguments override both)
CLOCK_SYNC_INTERVAL_S = 30.0
REPLAY_INTERVAL_S = 0.5
MAX_INFLIGHT = 64  # Redis operations at once per process; more wait (connections stay bounded)
REAP_BATCH = 1000
REAP_LEASE_MS = 30_000  # a dead hold handed to one reaper is not handed to another this long
EVENT_BATCH_S = 0.02  # events relayed to other replicas travel in batches this often
_CONNECTION_ERRORS = (RedisConnectionError, RedisTimeoutError, ClusterDownError, TryAgainError,
                      RedisClusterException, OSError, asyncio.TimeoutError)


def parse_redis_url(url: str) -> tuple[str, bool]:
    """(plain redis:// URL, cluster?) from `redis[s]+cluster://...` or `...?cluster=true`."""
    parts = urlsplit(url)
    scheme, cluster = parts.scheme, False
    if scheme.endswith("+cluster"):
        scheme, cluster = scheme.removesuffix("+cluster"), True
    query = parse_qsl(parts.query, keep_blank_values=True)
    for name, value in query:
        if name == "cluster":
            cluster = value.lower() in ("1", "true", "yes", "on")
    query = [(n, v) for n, v in query if n != "cluster"]
    return urlunsplit((scheme, parts.netloc, parts.path, urlencode(query), parts.fragment)), cluster


class _Circuit:
    """After two connection failures in a row, fail fast for a short pause (50 ms doubling to
    500 ms) instead of making every request wait for a timeout; then one probe at a time
    tests whether Redis is back, so recovery takes at most about half a second."""

    THRESHOLD = 2
    BASE_S = 0.05
    MAX_S = 0.5

    def __init__(self) -> None:
        self.failures = 0
        self.open_until = 0.0
        self.probing = False

    def enter(self) -> bool:
        """True when this call is the probe; raises StoreError while the circuit is open."""
        if self.failures < self.THRESHOLD:
            return False
        if time.monotonic() < self.open_until or self.probing:
            raise StoreError(f"redis unavailable ({self.failures} failures in a row)")
        self.probing = True
        return True

    def success(self) -> None:
        self.failures = 0
        self.probing = False

    def failure(self) -> None:
        self.failures += 1
        self.probing = False
        if self.failures >= self.THRESHOLD:
            pause = min(self.MAX_S, self.BASE_S * 2 ** (self.failures - self.THRESHOLD))
            self.open_until = time.monotonic() + pause


class RedisStore(Store):
    kind = "redis"
    backend_errors = (RedisError, RedisClusterException, OSError, asyncio.TimeoutError,
                      sqlite3.Error)

    def __init__(
        self,
        url: str,
        *,
        fail_mode: str = "closed",
        data_dir: Path | str = Path("./budget-data"),
        connect_timeout_s: float = CONNECT_TIMEOUT_S,
        op_timeout_s: float = OP_TIMEOUT_S,
        ledger: PostgresLedger | None = None,
        record_retention_days: float = K.RECORD_RETENTION_DAYS,
    ) -> None:
        """`ledger`: usage records are handed off to it (and read from it) instead of kept
        in Redis for `record_retention_days`."""
        super().__init__()
        self.ledger = ledger
        self.record_retention_s = record_retention_days * 86400
        self.url, self.cluster = parse_redis_url(url)
        self.fail_mode = fail_mode
        self.connect_timeout_s = connect_timeout_s
        self.op_timeout_s = op_timeout_s
        self.journal = Journal(Path(data_dir) / "redis-journal.db")
        self.replica_id = uuid.uuid4().hex[:16]
        # called (each in its own task) when another replica changed config documents
        self.on_config_change: list[Callable[[], Awaitable[object]]] = []
        self._client: Redis | RedisCluster | None = None
        self._scripts: dict[str, Any] = {}
        self._circuit = _Circuit()
        self._clock_offset_s = 0.0
        self._known_groups: set[str] = set()
        self._inflight: set[int] = set()  # journal entries being applied right now
        self._intents: dict[str, int] = {}  # reservation id -> journaled intent of a live call
        self._releasing: dict[str, Reservation] = {}  # releases that failed: retried
        self._tasks: set[asyncio.Task[Any]] = set()
        self._slots = asyncio.Semaphore(MAX_INFLIGHT)
        self._outbox: list[dict[str, Any]] = []  # events waiting for the next relay batch
        self.handoff = None if ledger is None else Handoff(self, ledger, self.replica_id)

    # lifecycle ----------------------------------------------------------------------------
    def _make_client(self) -> Redis | RedisCluster:
        options: dict[str, Any] = {
            "socket_connect_timeout": self.connect_timeout_s,
            "socket_timeout": self.op_timeout_s,
            # one immediate retry: a pooled connection broken by a Redis restart is replaced
            # at once. The counter scripts are idempotent (by reservation or record id), so a
            # retry after a lost reply cannot count twice.
            "retry": Retry(NoBackoff(), 1),
            "decode_responses": True,
            "client_name": f"budget-proxy-{self.replica_id}",
            # room for MAX_INFLIGHT operations plus the pub/sub connection
            "max_connections": MAX_INFLIGHT + 8,
        }
        if self.cluster:
            return RedisCluster.from_url(self.url, **options)
        return Redis.from_url(self.url, health_check_interval=30, **options)

    async def start(self) -> None:
        self.journal.open()
        self._client = self._make_client()
        lua = importlib.resources.files("budget_proxy.store") / "lua"
        for name in SCRIPTS:
            self._scripts[name] = self._client.register_script((lua / f"{name}.lua").read_text())
        try:
            await self.sync_clock()
        except StoreError as exc:
            log.warning("redis %s not reachable at start: %s", redact_url(self.url), exc)
        if self.ledger is not None:
            try:
                await self.ledger.start()
            except StoreError as exc:  # the hand-off retries; usage reads answer 503 meanwhile
                log.warning("usage ledger not reachable at start: %s", exc)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        self.journal.close()
        if self.ledger is not None:
            await self.ledger.close()
        if self._client is not None:
            client, self._client = self._client, None
            with contextlib.suppress(Exception):
                await client.aclose()

    @property
    def client(self) -> Redis | RedisCluster:
        if self._client is None:
            raise StoreError("redis store is not started")
        return self._client

    async def _redis(self, op: Callable[[], Awaitable[T]]) -> T:
        """Run one Redis operation: fail fast while the circuit is open, wrap every error."""
        probe = self._circuit.enter()
        try:
            async with self._slots:
                result = await op()
        except _CONNECTION_ERRORS as exc:
            self._circuit.failure()
            raise StoreError(f"redis unavailable: {exc}") from exc
        except RedisError as exc:  # Redis answered, with an error
            self._circuit.success()
            raise StoreError(f"redis error: {exc}") from exc
        except BaseException:  # cancelled: let the next call probe
            if probe:
                self._circuit.probing = False
            raise
        self._circuit.success()
        return result

    async def _script(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        script = self._scripts[name]

        async def run() -> Any:
            try:
                return await script(keys=keys, args=args)
            except NoScriptError:
                # flushed again between the reload and the retry: EVAL never misses
                return await self.client.eval(script.script, len(keys), *keys, *args)

        return await self._redis(run)

    # the one clock -------------------------------------------------------------------------
    def now(self) -> datetime:
        return datetime.fromtimestamp(time.time() + self._clock_offset_s, UTC)

    async def sync_clock(self) -> float:
        """Measure this host's offset to Redis `TIME`; returns it in seconds."""
        before = time.time()
        seconds, micros = await self._redis(lambda: self.client.time())
        after = time.time()
        self._clock_offset_s = seconds + micros / 1e6 - (before + after) / 2
        return self._clock_offset_s

    # counters -----------------------------------------------------------------------------
    def _groups(self, counter_keys: Sequence[str]) -> list[tuple[str, list[int]]]:
        """Counter groups of a request, each with the indexes of its counters; sorted, so
        every replica takes multi-group holds in the same order."""
        if not counter_keys:
            return []
        if not self.cluster:
            return [(K.counter_group(min(counter_keys)), list(range(len(counter_keys))))]
        by_group: dict[str, list[int]] = {}
        for index, key in enumerate(counter_keys):
            by_group.setdefault(K.counter_group(key), []).append(index)
        return sorted(by_group.items())

    async def _remember_groups(self, groups: Sequence[str]) -> None:
        new = [g for g in groups if g not in self._known_groups]
        if new:
            await self._redis(lambda: self.client.sadd(K.GROUPS, *new))
            self._known_groups.update(new)

    async def reserve(
        self, reservation: Reservation, lines: Sequence[CounterLine], ttl_s: float
    ) -> ReserveResult:
        if not lines:
            return ReserveResult(True, ())
        groups = self._groups([line.key for line in lines])
        await self._remember_groups([g for g, _ in groups])
        rid = reservation.reservation_id
        common = [rid, reservation.cost_nusd, reservation.tokens, max(1, round(ttl_s * 1000)),
                  K.COUNTER_IDLE_S * 1000, reservation.intent or "", reservation.requests]
        totals: list[Totals | None] = [None] * len(lines)
        held: list[tuple[str, list[int]]] = []
        for group, indexes in groups:
            script_keys = [K.reservation(group, rid), K.deadlines(group)]
            per_line: list[int] = []
            for i in indexes:
                line = lines[i]
                script_keys.append(K.counter(line.key))
                per_line += (
                    -1 if line.limit_nusd is None else line.limit_nusd,
                    -1 if line.limit_tokens is None else line.limit_tokens,
                    -1 if line.limit_requests is None else line.limit_requests,
                    1 if line.enforce else 0,
                    _expire_at_ms(line),
                )
            args = [*common, orjson.dumps(per_line)]
            try:
                reply = await self._script("reserve", script_keys, args)
            except StoreError:
                await self._compensate(reservation, held)
                raise
            except asyncio.CancelledError:  # the caller is gone: never forwarded, released
                self._spawn(self._release_later(reservation))
                raise
            ok, refused = int(reply[0]), int(reply[1])
            for i, counted in zip(indexes, _totals(reply), strict=True):
                totals[i] = counted
            if not ok:
                await self._compensate(reservation, held)
                for _, held_indexes in held:  # report totals without the hold just dropped
                    for i in held_indexes:
                        t = totals[i]
                        assert t is not None
                        totals[i] = Totals(t.spent_nusd, t.reserved_nusd - reservation.cost_nusd,
                                           t.spent_tokens, t.reserved_tokens - reservation.tokens,
                                           t.requests - reservation.requests)
                missing = [i for i, t in enumerate(totals) if t is None]
                if missing:
                    with contextlib.suppress(StoreError):
                        for i, t in zip(missing, await self.totals([lines[i].key for i in missing]),
                                        strict=True):
                            totals[i] = t
                return ReserveResult(False, tuple(t or Totals() for t in totals), indexes[refused])
            held.append((group, indexes))
        self._track(reservation, ttl_s)
        return ReserveResult(True, tuple(t or Totals() for t in totals))

    async def extend(self, reservation: Reservation, lines: Sequence[CounterLine],
                     cost_nusd: int, tokens: int) -> ReserveResult:
        """`extend.lua` on each counter group of the hold in turn (one on a standalone
        server); a group refusing after others grew undoes theirs."""
        cost_nusd = bounded(cost_nusd, MAX_AMOUNT_NUSD)
        tokens = bounded(tokens, MAX_AMOUNT_TOKENS)
        rid = reservation.reservation_id
        totals: list[Totals] = [Totals()] * len(lines)
        grown: list[tuple[str, list[int]]] = []
        for group, indexes in self._groups([line.key for line in lines]):
            reply = await self._extend_group(rid, group, [lines[i] for i in indexes],
                                             cost_nusd, tokens, enforce=True)
            for i, counted in zip(indexes, _totals(reply), strict=True):
                totals[i] = counted
            if not int(reply[0]):
                for undo_group, undo_indexes in grown:
                    with contextlib.suppress(StoreError):  # the hold's settlement frees it
                        await self._extend_group(rid, undo_group,
                                                 [lines[i] for i in undo_indexes],
                                                 -cost_nusd, -tokens, enforce=False)
                refused = int(reply[1])
                return ReserveResult(False, tuple(totals),
                                     indexes[refused] if refused >= 0 else None)
            grown.append((group, indexes))
        return ReserveResult(True, tuple(totals))

    async def _extend_group(self, rid: str, group: str, lines: Sequence[CounterLine],
                            cost_nusd: int, tokens: int, *, enforce: bool) -> Any:
        args: list[Any] = [cost_nusd, tokens]
        for line in lines:
            args += [-1 if line.limit_nusd is None else line.limit_nusd,
                     -1 if line.limit_tokens is None else line.limit_tokens,
                     -1 if line.limit_requests is None else line.limit_requests,
                     1 if enforce and line.enforce else 0]
        return await self._script("extend", [K.reservation(group, rid),
                                             *(K.counter(line.key) for line in lines)], args)

    async def _compensate(self, reservation: Reservation, held: list[tuple[str, list[int]]]
                          ) -> None:
        """Release the groups already held by a multi-group reservation that failed later."""
        for group, indexes in held:
            try:
                await self._release_group(reservation, group, indexes)
            except StoreError as exc:  # the reaper releases it at its deadline
                log.warning("compensation of %s on %s failed: %s",
                            reservation.reservation_id, group, exc)

    async def _release_group(self, reservation: Reservation, group: str, indexes: list[int]
                             ) -> int:
        rid = reservation.reservation_id
        script_keys = [K.reservation(group, rid), K.deadlines(group),
                       *(K.counter(reservation.keys[i]) for i in indexes)]
        return int(await self._script("release", script_keys, [rid]))

    async def release(self, reservation: Reservation) -> None:
        rid = reservation.reservation_id
        intent = self._intents.pop(rid, None)
        if intent is not None:
            self.journal.discard(intent)
        try:
            for group, indexes in self._groups(reservation.keys):
                await self._release_group(reservation, group, indexes)
        except StoreError:
            # kept live (renewed) and retried with the renewals: a failed release must not
            # turn into a charge of the hold by the reaper
            self._releasing[rid] = reservation
            raise
        self._releasing.pop(rid, None)
        self._untrack(rid)

    async def _release_later(self, reservation: Reservation) -> None:
        with contextlib.suppress(StoreError):  # a failed release is retried by the renewals
            await self.release(reservation)

    async def keep_intent(self, reservation: Reservation) -> None:
        record, body = storable_record(unsettled_record(reservation))
        self._intents[reservation.reservation_id] = self.journal.append(Settlement(
            settle_id=record.record_id, reservation_id=reservation.reservation_id,
            keys=reservation.keys, cost_nusd=reservation.cost_nusd, tokens=reservation.tokens,
            record_json=body, record_ts_s=record.timestamp.timestamp()))

    async def settle(
        self, reservation: Reservation, cost_nusd: int, tokens: int, record: UsageRecord | None
    ) -> bool:
        body = None
        if record is not None:
            record, body = storable_record(record)
        settlement = Settlement(
            settle_id=record.record_id if record else reservation.reservation_id,
            reservation_id=reservation.reservation_id, keys=tuple(reservation.keys),
            cost_nusd=bounded(cost_nusd, MAX_AMOUNT_NUSD),
            tokens=bounded(tokens, MAX_AMOUNT_TOKENS),
            record_json=body, record_ts_s=record.timestamp.timestamp() if record else 0.0,
        )
        return await self._settle(settlement, self._intents.pop(reservation.reservation_id, None))

    async def _settle(self, settlement: Settlement, replaces: int | None = None,
                      whole: bool = True) -> bool:
        """Journal (replacing the call's intent, if any), then apply; the hold stays live
        (renewed) until the settlement is applied, here or by the replay."""
        # write-ahead: from here on a SIGKILL of this process cannot lose the settlement
        try:
            seq: int | None = self.journal.append(settlement, replaces)
        except StoreError as exc:
            log.error("could not journal settlement %s: %s", settlement.settle_id, exc)
            seq = None
        if seq is not None:
            self._inflight.add(seq)
        try:
            applied = await self._apply(settlement, whole)
        except StoreError as exc:
            if seq is None:
                raise
            raise SettlementJournaled(
                f"settlement {settlement.settle_id} kept in the local journal: {exc}") from exc
        finally:
            if seq is not None:
                self._inflight.discard(seq)
        self._untrack(settlement.reservation_id)
        if seq is not None:
            self.journal.done(seq)
        return applied

    async def _apply(self, s: Settlement, whole: bool = True) -> bool:
        """Apply a settlement; idempotent, so a replay of an applied one changes nothing.
        `whole=False`: the charge of one group's dead hold (cluster), which must be applied
        to that group even when another group's charge already wrote the record."""
        groups = self._groups(s.keys)
        record_keys = [] if s.record_json is None else self._record_keys(s.settle_id,
                                                                          s.record_json)
        # the dedupe key's value: replays of this settlement match it, another settlement of
        # the same id (the real one vs the charge of its dead hold) does not
        token = hashlib.blake2b((s.record_json or f"{s.cost_nusd}:{s.tokens}").encode(),
                                digest_size=8).hexdigest()
        where = "h" if self.ledger is None else "s"
        dedupe_ms = K.SETTLED_TTL_S * 1000

        def args(counters: int, has_res: int, dedupe: bool, record: bool) -> list[Any]:
            """settle.lua's arguments: the amounts, the record, then the rest as one JSON."""
            return [s.settle_id, s.reservation_id, s.cost_nusd, s.tokens,
                    (s.record_json or "") if record else "", token, orjson.dumps([
                        counters, has_res, dedupe_ms if dedupe else 0,
                        K.COUNTER_IDLE_S * 1000, s.record_ts_s if record else 0, where,
                        K.LEDGER_SETTLED_TTL_S * 1000])]

        if not self.cluster:  # one atomic script: counters, hold, record
            if groups:
                group = groups[0][0]
                script_keys = [K.settled(group, s.settle_id), *map(K.counter, s.keys),
                               K.reservation(group, s.reservation_id), K.deadlines(group)]
                has_res = 1
            else:
                script_keys, has_res = [K.usage_settled(s.settle_id)], 0
            return int(await self._script(
                "settle", script_keys + record_keys,
                args(len(s.keys), has_res, dedupe=not record_keys, record=True))) == 1

        # cluster: one script per group, then the record (written last, so an existing
        # record means the whole settlement was applied before), and only by the settlement
        # that won a group (1) or a replay of it (2): of the real settlement and the charge of
        # its dead hold, only the one whose amounts were counted writes its record
        if whole and record_keys and await self._record_written(s.settle_id):
            return False

        async def settle_group(group: str, indexes: list[int]) -> int:
            script_keys = [K.settled(group, s.settle_id),
                           *(K.counter(s.keys[i]) for i in indexes),
                           K.reservation(group, s.reservation_id), K.deadlines(group)]
            return int(await self._script(
                "settle", script_keys, args(len(indexes), 1, dedupe=True, record=False)))

        # the groups at once (each script is atomic and idempotent, their order does not
        # matter): one round trip of latency, not one per group
        replies = await asyncio.gather(*(settle_group(g, ix) for g, ix in groups),
                                       return_exceptions=True)
        for reply in replies:
            if isinstance(reply, BaseException):
                raise reply
        applied = any(reply == 1 for reply in replies)
        mine = any(reply in (1, 2) for reply in replies)
        if (record_keys and mine) or not groups:
            applied |= int(await self._script(
                "settle", [K.usage_settled(s.settle_id), *record_keys],
                args(0, 0, dedupe=not record_keys, record=True))) == 1
        return applied

    def _record_keys(self, record_id: str, record_json: str) -> list[str]:
        """Keys settle.lua writes a record to, all in the record's shard: its hand-off
        stream and settle marker with a ledger, else the records hash and its indexes."""
        tag = K.usage_tag(record_id)
        if self.ledger is not None:
            return [K.usage_settled(record_id), K.ledger_stream(tag)]
        doc = orjson.loads(record_json)
        return [K.usage_records(tag), K.usage_index_all(tag)] + [
            K.usage_index(tag, field, str(doc[field])) for field in K.USAGE_INDEX_FIELDS
            if doc.get(field) is not None]

    async def _record_written(self, record_id: str) -> bool:
        if self.ledger is not None:
            return bool(await self._redis(lambda: self.client.exists(
                K.usage_settled(record_id))))
        return bool(await self._redis(lambda: self.client.hexists(
            K.usage_records(K.usage_tag(record_id)), record_id)))

    async def replay_journal(self, batch: int = 500) -> int:
        """Apply journaled settlements (oldest first) until the journal is empty or Redis
        fails; returns how many were applied. Safe to run concurrently with settles."""
        replayed = 0
        while True:
            live_intents = set(self._intents.values())  # calls of this process still running
            entries = self.journal.pending(batch, exclude=self._inflight | live_intents)
            for seq, settlement in entries:
                self._inflight.add(seq)
                try:
                    await self._apply(settlement)
                finally:
                    self._inflight.discard(seq)
                self._untrack(settlement.reservation_id)
                self.journal.done(seq)
                replayed += 1
            if len(entries) < batch:
                self.journal.flush()
                return replayed

    async def totals(self, keys: Sequence[str]) -> list[Totals]:
        if not keys:
            return []

        async def read() -> list[Any]:
            async with self.client.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.hmget(K.counter(key), "sn", "rn", "st", "rt", "q")
                return await pipe.execute()

        rows = await self._redis(read)
        return [Totals(*(int(v or 0) for v in row)) for row in rows]

    async def reap_expired(self) -> int:
        members = {str(g) for g in await self._redis(lambda: self.client.smembers(K.GROUPS))}
        if self._known_groups - members:  # re-register (Redis lost the set): self-healing
            missing = list(self._known_groups - members)
            await self._redis(lambda: self.client.sadd(K.GROUPS, *missing))
            members |= self._known_groups
        done = 0
        for group in sorted(members):
            reply = await self._script(
                "reap", [K.deadlines(group)], [K.reservation_prefix(group), REAP_BATCH,
                                               REAP_LEASE_MS])
            done += int(reply[0])
            for i in range(1, len(reply), 5):
                rid, cost, tokens, held, intent = reply[i:i + 5]
                keys = tuple(K.counter_key_of(k) for k in orjson.loads(held))
                dead = Reservation(rid, keys, int(cost), int(tokens), intent)
                done += await self._charge(dead)
        return done

    async def _charge(self, dead: Reservation) -> bool:
        """Charge a dead process's hold on one group at its held amounts, with its
        `unsettled` record: journaled, then applied exactly once by record id."""
        record, body = storable_record(unsettled_record(dead))
        log.warning("charging hold %s of a dead process as unsettled usage",
                    dead.reservation_id)
        return await self._settle(Settlement(
            settle_id=record.record_id, reservation_id=dead.reservation_id, keys=dead.keys,
            cost_nusd=dead.cost_nusd, tokens=dead.tokens, record_json=body,
            record_ts_s=record.timestamp.timestamp()), whole=False)

    async def _renew(self, holds: list[LiveHold]) -> int:
        """One renew.lua call per (counter group, TTL); failed releases are retried first."""
        for reservation in list(self._releasing.values()):
            with contextlib.suppress(StoreError):
                await self.release(reservation)
        by_group: dict[tuple[str, int], list[str]] = {}
        for hold in holds:
            ttl_ms = max(1, round(hold.ttl_s * 1000))
            for group, _ in self._groups(hold.reservation.keys):
                by_group.setdefault((group, ttl_ms), []).append(hold.reservation.reservation_id)
        renewed = await asyncio.gather(*(
            self._script("renew", [K.deadlines(group)],
                         [K.reservation_prefix(group), ttl_ms, *rids])
            for (group, ttl_ms), rids in by_group.items()))
        return sum(int(n) for n in renewed)

    # documents --------------------------------------------------------------------------
    async def _put(self, kind: str, doc_id: str, body: str, only_if_absent: bool,
                   config: bool) -> bool:
        written, version = await self._script(
            "doc_put", [K.docs(kind), K.doc_order(kind), K.DOC_SEQ, K.CONFIG_VERSION],
            [doc_id, body, int(only_if_absent), int(config)])
        if written and config:
            await self._announce(int(version))
        return bool(written)

    async def put_doc(self, kind: str, doc_id: str, body: str, *, config: bool = False) -> None:
        await self._put(kind, doc_id, body, False, config)

    async def add_doc(self, kind: str, doc_id: str, body: str) -> bool:
        return await self._put(kind, doc_id, body, True, False)

    async def get_doc(self, kind: str, doc_id: str) -> str | None:
        body = await self._redis(lambda: self.client.hget(K.docs(kind), doc_id))
        return None if body is None else str(body)

    async def list_docs(self, kind: str) -> list[str]:
        async def read() -> list[Any]:
            async with self.client.pipeline(transaction=False) as pipe:
                pipe.zrange(K.doc_order(kind), 0, -1)
                pipe.hgetall(K.docs(kind))
                return await pipe.execute()

        order, bodies = await self._redis(read)
        return [bodies[doc_id] for doc_id in order if doc_id in bodies]

    async def delete_doc(self, kind: str, doc_id: str, *, config: bool = False) -> bool:
        deleted, version = await self._script(
            "doc_delete", [K.docs(kind), K.doc_order(kind), K.CONFIG_VERSION],
            [doc_id, int(config)])
        if deleted and config:
            await self._announce(int(version))
        return bool(deleted)

    async def config_version(self) -> int:
        return int(await self._redis(lambda: self.client.get(K.CONFIG_VERSION)) or 0)

    async def _announce(self, version: int) -> None:
        """Tell the other replicas; best effort (their 1 s poll converges without it)."""
        message = orjson.dumps({"origin": self.replica_id, "version": version})
        try:
            await self._redis(lambda: self.client.publish(K.CONFIG_CHANNEL, message))
        except StoreError as exc:
            log.warning("config change notice not published: %s", exc)

    # usage --------------------------------------------------------------------------------
    async def list_usage(self, query: UsageQuery) -> list[UsageRecord]:
        """From the ledger when there is one, else merged over the Redis record shards."""
        if self.ledger is not None:
            return await self.ledger.list_usage(query)
        return await list_records(self, query)

    async def hourly(self, since: datetime, until: datetime, provider: str | None = None,
                     component: str | None = None, model: str | None = None,
                     period: str = "hourly", tz: str = "UTC") -> list[HourlyRow] | None:
        """The ledger's rollups; None without a ledger (readers sum the records)."""
        if self.ledger is None:
            return None
        return await self.ledger.hourly(since, until, provider, component, model, period, tz)

    async def trim_records(self) -> int:
        """Drop Redis usage records past the retention (without a ledger)."""
        return await trim_records(self, self.record_retention_s)

    # operations ---------------------------------------------------------------------------
    async def check_server_config(self) -> list[str]:
        """Warnings about Redis settings that put budgets at risk (empty when all is well)."""
        async def read() -> list[dict[str, str | None]]:
            names = ("appendonly", "maxmemory-policy")  # one per call: Redis < 7 takes one
            if isinstance(self.client, RedisCluster):
                client = self.client
                return [{name: (await client.config_get(name, target_nodes=node)).get(name)
                         for name in names} for node in client.get_primaries()]
            return [{name: (await self.client.config_get(name)).get(name) for name in names}]

        try:
            configs = await self._redis(read)
        except StoreError as exc:
            return [f"could not read the Redis configuration (CONFIG GET): {exc}"]
        problems = []
        for config in configs:
            if config.get("appendonly") != "yes":
                problems.append(
                    "Redis appendonly is off: a Redis restart loses spend, reservations and "
                    "usage records; set `appendonly yes`")
            policy = config.get("maxmemory-policy")
            if policy is not None and policy != "noeviction":
                problems.append(
                    f"Redis maxmemory-policy is {policy}: under memory pressure Redis may "
                    "evict a counter, which silently resets a budget; set `noeviction`")
        return sorted(set(problems))

    @contextlib.asynccontextmanager
    async def background(self, bus: EventBus | None = None) -> AsyncIterator[None]:
        """What a serving replica runs beside the store: the start-up configuration check,
        the pub/sub listener (config notices, other replicas' events), journal replay and
        clock sync. For the application's cleanup_ctx."""
        for problem in await self.check_server_config():
            log.warning("%s", problem)
        if bus is not None:
            bus.relay = self._relay_event
        tasks = [
            asyncio.create_task(self._listen(bus), name="redis-pubsub"),
            asyncio.create_task(self._every(REPLAY_INTERVAL_S, self._replay_once, now=True),
                                name="journal-replay"),
            asyncio.create_task(self._every(CLOCK_SYNC_INTERVAL_S, self.sync_clock),
                                name="clock-sync"),
            asyncio.create_task(self.handoff.run(), name="ledger-handoff") if self.handoff
            else asyncio.create_task(self._every(TRIM_INTERVAL_S, self.trim_records, now=True),
                                     name="record-retention"),
        ]
        try:
            yield
        finally:
            if bus is not None:
                bus.relay = None
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            with contextlib.suppress(StoreError):  # last chance before shutdown
                await self._replay_once()
            if self.handoff is not None:
                await self.handoff.drain()

    async def _replay_once(self) -> None:
        replayed = await self.replay_journal()
        if replayed:
            log.warning("replayed %d journaled settlements into redis", replayed)

    @staticmethod
    async def _every(interval_s: float, job: Callable[[], Awaitable[object]],
                     now: bool = False) -> None:
        if not now:
            await asyncio.sleep(interval_s)
        while True:
            try:
                await job()
            except StoreError as exc:
                log.debug("%s: %s", getattr(job, "__name__", job), exc)
            await asyncio.sleep(interval_s)

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _relay_event(self, event: dict[str, Any]) -> None:
        """EventBus relay: publish local events to the other replicas (best effort), batched:
        the events of one short interval travel in one PUBLISH."""
        self._outbox.append(event)
        if len(self._outbox) == 1:
            asyncio.get_running_loop().call_later(EVENT_BATCH_S, self._flush_events)

    def _flush_events(self) -> None:
        events, self._outbox = self._outbox, []
        message = orjson.dumps({"origin": self.replica_id, "events": events})

        async def publish() -> None:
            with contextlib.suppress(StoreError):
                await self._redis(lambda: self.client.publish(K.EVENTS_CHANNEL, message))

        self._spawn(publish())

    def _config_changed(self) -> None:
        for callback in self.on_config_change:
            self._spawn(_quietly(callback))

    async def _listen(self, bus: EventBus | None) -> None:
        """Subscribe to config notices and events; resubscribe after any failure, and catch
        up on config (a notice may have been missed while disconnected)."""
        while True:
            pubsub = self.client.pubsub()
            try:
                await pubsub.subscribe(K.CONFIG_CHANNEL, K.EVENTS_CHANNEL)
                self._config_changed()
                while True:
                    message = await pubsub.get_message(ignore_subscribe_messages=True,
                                                       timeout=1.0)
                    if message is not None:
                        self._on_message(message, bus)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.debug("pub/sub listener: %s", exc)
                await asyncio.sleep(0.5)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()

    def _on_message(self, message: dict[str, Any], bus: EventBus | None) -> None:
        try:
            data = orjson.loads(message["data"])
        except (orjson.JSONDecodeError, TypeError, KeyError):
            return
        if not isinstance(data, dict) or data.get("origin") == self.replica_id:
            return
        if message.get("channel") == K.CONFIG_CHANNEL:
            self._config_changed()
        elif message.get("channel") == K.EVENTS_CHANNEL and bus is not None:
            for event in data.get("events") or ():
                if isinstance(event, dict) and "topic" in event:
                    bus.deliver(event)


async def _quietly(callback: Callable[[], Awaitable[object]]) -> None:
    try:
        await callback()
    except StoreError as exc:
        log.warning("config refresh after a change notice failed: %s", exc)


def _totals(reply: Sequence[Any]) -> list[Totals]:
    """The counters' totals in a reserve or extend reply: five integers each, after two
    (Lua numbers come back as Redis integer replies: Python ints already)."""
    return [Totals(*reply[j:j + 5]) for j in range(2, len(reply), 5)]


def _expire_at_ms(line: CounterLine) -> int:
    """When a counter may expire: some time after its window ends; 0 when it never ends."""
    if line.resets_at is None:
        return 0
    return int((line.resets_at.timestamp() + K.COUNTER_AFTER_WINDOW_S) * 1000)

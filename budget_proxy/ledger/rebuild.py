"""Counters from the ledger: `budget ledger rebuild` and the drift check.

The ledger is the record of what was spent; Redis counters are a fast cache of it that a
host crash (AOF `everysec` loses up to a second) or a failover can set back. `spend_by_counter`
(pure) recomputes each policy's current window from the ledger's spend rows exactly as the
proxy would have charged them (`enforcement.counter_lines` on each record's scope);
`rebuild` writes those figures into the counters; `DriftCheck` compares and alerts.

Request counts (`q`) are set to the ledger's settled calls (holds in flight at that moment
are not counted). Limits: allocation counters are not rebuilt (the ledger keeps spend, not
holds); a settlement landing between the ledger read and the counter write is overwritten,
so rebuild with traffic stopped or accept the calls of that moment.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from budget_proxy.enforcement import RequestScope, counter_lines
from budget_proxy.ledger.base import SpendRow
from budget_proxy.models import BudgetPolicy
from budget_proxy.periods import window_for
from budget_proxy.store import keys as K

if TYPE_CHECKING:
    from budget_proxy.ledger.postgres import PostgresLedger
    from budget_proxy.store.redis import RedisStore

log = logging.getLogger(__name__)

TierOf = Callable[[str, str], str | None]
DRIFT_TOLERANCE_NUSD = 1_000  # a millionth of a dollar: float rounding of USD records


@dataclass(frozen=True, slots=True)
class Rebuilt:
    """What the ledger says a counter's spend is."""

    key: str
    policy_id: str
    spent_nusd: int
    spent_tokens: int
    requests: int
    expire_at_ms: int  # when the counter may expire (0: never), as the proxy sets it


def since_for(policies: Sequence[BudgetPolicy], now: datetime, tz: ZoneInfo) -> datetime:
    """The earliest moment a current window of these policies starts (windows without a
    start, sessions and tasks, look back as long as their counters live)."""
    starts = [now]
    for policy in policies:
        window = window_for(policy.period, now, tz, "s", "t")
        if window is None:
            continue
        starts.append(window.starts_at or now - timedelta(seconds=K.COUNTER_IDLE_S))
    return min(starts)


def spend_by_counter(policies: Sequence[BudgetPolicy], rows: Iterable[SpendRow],
                     now: datetime, tz: ZoneInfo, tier_of: TierOf) -> dict[str, Rebuilt]:
    """Spend of every current window from the ledger's rows: each row is charged to the
    counters the proxy would charge for its scope, if it falls in that counter's window.
    Every enabled policy with a calendar window gets its counter, zero when nothing matched."""
    by_id = {p.policy_id: p for p in policies}
    out: dict[str, Rebuilt] = {}
    for policy in policies:
        if not policy.enabled:
            continue
        window = window_for(policy.period, now, tz)
        if window is not None:
            line_key = f"{policy.policy_id}:{window.window_id}"
            out[line_key] = Rebuilt(line_key, policy.policy_id, 0, 0, 0,
                                    _expire_ms(window.resets_at))
    for row in rows:
        scope = RequestScope(provider=row.provider, model=row.model, component=row.component,
                             tier=tier_of(row.provider, row.model), task_type=row.task_type,
                             session=row.session_id, task=row.task_id)
        for line in counter_lines(policies, scope, now, tz):
            window = window_for(by_id[line.policy_id].period, now, tz, row.session_id,
                                row.task_id)
            if window is None or (window.starts_at is not None and row.minute < window.starts_at):
                continue
            was = out.get(line.key) or Rebuilt(line.key, line.policy_id, 0, 0, 0,
                                               _expire_ms(line.resets_at))
            out[line.key] = Rebuilt(line.key, line.policy_id, was.spent_nusd + row.cost_nusd,
                                    was.spent_tokens + row.tokens, was.requests + row.requests,
                                    was.expire_at_ms)
    return out


def _expire_ms(resets_at: datetime | None) -> int:
    if resets_at is None:
        return 0
    return int((resets_at.timestamp() + K.COUNTER_AFTER_WINDOW_S) * 1000)


async def ledger_spend(store: RedisStore, ledger: PostgresLedger, tz: ZoneInfo,
                       tier_of: TierOf) -> dict[str, Rebuilt]:
    policies = await store.list_policies()
    now = store.now()
    rows = await ledger.spend_since(since_for(policies, now, tz))
    return spend_by_counter(policies, rows, now, tz, tier_of)


async def rebuild(store: RedisStore, ledger: PostgresLedger, tz: ZoneInfo, tier_of: TierOf,
                  *, dry_run: bool = False) -> list[tuple[Rebuilt, int]]:
    """Set each current window's spent figures to the ledger's sums (reservations kept).
    Records still waiting in the hand-off are moved first. Returns (ledger figures, the
    counter's spent nano-USD before) per counter."""
    if store.handoff is not None:
        while await store.handoff.move_once():
            pass
    figures = await ledger_spend(store, ledger, tz, tier_of)
    rebuilt = sorted(figures.values(), key=lambda r: r.key)
    before = await store.totals([r.key for r in rebuilt])
    if not dry_run:
        async def write() -> None:
            async with store.client.pipeline(transaction=False) as pipe:
                for r in rebuilt:
                    name = K.counter(r.key)
                    pipe.hset(name, mapping={"sn": r.spent_nusd, "st": r.spent_tokens,
                                             "q": r.requests})
                    if r.expire_at_ms:
                        pipe.pexpireat(name, r.expire_at_ms)
                    else:
                        pipe.pexpire(name, K.COUNTER_IDLE_S * 1000)
                await pipe.execute()
        await store._redis(write)
        log.warning("rebuilt %d counters from the ledger", len(rebuilt))
    return [(r, t.spent_nusd) for r, t in zip(rebuilt, before, strict=True)]


@dataclass
class DriftCheck:
    """Compares counters with the ledger; a drift seen in two checks in a row (a settlement
    in flight shows up once) is reported. Skipped while the hand-off has a backlog."""

    store: RedisStore
    ledger: PostgresLedger
    tz: ZoneInfo
    tier_of: TierOf
    tolerance_nusd: int = DRIFT_TOLERANCE_NUSD

    def __post_init__(self) -> None:
        self._suspects: set[str] = set()
        self.last_run_s = 0.0

    async def run_once(self) -> list[tuple[Rebuilt, int]]:
        """(ledger figures, counter's spent nano-USD) of the counters that drifted."""
        self.last_run_s = time.monotonic()
        if self.store.handoff is not None and await self.store.handoff.backlog():
            return []
        figures = sorted((await ledger_spend(self.store, self.ledger, self.tz,
                                             self.tier_of)).values(), key=lambda r: r.key)
        totals = await self.store.totals([r.key for r in figures])
        drifted = {r.key: (r, t.spent_nusd) for r, t in zip(figures, totals, strict=True)
                   if abs(t.spent_nusd - r.spent_nusd) > self.tolerance_nusd}
        confirmed = [drifted[k] for k in sorted(drifted) if k in self._suspects]
        self._suspects = set(drifted)
        return confirmed

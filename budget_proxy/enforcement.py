"""Policy matching and the enforcement decision: pure code, no I/O.

A request is resolved to a list of counter lines (one per matching policy window). The store
reserves the worst case on all of them atomically, refusing if any enforced line would pass its
limit; the functions here build those lines and read the outcome (remaining, warnings, soft
limit model moves).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo

from budget_proxy.models import BudgetPolicy, PolicyType, nusd_to_usd
from budget_proxy.periods import Window, window_for


@dataclass(frozen=True, slots=True)
class RequestScope:
    """Who pays and for what: the attributes policies are scoped by."""

    provider: str
    model: str
    component: str
    tier: str | None = None
    task_type: str | None = None
    session: str | None = None
    task: str | None = None
    key_id: str | None = None


@dataclass(frozen=True, slots=True)
class CounterLine:
    """One counter a reservation touches; `enforce` lines refuse past their limit. `shadow`
    lines are checked by the same rule after the reservation (`shadow_refusals`) but never
    refuse."""

    key: str
    limit_nusd: int | None
    limit_tokens: int | None
    enforce: bool
    policy_id: str
    resets_at: datetime | None = None
    limit_requests: int | None = None
    shadow: bool = False


@dataclass(frozen=True, slots=True)
class Totals:
    spent_nusd: int = 0
    reserved_nusd: int = 0
    spent_tokens: int = 0
    reserved_tokens: int = 0
    requests: int = 0  # calls counted in the window: held or settled, not released

    @property
    def used_nusd(self) -> int:
        return self.spent_nusd + self.reserved_nusd

    @property
    def used_tokens(self) -> int:
        return self.spent_tokens + self.reserved_tokens


@dataclass(frozen=True, slots=True)
class ReserveResult:
    """`refused_index` points at the first enforced line that would pass its limit."""

    ok: bool
    totals: tuple[Totals, ...]
    refused_index: int | None = None


def policy_matches(policy: BudgetPolicy, scope: RequestScope) -> bool:
    """Every scope field the policy sets must equal the request's; unset fields match all."""
    if not policy.enabled:
        return False
    for field, value in (
        ("provider", scope.provider),
        ("model", scope.model),
        ("component", scope.component),
        ("tier", scope.tier),
        ("task_type", scope.task_type),
        ("session", scope.session),
        ("task", scope.task),
        ("key_id", scope.key_id),
    ):
        wanted = getattr(policy, field)
        if wanted is not None and wanted != value:
            return False
    return True


def counter_key(policy_id: str, window_id: str) -> str:
    return f"{policy_id}:{window_id}"


def counter_lines(
    policies: Iterable[BudgetPolicy], scope: RequestScope, now: datetime, tz: ZoneInfo
) -> list[CounterLine]:
    """The counters this request touches, one per matching policy with a current window."""
    lines = []
    for policy, window in _matching_windows(policies, scope, now, tz):
        limit_nusd, limit_tokens, limit_requests = policy.limits_at(now)
        lines.append(
            CounterLine(
                key=counter_key(policy.policy_id, window.window_id),
                limit_nusd=limit_nusd,
                limit_tokens=limit_tokens,
                enforce=policy.type is PolicyType.HARD_LIMIT,
                policy_id=policy.policy_id,
                resets_at=window.resets_at,
                limit_requests=limit_requests,
                shadow=policy.type is PolicyType.SHADOW,
            )
        )
    return lines


def _matching_windows(policies: Iterable[BudgetPolicy], scope: RequestScope, now: datetime,
                      tz: ZoneInfo) -> Iterator[tuple[BudgetPolicy, Window]]:
    """Each policy matching `scope` with its window containing `now` (if it has one)."""
    for policy in policies:
        if policy_matches(policy, scope):
            window = window_for(policy.period, now, tz, scope.session, scope.task)
            if window is not None:
                yield policy, window


@dataclass(frozen=True, slots=True)
class _Cached:
    lines: tuple[CounterLine, ...]
    valid_from: datetime | None  # the latest window start or top-up boundary at or before
    valid_until: datetime | None  # the first window reset or top-up expiry after


class LineCache:
    """`counter_lines`, memoised. A scope's lines depend only on the policy set and on which
    windows and top-ups are current, so they are reused (per scope and time zone) until the
    first of those moments passes: a window resets or a top-up expires. Calendar windows are
    otherwise recomputed on every call, which was a tenth of the proxy's CPU under load. A
    new policy set (another tuple) empties the cache. Bounded, since sessions and tasks are
    text the caller chooses: the oldest entry goes first."""

    def __init__(self, max_entries: int = 4096) -> None:
        self.max_entries = max_entries
        self._policies: Sequence[BudgetPolicy] | None = None
        self._entries: dict[tuple[RequestScope, ZoneInfo], _Cached] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def lines(self, policies: Sequence[BudgetPolicy], scope: RequestScope, now: datetime,
              tz: ZoneInfo) -> list[CounterLine]:
        if policies is not self._policies:
            self._policies, self._entries = policies, {}
        key = (scope, tz)
        entry = self._entries.get(key)
        if entry is None or not _current(entry, now):
            entry = _cache_entry(policies, scope, now, tz)
            if key not in self._entries and len(self._entries) >= self.max_entries:
                del self._entries[next(iter(self._entries))]
            self._entries[key] = entry
        return list(entry.lines)


def _current(entry: _Cached, now: datetime) -> bool:
    return ((entry.valid_from is None or entry.valid_from <= now)
            and (entry.valid_until is None or now < entry.valid_until))


def _cache_entry(policies: Sequence[BudgetPolicy], scope: RequestScope, now: datetime,
                 tz: ZoneInfo) -> _Cached:
    """The lines at `now` and the span of time over which they stay the same."""
    lines = counter_lines(policies, scope, now, tz)
    starts: list[datetime] = []
    ends: list[datetime] = []
    for policy, window in _matching_windows(policies, scope, now, tz):
        if window.starts_at is not None:
            starts.append(window.starts_at)
        if window.resets_at is not None:
            ends.append(window.resets_at)
        for topup in policy.topups:  # a top-up counts while `expires_at > now`
            (ends if topup.expires_at > now else starts).append(topup.expires_at)
    return _Cached(tuple(lines), max(starts, default=None), min(ends, default=None))


def passes_limit(line: CounterLine, totals: Totals, cost_nusd: int, tokens: int,
                 requests: int = 1) -> bool:
    """The limit rule: used + this request must stay <= every limit the line has."""
    if line.limit_nusd is not None and totals.used_nusd + cost_nusd > line.limit_nusd:
        return False
    if line.limit_tokens is not None and totals.used_tokens + tokens > line.limit_tokens:
        return False
    return line.limit_requests is None or totals.requests + requests <= line.limit_requests


def would_refuse(line: CounterLine, totals: Totals, cost_nusd: int, tokens: int,
                 requests: int = 1) -> bool:
    """The reservation rule every store implements: on an enforced line, used + this request
    must stay <= limit (cost, tokens, and calls: a request counts 1)."""
    return line.enforce and not passes_limit(line, totals, cost_nusd, tokens, requests)


def shadow_refusals(lines: Sequence[CounterLine], before: Sequence[Totals], cost_nusd: int,
                    tokens: int, requests: int = 1) -> list[str]:
    """Policy ids of the shadow lines that would have refused this request, judged on the
    totals before its hold (the rule a hard limit applies)."""
    return [line.policy_id for line, tot in zip(lines, before, strict=True)
            if line.shadow and not passes_limit(line, tot, cost_nusd, tokens, requests)]


def utilisation(line: CounterLine, totals: Totals) -> float:
    """The larger of cost and token utilisation; 0 for a line with no limit."""
    ratios = [0.0]
    if line.limit_nusd is not None:
        ratios.append(totals.used_nusd / line.limit_nusd if line.limit_nusd else 1.0)
    if line.limit_tokens is not None:
        ratios.append(totals.used_tokens / line.limit_tokens if line.limit_tokens else 1.0)
    if line.limit_requests is not None:
        ratios.append(totals.requests / line.limit_requests if line.limit_requests else 1.0)
    return max(ratios)


@dataclass(frozen=True, slots=True)
class Remaining:
    cost_usd: float | None
    tokens: int | None
    policy_id: str | None


@dataclass(frozen=True, slots=True)
class RateRemaining:
    """What the tightest rate-limited lines leave, for `x-ratelimit-remaining-*` headers."""

    requests: int | None
    tokens: int | None


def rate_remaining(lines: Sequence[CounterLine], totals: Sequence[Totals]) -> RateRemaining:
    """Fewest calls and tokens left on the enforced lines that limit calls (rate limits),
    so an SDK can back off the way it does for a provider's own rate limit."""
    rated = [(ln, t) for ln, t in zip(lines, totals, strict=True)
             if ln.enforce and ln.limit_requests is not None]
    if not rated:
        return RateRemaining(None, None)
    requests = min(max(0, ln.limit_requests - t.requests) for ln, t in rated
                   if ln.limit_requests is not None)
    token_left = [max(0, ln.limit_tokens - t.used_tokens) for ln, t in rated
                  if ln.limit_tokens is not None]
    return RateRemaining(requests, min(token_left) if token_left else None)


def tightest_remaining(lines: Sequence[CounterLine], totals: Sequence[Totals]) -> Remaining:
    """Remaining cost and tokens of the tightest limited line (enforced lines first)."""
    limited = [(ln, t) for ln, t in zip(lines, totals, strict=True)
               if ln.limit_nusd is not None or ln.limit_tokens is not None]
    limited = [pair for pair in limited if not pair[0].shadow]
    enforced = [pair for pair in limited if pair[0].enforce]
    candidates = enforced or limited
    if not candidates:
        return Remaining(None, None, None)
    line, tot = max(candidates, key=lambda pair: utilisation(*pair))
    cost = None if line.limit_nusd is None else nusd_to_usd(max(0, line.limit_nusd - tot.used_nusd))
    tokens = None if line.limit_tokens is None else max(0, line.limit_tokens - tot.used_tokens)
    return Remaining(cost, tokens, line.policy_id)


def warnings(
    policies_by_id: dict[str, BudgetPolicy],
    lines: Sequence[CounterLine],
    totals: Sequence[Totals],
) -> list[str]:
    """Human-readable warnings for lines at or past their policy's warning threshold."""
    out = []
    for line, tot in zip(lines, totals, strict=True):
        policy = policies_by_id.get(line.policy_id)
        if policy is None or policy.type in (PolicyType.IGNORE, PolicyType.SHADOW):
            continue
        used = utilisation(line, tot)
        if used >= policy.warning_threshold:
            label = policy.name or policy.policy_id
            out.append(f"policy {label} at {used:.0%} of its {policy.period.value} limit")
    return out


def soft_limit_move(
    policies_by_id: dict[str, BudgetPolicy],
    lines: Sequence[CounterLine],
    totals: Sequence[Totals],
) -> tuple[str | None, list[str]]:
    """The model a soft limit moves this request to (if any), and warnings for soft limits
    past their action threshold that have no cheaper model configured."""
    notes: list[str] = []
    for line, tot in zip(lines, totals, strict=True):
        policy = policies_by_id.get(line.policy_id)
        if policy is None or policy.type is not PolicyType.SOFT_LIMIT:
            continue
        if utilisation(line, tot) < policy.action_threshold:
            continue
        if policy.fallback_model:
            return policy.fallback_model, notes
        notes.append(f"soft limit {policy.name or policy.policy_id} reached")
    return None, notes


# what-if and backfill: a policy judged over recorded calls ----------------------------------
@dataclass(frozen=True, slots=True)
class PastCall:
    """One recorded call as policies see it: who, when, and what it cost."""

    scope: RequestScope
    at: datetime
    cost_nusd: int
    tokens: int


@dataclass(slots=True)
class ReplayWindow:
    """What a policy would have done in one of its windows."""

    window_id: str
    calls: int = 0
    allowed: int = 0
    refused: int = 0
    warned: int = 0
    allowed_nusd: int = 0
    refused_nusd: int = 0


def replay(policy: BudgetPolicy, calls: Iterable[PastCall], tz: ZoneInfo) -> list[ReplayWindow]:
    """Replay recorded calls (oldest first) through `policy`, window by window: a hard limit
    or shadow policy refuses a call whose actual cost, tokens or call count would pass its
    limit (a refused call is not added: it never happened), and every call that leaves the
    window at or past `warning_threshold` is warned. Warn and soft limits never refuse;
    `ignore` only counts. Judged on actual amounts: the live proxy reserves the worst case,
    so it refuses a little earlier than this."""
    windows: dict[str, tuple[ReplayWindow, CounterLine, list[int]]] = {}
    refuses = policy.type in (PolicyType.HARD_LIMIT, PolicyType.SHADOW)
    for call in calls:
        if not policy_matches(policy, call.scope):
            continue
        window = window_for(policy.period, call.at, tz, call.scope.session, call.scope.task)
        if window is None:
            continue
        entry = windows.get(window.window_id)
        if entry is None:
            cost, tokens, requests = policy.limits_at(call.at)
            line = CounterLine(window.window_id, cost, tokens, refuses, policy.policy_id,
                               window.resets_at, requests)
            entry = windows[window.window_id] = (ReplayWindow(window.window_id), line, [0, 0, 0])
        out, line, used = entry
        out.calls += 1
        totals = Totals(spent_nusd=used[0], spent_tokens=used[1], requests=used[2])
        if refuses and not passes_limit(line, totals, call.cost_nusd, call.tokens):
            out.refused += 1
            out.refused_nusd += call.cost_nusd
            continue
        used[0] += call.cost_nusd
        used[1] += call.tokens
        used[2] += 1
        out.allowed += 1
        out.allowed_nusd += call.cost_nusd
        after = Totals(spent_nusd=used[0], spent_tokens=used[1], requests=used[2])
        if policy.type is not PolicyType.IGNORE and utilisation(line, after) >= \
                policy.warning_threshold:
            out.warned += 1
    return [entry[0] for entry in windows.values()]


def matching_spend(policy: BudgetPolicy, calls: Iterable[PastCall], now: datetime,
                   tz: ZoneInfo) -> tuple[str | None, Totals]:
    """The counter key of `policy`'s current window and the recorded spend that falls in it
    (what a new or edited policy starts from). Windows without a calendar start (sessions,
    tasks) start empty: (None, zero)."""
    window = window_for(policy.period, now, tz)
    if window is None or window.starts_at is None:
        return None, Totals()
    cost = tokens = n = 0
    for call in calls:
        if window.starts_at <= call.at < (window.resets_at or now) and policy_matches(
                policy, call.scope):
            cost += call.cost_nusd
            tokens += call.tokens
            n += 1
    return counter_key(policy.policy_id, window.window_id), Totals(
        spent_nusd=cost, spent_tokens=tokens, requests=n)

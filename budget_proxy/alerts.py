"""Alerts: threshold crossings and price events, stored, published, and sent to webhooks.

Guarantees:

- A policy's warning threshold, action threshold and limit each raise at most one alert per
  policy window, whatever the number of requests or replicas: the alert id is derived from
  (policy, window, threshold) and the store's `add_doc` creates it only if absent, atomically
  across replicas. Only the caller that created it publishes it and sends webhooks.
- Thresholds are judged on settled spend, not on reservations (a burst of in-flight worst-case
  reservations would otherwise raise an alert that the actual spend never earns). A hard limit
  refuses before spend reaches 100%, so a refusal raises `limit_reached` once the settled
  spend is past the policy's action threshold.
- Nothing here runs on the request path: the proxy hooks only mark the counters to check, one
  background task reads all marked counters in one store round trip, and webhook deliveries
  run in their own queue with their own HTTP session, timeout, retries and exponential
  back-off. A slow or failing webhook cannot delay a proxied request.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
import time
from collections import OrderedDict
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

import aiohttp
import orjson
from yarl import URL

from budget_proxy.config import Settings, WebhookConfig
from budget_proxy.enforcement import CounterLine, Totals, counter_key, utilisation
from budget_proxy.events import EventBus
from budget_proxy.models import (
    Alert,
    AlertSeverity,
    BudgetPolicy,
    PolicyType,
    UsageRecord,
    nusd_to_usd,
)
from budget_proxy.periods import window_for
from budget_proxy.policy_cache import PolicyCache
from budget_proxy.store.base import Store, StoreError

if TYPE_CHECKING:
    from budget_proxy.metrics import Metrics
    from budget_proxy.proxy import Metered, Proxy

CHECK_COALESCE_S = 0.1  # threshold checks of a burst of settlements share one read
log = logging.getLogger(__name__)

ALERT_KIND = "alert"  # store document kind (listed and acknowledged by /api/alerts)
ALERT_EVENT = "alert_raised"  # event type on the alerts topic and in JSON webhooks
KNOWN_ALERTS_MAX = 10_000  # alert ids remembered as existing, so they are not re-checked
WATCHED_MAX = 10_000  # counters whose "threshold left?" answer is remembered (per window)
WEBHOOK_QUEUE_MAX = 1_000  # deliveries waiting; beyond this new ones are dropped (and logged)
WEBHOOK_CONCURRENCY = 8  # deliveries in flight at once
WEBHOOK_BACKOFF_MAX_S = 300.0  # retry delay cap
STORE_FAILURE_LOG_INTERVAL_S = 60.0  # one log line per minute while the store is down
RETRYABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})

LIMIT_REACHED = "limit_reached"
USAGE_FLAGGED = "usage_flagged"  # at most one per provider, model and hour
THRESHOLD_SEVERITY = {
    "warning_threshold": AlertSeverity.WARNING,
    "action_threshold": AlertSeverity.WARNING,
    LIMIT_REACHED: AlertSeverity.CRITICAL,
}


# pure decisions -------------------------------------------------------------------------
def alert_id_for(dedupe_key: str) -> str:
    """A deterministic alert id: every replica derives the same id for the same event."""
    return "alr_" + hashlib.sha256(dedupe_key.encode()).hexdigest()[:24]


def threshold_alert_id(policy_id: str, window_id: str, kind: str) -> str:
    return alert_id_for(f"threshold|{policy_id}|{window_id}|{kind}")


def thresholds(policy: BudgetPolicy) -> list[tuple[str, float]]:
    """(kind, fraction of the limit) for the levels a policy alerts on; none for `ignore`."""
    if policy.type is PolicyType.IGNORE:
        return []
    return [("warning_threshold", policy.warning_threshold),
            ("action_threshold", policy.action_threshold), (LIMIT_REACHED, 1.0)]


def spent_utilisation(line: CounterLine, totals: Totals) -> float:
    """Utilisation of settled spend only (reservations are not money spent yet)."""
    spent = Totals(spent_nusd=totals.spent_nusd, spent_tokens=totals.spent_tokens)
    return utilisation(line, spent)


def crossed(policy: BudgetPolicy, used: float) -> list[str]:
    """The threshold kinds `used` has reached."""
    return [kind for kind, level in thresholds(policy) if used >= level]


def window_of(line: CounterLine) -> str:
    """The window id in a counter key (`enforcement.counter_key`)."""
    return line.key[len(line.policy_id) + 1:]


def threshold_message(policy: BudgetPolicy, kind: str, used: float, totals: Totals) -> str:
    label = policy.name or policy.policy_id
    parts = []
    if policy.cost_limit is not None:
        parts.append(f"{_usd(nusd_to_usd(totals.spent_nusd))} of {_usd(policy.cost_limit)}")
    if policy.token_limit is not None:
        parts.append(f"{totals.spent_tokens} of {policy.token_limit} tokens")
    spent = "; ".join(parts)
    if kind == LIMIT_REACHED:
        return f"Budget policy {label} ({policy.period.value}) reached its limit: {spent}"
    level = policy.warning_threshold if kind == "warning_threshold" else policy.action_threshold
    name = kind.replace("_", " ")
    return (f"Budget policy {label} ({policy.period.value}) at {used:.0%} of its limit, past "
            f"its {name} of {level:.0%}: {spent}")


def _usd(amount: float) -> str:
    return f"${amount:,.2f}" if amount >= 1 else f"${amount:.6f}"


def slack_text(alert: Alert) -> str:
    return f"[budget-proxy] {alert.severity.value.upper()}: {alert.message}"


def webhook_body(hook: WebhookConfig, event: dict[str, Any], alert: Alert) -> bytes:
    """Generic JSON gets the alerts-topic event as is; Slack gets `{"text": ...}`."""
    if hook.format == "slack":
        return orjson.dumps({"text": slack_text(alert)})
    return orjson.dumps(event)


def backoff_s(attempt: int, base_s: float) -> float:
    """Delay before retry number `attempt` (1-based): base, 2x, 4x, ... capped, +-10% jitter."""
    delay = min(WEBHOOK_BACKOFF_MAX_S, base_s * 2 ** (attempt - 1))
    return delay * random.uniform(0.9, 1.1)


# webhooks -------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Delivery:
    hook: WebhookConfig
    body: bytes
    alert_id: str
    attempt: int = 1


class WebhookSender:
    """A background queue of webhook deliveries with retries and exponential back-off.

    `enqueue` never blocks or raises. Waiting for a retry holds no worker: the retry is put
    back on the queue by a timer. At most `WEBHOOK_CONCURRENCY` deliveries are in flight, each
    bounded by `timeout_s`.
    """

    def __init__(self, hooks: Sequence[WebhookConfig], *, timeout_s: float, max_attempts: int,
                 backoff_s: float, metrics: Metrics | None = None) -> None:
        self.hooks = list(hooks)
        self.timeout_s = timeout_s
        self.max_attempts = max_attempts
        self.backoff_s = backoff_s
        self.metrics = metrics
        self.queue: asyncio.Queue[Delivery] = asyncio.Queue(WEBHOOK_QUEUE_MAX)
        self.session: aiohttp.ClientSession | None = None
        self._worker: asyncio.Task[None] | None = None
        self._slots = asyncio.Semaphore(WEBHOOK_CONCURRENCY)
        self._inflight: set[asyncio.Task[None]] = set()
        self._timers: set[asyncio.TimerHandle] = set()

    async def start(self) -> None:
        if not self.hooks:
            return
        self.session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.timeout_s),
            headers={"User-Agent": "budget-proxy-alerts"},
        )
        self._worker = asyncio.create_task(self._run(), name="webhook-sender")

    async def stop(self, grace_s: float = 2.0) -> None:
        """Give in-flight deliveries `grace_s` to finish; pending retries are abandoned."""
        for timer in self._timers:
            timer.cancel()
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        if self._inflight:
            _, pending = await asyncio.wait(self._inflight, timeout=grace_s)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        left = self.queue.qsize() + len(self._timers)
        if left:
            log.warning("webhooks: %d deliveries abandoned at shutdown", left)
        if self.session is not None:
            await self.session.close()

    def enqueue(self, event: dict[str, Any], alert: Alert) -> None:
        for hook in self.hooks:
            self._put(Delivery(hook, webhook_body(hook, event, alert), alert.alert_id))

    def _put(self, delivery: Delivery) -> None:
        try:
            self.queue.put_nowait(delivery)
        except asyncio.QueueFull:
            log.error("webhooks: queue full, alert %s not sent to %s", delivery.alert_id,
                      _host(delivery.hook.url))
            self._count(delivery, "dropped")

    def _count(self, delivery: Delivery, result: str) -> None:
        if self.metrics is not None:
            self.metrics.webhook_deliveries.labels(delivery.hook.format, result).inc()

    async def _run(self) -> None:
        while True:
            delivery = await self.queue.get()
            await self._slots.acquire()
            task = asyncio.create_task(self._attempt(delivery))
            self._inflight.add(task)
            task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._inflight.discard(task)
        self._slots.release()

    async def _attempt(self, delivery: Delivery) -> None:
        assert self.session is not None
        retry_after = 0.0
        try:
            async with self.session.post(
                delivery.hook.url, data=delivery.body,
                headers={"Content-Type": "application/json"},
            ) as resp:
                await resp.read()
                if 200 <= resp.status < 300:
                    self._count(delivery, "delivered")
                    return
                error = f"HTTP {resp.status}"
                retryable = resp.status in RETRYABLE_STATUS
                with contextlib.suppress(ValueError):
                    retry_after = float(resp.headers.get("Retry-After", "0"))
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            error, retryable = f"{type(exc).__name__}: {exc}", True
        host = _host(delivery.hook.url)
        if retryable and delivery.attempt < self.max_attempts:
            delay = max(backoff_s(delivery.attempt, self.backoff_s), min(retry_after, 3600.0))
            log.warning("webhook %s failed (%s), attempt %d of %d; retrying in %.1fs", host,
                        error, delivery.attempt, self.max_attempts, delay)
            self._count(delivery, "retried")
            loop = asyncio.get_running_loop()
            retry = replace(delivery, attempt=delivery.attempt + 1)
            timer: asyncio.TimerHandle | None = None

            def fire() -> None:
                self._timers.discard(timer)  # type: ignore[arg-type]
                self._put(retry)

            timer = loop.call_later(delay, fire)
            self._timers.add(timer)
            return
        log.error("webhook %s failed (%s) after %d attempts; alert %s not delivered", host,
                  error, delivery.attempt, delivery.alert_id)
        self._count(delivery, "failed")


def _host(url: str) -> str:
    """Where a webhook points, without its path (Slack puts the secret in the path)."""
    try:
        return str(URL(url).origin())
    except ValueError:
        return "?"


# alerts ---------------------------------------------------------------------------------
class Alerts:
    """Raises, stores, publishes and delivers alerts; see the module docstring."""

    def __init__(self, settings: Settings, store: Store, events: EventBus,
                 policies: PolicyCache, metrics: Metrics | None = None) -> None:
        self.store = store
        self.events = events
        self.policies = policies
        self.metrics = metrics
        self.tz = ZoneInfo(settings.timezone)
        self.sender = WebhookSender(
            settings.all_webhooks(), timeout_s=settings.webhook_timeout_s,
            max_attempts=settings.webhook_max_attempts, backoff_s=settings.webhook_backoff_s,
            metrics=metrics)
        self._known: OrderedDict[str, None] = OrderedDict()
        self._dirty: dict[str, CounterLine] = {}
        # counter key -> whether it has a threshold left to alert on, for `_watched_from`
        self._watched: dict[str, bool] = {}
        self._watched_from: dict[str, BudgetPolicy] | None = None
        self._checker: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._refusal_checks: set[str] = set()  # limit_reached ids with a check in flight
        self._store_failure_logged_at = -STORE_FAILURE_LOG_INTERVAL_S

    async def start(self) -> None:
        await self.sender.start()

    async def stop(self) -> None:
        for task in [*self._tasks, *([self._checker] if self._checker else [])]:
            task.cancel()
        await asyncio.gather(*self._tasks, *([self._checker] if self._checker else []),
                             return_exceptions=True)
        await self.sender.stop()

    def install(self, proxy: Proxy) -> None:
        proxy.on_finish.append(self.on_finish)
        proxy.on_refuse.append(self.on_refuse)

    # generic alerts (price change, price conflict, ...) ---------------------------------
    async def raise_alert(
        self, type: str, message: str, *, severity: AlertSeverity = AlertSeverity.WARNING,
        dedupe_key: str | None = None, policy_id: str | None = None,
        budget_id: str | None = None, window: str | None = None,
        data: dict[str, Any] | None = None,
    ) -> Alert | None:
        """Store, publish and deliver an alert. With `dedupe_key`, the same key raises one
        alert only, across replicas and restarts; returns None when it already existed or the
        store could not be written (the caller may try again later)."""
        alert_id = alert_id_for(dedupe_key) if dedupe_key else None
        if alert_id is not None and alert_id in self._known:
            return None
        alert = Alert(
            **({"alert_id": alert_id} if alert_id else {}), type=type, severity=severity,
            message=message, policy_id=policy_id, budget_id=budget_id, window=window,
            data=data or {},
        )
        try:
            created = await self.store.add_doc(ALERT_KIND, alert.alert_id,
                                               alert.model_dump_json())
        except StoreError as exc:
            log.error("alert %s (%s) not stored: %s", alert.alert_id, type, exc)
            return None
        self._remember(alert.alert_id)
        if not created:
            return None
        log.warning("alert %s: %s", type, message)
        event = self.events.publish("alerts", ALERT_EVENT, alert.model_dump(mode="json"))
        self.sender.enqueue(event, alert)
        if self.metrics is not None:
            self.metrics.alerts.labels(type).inc()
        return alert

    def raise_alert_nowait(self, type: str, message: str, **kw: Any) -> None:
        """`raise_alert` from synchronous code: scheduled as a background task."""
        self._spawn(self.raise_alert(type, message, **kw))

    async def price_change(self, provider: str, model: str, old: dict[str, Any],
                           new: dict[str, Any], *, source: str | None = None) -> Alert | None:
        """A catalog price changed; one alert per (provider, model, new prices)."""
        key = orjson.dumps(new, option=orjson.OPT_SORT_KEYS, default=str).decode()
        return await self.raise_alert(
            "price_change", f"Price of {provider}/{model} changed"
            + (f" (source: {source})" if source else ""),
            severity=AlertSeverity.INFO, dedupe_key=f"price_change|{provider}|{model}|{key}",
            data={"provider": provider, "model": model, "old": old, "new": new,
                  "source": source})

    async def price_conflict(self, provider: str, model: str,
                             candidates: list[dict[str, Any]]) -> Alert | None:
        """Sources disagree on a price and it needs a human; one alert per set of prices."""
        key = orjson.dumps(candidates, option=orjson.OPT_SORT_KEYS, default=str).decode()
        return await self.raise_alert(
            "price_conflict", f"Price sources disagree on {provider}/{model}; review needed",
            dedupe_key=f"price_conflict|{provider}|{model}|{key}",
            data={"provider": provider, "model": model, "candidates": candidates})

    # thresholds ---------------------------------------------------------------------------
    def on_finish(self, meta: Metered, record: UsageRecord | None) -> None:
        if record is not None:
            self.check(meta.lines)
            if record.metadata.get("flagged"):
                self.usage_flagged(record)

    def usage_flagged(self, record: UsageRecord) -> None:
        """A provider sent usage figures the proxy clamped or could not read: one alert per
        provider and model per hour (`USAGE_FLAGGED_DEDUPE`), so a broken provider cannot
        flood the store. The record itself carries the reasons (`metadata["flagged"]`)."""
        hour = record.timestamp.strftime("%Y-%m-%dT%H")
        reasons = list(record.metadata["flagged"])
        self.raise_alert_nowait(
            USAGE_FLAGGED, f"Usage figures from {record.provider}/{record.model} were clamped "
            f"or unreadable ({', '.join(reasons)}); the call was settled from bounded figures",
            severity=AlertSeverity.WARNING,
            dedupe_key=f"{USAGE_FLAGGED}|{record.provider}|{record.model}|{hour}",
            data={"provider": record.provider, "model": record.model, "reasons": reasons,
                  "record_id": record.record_id})

    def check(self, lines: Sequence[CounterLine]) -> None:
        """Usage landed on these counters: check their thresholds in the background (also for
        usage recorded without the proxy path, e.g. `POST /api/usage/record`). Whether a
        counter has a threshold left to alert on is decided once per counter and remembered
        until the policies reload or an alert is raised (`_watched`): a settlement costs a
        dictionary lookup per counter, not an alert id per threshold."""
        watched = self._watched
        if self._watched_from is not self.policies.by_id:
            watched.clear()
            self._watched_from = self.policies.by_id
        for line in lines:
            pending = watched.get(line.key)
            if pending is None:
                if len(watched) >= WATCHED_MAX:
                    watched.clear()
                policy = self.policies.by_id.get(line.policy_id)
                pending = watched[line.key] = policy is not None and bool(
                    self._pending_kinds(policy, line))
            if pending:
                self._dirty[line.key] = line
        if self._dirty and (self._checker is None or self._checker.done()):
            self._checker = asyncio.create_task(self._check_dirty(), name="alert-check")

    def on_refuse(self, provider: str, policy_id: str, reason: str) -> None:
        policy = self.policies.by_id.get(policy_id)
        if policy is None:
            return
        window = window_for(policy.period, self.store.now(), self.tz)
        if window is None:  # per-session/per-task: the window is not known here
            return
        alert_id = threshold_alert_id(policy_id, window.window_id, LIMIT_REACHED)
        if alert_id in self._known or alert_id in self._refusal_checks:
            return  # raised already, or a check of this window is under way
        self._refusal_checks.add(alert_id)
        line = CounterLine(counter_key(policy_id, window.window_id), policy.cost_limit_nusd,
                           policy.token_limit, True, policy_id, window.resets_at)
        self._spawn(self._refused(policy, line, {"refused_provider": provider,
                                                 "reason": reason}))

    async def _refused(self, policy: BudgetPolicy, line: CounterLine,
                       extra: dict[str, Any]) -> None:
        """A hard limit refused a request. Past the action threshold that means the budget is
        spent: `limit_reached` (a hard limit refuses before spend reaches 100%, so this is how
        it usually fires). Below it, one oversized request was refused while the budget still
        has room: not a budget alert (it is counted and published as `budget_exceeded`)."""
        alert_id = threshold_alert_id(policy.policy_id, window_of(line), LIMIT_REACHED)
        try:
            (totals,) = await self.store.totals([line.key])
            if spent_utilisation(line, totals) >= policy.action_threshold:
                await self._raise_threshold(policy, line, LIMIT_REACHED, totals, extra)
        except StoreError as exc:
            self._store_failed(exc)
        finally:
            self._refusal_checks.discard(alert_id)

    def _pending_kinds(self, policy: BudgetPolicy, line: CounterLine) -> list[str]:
        window = window_of(line)
        return [kind for kind, _ in thresholds(policy)
                if threshold_alert_id(policy.policy_id, window, kind) not in self._known]

    async def _check_dirty(self) -> None:
        """Read every counter marked since the last pass in one round trip; repeat until no
        request marks any more (so bursts coalesce into a few reads). Each pass waits
        `CHECK_COALESCE_S` first: under steady traffic that is a handful of reads a second,
        not one per request, and an alert is at most that much later."""
        while self._dirty:
            await asyncio.sleep(CHECK_COALESCE_S)
            batch, self._dirty = self._dirty, {}
            lines = list(batch.values())
            try:
                totals = await self.store.totals([ln.key for ln in lines])
            except StoreError as exc:
                self._store_failed(exc)
                return
            for line, tot in zip(lines, totals, strict=True):
                policy = self.policies.by_id.get(line.policy_id)
                if policy is None:
                    continue
                used = spent_utilisation(line, tot)
                pending = set(self._pending_kinds(policy, line))
                for kind in crossed(policy, used):
                    if kind in pending:
                        await self._raise_threshold(policy, line, kind, tot)

    async def _raise_threshold(self, policy: BudgetPolicy, line: CounterLine, kind: str,
                               totals: Totals, extra: dict[str, Any] | None = None) -> None:
        window = window_of(line)
        used = spent_utilisation(line, totals)
        level = dict(thresholds(policy)).get(kind, 1.0)
        data: dict[str, Any] = {
            "policy_name": policy.name, "policy_type": policy.type.value,
            "period": policy.period.value, "threshold": level, "utilisation": round(used, 4),
            "spent_usd": nusd_to_usd(totals.spent_nusd), "reserved_usd":
            nusd_to_usd(totals.reserved_nusd), "cost_limit_usd": policy.cost_limit,
            "spent_tokens": totals.spent_tokens, "token_limit": policy.token_limit,
            "resets_at": line.resets_at.isoformat() if line.resets_at else None,
            **(extra or {}),
        }
        await self.raise_alert(
            kind, threshold_message(policy, kind, used, totals),
            severity=THRESHOLD_SEVERITY[kind],
            dedupe_key=f"threshold|{policy.policy_id}|{window}|{kind}",
            policy_id=policy.policy_id, budget_id=policy.budget_id, window=window, data=data)

    # bookkeeping --------------------------------------------------------------------------
    def _store_failed(self, exc: StoreError) -> None:
        """Threshold checks are skipped while the store is down; say so once a minute."""
        now = time.monotonic()
        if now - self._store_failure_logged_at >= STORE_FAILURE_LOG_INTERVAL_S:
            self._store_failure_logged_at = now
            log.warning("alert checks skipped, store unavailable: %s", exc)

    def _remember(self, alert_id: str) -> None:
        if alert_id not in self._known:
            self._watched.clear()  # a threshold may be done with: decide again
        self._known[alert_id] = None
        self._known.move_to_end(alert_id)
        while len(self._known) > KNOWN_ALERTS_MAX:
            self._known.popitem(last=False)

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

"""Counters from the ledger: the pure recomputation (tables), `budget ledger rebuild` after
FLUSHALL restores the windows' spent figures, and the drift check reports a lasting drift."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from click.testing import CliRunner

from budget_proxy.cli import main
from budget_proxy.enforcement import RequestScope, counter_lines
from budget_proxy.ledger.base import SpendRow
from budget_proxy.ledger.postgres import PostgresLedger
from budget_proxy.ledger.rebuild import DriftCheck, spend_by_counter
from budget_proxy.models import BudgetPolicy, UsageRecord
from budget_proxy.store.base import Reservation
from budget_proxy.store.redis import RedisStore
from tests.redis_servers import RedisServer

UTC_TZ = ZoneInfo("UTC")
NOW = datetime(2026, 3, 4, 15, 30, tzinfo=UTC)


def row(minute: datetime, cost: int = 100, tokens: int = 10, **kw: object) -> SpendRow:
    fields: dict[str, object] = {"provider": "openai", "model": "gpt-4o-mini",
                                 "component": "app", "task_type": None, "session_id": None,
                                 "task_id": None}
    fields.update(kw)
    return SpendRow(minute=minute, cost_nusd=cost, tokens=tokens, requests=1,
                    **fields)  # type: ignore[arg-type]


DAILY = BudgetPolicy(policy_id="daily", period="daily", cost_limit=10)
HOURLY_APP = BudgetPolicy(policy_id="hourly-app", period="hourly", component="app",
                          cost_limit=1)
SESSION = BudgetPolicy(policy_id="per-session", period="per_session", cost_limit=1)
OFF = BudgetPolicy(policy_id="off", period="daily", cost_limit=1, enabled=False)


@pytest.mark.parametrize(("rows", "expected"), [
    ([], {"daily:d:20260304": 0, "hourly-app:h:2026030415": 0}),
    ([row(NOW)], {"daily:d:20260304": 100, "hourly-app:h:2026030415": 100}),
    # earlier in the day: the daily window only
    ([row(NOW - timedelta(hours=3))], {"daily:d:20260304": 100, "hourly-app:h:2026030415": 0}),
    # yesterday: nothing
    ([row(NOW - timedelta(days=1))], {"daily:d:20260304": 0, "hourly-app:h:2026030415": 0}),
    # another component: not the component's policy
    ([row(NOW, component="other")], {"daily:d:20260304": 100,
                                      "hourly-app:h:2026030415": 0}),
    ([row(NOW, session_id="s1", cost=7)], {"daily:d:20260304": 7,
                                            "hourly-app:h:2026030415": 7,
                                            "per-session:s:s1": 7}),
])
def test_spend_by_counter(rows: list[SpendRow], expected: dict[str, int]) -> None:
    got = spend_by_counter([DAILY, HOURLY_APP, SESSION, OFF], rows, NOW, UTC_TZ,
                           lambda p, m: None)
    assert {k: v.spent_nusd for k, v in got.items()} == expected


def test_keys_are_the_proxys_counter_keys() -> None:
    lines = counter_lines([DAILY, HOURLY_APP], RequestScope("openai", "m", "app"), NOW, UTC_TZ)
    got = spend_by_counter([DAILY, HOURLY_APP], [row(NOW)], NOW, UTC_TZ, lambda p, m: None)
    assert {ln.key for ln in lines} == set(got)


def test_tier_scoped_policy_uses_the_tier_lookup() -> None:
    local = BudgetPolicy(policy_id="local", period="daily", tier="local_lightweight",
                         cost_limit=1)
    got = spend_by_counter([local], [row(NOW), row(NOW, model="llama")], NOW, UTC_TZ,
                           lambda p, m: "local_lightweight" if m == "llama" else None)
    assert got["local:d:20260304"].spent_nusd == 100


async def _settled_store(redis_url: str, database_url: str, tmp_path: Path,
                         policies: list[BudgetPolicy], n: int) -> tuple[RedisStore, int]:
    store = RedisStore(redis_url, data_dir=tmp_path, ledger=PostgresLedger(database_url))
    await store.start()
    for policy in policies:
        await store.put_policy(policy)
    now = store.now()
    lines = counter_lines(policies, RequestScope("openai", "gpt-4o-mini", "app"), now, UTC_TZ)
    total = 0
    for i in range(n):
        cost = 1_000_000 + i
        total += cost
        record = UsageRecord(record_id=f"use_rb{i}", provider="openai", model="gpt-4o-mini",
                             component="app", total_tokens=10, total_cost=cost / 1e9,
                             input_cost=cost / 1e9)
        await store.settle(Reservation(f"res_rb{i}", tuple(ln.key for ln in lines), 0, 0),
                           cost, 10, record)
    assert store.handoff is not None
    while await store.handoff.move_once():
        pass
    return store, total


async def test_rebuild_after_flushall_restores_spent(
        redis_server: RedisServer, database_url: str, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    redis_server.flushall()
    policies = [BudgetPolicy(policy_id="d", period="daily", cost_limit=100),
                BudgetPolicy(policy_id="m", period="monthly", component="app", cost_limit=100)]
    store, total = await _settled_store(redis_server.url, database_url, tmp_path, policies, 40)
    try:
        now = store.now()
        keys = [ln.key for ln in counter_lines(
            policies, RequestScope("openai", "gpt-4o-mini", "app"), now, UTC_TZ)]
        before = await store.totals(keys)
        assert [t.spent_nusd for t in before] == [total, total]
        redis_server.flushall()  # Redis lost everything; policy files bring policies back
        for policy in policies:
            await store.put_policy(policy)
        assert [t.spent_nusd for t in await store.totals(keys)] == [0, 0]
        monkeypatch.setenv("BUDGET_REDIS_URL", redis_server.url)
        monkeypatch.setenv("BUDGET_DATABASE_URL", database_url)
        monkeypatch.setenv("BUDGET_DATA_DIR", str(tmp_path / "cli"))
        # the command runs its own event loop: in a thread, as from a shell
        dry = await asyncio.to_thread(CliRunner().invoke, main, ["ledger", "rebuild",
                                                                 "--dry-run"])
        assert dry.exit_code == 0, dry.output
        assert "would set" in dry.output
        assert [t.spent_nusd for t in await store.totals(keys)] == [0, 0]
        result = await asyncio.to_thread(CliRunner().invoke, main, ["ledger", "rebuild"])
        assert result.exit_code == 0, result.output
        assert "2 counters rebuilt" in result.output
        after = await store.totals(keys)
        assert [(t.spent_nusd, t.spent_tokens, t.requests) for t in after] == [
            (total, 400, 40)] * 2
    finally:
        await store.close()


def test_rebuild_needs_both_urls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BUDGET_DATABASE_URL", raising=False)
    monkeypatch.delenv("BUDGET_REDIS_URL", raising=False)
    result = CliRunner().invoke(main, ["ledger", "rebuild"])
    assert result.exit_code != 0 and "BUDGET_DATABASE_URL" in result.output


@pytest.mark.parametrize("url", ["mysql://x/y", "redis://localhost", "not a url"])
def test_database_url_must_be_postgresql(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from budget_proxy.config import ConfigError, load_settings

    monkeypatch.setenv("BUDGET_REDIS_URL", "redis://127.0.0.1:1")
    monkeypatch.setenv("BUDGET_DATABASE_URL", url)
    with pytest.raises(ConfigError):
        load_settings()


def test_database_url_needs_redis(monkeypatch: pytest.MonkeyPatch) -> None:
    from budget_proxy.config import ConfigError, load_settings

    monkeypatch.delenv("BUDGET_REDIS_URL", raising=False)
    monkeypatch.setenv("BUDGET_DATABASE_URL", "postgresql://x@127.0.0.1/y")
    with pytest.raises(ConfigError, match="BUDGET_REDIS_URL"):
        load_settings()


async def test_drift_check_reports_a_lasting_drift(
        redis_server: RedisServer, database_url: str, tmp_path: Path) -> None:
    redis_server.flushall()
    policies = [BudgetPolicy(policy_id="d", period="daily", cost_limit=100)]
    store, total = await _settled_store(redis_server.url, database_url, tmp_path, policies, 5)
    try:
        assert store.ledger is not None
        check = DriftCheck(store, store.ledger, UTC_TZ, lambda p, m: None)
        assert await check.run_once() == [] and await check.run_once() == []
        (key,) = [ln.key for ln in counter_lines(
            policies, RequestScope("openai", "gpt-4o-mini", "app"), store.now(), UTC_TZ)]
        from budget_proxy.store import keys as K

        await store.client.hincrby(K.counter(key), "sn", -500_000)  # a counter set back
        assert await check.run_once() == []  # once may be a settlement in flight
        ((figures, counter),) = await check.run_once()
        assert (figures.key, figures.spent_nusd, counter) == (key, total, total - 500_000)
    finally:
        await store.close()

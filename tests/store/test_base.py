"""The store base: errors cross the boundary once, amounts and text are made storable, the
hold timing is checked, and an intent becomes the `unsettled` record of a dead hold."""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Sequence

import orjson
import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from budget_proxy.enforcement import CounterLine, ReserveResult
from budget_proxy.models import UsageRecord
from budget_proxy.store.base import (
    MAX_AMOUNT_NUSD,
    MAX_AMOUNT_TOKENS,
    LiveHold,
    Reservation,
    StoreError,
    bounded,
    hold_timing,
    intent_json,
    record_id_of,
    safe_text,
    storable_record,
    unsettled_record,
)
from budget_proxy.store.journal import SettlementJournaled
from budget_proxy.store.redis import RedisStore
from budget_proxy.store.sqlite import SqliteStore


class Failing(SqliteStore):
    """Raises whatever the test puts in `error` from a public method and a base helper."""

    error: BaseException = RuntimeError()

    async def reserve(self, reservation: Reservation, lines: Sequence[CounterLine],
                      ttl_s: float) -> ReserveResult:
        raise self.error

    async def list_docs(self, kind: str) -> list[str]:
        raise self.error


@pytest.mark.parametrize("error", [
    sqlite3.OperationalError("database is locked"),
    sqlite3.IntegrityError("constraint"),
    OverflowError("Python int too large to convert to SQLite INTEGER"),
    UnicodeEncodeError("utf-8", "\udcff", 0, 1, "surrogates not allowed"),
])
async def test_backend_errors_become_store_error(tmp_path, error: BaseException):
    store = Failing(tmp_path)
    store.error = error
    with pytest.raises(StoreError) as raised:
        await store.reserve(Reservation("r", (), 0, 0), [], 1)
    assert raised.value.__cause__ is error
    with pytest.raises(StoreError):
        await store.list_policies()  # a base helper over a failing method


@pytest.mark.parametrize("error", [RedisConnectionError("gone"), ResponseError("WRONGTYPE"),
                                   TimeoutError(), sqlite3.OperationalError("disk I/O")])
async def test_redis_backend_errors_become_store_error(tmp_path, error: BaseException):
    class FailingRedis(RedisStore):
        async def get_doc(self, kind: str, doc_id: str) -> str | None:
            raise error

    with pytest.raises(StoreError):
        await FailingRedis("redis://127.0.0.1:1", data_dir=tmp_path).get_doc("k", "d")


async def test_store_errors_and_programming_errors_pass_unchanged(tmp_path):
    store = Failing(tmp_path)
    store.error = SettlementJournaled("kept")
    with pytest.raises(SettlementJournaled):
        await store.reserve(Reservation("r", (), 0, 0), [], 1)
    store.error = KeyError("a bug, not a store failure")
    with pytest.raises(KeyError):
        await store.reserve(Reservation("r", (), 0, 0), [], 1)


def test_every_public_async_method_is_wrapped_once():
    for cls in (SqliteStore, RedisStore, Failing):
        for name in ("reserve", "settle", "release", "totals", "list_usage", "get_doc",
                     "renew_holds", "keep_intent", "list_policies"):
            fn = getattr(cls, name)
            assert getattr(fn, "__store_wrapped__", False), (cls, name)
            assert not getattr(fn.__wrapped__, "__store_wrapped__", False), (cls, name)


@pytest.mark.parametrize(("value", "high", "expected"), [
    (5, 10, 5), (-1, 10, 0), (11, 10, 10), (2**80, MAX_AMOUNT_NUSD, MAX_AMOUNT_NUSD),
    (-(2**80), MAX_AMOUNT_TOKENS, 0), (0, 0, 0),
])
def test_bounded(value: int, high: int, expected: int):
    assert bounded(value, high) == expected


@pytest.mark.parametrize(("text", "expected"), [
    ("plain", "plain"), ("café ✓", "café ✓"), ("a\udcffb", "a\\udcffb"),
    ("\ud800", "\\ud800"), ("", ""),
])
def test_safe_text(text: str, expected: str):
    assert safe_text(text) == expected
    assert safe_text(expected) == expected  # idempotent
    safe_text(text).encode("utf-8")


def test_reservation_is_bounded_and_storable_on_construction():
    r = Reservation("r", ("p:s:x\udcff", "p:d:1"), 2**70, -3)
    assert (r.cost_nusd, r.tokens) == (MAX_AMOUNT_NUSD, 0)
    assert r.keys == ("p:s:x\\udcff", "p:d:1")


def test_record_id_is_derived_from_the_reservation_id():
    assert record_id_of("res_abc123") == "use_abc123"
    assert record_id_of("res_abc123") != record_id_of("res_abc124")


def test_intent_becomes_the_unsettled_record_at_the_hold():
    intent = intent_json({"record_id": record_id_of("res_1"), "provider": "openai",
                          "model": "gpt-4o", "component": "c\udcff", "output_tokens": 500,
                          "total_cost": 9.0})
    rec = unsettled_record(Reservation("res_1", ("k",), 2_000_000_000, 600, intent))
    assert (rec.record_id, rec.status, rec.provider, rec.component) == (
        "use_1", "unsettled", "openai", "c\\udcff")
    assert rec.total_cost == 2.0  # charged at the hold, whatever the intent said
    assert rec.output_tokens == 500


@pytest.mark.parametrize("intent", [None, "", "not json", '{"provider": 5}', "[]"])
def test_an_intent_that_does_not_load_still_charges(intent: str | None):
    rec = unsettled_record(Reservation("res_2", ("k",), 1_000_000_000, 10, intent))
    assert (rec.record_id, rec.status, rec.total_cost, rec.total_tokens) == (
        "use_2", "unsettled", 1.0, 10)


def test_storable_record_escapes_what_cannot_be_encoded():
    rec = UsageRecord(provider="p", model="m\udcff", metadata={"x": object(), "y": "\ud800"})
    clean, body = storable_record(rec)
    body.encode("utf-8")
    assert clean.model == "m\\udcff" and orjson.loads(body)["metadata"]["y"] == "\\ud800"
    good = UsageRecord(provider="p", model="m")
    assert storable_record(good) == (good, good.model_dump_json())


@pytest.mark.parametrize(("ttl_s", "timeout_s", "renew_s", "max_hold_s", "warns"), [
    (600, 600, 200, 1200, 0),
    (3, 30, 1, 33, 0),
    (1, 30, 1 / 3, 31, 1),  # short TTL: warned, not refused
    (30, math.inf, 10, math.inf, 1),  # no upstream timeout: warned
    (30, 0, 10, math.inf, 1),
])
def test_hold_timing(ttl_s, timeout_s, renew_s, max_hold_s, warns):
    timing = hold_timing(ttl_s, timeout_s)
    assert timing.renew_interval_s == pytest.approx(renew_s)
    assert timing.ttl_s >= 3 * timing.renew_interval_s - 1e-9
    assert timing.max_hold_s == max_hold_s
    assert len(timing.warnings) == warns


@pytest.mark.parametrize("ttl_s", [0, -1, math.nan, math.inf])
def test_hold_timing_refuses_a_ttl_that_cannot_work(ttl_s: float):
    with pytest.raises(ValueError, match="BUDGET_RESERVATION_TTL_S"):
        hold_timing(ttl_s, 600)


async def test_a_hold_past_the_upstream_timeout_is_no_longer_renewed(tmp_path):
    store = SqliteStore(tmp_path)
    await store.start()
    try:
        a = CounterLine("a:d:1", None, None, False, "a")
        r = Reservation("res_stuck", (a.key,), 10, 1, intent_json({"provider": "p",
                                                                   "model": "m"}))
        assert (await store.reserve(r, [a], 60)).ok
        assert await store.renew_holds() == 1
        store.max_hold_s = 0.0  # the request is now older than any request may live
        assert await store.renew_holds() == 0
        assert store.live_holds() == 0
    finally:
        await store.close()


def test_live_hold_keeps_its_ttl():
    hold = LiveHold(Reservation("r", (), 0, 0), 2.5)
    assert hold.ttl_s == 2.5 and hold.since_s > 0

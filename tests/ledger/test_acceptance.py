"""Acceptance: three replicas on one Redis with a PostgreSQL ledger, 1,000 calls, a replica
SIGKILLed and Redis SIGKILLed mid-run (both restarted). Afterwards the ledger holds exactly
one record per call the provider answered (checked against the fake provider's own log), a
record of a call the provider never received only as an `unsettled` charge of a dead
replica's hold, and the hourly rollups equal the sum of the records."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from budget_proxy.ledger.postgres import PostgresLedger
from tests.integration.test_redis_faults import chat
from tests.redis_servers import Replica, start_replicas

CALLS = 1000
WORKERS = 24


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=64)) as client:
        yield client


async def test_replica_and_redis_killed_mid_run(fake, http, redis_factory, database_url: str,
                                               tmp_path: Path) -> None:
    server = redis_factory(aof=True)
    env = {"BUDGET_REDIS_URL": server.url, "BUDGET_DATABASE_URL": database_url,
           "BUDGET_OPENAI_BASE_URL": f"{fake.url}/v1", "BUDGET_FAIL_MODE": "open",
           "BUDGET_RESERVATION_TTL_S": "3", "BUDGET_REAPER_INTERVAL_S": "0.5"}
    replicas: list[Replica] = await start_replicas(3, env, tmp_path)
    started: list[Replica] = list(replicas)
    try:
        resp = await http.post(f"{replicas[0].url}/api/policies", json={
            "period": "daily", "type": "hard_limit", "cost_limit": 1000})
        assert resp.status_code == 201, resp.text
        issued = 0
        live = [0, 1, 2]
        killed_replica, redis_back = asyncio.Event(), asyncio.Event()
        at_30, at_60 = asyncio.Event(), asyncio.Event()  # 30 % and 60 % of the calls issued

        async def worker(w: int) -> None:
            nonlocal issued
            while issued < CALLS:
                issued += 1
                if issued >= CALLS * 0.3:
                    at_30.set()
                if issued >= CALLS * 0.6:
                    at_60.set()
                url = replicas[live[issued % len(live)]].url
                try:
                    await chat(http, url)
                except httpx.HTTPError:
                    pass  # the killed replica: the fake provider's log says what was answered

        async def faults() -> None:
            await at_30.wait()
            live.remove(0)
            replicas[0].process.send_signal(signal.SIGKILL)  # calls in flight die with it
            replicas[0].process.wait()
            killed_replica.set()
            await at_60.wait()
            server.kill()  # settlements go to the replicas' journals (fail open)
            await asyncio.sleep(1.0)  # the outage lasts a second
            server.start()
            redis_back.set()
            # the killed replica comes back on its data dir: it replays its journal
            (again,) = await start_replicas(1, {**env, "BUDGET_DATA_DIR": str(
                tmp_path / "replica0")}, tmp_path / "again")
            started.append(again)
            replicas[0] = again
            live.append(0)

        await asyncio.wait_for(asyncio.gather(faults(), *(worker(w) for w in range(WORKERS))),
                               120)
        assert killed_replica.is_set() and redis_back.is_set()

        answered = {r.body["messages"][0]["content"] for r in fake.requests if r.status == 200}
        # a call whose replica died after its hold was made (before, while or after it was
        # forwarded) is charged at its hold, as `unsettled`: never lost, never free
        received = {r.body["messages"][0]["content"] for r in fake.requests}
        assert len(answered) > CALLS * 0.9
        ledger = PostgresLedger(database_url)
        await ledger.start()
        try:
            deadline = time.monotonic() + 60  # dead holds charged after their TTL, hand-off
            while True:
                async with ledger.pool.acquire() as conn:
                    sessions = [r[0] for r in await conn.fetch(
                        "SELECT session_id FROM usage_records")]
                if answered <= set(sessions):
                    break
                assert time.monotonic() < deadline, (
                    f"{len(answered - set(sessions))} answered calls without a record")
                await asyncio.sleep(0.2)
            async with ledger.pool.acquire() as conn:
                status_of = {r[0]: r[1] for r in await conn.fetch(
                    "SELECT session_id, status FROM usage_records")}
            statuses = {s: list(status_of.values()).count(s) for s in set(status_of.values())}
            assert len(sessions) == len(set(sessions)), "duplicated usage records"
            never_forwarded = set(sessions) - received
            assert all(status_of[s] == "unsettled" for s in never_forwarded), (
                "a settled record of a call the provider never received")
            assert await ledger.check_rollups() == []
            print(f"{len(answered)} answered calls, records by status {statuses}")
        finally:
            await ledger.close()
    finally:
        for replica in started:
            if replica.process.poll() is None:
                replica.process.kill()
                replica.process.wait()

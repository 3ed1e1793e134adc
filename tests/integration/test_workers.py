"""`budget-proxy serve --workers N`: N processes on one port sharing the Redis store, exact
across them as replicas are; the embedded store refused (exit 2)."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from budget_proxy.cli import main
from budget_proxy.models import BudgetPolicy
from tests.conftest import free_port
from tests.integration.test_redis_replicas import (
    REQUEST_COST_USD,
    ROOM_FOR,
    http,  # noqa: F401  (a fixture)
    overspend_scenario,
    put_policies,
    replicas_cleanup,  # noqa: F401  (a fixture)
)
from tests.redis_servers import ROOT, Replica, _wait_healthy, spawn
from tests.redis_servers import redis_factory as redis_factory  # a fixture, re-exported


def workers_of(pid: int) -> list[int]:
    """The worker processes of `serve --workers` (not multiprocessing's resource tracker)."""
    path = Path(f"/proc/{pid}/task/{pid}/children")
    pids = [int(c) for c in path.read_text().split()]
    return [p for p in pids if b"resource_tracker" not in Path(f"/proc/{p}/cmdline").read_bytes()]


def sockets(pid: int) -> int:
    fds = Path(f"/proc/{pid}/fd")
    return sum(1 for fd in fds.iterdir() if os.readlink(fd).startswith("socket:"))


def gone(pid: int) -> bool:
    status = Path(f"/proc/{pid}/status")
    return not status.exists() or "zombie" in status.read_text()


async def start_workers(n: int, env: dict[str, str], tmp_path: Path) -> Replica:
    port = free_port()
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("BUDGET_")}
    full_env.update({
        "BUDGET_PORT": str(port), "BUDGET_HOST": "127.0.0.1", "BUDGET_LOG_LEVEL": "WARNING",
        "BUDGET_DATA_DIR": str(tmp_path / "workers"), "PYTHONPATH": str(ROOT), **env,
    })
    argv = [sys.executable, "-m", "budget_proxy", "serve", "--workers", str(n)]
    replica = Replica(f"http://127.0.0.1:{port}", spawn(argv, full_env, tmp_path / "w.log"),
                      tmp_path / "w.log")
    try:
        await _wait_healthy([replica], time.monotonic() + 60)
    except BaseException:
        replica.process.kill()
        replica.process.wait()
        raise
    return replica


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="reads /proc")
async def test_two_workers_never_overspend(fake, http, redis_factory, tmp_path,  # noqa: F811
                                           replicas_cleanup):  # noqa: F811
    server = redis_factory(aof=False)
    limit = ROOM_FOR * REQUEST_COST_USD
    await put_policies(server.url, tmp_path, BudgetPolicy(
        policy_id="load-daily", component="load", period="daily", cost_limit=limit))
    workers = await start_workers(2, {"BUDGET_REDIS_URL": server.url,
                                      "BUDGET_OPENAI_BASE_URL": f"{fake.url}/v1"}, tmp_path)
    replicas_cleanup.append(workers)
    pids = workers_of(workers.process.pid)
    assert len(pids) == 2
    idle_sockets = {pid: sockets(pid) for pid in pids}

    statuses, spent = await overspend_scenario(fake, http, [workers], limit)
    assert 0 < statuses.count(200) <= ROOM_FOR and 429 in statuses
    assert spent <= limit + 1e-12
    # both workers took connections (the kernel spreads them by address hash: 180 clients
    # all landing on one of two workers has a chance of 2^-179)
    assert all(sockets(pid) > idle_sockets[pid] for pid in pids), (idle_sockets, pids)
    # each worker journals in its own directory
    assert (tmp_path / "workers" / "worker-1").is_dir()

    workers.process.terminate()  # SIGTERM to the parent stops every worker
    assert workers.process.wait(timeout=20) == 0
    assert all(gone(pid) for pid in pids)


def test_workers_on_the_embedded_store_are_refused(monkeypatch, tmp_path) -> None:
    for name in [n for n in os.environ if n.startswith("BUDGET_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("BUDGET_DATA_DIR", str(tmp_path))
    result = CliRunner().invoke(main, ["serve", "--workers", "2", "--port", "1"])
    assert result.exit_code == 2, result.output
    assert "--workers 2 needs the Redis store (BUDGET_REDIS_URL)" in result.output

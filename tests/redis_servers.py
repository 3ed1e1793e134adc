"""Real `redis-server` processes for the tests: on free ports, never the machine's own Redis.

`RedisServer` starts one server (no persistence by default, or AOF for the fault tests),
and can kill, restart and flush it; `RedisClusterProcess` builds a cluster of 3 masters with
`redis-cli --cluster create`. Fixtures: `redis_server` (session, flushed by the users),
`redis_cluster` (session), `redis_factory` (function scope, for servers a test kills).

Also a deliberately non-atomic store (`RacyRedisStore`) and `python -m tests.redis_servers
serve-racy`, a `budget-proxy serve` that uses it: the test of the concurrency test.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from budget_proxy.enforcement import CounterLine, ReserveResult, would_refuse
from budget_proxy.store.base import Reservation
from budget_proxy.store.redis import RedisStore

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
REDIS_CLI = shutil.which("redis-cli") or "/usr/bin/redis-cli"
SHARED_REDIS_PORT = 6379  # the machine's own Redis: never touched by the tests


def free_port() -> int:
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port != SHARED_REDIS_PORT:
            return port


def cluster_port() -> int:
    """A free port whose cluster bus port (+10000) is free too (so at most 55535)."""
    while True:
        port = random.randint(20000, 55535)
        if port == SHARED_REDIS_PORT:
            continue
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 10000))
        except OSError:
            continue
        return port


def ping(port: int, timeout_s: float = 0.2) -> bool:
    """True once the server answers PING with PONG (not while it is loading its AOF)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


@dataclass
class RedisServer:
    """One redis-server process; `aof=True` for the tests that kill and restart it."""

    directory: Path
    aof: bool = False
    extra: Sequence[str] = ()
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def argv(self) -> list[str]:
        argv = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1",
                "--dir", str(self.directory), "--save", "", "--daemonize", "no",
                "--loglevel", "warning", "--logfile", str(self.directory / "redis.log")]
        if self.aof:
            argv += ["--appendonly", "yes", "--appendfsync", "always"]
        else:
            argv += ["--appendonly", "no"]
        return argv + list(self.extra)

    def start(self, timeout_s: float = 10.0) -> RedisServer:
        assert self.port != SHARED_REDIS_PORT
        self.directory.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(self.argv(), stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                log = (self.directory / "redis.log")
                raise RuntimeError(f"redis-server exited: {log.read_text()[-2000:]}")
            if ping(self.port):
                return self
            time.sleep(0.02)
        self.kill()
        raise RuntimeError(f"redis-server on {self.port} did not answer PING")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(timeout=10)

    def restart(self) -> RedisServer:
        self.kill()
        return self.start()

    def stop(self) -> None:
        self.kill(signal.SIGTERM)

    def cli(self, *args: str) -> str:
        out = subprocess.run([REDIS_CLI, "-p", str(self.port), *args], capture_output=True,
                             text=True, timeout=30, check=True)
        return out.stdout.strip()

    def flushall(self) -> None:
        self.cli("FLUSHALL")


@dataclass
class RedisClusterProcess:
    """Three masters, no replicas, slots spread by `redis-cli --cluster create`."""

    directory: Path
    servers: list[RedisServer] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"redis+cluster://127.0.0.1:{self.servers[0].port}"

    def start(self, masters: int = 3) -> RedisClusterProcess:
        try:
            return self._start(masters)
        except BaseException:
            self.stop()  # no orphaned nodes when the cluster cannot be built
            raise

    def _start(self, masters: int) -> RedisClusterProcess:
        for i in range(masters):
            server = RedisServer(self.directory / f"node{i}", port=cluster_port(), extra=(
                "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", "5000"))
            self.servers.append(server.start())
        subprocess.run(
            [REDIS_CLI, "--cluster", "create",
             *(f"127.0.0.1:{s.port}" for s in self.servers),
             "--cluster-replicas", "0", "--cluster-yes"],
            capture_output=True, text=True, timeout=60, check=True,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if all("cluster_state:ok" in s.cli("CLUSTER", "INFO") for s in self.servers):
                return self
            time.sleep(0.1)
        raise RuntimeError("redis cluster did not reach cluster_state:ok")

    def stop(self) -> None:
        for server in self.servers:
            server.stop()

    def flushall(self) -> None:
        for server in self.servers:
            server.flushall()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A session-wide server without persistence; tests flush it before use."""
    directory = Path(tempfile.mkdtemp(prefix="bp-redis-"))
    server = RedisServer(directory).start()
    yield server
    server.stop()
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisClusterProcess]:
    directory = Path(tempfile.mkdtemp(prefix="bp-redis-cluster-"))
    cluster = RedisClusterProcess(directory).start()
    yield cluster
    cluster.stop()
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def redis_factory(tmp_path: Path) -> Iterator:
    """Start servers a test owns (and may kill): `redis_factory(aof=True)`."""
    started: list[RedisServer] = []

    def start(aof: bool = True, extra: Sequence[str] = ()) -> RedisServer:
        server = RedisServer(tmp_path / f"redis{len(started)}", aof=aof, extra=extra).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.kill()


# --- budget-proxy serve processes -----------------------------------------------------------
ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Replica:
    url: str
    process: subprocess.Popen[bytes]
    log: Path


def spawn(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as out:
        return subprocess.Popen(argv, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)


async def start_replicas(n: int, env: dict[str, str], tmp_path: Path, racy: bool = False
                         ) -> list[Replica]:
    """n `budget-proxy serve` processes started at once (or the racy test variant); their
    logs and (unless `env` names one) data dirs go under `tmp_path`."""
    replicas = []
    for i in range(n):
        port = free_port()
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("BUDGET_")}
        full_env.update({
            "BUDGET_PORT": str(port), "BUDGET_HOST": "127.0.0.1", "BUDGET_LOG_LEVEL": "WARNING",
            "BUDGET_DATA_DIR": str(tmp_path / f"replica{i}"), "PYTHONPATH": str(ROOT), **env,
        })
        argv = ([sys.executable, "-m", "tests.redis_servers", "serve-racy"] if racy
                else [sys.executable, "-m", "budget_proxy", "serve"])
        log = tmp_path / f"replica{i}.log"
        replicas.append(Replica(f"http://127.0.0.1:{port}", spawn(argv, full_env, log), log))
    try:
        await _wait_healthy(replicas, time.monotonic() + 60)
    except BaseException:
        for replica in replicas:
            replica.process.kill()
            replica.process.wait()
        raise
    return replicas


async def _wait_healthy(replicas: list[Replica], deadline: float) -> None:
    async with httpx.AsyncClient(timeout=1) as client:
        for replica in replicas:
            while True:
                if replica.process.poll() is not None:
                    raise RuntimeError(f"replica exited: {replica.log.read_text()[-3000:]}")
                try:
                    if (await client.get(f"{replica.url}/health")).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline, "replicas did not become healthy"
                await asyncio.sleep(0.1)


# --- the test of the test: a store that checks, then increments, non-atomically -------------
class RacyRedisStore(RedisStore):
    """Reads the totals, decides in Python, then adds without a check: two replicas that read
    before either writes both pass. Exists only to show the concurrency tests catch overspend."""

    async def reserve(self, reservation: Reservation, lines: Sequence[CounterLine],
                      ttl_s: float) -> ReserveResult:
        current = await self.totals([line.key for line in lines])
        for index, (line, tot) in enumerate(zip(lines, current, strict=True)):
            if would_refuse(line, tot, reservation.cost_nusd, reservation.tokens):
                return ReserveResult(False, tuple(current), index)
        await asyncio.sleep(0.005)  # the round trip between reading and writing
        unchecked = [CounterLine(ln.key, ln.limit_nusd, ln.limit_tokens, False, ln.policy_id,
                                 ln.resets_at) for ln in lines]
        return await super().reserve(reservation, unchecked, ttl_s)


def _serve_racy() -> None:
    """`budget-proxy serve`, with the racy store in place of the Redis store."""
    import budget_proxy.app as app_module
    from budget_proxy.cli import main

    def make_store(settings):  # type: ignore[no-untyped-def]
        assert settings.redis_url, "serve-racy needs BUDGET_REDIS_URL"
        return RacyRedisStore(settings.redis_url, fail_mode=settings.fail_mode,
                              data_dir=settings.data_dir)

    app_module.make_store = make_store
    sys.argv = ["budget-proxy", "serve"]
    main()


if __name__ == "__main__":
    if sys.argv[1:] == ["serve-racy"]:
        _serve_racy()
    else:
        with contextlib.suppress(KeyboardInterrupt):
            print(f"usage: {sys.argv[0]} serve-racy", file=sys.stderr)
        os._exit(2)

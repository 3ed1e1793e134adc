"""The aiohttp application: one port for the proxy routes, the admin API, health and metrics.

Each long-lived resource has its own `cleanup_ctx` generator (store, upstream client session,
background loops), so cleanup runs if and only if its startup did.
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import logging
import multiprocessing
import os
import signal
import sys
from collections.abc import AsyncIterator
from multiprocessing.connection import wait as wait_for_exit
from pathlib import Path
from zoneinfo import ZoneInfo

import aiohttp
from aiohttp import web

from budget_proxy import dashboard, logs, ws
from budget_proxy.alerts import Alerts
from budget_proxy.allocations import Allocations
from budget_proxy.api import PREFIX, admin_app, root_routes
from budget_proxy.api.budgets import ensure_default_budget
from budget_proxy.appkeys import (
    ALERTS,
    ALLOCATIONS,
    CATALOG,
    EVENTS,
    KEYS,
    METRICS,
    POLICIES,
    PROXY,
    SETTINGS,
    STORE,
    STORE_SEEDED,
)
from budget_proxy.config import Settings
from budget_proxy.edge import edge_middleware
from budget_proxy.events import EventBus
from budget_proxy.hermes import hermes_ctx
from budget_proxy.ledger.service import drift_ctx, make_ledger
from budget_proxy.loops import every, stop, until_done
from budget_proxy.mcp.endpoint import mcp_ctx
from budget_proxy.metrics import Metrics
from budget_proxy.policy_cache import PolicyCache
from budget_proxy.policy_files import apply_at_startup, load_paths, policy_dirs
from budget_proxy.pricing import PriceBook
from budget_proxy.pricing.update import prices_ctx
from budget_proxy.proxy import Proxy, stamp_overhead
from budget_proxy.store.base import Store, StoreError, hold_timing
from budget_proxy.store.sqlite import SqliteStore
from budget_proxy.virtual_keys import KeyRing

log = logging.getLogger(__name__)


POLICY_POLL_INTERVAL_S = 1.0  # fallback convergence when a change notice is missed


def make_store(settings: Settings) -> Store:
    if settings.redis_url:
        from budget_proxy.store.redis import RedisStore

        return RedisStore(settings.redis_url, fail_mode=settings.fail_mode,
                          data_dir=settings.data_dir, ledger=make_ledger(settings),
                          record_retention_days=settings.record_retention_days)
    return SqliteStore(settings.data_dir)


async def _store_ctx(app: web.Application) -> AsyncIterator[None]:
    # Rank tables load when a model first needs one (`tokens.load_for`), not here: an idle
    # proxy holds none. The catalogs are many long-lived objects: moved out of the
    # collector's reach, a full collection does not walk them again and again.
    gc.collect()
    gc.freeze()
    store = app[STORE]
    await store.start()
    policies = app[POLICIES]
    try:
        await policies.refresh(force=True)
    except StoreError as exc:  # Redis down at start: serve per fail mode, the poll catches up
        log.error("policies not loaded at start-up, store unavailable: %s", exc)
    yield
    await store.close()


async def _redis_ctx(app: web.Application) -> AsyncIterator[None]:
    """Redis store only: start-up config check, pub/sub (config notices from other replicas
    refresh the policy cache; events are relayed both ways), journal replay, clock sync."""
    from budget_proxy.store.redis import RedisStore

    store = app[STORE]
    if not isinstance(store, RedisStore):
        yield
        return
    store.on_config_change.append(app[POLICIES].refresh)
    async with store.background(app[EVENTS]):
        yield


async def _http_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    timeout = aiohttp.ClientTimeout(
        total=settings.upstream_timeout_s, sock_connect=settings.upstream_connect_timeout_s
    )
    connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300)
    # one session for every client: an upstream's Set-Cookie in one client's answer must
    # never ride on another client's call (the client keeps its own cookies, if any)
    session = aiohttp.ClientSession(
        timeout=timeout, connector=connector, auto_decompress=True,
        skip_auto_headers=("User-Agent",), cookie_jar=aiohttp.DummyCookieJar(),
    )
    proxy = Proxy(settings, app[STORE], app[CATALOG], app[POLICIES], session)
    app[PROXY] = proxy
    yield
    await proxy.drain()
    await session.close()


async def _admin_ctx(app: web.Application) -> AsyncIterator[None]:
    """Policy files reconciled into the store (an invalid file refuses start-up), the default
    budget, virtual keys on the proxy, and the loops that expire allocations and converge the
    key ring across replicas. With the store down at start-up, the store work retries in the
    background until the store is back; meanwhile requests are served by the fail mode."""
    settings = app[SETTINGS]
    store = app[STORE]
    loaded = load_paths(policy_dirs(settings.policies_dir))  # a bad file is a config error
    app[PROXY].identify_key = app[KEYS].identify
    seeded = app[STORE_SEEDED]

    async def seed() -> None:
        await ensure_default_budget(store)
        await apply_at_startup(store, loaded)
        await app[POLICIES].refresh(force=True)
        await app[KEYS].refresh(force=True)
        seeded.set()

    tasks = [
        asyncio.create_task(every(settings.reaper_interval_s, app[ALLOCATIONS].sweep,
                                  "allocation sweep"), name="allocation-sweeper"),
        asyncio.create_task(every(POLICY_POLL_INTERVAL_S, app[KEYS].refresh,
                                  "virtual key refresh"), name="key-poll"),
    ]
    try:
        await seed()
    except StoreError as exc:
        log.error("budget store unavailable at start-up (%s): serving with fail mode %s; "
                  "default budget, policy files and keys are applied when it is back",
                  exc, settings.fail_mode)
        retry = until_done(POLICY_POLL_INTERVAL_S, seed, "start-up store work")
        tasks.append(asyncio.create_task(retry, name="startup-seed"))
    yield
    await stop(tasks)


async def _loops_ctx(app: web.Application) -> AsyncIterator[None]:
    """The reaper (charges holds of dead processes, releases expired allocation holds), the
    renewal of this process's live holds (a request outliving the TTL keeps its hold), and
    the policy poll. Start-up is refused when the reservation TTL cannot work."""
    settings = app[SETTINGS]
    store = app[STORE]
    try:
        timing = hold_timing(settings.reservation_ttl_s, settings.upstream_timeout_s)
    except ValueError as exc:
        log.critical("%s", exc)
        raise
    for warning in timing.warnings:
        log.warning("%s", warning)
    store.max_hold_s = timing.max_hold_s

    async def reap() -> None:
        reaped = await store.reap_expired()
        if reaped:
            log.warning("charged or released %d expired holds", reaped)

    tasks = [
        asyncio.create_task(every(settings.reaper_interval_s, reap, "reaper"), name="reaper"),
        asyncio.create_task(every(timing.renew_interval_s, store.renew_holds, "hold renewal"),
                            name="hold-renewal"),
        asyncio.create_task(every(POLICY_POLL_INTERVAL_S, app[POLICIES].refresh,
                                  "policy refresh"), name="policy-poll"),
    ]
    yield
    await stop(tasks)


async def _observe_ctx(app: web.Application) -> AsyncIterator[None]:
    """Metrics, alerts and events hooks on the proxy; webhook sender; event-loop lag probe."""
    proxy = app[PROXY]
    app[METRICS].install(proxy)
    app[ALERTS].install(proxy)
    ws.install_event_hooks(proxy, app[EVENTS])
    await app[ALERTS].start()
    lag = asyncio.create_task(app[METRICS].watch_loop_lag(), name="loop-lag")
    yield
    await stop([lag])
    await app[ALERTS].stop()


async def _proxy_handler(request: web.Request) -> web.StreamResponse:
    return await request.app[PROXY].handle(request)


def create_app(settings: Settings, store: Store | None = None) -> web.Application:
    app = web.Application(
        client_max_size=settings.max_body_bytes,
        middlewares=[edge_middleware],
        # aiohttp's keep-alive timer also runs from connection start until a request's head
        # is complete: it is the header-read timeout of slow clients (and the idle timeout)
        handler_args={"max_field_size": 65536, "keepalive_timeout": settings.header_timeout_s},
    )
    app[SETTINGS] = settings
    app[STORE] = store or make_store(settings)
    app[POLICIES] = PolicyCache(app[STORE])
    app[CATALOG] = PriceBook.load_default()  # the catalog with stored price versions over it
    app[EVENTS] = EventBus()
    app[METRICS] = Metrics(settings, app[STORE], app[POLICIES])
    app[ALERTS] = Alerts(settings, app[STORE], app[EVENTS], app[POLICIES], app[METRICS])
    app[ALLOCATIONS] = Allocations(app[STORE], app[CATALOG], ZoneInfo(settings.timezone),
                                   reservation_ttl_s=settings.reservation_ttl_s,
                                   events=app[EVENTS], alerts=app[ALERTS])
    app[KEYS] = KeyRing(app[STORE])
    app[STORE_SEEDED] = asyncio.Event()
    app.cleanup_ctx.extend([_store_ctx, _redis_ctx, _http_ctx, _admin_ctx, _loops_ctx,
                            _observe_ctx])
    app.cleanup_ctx.append(prices_ctx)  # price book refresh, update schedule
    app.cleanup_ctx.append(hermes_ctx)  # optional service registry (HERMES_URL)
    app.cleanup_ctx.append(mcp_ctx)  # MCP at /api/mcp: the SDK loads on its first request
    app.cleanup_ctx.append(drift_ctx)  # with a ledger: counters compared with it, alerts
    app.add_subapp(PREFIX, admin_app())  # `/api/...`: its own error, access middlewares
    app.router.add_routes(root_routes())
    app.router.add_routes(app[METRICS].routes())
    ws.setup(app)
    dashboard.setup(app)  # `/` and `/ui/...`: before the catch-all
    app.router.add_route("*", "/{provider}/{tail:.*}", _proxy_handler)
    app.on_response_prepare.append(stamp_overhead)  # X-Budget-Overhead-Ms on proxy answers
    return app


async def _log_summary(app: web.Application) -> None:
    """One block at start-up saying how this proxy is set up (no secret in it)."""
    settings = app[SETTINGS]
    policies = ([p.policy_id for p in app[POLICIES].policies] if app[STORE_SEEDED].is_set()
                else None)
    for line in logs.startup_summary(settings, policies):
        log.info("start-up: %s", line)
    if settings.open_admin:
        log.warning("start-up: BUDGET_ALLOW_OPEN_ADMIN=true: the admin API on %s has NO "
                    "token: anyone who can reach this port can change or delete budgets",
                    settings.host)


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop's loop when it is installed (the `fast` extra, on in the Docker image), else
    asyncio's."""
    try:
        import uvloop  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


def run(settings: Settings, *, reuse_port: bool = False) -> None:
    """Serve until stopped, on uvloop when installed. `reuse_port`: several processes share
    the port (SO_REUSEPORT; the kernel spreads connections over them)."""
    logs.install(settings.log_level)
    loop = new_event_loop()
    asyncio.set_event_loop(loop)
    app = create_app(settings)
    app.on_startup.append(_log_summary)  # after the cleanup contexts: policies are loaded
    log.info("start-up: event loop %s.%s", type(loop).__module__, type(loop).__name__)
    web.run_app(app, host=settings.host, port=settings.port, reuse_port=reuse_port or None,
                access_log=None, print=lambda msg: log.info("%s", msg.strip()), loop=loop)


class WorkersRefused(ValueError):
    """`--workers N` with a store that cannot be shared by several processes."""


def serve(settings: Settings, workers: int = 1) -> int:
    """Serve in this process, or in `workers` processes on one port (SO_REUSEPORT: the kernel
    spreads connections over them). Several workers need the Redis store: it is their shared
    state, so every limit stays exact across them as across replicas; the embedded store is
    refused. Each worker keeps its own settlement journal (worker 0 in BUDGET_DATA_DIR, the
    others in `worker-<i>/` under it): a journal is replayed only by the process that wrote
    it, or by a later one with the same worker index. Returns the exit code: when a worker
    exits, the others are stopped; SIGTERM and SIGINT stop them all."""
    if workers <= 1:
        run(settings)
        return 0
    if not settings.redis_url:
        raise WorkersRefused(
            f"--workers {workers} needs the Redis store (BUDGET_REDIS_URL): the embedded store "
            "is one process's SQLite file, so limits would not hold across workers; run one "
            "worker, or set BUDGET_REDIS_URL")
    # spawned, not forked: each worker is a fresh interpreter with its own per-process state
    # (the id tag of `models.new_id`, random seeds), so no two workers share an id
    spawn = multiprocessing.get_context("spawn")
    processes = [
        spawn.Process(target=_worker, name=f"budget-proxy-worker-{i}",
                     args=(settings.model_copy(update={"data_dir": _worker_dir(settings, i)}),))
        for i in range(workers)
    ]
    for process in processes:
        process.start()

    stopping: set[int] = set()

    def stop_all(signum: int, _frame: object) -> None:
        for i, process in enumerate(processes):
            if i not in stopping and process.is_alive():
                stopping.add(i)  # once: a second SIGTERM would cut the graceful shutdown
                process.terminate()  # SIGTERM: aiohttp shuts down gracefully

    signal.signal(signal.SIGTERM, stop_all)
    signal.signal(signal.SIGINT, stop_all)
    wait_for_exit([p.sentinel for p in processes])  # the first worker to exit ...
    stop_all(signal.SIGTERM, None)  # ... stops the others
    for process in processes:
        process.join()
    return max(abs(p.exitcode or 0) for p in processes)


def _worker(settings: Settings) -> None:
    """One worker, in its own process group: a Ctrl-C in the terminal reaches the parent
    only, which stops each worker once. Stopped (SIGTERM) if the parent dies, even by
    SIGKILL (Linux)."""
    os.setpgrp()
    if sys.platform == "linux":
        pr_set_pdeathsig = 1
        ctypes.CDLL(None).prctl(pr_set_pdeathsig, signal.SIGTERM)
    run(settings, reuse_port=True)


def _worker_dir(settings: Settings, index: int) -> Path:
    return settings.data_dir if index == 0 else settings.data_dir / f"worker-{index}"

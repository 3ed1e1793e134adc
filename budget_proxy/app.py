"""The aiohttp application: one port for the proxy routes, the admin API, health and metrics.

Each long-lived resource has its own `cleanup_ctx` generator (store, upstream client session,
background loops), so cleanup runs if and only if its startup did.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

from budget_proxy import tokens
from budget_proxy.api import all_routes
from budget_proxy.api.common import auth_middleware
from budget_proxy.appkeys import CATALOG, EVENTS, POLICIES, PROXY, SETTINGS, STORE
from budget_proxy.config import Settings
from budget_proxy.events import EventBus
from budget_proxy.policy_cache import PolicyCache
from budget_proxy.pricing import PriceCatalog
from budget_proxy.proxy import Proxy
from budget_proxy.store.base import Store, StoreError
from budget_proxy.store.sqlite import SqliteStore

log = logging.getLogger(__name__)


POLICY_POLL_INTERVAL_S = 1.0  # fallback convergence when a change notice is missed


def make_store(settings: Settings) -> Store:
    if settings.redis_url:
        from budget_proxy.store.redis import RedisStore

        return RedisStore(settings.redis_url, fail_mode=settings.fail_mode,
                          data_dir=settings.data_dir)
    return SqliteStore(settings.data_dir)


async def _store_ctx(app: web.Application) -> AsyncIterator[None]:
    # tokenizer set-up holds the GIL for a while: finish it before serving traffic
    await asyncio.to_thread(tokens.warm_up)
    store = app[STORE]
    await store.start()
    policies = app[POLICIES]
    await policies.refresh(force=True)
    yield
    await store.close()


async def _http_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    timeout = aiohttp.ClientTimeout(
        total=settings.upstream_timeout_s, sock_connect=settings.upstream_connect_timeout_s
    )
    connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300)
    session = aiohttp.ClientSession(
        timeout=timeout, connector=connector, auto_decompress=True,
        skip_auto_headers=("User-Agent",),
    )
    proxy = Proxy(settings, app[STORE], app[CATALOG], app[POLICIES], session)
    app[PROXY] = proxy
    yield
    await proxy.drain()
    await session.close()


async def _loops_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    store = app[STORE]

    async def reaper() -> None:
        while True:
            await asyncio.sleep(settings.reaper_interval_s)
            try:
                released = await store.reap_expired()
                if released:
                    log.warning("released %d expired reservations", released)
            except StoreError as exc:
                log.warning("reaper: %s", exc)

    tasks = [
        asyncio.create_task(reaper(), name="reaper"),
        asyncio.create_task(app[POLICIES].poll(POLICY_POLL_INTERVAL_S), name="policy-poll"),
    ]
    yield
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task


async def _proxy_handler(request: web.Request) -> web.StreamResponse:
    return await request.app[PROXY].handle(request)


def create_app(settings: Settings, store: Store | None = None) -> web.Application:
    app = web.Application(
        client_max_size=settings.max_body_bytes, middlewares=[auth_middleware],
        handler_args={"max_field_size": 65536},
    )
    app[SETTINGS] = settings
    app[STORE] = store or make_store(settings)
    app[POLICIES] = PolicyCache(app[STORE])
    app[CATALOG] = PriceCatalog.load_default()
    app[EVENTS] = EventBus()
    app.cleanup_ctx.extend([_store_ctx, _http_ctx, _loops_ctx])
    app.router.add_routes(all_routes())
    app.router.add_route("*", "/{provider}/{tail:.*}", _proxy_handler)
    return app


def run(settings: Settings) -> None:
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    web.run_app(create_app(settings), host=settings.host, port=settings.port,
                access_log=None, print=lambda msg: log.info("%s", msg.strip()))

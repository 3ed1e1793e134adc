"""Optional registration with a Hermes service registry (`HERMES_URL`).

On start the proxy registers its capabilities and endpoint, sends a heartbeat while it runs,
and unregisters on shutdown. The registry being down never stops the proxy: failures are
logged and retried with the next heartbeat.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from aiohttp import web

from budget_proxy import __version__
from budget_proxy.appkeys import SETTINGS

log = logging.getLogger(__name__)

HEARTBEAT_INTERVAL_S = 30.0
REQUEST_TIMEOUT_S = 5.0
CAPABILITIES = ("budget_management", "allocation", "usage_tracking", "pricing", "reporting")


def registration(host: str, port: int) -> dict[str, Any]:
    endpoint = f"http://{host}:{port}"
    return {
        "component_id": "budget",
        "name": "budget-proxy",
        "version": __version__,
        "port": port,
        "endpoint": endpoint,
        "health_endpoint": f"{endpoint}/health",
        "capabilities": list(CAPABILITIES),
        "metadata": {"api": f"{endpoint}/api", "openapi": f"{endpoint}/api/openapi.json"},
    }


async def _post(session: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> bool:
    try:
        async with session.post(url, json=body) as resp:
            if resp.status < 300:
                return True
            log.warning("hermes %s answered %s", url, resp.status)
    except (aiohttp.ClientError, TimeoutError) as exc:
        log.warning("hermes %s unreachable: %s", url, exc)
    return False


async def hermes_ctx(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: register, heartbeat, unregister; a no-op without HERMES_URL."""
    settings = app[SETTINGS]
    if not settings.hermes_url:
        yield
        return
    base = settings.hermes_url.rstrip("/")
    body = registration(settings.host, settings.port)
    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S))

    async def heartbeat() -> None:
        registered = await _post(session, f"{base}/registration/register", body)
        while True:
            await asyncio.sleep(HEARTBEAT_INTERVAL_S)
            if registered:
                registered = await _post(session, f"{base}/registration/heartbeat",
                                         {"component_id": body["component_id"]})
            else:
                registered = await _post(session, f"{base}/registration/register", body)

    task = asyncio.create_task(heartbeat(), name="hermes-heartbeat")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await _post(session, f"{base}/registration/unregister", {"component_id": body["component_id"]})
    await session.close()

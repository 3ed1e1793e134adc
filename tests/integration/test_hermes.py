"""Optional Hermes registration against a local registry stand-in."""

from __future__ import annotations

import asyncio

from aiohttp import web
from aiohttp.test_utils import TestServer


async def test_registers_and_unregisters_with_hermes(proxy_factory):
    seen: list[tuple[str, dict]] = []

    async def record(request: web.Request) -> web.Response:
        seen.append((request.path, await request.json()))
        return web.json_response({"ok": True})

    registry = web.Application()
    registry.router.add_post("/api/registration/{action}", record)
    server = TestServer(registry, host="127.0.0.1")
    await server.start_server()
    try:
        proxy = await proxy_factory(hermes_url=str(server.make_url("/api")))
        for _ in range(50):
            if seen:
                break
            await asyncio.sleep(0.05)
        path, body = seen[0]
        assert path == "/api/registration/register"
        assert body["component_id"] == "budget" and "budget_management" in body["capabilities"]
        await proxy.server.close()
        assert seen[-1][0] == "/api/registration/unregister"
    finally:
        await server.close()


async def test_an_unreachable_registry_does_not_stop_the_proxy(proxy_factory):
    proxy = await proxy_factory(hermes_url="http://127.0.0.1:9/api")
    resp = await proxy.api("GET", "/health")
    assert resp.status_code == 200

"""Admin API tests run against the real server (in-process, on a real port) with tokens set:
`api.admin(...)`, `api.viewer(...)` and `api.anon(...)` send the request as each caller."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx
import pytest

ADMIN_TOKEN = "admin-token-for-tests"
VIEWER_TOKEN = "viewer-token-for-tests"


@dataclass
class Api:
    proxy: Any

    async def send(self, token: str | None, method: str, path: str, **kw: Any) -> httpx.Response:
        headers = dict(kw.pop("headers", {}) or {})
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        return await self.proxy.api(method, path, headers=headers, **kw)

    async def admin(self, method: str, path: str, **kw: Any) -> httpx.Response:
        return await self.send(ADMIN_TOKEN, method, path, **kw)

    async def viewer(self, method: str, path: str, **kw: Any) -> httpx.Response:
        return await self.send(VIEWER_TOKEN, method, path, **kw)

    async def anon(self, method: str, path: str, **kw: Any) -> httpx.Response:
        return await self.send(None, method, path, **kw)

    async def ok(self, method: str, path: str, status: int = 200, **kw: Any) -> Any:
        resp = await self.admin(method, path, **kw)
        assert resp.status_code == status, resp.text
        return resp.json() if resp.headers.get("content-type", "").startswith(
            "application/json") else resp.text


@pytest.fixture
async def api(proxy_factory) -> Api:
    return Api(await proxy_factory(admin_token=ADMIN_TOKEN, viewer_token=VIEWER_TOKEN))


def assert_invalid(resp: httpx.Response, field: str, status: int = 422) -> None:
    """A validation error naming `field`."""
    assert resp.status_code == status, resp.text
    error = resp.json()["error"]
    assert error["type"] == "validation_error"
    assert field in {d["field"] for d in error["details"]}, error
    assert field in error["message"]


def assert_auth(resp: httpx.Response, status: int) -> None:
    assert resp.status_code == status, resp.text
    assert resp.json()["error"]["type"] == ("unauthorized" if status == 401 else "forbidden")

"""The access matrix: every admin route x every caller (no token, a wrong one, the viewer
token, a `bp-` virtual key, the admin token) in each token configuration (none, admin only,
admin and viewer), against the access each route declares in the OpenAPI document; the
WebSockets (bearer header and `?token=`); and the configurations `serve` refuses to start
with (an empty token, an open admin API on a non-loopback address)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest

from budget_proxy.api.common import READ_ONLY_POSTS
from tests.conftest import free_port

ADMIN, VIEWER = "matrix-admin-token", "matrix-viewer-token"
CALLERS: dict[str, str | None] = {
    "none": None, "wrong": "not-a-token", "viewer": VIEWER, "virtual_key": "bp-some-virtual-key",
    "admin": ADMIN,
}
CONFIGS: dict[str, dict[str, str]] = {
    "no tokens": {},
    "admin only": {"admin_token": ADMIN},
    "admin and viewer": {"admin_token": ADMIN, "viewer_token": VIEWER},
}
DENIED = (401, 403)
WS_TIMEOUT = aiohttp.ClientWSTimeout(ws_close=10)


def declared_access(op: dict[str, Any]) -> str:
    """public, read or admin, as the OpenAPI document declares the operation."""
    security = op.get("security")
    if security is None:
        return "public"
    return "read" if {} in security else "admin"


def expected(access: str, caller: str, config: dict[str, str]) -> int | None:
    """The refusal status for this caller, or None when the caller gets through."""
    if caller == "virtual_key":
        return None if access == "public" else 403
    if "admin_token" not in config or access == "public" or caller == "admin":
        return None
    if access == "read":
        if "viewer_token" not in config or caller == "viewer":
            return None
        return 401
    return 403 if caller == "viewer" and "viewer_token" in config else 401


@pytest.mark.parametrize(("access", "caller", "config", "status"), [
    ("admin", "viewer", "admin and viewer", 403),
    ("admin", "viewer", "admin only", 401),
    ("read", "none", "admin only", None),
    ("read", "none", "admin and viewer", 401),
    ("read", "virtual_key", "no tokens", 403),
    ("public", "virtual_key", "admin and viewer", None),
    ("admin", "wrong", "no tokens", None),
])
def test_expected_table(access, caller, config, status):
    assert expected(access, caller, CONFIGS[config]) == status


def concrete(path: str) -> str:
    return re.sub(r"{[^}]+}", "matrix-x", path)


@pytest.mark.parametrize("config_name", list(CONFIGS))
async def test_every_admin_route_for_every_caller(proxy_factory, config_name):
    config = CONFIGS[config_name]
    proxy = await proxy_factory(**config)
    async with httpx.AsyncClient(timeout=30) as client:
        doc = (await client.get(f"{proxy.url}/api/openapi.json")).json()
        ops = [(method.upper(), path, op) for path, item in doc["paths"].items()
               for method, op in item.items() if path.startswith("/api/")]
        assert len(ops) > 25
        for method, path, op in ops:
            access = declared_access(op)
            if method == "POST" and path in READ_ONLY_POSTS:
                assert access == "read", path
            for caller, token in CALLERS.items():
                headers = {"Authorization": f"Bearer {token}"} if token else {}
                resp = await client.request(method, f"{proxy.url}{concrete(path)}",
                                            headers=headers,
                                            json={} if method in ("POST", "PUT", "PATCH")
                                            else None)
                want = expected(access, caller, config)
                where = (config_name, caller, method, path, resp.status_code, resp.text[:200])
                if want is None:
                    assert resp.status_code not in DENIED, where
                else:
                    assert resp.status_code == want, where
                    assert resp.json()["error"]["type"] == (
                        "unauthorized" if want == 401 else "forbidden"), where
                assert resp.status_code < 500, where


def ws_expected(caller: str, config: dict[str, str]) -> bool:
    """WebSockets need a configured token whenever any token is set."""
    if not config:
        return True
    return caller == "admin" or (caller == "viewer" and "viewer_token" in config)


@pytest.mark.parametrize("config_name", list(CONFIGS))
async def test_websockets_need_a_token_whenever_one_is_set(proxy_factory, config_name):
    config = CONFIGS[config_name]
    proxy = await proxy_factory(**config)
    async with aiohttp.ClientSession() as session:
        for caller, token in CALLERS.items():
            for how in ("header", "query"):
                url = f"{proxy.url}/ws/budget/updates"
                headers = {}
                if token and how == "header":
                    headers["Authorization"] = f"Bearer {token}"
                elif token:
                    url += f"?token={token}"
                where = (config_name, caller, how)
                if ws_expected(caller, config):
                    async with session.ws_connect(url, headers=headers, timeout=WS_TIMEOUT) as ws:
                        assert not ws.closed, where
                else:
                    with pytest.raises(aiohttp.WSServerHandshakeError) as err:
                        async with session.ws_connect(url, headers=headers, timeout=WS_TIMEOUT):
                            pass
                    assert err.value.status == 401, where


# start-up refusals ---------------------------------------------------------------------------
def serve_env(tmp_path: Path, **env: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("BUDGET_")}
    base.update({"BUDGET_PORT": str(free_port()), "BUDGET_HOST": "127.0.0.1",
                 "BUDGET_DATA_DIR": str(tmp_path / "data")})
    base.update(env)
    return base


@pytest.mark.parametrize(("env", "message"), [
    ({"BUDGET_ADMIN_TOKEN": ""}, "BUDGET_ADMIN_TOKEN: is set but empty"),
    ({"BUDGET_ADMIN_TOKEN": "   "}, "BUDGET_ADMIN_TOKEN: is set but empty"),
    ({"BUDGET_ADMIN_TOKEN": "a", "BUDGET_VIEWER_TOKEN": ""}, "BUDGET_VIEWER_TOKEN: is set but"),
    ({"BUDGET_HOST": "0.0.0.0"}, "with no BUDGET_ADMIN_TOKEN"),
    ({"BUDGET_HOST": "::"}, "with no BUDGET_ADMIN_TOKEN"),
    ({"BUDGET_HOST": "192.168.10.7"}, "with no BUDGET_ADMIN_TOKEN"),
    ({"BUDGET_HOST": "proxy.internal"}, "with no BUDGET_ADMIN_TOKEN"),
    ({"BUDGET_HOST": "0.0.0.0", "BUDGET_ALLOW_OPEN_ADMIN": "false"}, "BUDGET_ALLOW_OPEN_ADMIN"),
])
def test_serve_refuses_to_start(tmp_path, env, message):
    done = subprocess.run([sys.executable, "-m", "budget_proxy", "serve"],
                          env=serve_env(tmp_path, **env), capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2, done.stderr[-2000:]
    assert message in done.stderr, done.stderr[-2000:]
    assert "Traceback" not in done.stderr


def test_open_admin_allowed_explicitly_starts_with_a_loud_warning(tmp_path):
    env = serve_env(tmp_path, BUDGET_HOST="0.0.0.0", BUDGET_ALLOW_OPEN_ADMIN="true")
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "budget_proxy", "serve"], env=env,
                                   stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        healthy = False
        while time.monotonic() < deadline and process.poll() is None and not healthy:
            try:
                healthy = httpx.get(f"http://127.0.0.1:{env['BUDGET_PORT']}/health",
                                    timeout=1).status_code == 200
            except httpx.HTTPError:
                time.sleep(0.1)
        assert healthy, log.read_text()[-2000:]
        text = log.read_text()
        assert re.search(r"WARNING .*BUDGET_ALLOW_OPEN_ADMIN=true: the admin API on 0\.0\.0\.0 "
                         r"has NO token", text), text[-2000:]
        assert "admin token: NOT SET" in text
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)

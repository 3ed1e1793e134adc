"""Shared fixtures: a fake provider on a real port, and the proxy as a real server in front."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from budget_proxy.app import create_app
from budget_proxy.appkeys import PROXY, STORE
from budget_proxy.config import Settings
from budget_proxy.testing.fake_provider import FakeProvider

SHUTDOWN_DEADLINE_S = 60.0  # a proxy's graceful shutdown; only a hung one reaches it
PROXY_OPENAI_KEY = "sk-proxy-held-openai"
PROXY_ANTHROPIC_KEY = "sk-ant-proxy-held"


@pytest.fixture
async def fake() -> AsyncIterator[FakeProvider]:
    provider = FakeProvider()
    async with provider.serve() as url:
        provider.url = url  # type: ignore[attr-defined]
        yield provider


@pytest.fixture(autouse=True)
def provider_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", PROXY_OPENAI_KEY)
    monkeypatch.setenv("ANTHROPIC_API_KEY", PROXY_ANTHROPIC_KEY)
    for name in list(os.environ):
        if name.startswith("BUDGET_"):
            monkeypatch.delenv(name)


def proxy_settings(fake_url: str, data_dir: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "data_dir": data_dir,
        "openai_base_url": f"{fake_url}/v1",
        "anthropic_base_url": fake_url,
        "reaper_interval_s": 0.2,
        "component": "sidecar-default",
    }
    values.update(overrides)
    return Settings(**values)


@dataclass
class RunningProxy:
    url: str
    app: web.Application
    server: TestServer

    @property
    def store(self):
        return self.app[STORE]

    @property
    def proxy(self):
        return self.app[PROXY]

    async def api(self, method: str, path: str, **kw: object) -> httpx.Response:
        async with httpx.AsyncClient(timeout=10) as client:
            return await client.request(method, f"{self.url}{path}", **kw)  # type: ignore[arg-type]


@pytest.fixture
async def proxy_factory(fake: FakeProvider, tmp_path: Path):
    servers: list[TestServer] = []

    async def start(**overrides: object) -> RunningProxy:
        data_dir = overrides.pop("data_dir", tmp_path / "data")  # replicas need their own
        settings = proxy_settings(fake.url, data_dir, **overrides)  # type: ignore[attr-defined,arg-type]
        app = create_app(settings)
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        servers.append(server)
        return RunningProxy(str(server.make_url("")).rstrip("/"), app, server)

    yield start
    for server in servers:
        # a shutdown that never ends fails the test that left it, instead of hanging the run
        async with asyncio.timeout(SHUTDOWN_DEADLINE_S):
            await server.close()


@pytest.fixture
async def proxy(proxy_factory) -> RunningProxy:
    return await proxy_factory()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class ProxyProcess:
    url: str
    process: subprocess.Popen[bytes]
    env: dict[str, str]

    def stop(self, sig: int | None = None) -> None:
        if self.process.poll() is None:
            if sig is None:
                self.process.terminate()
            else:
                self.process.send_signal(sig)
            self.process.wait(timeout=20)


def start_proxy_process(env_overrides: dict[str, str], port: int | None = None) -> ProxyProcess:
    """`budget-proxy serve` as a real subprocess, waiting until /health answers."""
    port = port or free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BUDGET_")}
    env.update({"BUDGET_PORT": str(port), "BUDGET_HOST": "127.0.0.1", **env_overrides})
    process = subprocess.Popen(
        [sys.executable, "-m", "budget_proxy", "serve"], env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"proxy exited: {process.stderr.read().decode()[-2000:]}")  # type: ignore[union-attr]
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return ProxyProcess(url, process, env)
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    process.kill()
    raise RuntimeError("proxy did not become healthy")


@pytest.fixture
def proxy_process_factory() -> Iterator:
    started: list[ProxyProcess] = []

    def start(env_overrides: dict[str, str], port: int | None = None) -> ProxyProcess:
        proc = start_proxy_process(env_overrides, port)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.process.poll() is None:
            proc.process.kill()
            proc.process.wait()

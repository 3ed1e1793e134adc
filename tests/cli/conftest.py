"""A live stack for CLI tests: the fake provider and `budget-proxy serve` as real processes
(the CLI is synchronous, so the server must not share its thread), started once per module.

`invoke(live, ...)` runs the CLI in-process through click's runner; `run(live, ...)` runs the
installed `budget` command as a subprocess. Both point at the live server through
`BUDGET_URL` / `BUDGET_ADMIN_TOKEN`, as a user's shell would.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner, Result

from budget_proxy.cli import main
from tests.conftest import ProxyProcess, start_proxy_process

ADMIN_TOKEN = "cli-admin-token"
VIEWER_TOKEN = "cli-viewer-token"
REPO = Path(__file__).parents[2]


@dataclass
class Live:
    url: str
    fake_url: str
    env: dict[str, str] = field(default_factory=dict)
    proxy: ProxyProcess | None = None

    def chat(self, model: str = "gpt-4o-mini", max_tokens: int = 100,
             **headers: str) -> httpx.Response:
        return httpx.post(f"{self.url}/v1/chat/completions", timeout=30, headers=headers,
                          json={"model": model, "max_tokens": max_tokens,
                                "messages": [{"role": "user", "content": "hi"}]})

    def api(self, method: str, path: str, **kw) -> httpx.Response:
        return httpx.request(method, f"{self.url}{path}", timeout=30,
                             headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, **kw)


def start_fake(prompt_tokens: int = 50, completion_tokens: int = 100) -> tuple[
        subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "budget_proxy.testing.fake_provider", "--port", "0",
         "--prompt-tokens", str(prompt_tokens), "--completion-tokens", str(completion_tokens)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    match = re.search(r"(http://\S+)", line)
    if match is None:
        proc.kill()
        raise RuntimeError(f"fake provider did not start: {line!r}")
    return proc, match.group(1).rstrip("/")


@pytest.fixture(scope="module")
def live(request: pytest.FixtureRequest, tmp_path_factory) -> Iterator[Live]:
    """The stack; a test module's `LIVE_ENV` dict changes the server's environment (a None
    value removes a variable)."""
    fake, fake_url = start_fake()
    data = tmp_path_factory.mktemp("data")
    env = {"BUDGET_DATA_DIR": str(data), "BUDGET_OPENAI_BASE_URL": f"{fake_url}/v1",
           "BUDGET_ANTHROPIC_BASE_URL": fake_url, "BUDGET_ADMIN_TOKEN": ADMIN_TOKEN,
           "BUDGET_VIEWER_TOKEN": VIEWER_TOKEN, "BUDGET_REAPER_INTERVAL_S": "0.2",
           "BUDGET_PRICE_SOURCES": f"file={REPO / 'pricing' / 'catalog.json'}|1.0",
           "OPENAI_API_KEY": "sk-held-by-proxy", "ANTHROPIC_API_KEY": "sk-ant-held"}
    for name, value in getattr(request.module, "LIVE_ENV", {}).items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    try:
        proxy = start_proxy_process(env)
    except Exception:
        fake.kill()
        raise
    yield Live(proxy.url, fake_url, {"BUDGET_URL": proxy.url, "BUDGET_ADMIN_TOKEN": ADMIN_TOKEN},
               proxy)
    for proc in (proxy.process, fake):
        proc.kill()
        proc.wait()


def invoke(live: Live, *args: str, token: str | None = ADMIN_TOKEN, url: str | None = None
           ) -> Result:
    env = {"BUDGET_URL": url or live.url, "BUDGET_ADMIN_TOKEN": token}
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


def budget_command() -> list[str]:
    """The installed `budget` script beside this Python, else `python -m budget_proxy`."""
    script = Path(sys.executable).parent / "budget"
    found = str(script) if script.exists() else shutil.which("budget")
    return [found] if found else [sys.executable, "-m", "budget_proxy"]


def run(live: Live, *args: str, token: str | None = ADMIN_TOKEN, url: str | None = None,
        shell: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BUDGET_")}
    env["BUDGET_URL"] = url or live.url
    if token is not None:
        env["BUDGET_ADMIN_TOKEN"] = token
    cmd: list[str] | str = shell if shell is not None else [*budget_command(), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env,
                          shell=shell is not None)

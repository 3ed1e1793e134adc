"""The installed `budget` command as a subprocess against a live server, and `serve` with
policy files (loaded and reconciled at start-up; a bad file refuses to start)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx

from budget_proxy.cli import EXIT_AUTH, EXIT_UNREACHABLE, EXIT_USAGE
from tests.cli.conftest import REPO, budget_command, run
from tests.conftest import free_port, start_proxy_process


def test_commands_as_a_user_runs_them(live):
    made = run(live, "set_limit", "daily", "100000", "--tokens", "--component", "sub")
    assert made.returncode == 0, made.stderr
    assert "daily hard_limit 100,000 tokens" in made.stdout
    alloc = run(live, "--json", "allocate", "create", "--context-id", "sub-task",
                "--component", "sub", "--tokens", "2000")
    aid = json.loads(alloc.stdout)["allocation_id"]
    status = run(live, "status")
    assert status.returncode == 0 and "component=sub" in status.stdout and aid in status.stdout
    assert live.chat(**{"X-Budget-Context": "sub-task"}).status_code == 200
    released = run(live, "allocate", "release", aid)
    assert "used 150 of 2000 tokens, 1850 returned to the budget" in released.stdout
    rows = json.loads(run(live, "status", "--json").stdout)["policies"]
    row = next(r for r in rows if r["scope"] == "component=sub")
    assert (row["spent"], row["reserved"]) == (150, 0)  # the rest is back in the budget


def test_exit_codes(live):
    down = run(live, "status", url=f"http://127.0.0.1:{free_port()}")
    assert down.returncode == EXIT_UNREACHABLE and "cannot reach" in down.stderr
    assert run(live, "status", token="nope").returncode == EXIT_AUTH
    assert run(live, "set-limit", "daily").returncode == EXIT_USAGE
    assert run(live, "get_usage", "daily", "--days", "0").returncode == EXIT_USAGE


def serve_env(tmp_path: Path, policies: Path) -> dict[str, str]:
    return {"BUDGET_DATA_DIR": str(tmp_path / "data"), "BUDGET_POLICIES_DIR": str(policies)}


def test_serve_refuses_a_bad_policy_file_naming_file_and_key(tmp_path: Path):
    policies = tmp_path / "conf"
    policies.mkdir()
    (policies / "team.toml").write_text(
        '[policy.team-daily]\nperiod = "fortnightly"\ncost_limit = 1\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("BUDGET_")}
    env.update(serve_env(tmp_path, policies), BUDGET_PORT=str(free_port()))
    result = subprocess.run([*budget_command(), "serve"], capture_output=True, text=True,
                            timeout=60, env=env, cwd=tmp_path)
    assert result.returncode == EXIT_USAGE
    assert f"{policies / 'team.toml'}: policy.team-daily.period" in result.stderr


def test_serve_loads_policy_files_and_reconciles_on_restart(tmp_path: Path):
    policies = tmp_path / "policies"
    policies.mkdir()
    for example in ("team-daily.toml", "soft-limit-gpt-4o.toml"):
        (policies / example).write_text((REPO / "policies" / "examples" / example).read_text())
    env = serve_env(tmp_path, policies)

    def policy_ids(url: str) -> list[str]:
        return sorted(p["policy_id"] for p in httpx.get(f"{url}/api/policies").json())

    first = start_proxy_process(env)
    try:
        assert policy_ids(first.url) == ["gpt-4o-soft", "research-daily"]
        budgets = [b["budget_id"] for b in httpx.get(f"{first.url}/api/budgets").json()]
        assert budgets == ["default", "research"]
    finally:
        first.stop()
    text = (policies / "team-daily.toml").read_text().replace("cost_limit = 20.0",
                                                               "cost_limit = 25.0")
    (policies / "team-daily.toml").write_text(text)
    (policies / "soft-limit-gpt-4o.toml").unlink()
    second = start_proxy_process(env)
    try:
        assert policy_ids(second.url) == ["research-daily"]  # updated, removed, not duplicated
        policy = httpx.get(f"{second.url}/api/policies/research-daily").json()
        assert policy["cost_limit"] == 25.0
    finally:
        second.stop()


def test_python_dash_m_works_too(live):
    out = subprocess.run([sys.executable, "-m", "budget_proxy", "--url", live.url, "status"],
                         capture_output=True, text=True, timeout=60,
                         env={**os.environ, "BUDGET_ADMIN_TOKEN": live.env["BUDGET_ADMIN_TOKEN"]})
    assert out.returncode == 0, out.stderr

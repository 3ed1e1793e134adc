"""The `budget` CLI through click's runner against a live server (a real `budget-proxy
serve` process in front of the fake provider): every command, tables and JSON, aliases,
and the exit codes of errors."""

from __future__ import annotations

import json
import time
from pathlib import Path

from budget_proxy.cli import EXIT_API, EXIT_AUTH, EXIT_UNREACHABLE, EXIT_USAGE
from tests.cli.conftest import VIEWER_TOKEN, invoke
from tests.conftest import free_port


def as_json(result) -> object:
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_set_limit_and_status_tables_and_json(live):
    made = invoke(live, "set-limit", "daily", "12.5", "--component", "cli-a", "--name", "cli-a")
    assert made.exit_code == 0 and "daily hard_limit $12.5" in made.output
    alias = invoke(live, "set_limit", "weekly", "5000", "--tokens", "--component", "cli-a",
                   "--policy-type", "warn")
    assert alias.exit_code == 0 and "weekly warn 5,000 tokens" in alias.output
    table = invoke(live, "status")
    assert table.exit_code == 0
    assert "POLICY_ID" in table.output and "component=cli-a" in table.output
    front = as_json(invoke(live, "--json", "status"))
    back = as_json(invoke(live, "status", "--json", "--period", "weekly"))
    assert {p["period"] for p in back["policies"]} == {"weekly"}
    assert len(front["policies"]) >= 2 and "allocations" in front


def test_get_usage(live):
    assert live.chat(**{"X-Budget-Component": "cli-usage"}).status_code == 200
    out = invoke(live, "get-usage", "daily", "--days", "7", "--provider", "openai",
                 "--component", "cli-usage")
    assert out.exit_code == 0, out.output
    assert "daily usage since" in out.output and "TOTAL" in out.output
    assert "(provider=openai, component=cli-usage)" in out.output
    data = as_json(invoke(live, "get_usage", "daily", "--component", "cli-usage", "--json",
                          "--group-by", "model"))
    assert data["totals"]["requests"] == 1 and data["totals"]["total_tokens"] == 150
    assert data["groups"][0]["model"] == "gpt-4o-mini"
    bad = invoke(live, "get-usage", "fortnightly")
    assert bad.exit_code == EXIT_USAGE


def test_allocate_create_list_show_release(live):
    invoke(live, "set-limit", "daily", "100000", "--tokens", "--component", "cli-alloc")
    made = invoke(live, "allocate", "create", "--context-id", "task-cli", "--component",
                  "cli-alloc", "--tokens", "1000", "--tier", "REMOTE_HEAVYWEIGHT",
                  "--priority", "8")
    assert made.exit_code == 0, made.output
    aid = made.output.split()[1].rstrip(":")
    assert aid.startswith("alloc_") and "1000 tokens for context task-cli" in made.output
    listed = invoke(live, "allocate", "list", "--component", "cli-alloc")
    assert aid in listed.output and "remote_heavyweight" in listed.output
    assert "active allocations" in invoke(live, "status").output
    assert live.chat(**{"X-Budget-Allocation": aid}).status_code == 200
    shown = as_json(invoke(live, "allocate", "show", aid, "--json"))
    assert shown["tokens_used"] == 150
    released = invoke(live, "allocate", "release", aid)
    assert released.exit_code == 0
    assert f"released {aid}: used 150 of 1000 tokens, 850 returned" in released.output
    assert aid not in invoke(live, "allocate", "list").output
    assert aid in invoke(live, "allocate", "list", "--all").output
    missing = invoke(live, "allocate", "release", "alloc_nope")
    assert missing.exit_code == EXIT_API and "404" in missing.output
    refused = invoke(live, "allocate", "create", "--context-id", "x", "--component", "y",
                     "--tokens", "0")
    assert refused.exit_code == EXIT_USAGE


def test_alerts_list_and_acknowledge(live):
    made = as_json(invoke(live, "--json", "set-limit", "daily", "160", "--tokens",
                          "--component", "cli-alerts", "--policy-type", "warn"))
    assert live.chat(**{"X-Budget-Component": "cli-alerts"}).status_code == 200
    for _ in range(100):  # alerts are raised off the request path
        alerts = as_json(invoke(live, "alerts", "list", "--json"))
        mine = [a for a in alerts if a["policy_id"] == made["policy_id"]]
        if mine:
            break
        time.sleep(0.1)
    assert mine, "no alert raised"
    alert_id = mine[0]["alert_id"]
    assert alert_id in invoke(live, "alerts", "list").output
    acked = invoke(live, "alerts", "acknowledge", alert_id, "--by", "ops")
    assert acked.exit_code == 0 and f"acknowledged {alert_id}" in acked.output
    assert alert_id not in invoke(live, "alerts", "list").output
    again = as_json(invoke(live, "alerts", "list", "--all", "--json"))
    assert any(a["alert_id"] == alert_id and a["acknowledged_by"] == "ops" for a in again)
    assert invoke(live, "alerts", "acknowledge", "alr_missing").exit_code == EXIT_API


def test_budgets(live):
    made = invoke(live, "budgets", "create", "CLI team", "--id", "cli-team", "--owner", "ana")
    assert made.exit_code == 0 and "budget cli-team: CLI team" in made.output
    assert "cli-team" in invoke(live, "budgets", "list").output
    invoke(live, "set-limit", "daily", "3", "--budget", "cli-team", "--component", "cli-b")
    shown = invoke(live, "budgets", "show", "cli-team")
    assert "ana" in shown.output and "component=cli-b" in shown.output
    assert invoke(live, "budgets", "delete", "cli-team").exit_code == EXIT_API  # has a policy
    gone = invoke(live, "budgets", "delete", "cli-team", "--cascade")
    assert gone.exit_code == 0 and "deleted budget cli-team" in gone.output


def test_keys(live):
    made = invoke(live, "keys", "create", "--component", "cli-keys", "--name", "k1")
    assert made.exit_code == 0
    secret = next(line.split()[1] for line in made.output.splitlines()
                  if line.startswith("secret:"))
    key_id = made.output.split()[1]
    assert secret.startswith("bp-") and "not shown again" in made.output
    listed = invoke(live, "keys", "list")
    assert key_id in listed.output and secret not in listed.output
    resp = live.chat(Authorization=f"Bearer {secret}")
    assert resp.status_code == 200
    records = live.api("GET", "/api/usage/records", params={"component": "cli-keys"}).json()
    assert len(records) == 1
    assert invoke(live, "keys", "revoke", key_id).exit_code == 0
    assert live.chat(Authorization=f"Bearer {secret}").status_code == 401
    assert invoke(live, "keys", "create").exit_code == EXIT_USAGE  # --component is required


def test_policies_validate_apply_list_delete(live, tmp_path: Path):
    path = tmp_path / "team.toml"
    path.write_text('[budget.cli-files]\nname = "From files"\n\n'
                    '[policy.cli-file-daily]\nbudget_id = "cli-files"\nperiod = "daily"\n'
                    'component = "cli-files"\ncost_limit = 7.5\n')
    ok = invoke(live, "policies", "validate", str(path))
    assert ok.exit_code == 0 and "ok: 1 policies, 1 budgets" in ok.output
    dry = invoke(live, "policies", "apply", str(path), "--dry-run")
    assert "would apply 1 policies" in dry.output
    assert "cli-file-daily" not in invoke(live, "policies", "list").output
    for _ in range(2):  # applying twice changes nothing
        applied = invoke(live, "policies", "apply", str(tmp_path))
        assert applied.exit_code == 0 and "applied 1 policies and 1 budgets" in applied.output
    policies = as_json(invoke(live, "policies", "list", "--json"))
    assert [p["source"] for p in policies if p["policy_id"] == "cli-file-daily"] == [
        f"apply:{path}"]
    assert "component=cli-files" in invoke(live, "policies", "list").output
    assert invoke(live, "policies", "delete", "cli-file-daily").exit_code == 0
    bad = tmp_path / "bad.toml"
    bad.write_text('[policy.x]\nperiod = "daily"\ncost_limt = 1\n')
    broken = invoke(live, "policies", "apply", str(bad))
    assert broken.exit_code == EXIT_USAGE
    assert f"{bad}: policy.x.cost_limt" in broken.output


def test_report(live, tmp_path: Path):
    live.chat(**{"X-Budget-Component": "cli-report"})
    text = invoke(live, "report", "daily", "--days", "2")
    assert text.exit_code == 0 and "by component:" in text.output and "cli-report" in text.output
    data = as_json(invoke(live, "report", "--json"))
    assert data["totals"]["requests"] >= 1
    out = tmp_path / "r.csv"
    written = invoke(live, "report", "--format", "csv", "--output", str(out))
    assert written.exit_code == 0 and out.read_text().startswith("section,window")


def test_error_exit_codes(live):
    down = invoke(live, "status", url=f"http://127.0.0.1:{free_port()}")
    assert down.exit_code == EXIT_UNREACHABLE and "cannot reach budget-proxy" in down.output
    no_token = invoke(live, "set-limit", "daily", "1", token=None)
    assert no_token.exit_code == EXIT_AUTH and "BUDGET_ADMIN_TOKEN" in no_token.output
    wrong = invoke(live, "status", token="wrong")
    assert wrong.exit_code == EXIT_AUTH
    viewer = invoke(live, "allocate", "create", "--context-id", "c", "--component", "c",
                    "--tokens", "5", token=VIEWER_TOKEN)
    assert viewer.exit_code == EXIT_AUTH and "403" in viewer.output
    assert invoke(live, "status", token=VIEWER_TOKEN).exit_code == 0
    assert invoke(live, "set-limit", "daily", "lots").exit_code == EXIT_USAGE
    assert invoke(live, "set-limit", "daily", "-5").exit_code == EXIT_USAGE
    assert invoke(live, "no-such-command").exit_code == EXIT_USAGE


def test_the_start_alias(live):
    result = invoke(live, "start", "--help")
    assert result.exit_code == 0 and "Run the proxy" in result.output

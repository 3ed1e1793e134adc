"""The policy commands a platform team uses, against a live server: `set-limit` updates the
same policy (and says so) or adds one with `--new`, warns about typos (refuses them with
`--strict`), counts the spend already recorded; `topup`, `keys create --daily`,
`policies replay`; money as money; idempotent release; a wrong token named as such."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import click
import pytest

from budget_proxy.cli import EXIT_AUTH, EXIT_USAGE, duration_s, limit_text, money
from tests.cli.conftest import invoke


def policies_of(live, component: str) -> list[dict]:
    return [p for p in live.api("GET", "/api/policies").json() if p.get("component") == component]


def record(live, cost: float, component: str, at: datetime | None = None) -> None:
    resp = live.api("POST", "/api/usage/record", json={
        "provider": "openai", "model": "gpt-4o-mini", "component": component,
        "input_tokens": 10, "output_tokens": 10, "input_cost": cost, "output_cost": 0,
        **({"timestamp": at.isoformat()} if at else {})})
    assert resp.status_code == 201, resp.text


@pytest.mark.parametrize(("usd", "text"), [
    (0.0000217500, "$0.000022"), (2.175e-05, "$0.000022"), (0.000196, "$0.000196"),
    (0, "$0.00"), (12.5, "$12.50"), (1234.5, "$1,234.50"), (0.01, "$0.01"),
])
def test_money_is_money(usd, text):
    assert money(usd) == text


@pytest.mark.parametrize(("field", "amount", "text"), [
    ("cost_limit", 5.0, "$5"), ("cost_limit", 0.0001, "$0.0001"),
    ("token_limit", 100000, "100,000 tokens"), ("request_limit", 3, "3 calls"),
    ("cost_limit", None, "none"),
])
def test_limits_carry_their_unit(field, amount, text):
    assert limit_text(field, amount) == text


@pytest.mark.parametrize(("text", "seconds"), [("90", 90), ("90s", 90), ("15m", 900),
                                                ("24h", 86400), ("7D", 604800)])
def test_durations(text, seconds):
    assert duration_s(text) == seconds


@pytest.mark.parametrize("text", ["", "h", "-5m", "0", "soon", "1e999h", "nan"])
def test_bad_durations(text):
    with pytest.raises(click.BadParameter, match=r"duration|more than 0"):
        duration_s(text)


def test_set_limit_updates_the_same_policy_and_new_adds_one(live):
    first = invoke(live, "set-limit", "daily", "5", "--component", "cli-edit")
    assert first.exit_code == 0, first.output
    assert first.output.startswith("created policy") and "daily hard_limit $5" in first.output
    again = invoke(live, "set-limit", "daily", "7.5", "--component", "cli-edit")
    assert again.exit_code == 0, again.output
    assert again.output.startswith("updated policy") and "$7.5 (was $5)" in again.output
    (only,) = policies_of(live, "cli-edit")
    assert only["cost_limit"] == 7.5
    other_kind = invoke(live, "set-limit", "minutely", "3", "--requests", "--component",
                        "cli-edit")
    assert "created policy" in other_kind.output and "minutely hard_limit 3 calls" in \
        other_kind.output
    added = invoke(live, "set-limit", "daily", "9", "--component", "cli-edit", "--new")
    assert added.output.startswith("created policy")
    assert len(policies_of(live, "cli-edit")) == 3
    data = json.loads(invoke(live, "--json", "set-limit", "minutely", "4", "--requests",
                             "--component", "cli-edit").output)
    assert data["action"] == "updated" and data["request_limit"] == 4
    assert invoke(live, "set-limit", "daily", "1", "--tokens", "--requests").exit_code == \
        EXIT_USAGE


def test_typos_are_warned_and_strict_refuses(live):
    typo = invoke(live, "set-limit", "daily", "1", "--provider", "opneai", "--component",
                  "cli-typo")
    assert typo.exit_code == 0
    assert "warning: provider: 'opneai' is not a configured provider" in typo.output
    strict = invoke(live, "set-limit", "daily", "1", "--provider", "opneai", "--component",
                    "cli-typo2", "--strict")
    assert strict.exit_code == EXIT_USAGE and "not a configured provider" in strict.output
    assert policies_of(live, "cli-typo2") == []
    seed = invoke(live, "set-limit", "DAILY", "1", "--policy-type", "WARN", "--component",
                  "cli-typo3")
    assert seed.exit_code == 0 and "daily warn $1" in seed.output


def test_a_new_limit_counts_the_spend_already_recorded(live):
    record(live, 0.000100, "cli-late")
    record(live, 0.000096, "cli-late")
    record(live, 3.0, "cli-late", at=datetime.now(UTC) - timedelta(days=3))
    made = invoke(live, "set-limit", "daily", "0.0001", "--component", "cli-late")
    assert made.exit_code == 0, made.output
    assert "counted $0.000196 (40 tokens, 2 calls) already recorded" in made.output
    table = invoke(live, "status")
    row = next(line for line in table.output.splitlines() if "component=cli-late" in line)
    assert "$0.000196" in row and "e-0" not in table.output
    assert re.search(r"\b196\.0%", row)
    refused = live.chat(**{"X-Budget-Component": "cli-late"})
    assert refused.status_code == 429


def test_topup(live):
    made = json.loads(invoke(live, "--json", "set-limit", "daily", "2", "--component",
                             "cli-top").output)
    out = invoke(live, "topup", made["policy_id"], "--cost", "5", "--ttl", "24h")
    assert out.exit_code == 0, out.output
    assert f"topped up {made['policy_id']} by $5.00 until" in out.output
    (policy,) = policies_of(live, "cli-top")
    assert len(policy["topups"]) == 1 and policy["topups"][0]["cost"] == 5
    assert invoke(live, "topup", made["policy_id"]).exit_code == EXIT_USAGE
    assert invoke(live, "topup", made["policy_id"], "--cost", "1", "--ttl", "soon"
                  ).exit_code == EXIT_USAGE
    assert invoke(live, "topup", made["policy_id"], "--cost", "-1").exit_code == EXIT_USAGE
    assert invoke(live, "topup", made["policy_id"], "--tokens", "5").exit_code == EXIT_USAGE
    missing = invoke(live, "topup", "no-such-policy", "--cost", "1")
    assert missing.exit_code != 0 and "no policy no-such-policy" in missing.output


def test_keys_create_with_a_daily_budget(live):
    out = invoke(live, "keys", "create", "--component", "billing", "--daily", "5")
    assert out.exit_code == 0, out.output
    assert "limit: daily $5 (policy" in out.output
    secret = re.search(r"secret: (bp-\S+)", out.output).group(1)
    key_id = re.search(r"key (vk_\S+)", out.output).group(1)
    (policy,) = [p for p in live.api("GET", "/api/policies").json()
                 if p.get("key_id") == key_id]
    assert policy["cost_limit"] == 5 and policy["type"] == "hard_limit"
    assert live.chat(Authorization=f"Bearer {secret}").status_code == 200
    assert invoke(live, "keys", "create", "--component", "b", "--daily", "1", "--rpm", "2"
                  ).exit_code == EXIT_USAGE
    assert invoke(live, "keys", "create", "--component", "b", "--daily", "-1"
                  ).exit_code == EXIT_USAGE


def test_release_twice_says_already_released(live):
    made = json.loads(invoke(live, "--json", "allocate", "create", "--context-id", "cli-rel",
                             "--component", "cli-rel", "--tokens", "100").output)
    aid = made["allocation_id"]
    first = invoke(live, "allocate", "release", aid)
    assert first.exit_code == 0 and first.output.startswith(f"released {aid}")
    second = invoke(live, "allocate", "release", aid)
    assert second.exit_code == 0 and f"{aid} already released: nothing changed" in second.output


def test_a_wrong_token_says_invalid_token(live):
    wrong = invoke(live, "status", token="not-the-token")
    assert wrong.exit_code == EXIT_AUTH and "invalid token" in wrong.output
    missing = invoke(live, "set-limit", "daily", "1", token=None)
    assert missing.exit_code == EXIT_AUTH and "BUDGET_ADMIN_TOKEN" in missing.output
    assert "invalid token" not in missing.output


def test_policies_replay(live, tmp_path: Path):
    day = datetime.now(UTC).replace(hour=9, minute=0, second=0, microsecond=0) - timedelta(
        days=1)
    for minute in range(3):
        record(live, 0.5, "cli-replay", at=day + timedelta(minutes=minute))
    # 0.5 (50%), 1.0 (100%: warned), the third would pass the limit: refused
    toml = tmp_path / "try.toml"
    toml.write_text('[policy.try]\nperiod = "daily"\ncost_limit = 1.0\n'
                    'component = "cli-replay"\n')
    out = invoke(live, "policies", "replay", str(toml), "--days", "2")
    assert out.exit_code == 0, out.output
    assert "hard_limit daily policy over 3 matching calls of the last 2 days: 1 refused, " \
        "1 warned; $1.00 allowed, $0.50 refused" in out.output
    assert f"d:{day:%Y%m%d}" in out.output
    as_json = tmp_path / "try.json"
    as_json.write_text(json.dumps({"period": "daily", "cost_limit": 1.0,
                                   "component": "cli-replay", "type": "warn"}))
    data = json.loads(invoke(live, "--json", "policies", "replay", str(as_json)).output)
    assert (data["refused"], data["allowed"]) == (0, 3)
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    assert invoke(live, "policies", "replay", str(bad)).exit_code == EXIT_USAGE
    bad.write_text("{not json")
    assert invoke(live, "policies", "replay", str(bad)).exit_code == EXIT_USAGE
    assert invoke(live, "policies", "replay", str(tmp_path / "missing.toml")
                  ).exit_code == EXIT_USAGE

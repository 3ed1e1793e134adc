"""`budget prices list|update|history`, `calc-cost` and `recommend` against a live server.

The server is `budget-proxy serve` in a subprocess; its two price sources are local files the
tests rewrite (each trusted 0.5, so a change needs both to agree)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from budget_proxy.cli import main
from tests.conftest import free_port, start_proxy_process

M = 1_000_000


def write_source(path: Path, gpt4o_mini_input: str = "0.15") -> None:
    path.write_text(json.dumps({"entries": [
        {"provider": "openai", "model": "gpt-4o-mini", "input_usd_per_mtok": gpt4o_mini_input,
         "output_usd_per_mtok": "0.60", "cache_read_usd_per_mtok": "0.075"},
        {"provider": "anthropic", "model": "claude-3-5-haiku", "input_usd_per_mtok": "0.80",
         "output_usd_per_mtok": "4.00"},
    ]}))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("cli-pricing")
    first, second = root / "first.json", root / "second.json"
    write_source(first)
    write_source(second)
    proc = start_proxy_process({
        "BUDGET_DATA_DIR": str(root / "data"),
        "BUDGET_PRICE_SOURCES": f"file={first}|0.5,file={second}|0.5",
        "OPENAI_API_KEY": "sk-test", "ANTHROPIC_API_KEY": "sk-ant-test",
    })
    proc.first, proc.second = first, second  # type: ignore[attr-defined]
    yield proc
    proc.stop()


def budget(server: Any, *args: str) -> Result:
    return CliRunner().invoke(main, ["--url", server.url, *args], catch_exceptions=False)


def test_prices_list(server):
    result = budget(server, "prices", "list", "--provider", "anthropic")
    assert result.exit_code == 0, result.output
    assert "USD per million tokens" in result.stdout
    line = next(ln for ln in result.stdout.splitlines() if " claude-3-5-haiku " in ln)
    assert "0.80" in line and "4.00" in line and "anthropic/claude-3-5-haiku@" in line
    assert " gpt-4o " not in result.stdout
    as_json = json.loads(budget(server, "--json", "prices", "list", "--model",
                                "claude-3-5-haiku-20241022").stdout)
    assert [(r["model"], r["input_usd_per_mtok"]) for r in as_json] == [("claude-3-5-haiku",
                                                                         "0.80")]
    after_command = json.loads(budget(server, "prices", "list", "--json", "--model",
                                      "claude-3-5-haiku").stdout)
    assert after_command == as_json


def test_calc_cost_against_the_server(server):
    result = budget(server, "calc-cost", "--provider", "anthropic", "--model",
                    "claude-sonnet-4-5", "--input-tokens", "12050", "--cached-tokens", "10000",
                    "--cache-write-tokens", "2000", "--output-tokens", "300")
    assert result.exit_code == 0, result.output
    # by hand: 50 x $3 + 10000 x $0.30 + 2000 x $3.75 + 300 x $15, per million
    expected = (50 * 3.00 + 10_000 * 0.30 + 2_000 * 3.75 + 300 * 15.00) / M
    assert f"total ${expected:.9f}" in result.stdout
    assert "cache_write" in result.stdout and "[offline]" not in result.stdout
    alias = budget(server, "--json", "calc_cost", "--model", "gpt-4o", "--input-tokens",
                   "1000", "--output-tokens", "200", "--reasoning-tokens", "50")
    data = json.loads(alias.stdout)
    assert data["total_cost"] == pytest.approx((1000 * 2.50 + 200 * 10.00) / M, abs=1e-12)
    assert data["pricing_id"].startswith("openai/gpt-4o@")


def test_calc_cost_of_an_unknown_model_shows_the_ceiling(server):
    result = budget(server, "calc-cost", "--provider", "openai", "--model", "gpt-unreleased",
                    "--input-tokens", "1000")
    assert result.exit_code == 0, result.output
    assert "ceiling" in result.stdout and f"total ${1000 * 150.00 / M:.9f}" in result.stdout


def test_calc_cost_offline():
    url = f"http://127.0.0.1:{free_port()}"
    result = CliRunner().invoke(main, ["--url", url, "calc-cost", "--model", "gpt-4o-mini",
                                       "--input-tokens", "2000", "--output-tokens", "500"])
    assert result.exit_code == 0, result.output
    assert "using the packaged catalog" in result.stderr
    assert "[offline]" in result.stdout
    assert f"total ${(2000 * 0.15 + 500 * 0.60) / M:.9f}" in result.stdout
    forced = CliRunner().invoke(main, ["--url", url, "calc-cost", "--offline", "--model",
                                       "nope-model", "--input-tokens", "1"])
    assert forced.exit_code == 1 and "no price in the packaged catalog" in forced.output


def test_calc_cost_rejects_inconsistent_counts(server):
    result = CliRunner().invoke(main, ["--url", server.url, "calc-cost", "--model", "gpt-4o",
                                       "--input-tokens", "10", "--cached-tokens", "20"])
    assert result.exit_code == 2 and "422" in result.output  # EXIT_USAGE


def test_recommend(server):
    result = budget(server, "--json", "recommend", "--context-size", "100000",
                    "--output-size", "1000", "--tier", "remote_heavyweight", "--frequency",
                    "50", "--limit", "3", "--task-type", "summarization")
    assert result.exit_code == 0, result.output
    answer = json.loads(result.stdout)
    assert (answer["task_type"], answer["complexity"]) == ("summarization", "simple")
    options = answer["recommendations"]
    assert len(options) == 3 and answer["best"] == options[0]
    scores = [o["score"] for o in options]
    assert scores == sorted(scores, reverse=True)
    for option in options:
        by_hand = (100_000 * option["input_usd_per_mtok"]
                   + 1_000 * option["output_usd_per_mtok"]) / M
        assert option["cost_per_request"] == pytest.approx(by_hand)
        assert option["monthly_cost"] == pytest.approx(by_hand * 50 * 30)
        assert option["tier"] == "remote_heavyweight"
    capped = json.loads(budget(server, "--json", "recommend", "--max-cost", "0.0005",
                               "--provider", "openai").stdout)
    assert capped["recommendations"] and all(
        o["within_budget"] and o["cost_per_request"] <= 0.0005 and o["provider"] == "openai"
        for o in capped["recommendations"])
    table = budget(server, "recommend", "--context-size", "100000", "--output-size", "1000",
                   "--limit", "2")
    assert "PER_MONTH_USD" in table.stdout and "best: " in table.stdout
    assert "e-0" not in table.stdout  # money as money
    none = budget(server, "recommend", "--max-cost", "0.0000001", "--context-size", "100000")
    assert none.exit_code == 0, none.output
    assert "no model fits the budget" in none.stdout and " no " in none.stdout
    bad = budget(server, "recommend", "--context-size", "-1")
    assert bad.exit_code == 2


def test_update_shows_progress_and_applies_what_both_sources_say(server):
    write_source(server.first, gpt4o_mini_input="0.12")
    write_source(server.second, gpt4o_mini_input="0.12")
    result = budget(server, "prices", "update")
    assert result.exit_code == 0, result.output
    assert "Updating prices from 2 source(s): file, file-2" in result.stderr
    assert "file: 3 prices read" not in result.stderr  # one quote per entry, no aliases here
    assert "file: 2 prices read" in result.stderr
    assert "applied openai/gpt-4o-mini" in result.stderr
    assert "1 applied, 0 conflict(s)" in result.stdout
    assert "input 0.15 -> 0.12" in result.stdout
    history = budget(server, "prices", "history", "gpt-4o-mini-2024-07-18")
    assert history.exit_code == 0, history.output
    rows = [ln for ln in history.stdout.splitlines() if "openai/gpt-4o-mini@" in ln]
    assert len(rows) == 2 and "0.15" in rows[0] and "0.12" in rows[1]
    cost = json.loads(budget(server, "--json", "calc-cost", "--model", "gpt-4o-mini",
                             "--input-tokens", "1000").stdout)
    assert cost["total_cost"] == pytest.approx(1000 * 0.12 / M, abs=1e-12)


def test_update_with_disagreeing_sources_changes_nothing(server):
    write_source(server.first, gpt4o_mini_input="0.10")
    write_source(server.second, gpt4o_mini_input="0.20")
    before = json.loads(budget(server, "--json", "prices", "list", "--model",
                               "gpt-4o-mini").stdout)
    result = budget(server, "--json", "prices", "update")
    assert result.exit_code == 0, result.output
    assert "CONFLICT openai/gpt-4o-mini: input_usd_per_mtok" in result.stderr
    report = json.loads(result.stdout)
    assert report["applied"] == [] and [c["model"] for c in report["conflicts"]] == [
        "gpt-4o-mini"]
    after = json.loads(budget(server, "--json", "prices", "list", "--model",
                              "gpt-4o-mini").stdout)
    assert after == before


def test_history_of_an_unknown_model(server):
    result = CliRunner().invoke(main, ["--url", server.url, "prices", "history", "nope-x"])
    assert result.exit_code == 1 and "no price for nope-x" in result.output


def test_update_without_sources_fails_clearly(tmp_path: Path):
    proc = start_proxy_process({"BUDGET_DATA_DIR": str(tmp_path / "data")})
    try:
        result = CliRunner().invoke(main, ["--url", proc.url, "prices", "update"])
    finally:
        proc.stop()
    assert result.exit_code == 1
    assert "no_sources" in result.output and "BUDGET_PRICE_SOURCES" in result.output

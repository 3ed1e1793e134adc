"""The Prometheus rules against their `promtool test rules` unit files
(`charts/prometheus/tests/*.yml`): every rule has a case where it fires and one where it stays
silent, and the files pass. Needs promtool (Debian's `prometheus` package, which
`scripts/test` installs); without it the promtool test skips."""

from __future__ import annotations

import shutil
import subprocess
from collections import defaultdict
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "charts" / "prometheus" / "rules.yml"
RULE_TESTS = sorted((ROOT / "charts" / "prometheus" / "tests").glob("*.yml"))
PROMTOOL = shutil.which("promtool")


def alert_names() -> list[str]:
    rules = yaml.safe_load(RULES.read_text())
    return [rule["alert"] for group in rules["groups"] for rule in group["rules"]
            if "alert" in rule]


def expectations() -> dict[str, dict[str, int]]:
    """alert name -> {"fires": n, "silent": n} over every unit test file."""
    seen: dict[str, dict[str, int]] = defaultdict(lambda: {"fires": 0, "silent": 0})
    for path in RULE_TESTS:
        doc = yaml.safe_load(path.read_text())
        assert doc["rule_files"] == ["../rules.yml"], path
        for case in doc["tests"]:
            for check in case.get("alert_rule_test", []):
                kind = "fires" if check.get("exp_alerts") else "silent"
                seen[check["alertname"]][kind] += 1
    return seen


def test_every_rule_is_tested_firing_and_silent():
    seen = expectations()
    names = alert_names()
    assert len(names) == len(set(names)), "duplicate alert names"
    missing = {name: seen.get(name) for name in names
               if not (seen.get(name, {}).get("fires") and seen.get(name, {}).get("silent"))}
    assert not missing, f"rules without a firing and a silent unit test: {missing}"
    assert not set(seen) - set(names), "tests name alerts the rules do not have"


def test_every_alert_has_severity_and_summary():
    rules = yaml.safe_load(RULES.read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            assert rule["labels"]["severity"] in ("info", "warning", "critical"), rule["alert"]
            assert rule["annotations"]["summary"], rule["alert"]
            # numbers are humanised or formatted, never printed raw
            for text in rule["annotations"].values():
                for use in text.split("$value")[1:]:
                    assert use.lstrip().startswith("|"), f"{rule['alert']}: raw $value"


def test_the_chart_ships_the_same_rules():
    assert (ROOT / "charts" / "budget-proxy" / "files" / "rules.yml").resolve() == \
        RULES.resolve()


@pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (apt-get install prometheus)")
def test_promtool_rule_unit_tests_pass():
    assert RULE_TESTS
    done = subprocess.run([PROMTOOL, "test", "rules", *map(str, RULE_TESTS)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("SUCCESS") == len(RULE_TESTS), done.stdout

"""The benchmark harness must run end to end in quick mode and produce sane, complete results."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
RUN = ROOT / "benchmarks" / "run.py"

SCENARIOS = {
    "nonstream_serial": ["openai"],
    "nonstream_throughput": ["openai"],
    "fixed_rate": ["openai"],
    "stream_ttfc": ["openai", "anthropic"],
    "open_streams_200": ["openai"],
    "big_prompt": ["openai"],
    "memory_100k": ["openai"],
    "serial_5_policies": ["openai"],
    "serial_redis": ["openai"],
    "serial_redis_5_policies": ["openai"],
    "throughput_redis": ["openai"],
}
ROW_KEYS = {
    "throughput_rps",
    "requests",
    "errors",
    "p50_ms",
    "p90_ms",
    "p99_ms",
    "cpu_us_per_req",
    "peak_rss_mb",
    "curve",
    "generator",
}


def run_harness(out: Path, *args: str, timeout: float = 300) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, str(RUN), "--quick", "--out", str(out), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert (out / "results.md").read_text().startswith("# Benchmark results")
    return json.loads((out / "results.json").read_text())


def check_row(scenario: str, target: str, row: dict[str, Any]) -> None:
    where = f"{scenario}/{target}"
    assert "error" not in row, f"{where}: {row.get('error')}"
    assert ROW_KEYS <= set(row), f"{where}: missing {ROW_KEYS - set(row)}"
    assert row["throughput_rps"] > 0, where
    assert row["requests"] > 0, where
    assert 0 < row["p50_ms"] <= row["p90_ms"] <= row["p99_ms"], where
    assert row["peak_rss_mb"] > 0, where
    assert row["cpu_us_per_req"] >= 0, where
    if target != "direct":
        assert "added_p50_ms" in row and "added_p99_ms" in row, where


def proxy_importable() -> bool:
    done = subprocess.run(
        [sys.executable, "-c", "import budget_proxy.app"], capture_output=True, cwd=ROOT
    )
    return done.returncode == 0


def test_quick_run_direct_and_floor(tmp_path: Path) -> None:
    results = run_harness(tmp_path, "--targets", "direct,floor", "--generator", "auto")
    meta = results["meta"]
    assert meta["quick"] is True
    assert meta["generator"] in ("wrk", "python")
    cal = results["calibration"]
    assert cal["python_c32"]["throughput_rps"] > 0
    assert set(results["scenarios"]) == set(SCENARIOS)
    for name, variants in SCENARIOS.items():
        sc = results["scenarios"][name]
        assert set(sc["variants"]) == set(variants), name
        for rows in sc["variants"].values():
            assert set(rows) == {"direct", "floor"}, name
            for target, row in rows.items():
                check_row(name, target, row)

    streams = results["scenarios"]["open_streams_200"]["variants"]["openai"]
    for row in streams.values():
        assert row["extra"]["all_chunks_arrived"], row["extra"]
    for rows in results["scenarios"]["stream_ttfc"]["variants"].values():
        for row in rows.values():
            assert row["extra"]["incomplete"] == 0
            assert row["p50_ms"] <= row["extra"]["total_p50_ms"]
    big = results["scenarios"]["big_prompt"]["variants"]["openai"]["floor"]["extra"]
    assert big["big_status"] == 200
    mem = results["scenarios"]["memory_100k"]["variants"]["openai"]["direct"]["extra"]
    assert mem["rss_end_mb"] > 0 and mem["rss_warm_mb"] > 0
    assert mem["rss_growth_mb"] == mem["rss_end_mb"] - mem["rss_warm_mb"]
    if importlib.util.find_spec("matplotlib") is not None:
        assert meta["plot"] is True
        assert (tmp_path / "latency.png").stat().st_size > 0


def test_python_generator_and_proxy_target(tmp_path: Path) -> None:
    """The wrk-less fallback, and the real proxy plugged in when it imports."""
    with_proxy = proxy_importable()
    targets = "direct,floor,proxy" if with_proxy else "direct,floor"
    results = run_harness(
        tmp_path,
        "--generator",
        "python",
        "--no-calibration",
        "--scenarios",
        "nonstream_serial,stream_ttfc,serial_redis_5_policies",
        "--targets",
        targets,
    )
    assert results["meta"]["generator"] == "python"
    expected = {"direct", "floor", "proxy"} if with_proxy else {"direct", "floor"}
    for name in ("nonstream_serial", "stream_ttfc", "serial_redis_5_policies"):
        for rows in results["scenarios"][name]["variants"].values():
            assert set(rows) == expected
            for target, row in rows.items():
                assert row["generator"] == "python"
                check_row(name, target, row)

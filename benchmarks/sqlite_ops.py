"""What a reserve + settle pair costs in the embedded (SQLite) store, in process.

Each pair is what one metered call asks of the store: a hold with its intent (awaited, as the
proxy awaits it before forwarding), then a settlement with its usage record. Modes:

* `serial`: one call at a time, as the proxy runs it: the hold is awaited, the settlement
  runs in a task of its own (the proxy's background settlement), and the next call comes a
  few loop iterations later (the answer going out, the next request coming in).
* `concurrent`: the same with 32 calls in flight.
* `awaited`: one call at a time, each settlement awaited (a settlement's own latency).

Each mode runs with 1 and 5 counter lines. Reported per pair: wall µs, CPU µs (less noisy on
a shared machine), the hold's p50 latency (the part a client waits for), and the commits and
statements the database ran (counted in a separate, untimed pass with a trace callback).

`--baseline REV` loads `budget_proxy/store/sqlite.py` as it was at a git revision and runs it
interleaved with the working tree's (A/B/A/B...), reporting each one's median over rounds:

    .venv/bin/python benchmarks/sqlite_ops.py --baseline HEAD --rounds 7
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib
import statistics
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from budget_proxy.enforcement import CounterLine  # noqa: E402
from budget_proxy.models import UsageRecord  # noqa: E402
from budget_proxy.store.base import Reservation, Store, intent_json, record_id_of  # noqa: E402

MODES = ("serial", "awaited", "concurrent")
CONCURRENCY = 32
GAP_ITERATIONS = 3  # loop iterations between a call's answer and the next call's hold
LIMIT_NUSD = 10**17  # never refuses: every pair is a hold and a settlement


@dataclass
class Sample:
    wall_us: float  # per pair
    cpu_us: float  # per pair
    hold_p50_us: float


def load_store(rev: str | None) -> type[Store]:
    """The SqliteStore class of the working tree (None) or of a git revision."""
    if rev is None:
        return importlib.import_module("budget_proxy.store.sqlite").SqliteStore  # type: ignore[no-any-return]
    source = subprocess.run(["git", "show", f"{rev}:budget_proxy/store/sqlite.py"], cwd=ROOT,
                            check=True, capture_output=True, text=True).stdout
    name = f"budget_proxy.store._sqlite_at_{rev.replace('~', '_').replace('^', '_')}"
    module = types.ModuleType(name)
    module.__file__ = f"<{rev}:budget_proxy/store/sqlite.py>"
    sys.modules[name] = module  # dataclasses look their module up
    exec(compile(source, module.__file__, "exec"), module.__dict__)
    return module.SqliteStore  # type: ignore[no-any-return]


def lines_of(count: int) -> list[CounterLine]:
    return [CounterLine(f"p{i}:d:20261130", LIMIT_NUSD, None, True, f"p{i}")
            for i in range(count)]


def call(n: int, lines: list[CounterLine]) -> tuple[Reservation, UsageRecord]:
    """A call's hold (with an intent like the proxy's) and its usage record."""
    rid = f"res_bench{n:08d}"
    fields = {"record_id": record_id_of(rid), "component": "bench", "session_id": "s1",
              "provider": "openai", "model": "gpt-4o-mini", "route": "/v1/chat/completions",
              "input_tokens": 42, "output_tokens": 256, "total_tokens": 298,
              "total_cost": 0.00016, "pricing_id": "openai:gpt-4o-mini:1", "streamed": False}
    reservation = Reservation(rid, tuple(line.key for line in lines), 160_000, 298,
                              intent_json(fields))
    record = UsageRecord(record_id=record_id_of(rid), component="bench", session_id="s1",
                         provider="openai", model="gpt-4o-mini", requested_model="gpt-4o-mini",
                         route="/v1/chat/completions", input_tokens=42, output_tokens=12,
                         total_tokens=54, input_cost=6.3e-06, output_cost=7.2e-06,
                         total_cost=1.35e-05, pricing_id="openai:gpt-4o-mini:1")
    return reservation, record


async def run_mode(store: Store, mode: str, lines: list[CounterLine], pairs: int,
                   start: int) -> tuple[float, float, list[float]]:
    """(wall s, cpu s, hold latencies s) of `pairs` reserve + settle pairs."""
    calls = [call(start + i, lines) for i in range(pairs)]
    holds: list[float] = []
    clock = time.perf_counter

    background: set[asyncio.Task[bool]] = set()

    async def one(reservation: Reservation, record: UsageRecord) -> None:
        t0 = clock()
        assert (await store.reserve(reservation, lines, 60)).ok
        holds.append(clock() - t0)
        settlement = store.settle(reservation, 13_500, 54, record)
        if mode == "awaited":
            assert await settlement
            return
        task = asyncio.ensure_future(settlement)  # the proxy's background settlement
        background.add(task)
        task.add_done_callback(background.discard)
        for _ in range(GAP_ITERATIONS):
            await asyncio.sleep(0)

    async def worker(queue: Iterator[tuple[Reservation, UsageRecord]]) -> None:
        for reservation, record in queue:
            await one(reservation, record)

    gc.collect()
    wall0, cpu0 = clock(), time.process_time()
    queue = iter(calls)
    await asyncio.gather(*(worker(queue) for _ in range(
        CONCURRENCY if mode == "concurrent" else 1)))
    while background:
        await asyncio.wait(list(background))
    return clock() - wall0, time.process_time() - cpu0, holds


async def measure(cls: type[Store], mode: str, line_count: int, pairs: int) -> Sample:
    with tempfile.TemporaryDirectory() as tmp:
        store: Any = cls(Path(tmp))
        await store.start()
        try:
            lines = lines_of(line_count)
            await run_mode(store, mode, lines, min(pairs, 200), 0)  # warm up
            wall, cpu, holds = await run_mode(store, mode, lines, pairs, 10**6)
        finally:
            await store.close()
    return Sample(wall / pairs * 1e6, cpu / pairs * 1e6, statistics.median(holds) * 1e6)


async def count_statements(cls: type[Store], mode: str, line_count: int,
                           pairs: int) -> tuple[float, float]:
    """(commits, statements) per pair, from the connection's trace callback (untimed)."""
    with tempfile.TemporaryDirectory() as tmp:
        store: Any = cls(Path(tmp))
        await store.start()
        seen: list[str] = []
        try:
            lines = lines_of(line_count)
            await run_mode(store, mode, lines, 50, 0)
            store.db.set_trace_callback(seen.append)
            await run_mode(store, mode, lines, pairs, 10**6)
        finally:
            store.db.set_trace_callback(None)
            await store.close()
    commits = sum(1 for s in seen if s.strip().upper() == "COMMIT")
    statements = sum(1 for s in seen if s.strip().upper() not in ("BEGIN", "COMMIT"))
    return commits / pairs, statements / pairs


def median(samples: list[Sample], field: str) -> float:
    return statistics.median(getattr(s, field) for s in samples)


def table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True))
                     for r in rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", help="git revision of sqlite.py to compare against")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (median)")
    parser.add_argument("--pairs", type=int, default=3000, help="pairs per mode and round")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--lines", default="1,5", help="counter lines per call")
    args = parser.parse_args()
    variants: dict[str, type[Store]] = {}
    if args.baseline:
        variants[f"base {args.baseline}"] = load_store(args.baseline)
    variants["work tree"] = load_store(None)
    modes = args.modes.split(",")
    line_counts = [int(n) for n in args.lines.split(",")]
    cases = [(m, n) for m in modes for n in line_counts]
    samples: dict[tuple[str, str, int], list[Sample]] = {}
    for round_no in range(args.rounds):
        order = list(variants) if round_no % 2 == 0 else list(reversed(variants))
        for mode, n in cases:
            pairs = args.pairs // 10 if mode == "awaited" else args.pairs
            for name in order:  # A/B, then B/A: neither always runs first
                sample = asyncio.run(measure(variants[name], mode, n, pairs))
                samples.setdefault((name, mode, n), []).append(sample)
        print(f"round {round_no + 1}/{args.rounds} done", file=sys.stderr)
    rows = [["variant", "mode", "lines", "wall µs/pair", "(min-max)", "cpu µs/pair",
             "hold p50 µs", "commits/pair", "statements/pair"]]
    for mode, n in cases:
        for name, cls in variants.items():
            got = samples[(name, mode, n)]
            walls = [s.wall_us for s in got]
            commits, statements = asyncio.run(count_statements(cls, mode, n, 500))
            rows.append([name, mode, str(n), f"{median(got, 'wall_us'):.1f}",
                         f"{min(walls):.0f}-{max(walls):.0f}", f"{median(got, 'cpu_us'):.1f}",
                         f"{median(got, 'hold_p50_us'):.1f}", f"{commits:.2f}",
                         f"{statements:.2f}"])
    print(table(rows))


if __name__ == "__main__":
    main()

"""What one call costs the store: reserve + settle pairs, in process, against a real backend.

Drives the store the way the proxy does for one metered call (a hold with its intent on N
counter lines, then its settlement with a usage record) and reports, per pair:

- latency (p50, p90, mean) of reserve, settle and the pair, over several rounds;
- Redis round trips (commands or pipelines sent by the client) of reserve and of settle, and
  the Redis commands run (top level and inside scripts, from `INFO commandstats`);
- local SQLite commits of the settlement journal (write transactions, done marks included).

    python benchmarks/store_ops.py --redis [--embedded] [--lines 5] [--pairs 2000] [--rounds 5]

`--redis` starts a private redis-server on a free port (`--redis-url` to use another one;
never the machine's own on 6379). The machine is shared and noisy: compare two versions by
alternating runs (A/B/A/B) and read the spread of the rounds printed beside each median, or
let this script alternate them: `--against DIR` (another checkout, e.g. a `git worktree` of
an earlier commit) runs that checkout's Redis store in this same process, against the same
server, in alternating blocks, and prints how often and by how much this one was faster.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import importlib
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from budget_proxy.enforcement import CounterLine  # noqa: E402
from budget_proxy.models import UsageRecord  # noqa: E402
from budget_proxy.store.base import Reservation, Store, intent_json, record_id_of  # noqa: E402

sys.path.insert(0, str(ROOT / "benchmarks"))
from run import free_port  # noqa: E402

SHARED_REDIS_PORT = 6379  # the machine's own Redis: never used here
TTL_S = 30.0


@contextlib.contextmanager
def private_redis() -> Iterator[str]:
    """A redis-server of our own (no persistence) on a free port; its URL."""
    port = free_port()
    directory = Path(tempfile.mkdtemp(prefix="bp-store-ops-"))
    process = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(directory)], stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                break
            if time.monotonic() > deadline:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.02)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(timeout=10)
        shutil.rmtree(directory, ignore_errors=True)


# --- counting ---------------------------------------------------------------------------
@dataclass
class Counts:
    round_trips: int = 0  # commands or pipelines the Redis client sent
    commits: int = 0  # SQLite write transactions of the journal


COUNTS = Counts()


def count_round_trips() -> None:
    """Count what the Redis client sends: one send is one round trip (a pipeline is one)."""
    from redis.asyncio.connection import AbstractConnection

    original = AbstractConnection.send_packed_command

    async def counted(self: Any, command: Any, check_health: bool = True) -> None:
        COUNTS.round_trips += 1
        await original(self, command, check_health)

    AbstractConnection.send_packed_command = counted  # type: ignore[method-assign]


def count_commits(db: Any) -> None:
    """Count the write transactions of a SQLite connection in autocommit mode: each write
    outside BEGIN ... COMMIT is one, and so is each COMMIT."""
    state = {"open": False}

    def trace(statement: str) -> None:
        verb = statement.lstrip().split(None, 1)[0].upper() if statement.strip() else ""
        if verb == "BEGIN":
            state["open"] = True
        elif verb in ("COMMIT", "END", "ROLLBACK"):
            state["open"] = False
            COUNTS.commits += verb != "ROLLBACK"
        elif verb in ("INSERT", "DELETE", "UPDATE", "REPLACE") and not state["open"]:
            COUNTS.commits += 1

    db.set_trace_callback(trace)


# --- one call ---------------------------------------------------------------------------
def make_lines(n: int, now: datetime) -> list[CounterLine]:
    """n policies matching the call, each with a window (limits far away: never refused)."""
    ends = now + timedelta(days=1)
    return [CounterLine(f"bench-{i}:d{now:%Y%m%d}", 10**15, 10**12, True, f"bench-{i}",
                        resets_at=ends) for i in range(n)]


def make_call(lines: list[CounterLine], i: int) -> tuple[Reservation, UsageRecord]:
    rid = f"res_bench{i:09d}"
    intent = intent_json({"record_id": record_id_of(rid), "component": "bench",
                          "provider": "openai", "model": "gpt-4o-mini", "route": "chat",
                          "input_tokens": 20, "output_tokens": 50, "total_tokens": 70,
                          "total_cost": 0.0001, "streamed": False})
    reservation = Reservation(rid, tuple(line.key for line in lines), 100_000, 70,
                              intent=intent)
    record = UsageRecord(record_id=record_id_of(rid), component="bench", provider="openai",
                         model="gpt-4o-mini", route="chat", input_tokens=20, output_tokens=12,
                         total_tokens=32)
    return reservation, record


@dataclass
class Round:
    reserve_us: list[float] = field(default_factory=list)
    settle_us: list[float] = field(default_factory=list)
    pair_us: list[float] = field(default_factory=list)
    cpu_us: float = 0.0  # this process's CPU time per pair (less noisy than latency)


async def run_pairs(store: Store, lines: list[CounterLine], start: int, n: int) -> Round:
    out = Round()
    clock = time.perf_counter
    cpu_start = time.process_time()
    for i in range(start, start + n):
        reservation, record = make_call(lines, i)
        t0 = clock()
        result = await store.reserve(reservation, lines, TTL_S)
        t1 = clock()
        await store.settle(reservation, 90_000, 32, record)
        t2 = clock()
        assert result.ok, result
        out.reserve_us.append((t1 - t0) * 1e6)
        out.settle_us.append((t2 - t1) * 1e6)
        out.pair_us.append((t2 - t0) * 1e6)
    out.cpu_us = (time.process_time() - cpu_start) * 1e6 / n
    return out


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def count_one(store: Store, lines: list[CounterLine], start: int, n: int,
                    redis_url: str | None) -> dict[str, Any]:
    """Round trips, Redis commands and journal commits per reserve and per settle."""
    client = None
    if redis_url is not None:
        from redis.asyncio import Redis

        client = Redis.from_url(redis_url, decode_responses=True)
        await client.config_resetstat()
    trips_reserve = trips_settle = 0
    COUNTS.commits = 0
    for i in range(start, start + n):
        reservation, record = make_call(lines, i)
        before = COUNTS.round_trips
        await store.reserve(reservation, lines, TTL_S)
        middle = COUNTS.round_trips
        await store.settle(reservation, 90_000, 32, record)
        trips_reserve += middle - before
        trips_settle += COUNTS.round_trips - middle
    commits = COUNTS.commits
    out: dict[str, Any] = {"round trips per reserve": trips_reserve / n,
                           "round trips per settle": trips_settle / n,
                           "journal commits per pair": commits / n}
    if client is not None:
        stats = await client.info("commandstats")
        await client.aclose()
        calls = {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()
                 if name != "cmdstat_config|resetstat"}
        scripts = sum(c for name, c in calls.items() if name in ("evalsha", "eval"))
        server_us = sum(float(v["usec"]) for name, v in stats.items()
                        if name.removeprefix("cmdstat_") in ("evalsha", "eval"))
        out["redis server time per pair (us, in scripts)"] = round(server_us / n, 1)
        out["scripts (EVAL/EVALSHA) per pair"] = scripts / n
        out["redis commands per pair (all)"] = sum(calls.values()) / n
        out["by command"] = {name: round(c / n, 2) for name, c in sorted(calls.items())}
    return out


async def bench(kind: str, args: argparse.Namespace, redis_url: str | None) -> None:
    data_dir = Path(tempfile.mkdtemp(prefix=f"bp-store-ops-{kind}-"))
    try:
        if kind == "redis":
            from budget_proxy.store.redis import RedisStore

            assert redis_url is not None
            store: Store = RedisStore(redis_url, data_dir=data_dir)
        else:
            from budget_proxy.store.sqlite import SqliteStore

            store = SqliteStore(data_dir)
        await store.start()
        journal = getattr(store, "journal", None)
        if journal is not None:
            count_commits(journal.db)
        try:
            lines = make_lines(args.lines, store.now())
            await run_pairs(store, lines, 0, args.warmup)
            counts = await count_one(store, lines, args.warmup, 100,
                                     redis_url if kind == "redis" else None)
            start = args.warmup + 100
            rounds: list[Round] = []
            for _ in range(args.rounds):
                rounds.append(await run_pairs(store, lines, start, args.pairs))
                start += args.pairs
        finally:
            await store.close()
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)

    print(f"\n{kind} store, {args.lines} lines, {args.rounds} rounds of {args.pairs} pairs")
    for name, value in counts.items():
        print(f"  {name}: {value}")
    for label, attr in (("reserve", "reserve_us"), ("settle", "settle_us"),
                        ("pair", "pair_us")):
        p50s = [pct(getattr(r, attr), 0.5) for r in rounds]
        p90s = [pct(getattr(r, attr), 0.9) for r in rounds]
        means = [statistics.fmean(getattr(r, attr)) for r in rounds]
        print(f"  {label:8s} p50 {statistics.median(p50s):7.1f} us "
              f"(rounds {min(p50s):.0f}..{max(p50s):.0f})  "
              f"p90 {statistics.median(p90s):7.1f} us  mean {statistics.median(means):7.1f} us")
    cpu = [r.cpu_us for r in rounds]
    print(f"  client CPU per pair {statistics.median(cpu):7.1f} us "
          f"(rounds {min(cpu):.0f}..{max(cpu):.0f})")


async def started_store_of(checkout: Path, redis_url: str) -> Store:
    """Another checkout's (an absolute path) Redis store, imported beside this one's and
    started while its modules are the ones imported (it reads its own Lua scripts); its
    modules are kept out of `sys.modules` afterwards, so each store runs its own code."""
    ours = {name: mod for name, mod in sys.modules.items() if name.startswith("budget_proxy")}
    for name in ours:
        del sys.modules[name]
    sys.path.insert(0, str(checkout))
    try:
        module = importlib.import_module("budget_proxy.store.redis")
        store: Store = module.RedisStore(
            redis_url, data_dir=Path(tempfile.mkdtemp(prefix="bp-store-ops-")))
        await store.start()
    finally:
        sys.path.remove(str(checkout))
        for name in [n for n in sys.modules if n.startswith("budget_proxy")]:
            del sys.modules[name]
        sys.modules.update(ours)
    return store


async def compare(args: argparse.Namespace, redis_url: str) -> None:
    """This checkout's Redis store against another's, in alternating blocks in one process."""
    from budget_proxy.store.redis import RedisStore

    stores: dict[str, Store] = {"other": await started_store_of(args.against, redis_url),
                                "this": RedisStore(redis_url, data_dir=Path(
                                    tempfile.mkdtemp(prefix="bp-store-ops-")))}
    await stores["this"].start()
    p50s: dict[str, list[float]] = {side: [] for side in stores}
    cpu: dict[str, list[float]] = {side: [] for side in stores}
    try:
        lines = make_lines(args.lines, stores["this"].now())
        start = 0
        for block in range(2 * args.rounds + 1):
            order = list(stores.items()) if block % 2 else list(stores.items())[::-1]
            for side, store in order:
                result = await run_pairs(store, lines, start, args.pairs)
                start += args.pairs
                if block:  # the first block of each warms up
                    p50s[side].append(pct(result.pair_us, 0.5))
                    cpu[side].append(result.cpu_us)
    finally:
        for store in stores.values():
            await store.close()
    print(f"\nredis store, {args.lines} lines, {2 * args.rounds} alternating blocks of "
          f"{args.pairs} pairs: this checkout vs {args.against}")
    for side in stores:
        print(f"  {side:5s} pair p50 {statistics.median(p50s[side]):7.1f} us "
              f"(blocks {min(p50s[side]):.0f}..{max(p50s[side]):.0f})  "
              f"client CPU per pair {statistics.median(cpu[side]):7.1f} us")
    ratios = [a / b for a, b in zip(p50s["this"], p50s["other"], strict=True)]
    faster = sum(r < 1 for r in ratios)
    cpu_ratio = statistics.median(
        a / b for a, b in zip(cpu["this"], cpu["other"], strict=True))
    print(f"  this one faster in {faster} of {len(ratios)} blocks; p50 ratio (this / other) "
          f"median {statistics.median(ratios):.3f}, CPU ratio {cpu_ratio:.3f}")


async def main_async(args: argparse.Namespace) -> None:
    count_round_trips()
    if args.redis:
        run = compare if args.against else functools.partial(bench, "redis")
        if args.redis_url:
            await run(args, args.redis_url)
        else:
            with private_redis() as url:
                await run(args, url)
    if args.embedded:
        await bench("embedded", args, None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--redis", action="store_true", help="the Redis store")
    parser.add_argument("--redis-url", help="an existing Redis (default: start a private one)")
    parser.add_argument("--embedded", action="store_true", help="the embedded (SQLite) store")
    parser.add_argument("--lines", type=int, default=5, help="matching policies per call")
    parser.add_argument("--pairs", type=int, default=2000, help="reserve+settle pairs a round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop (as serve does)")
    parser.add_argument("--against", type=Path,
                        help="another checkout: its Redis store in alternating blocks")
    args = parser.parse_args()
    if not (args.redis or args.embedded):
        parser.error("name a store: --redis and/or --embedded")
    if args.against is not None:
        args.against = args.against.resolve()
    if args.redis_url and f":{SHARED_REDIS_PORT}" in args.redis_url:
        parser.error("not the machine's own Redis on 6379: omit --redis-url for a private one")
    if args.uvloop:
        import uvloop

        uvloop.run(main_async(args))
    else:
        asyncio.run(main_async(args))


if __name__ == "__main__":
    main()

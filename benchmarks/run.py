"""Benchmark harness: how much does the budget proxy cost over talking to the provider directly?

Every scenario starts the fake provider, then measures three targets side by side in one run:

* ``direct``: load straight at the fake provider (the generator's and the fake's own ceiling);
* ``floor``: through ``benchmarks/floor.py``, a bare aiohttp pass-through (the least any
  aiohttp proxy can cost);
* ``proxy``: through the real budget proxy (skipped when ``budget_proxy.app`` does not import).

The process under test is pinned to core 0; the load generator and the fake share core 1.

    python benchmarks/run.py [--quick] [--out benchmarks/results] [--scenarios a,b]

Results: ``results.json``, ``results.md`` and ``latency.png`` (when matplotlib is installed)
in ``--out``. The same file run with ``--loadgen`` is the Python load generator subprocess.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = Path(__file__).resolve().parent
CORE_UNDER_TEST = 0
CORE_LOAD = 1
CLK_TCK = os.sysconf("SC_CLK_TCK")
CURVE_PERCENTILES = [*range(1, 100), 99.5, 99.9]

OPENAI_HEADERS = {"Content-Type": "application/json", "Authorization": "Bearer sk-bench-client"}
ANTHROPIC_HEADERS = {
    "Content-Type": "application/json",
    "x-api-key": "sk-ant-bench-client",
    "anthropic-version": "2023-06-01",
}
CHAT_PATH = "/v1/chat/completions"
MESSAGES_PATH = "/v1/messages"
SMALL_CHAT = {
    "model": "gpt-4o-mini",
    "messages": [{"role": "user", "content": "Say hello in five words please."}],
    "max_tokens": 16,
}
STREAM_CHAT = {**SMALL_CHAT, "stream": True, "stream_options": {"include_usage": True}}
STREAM_MESSAGES = {
    "model": "claude-haiku-4-5",
    "max_tokens": 64,
    "messages": [{"role": "user", "content": "Say hello in five words please."}],
    "stream": True,
}
OPENAI_CONTENT_MARKER = '"delta":{"content":'
ANTHROPIC_CONTENT_MARKER = "content_block_delta"


# Load generator (runs in its own process) ---------------------------------------------------


def summarize(latencies_s: list[float]) -> dict[str, Any]:
    """Percentiles (nearest rank) in milliseconds, plus a curve for plotting distributions."""
    if not latencies_s:
        return {"count": 0}
    ordered = sorted(latencies_s)
    n = len(ordered)

    def pct(p: float) -> float:
        rank = max(1, math.ceil(p / 100 * n))
        return ordered[rank - 1] * 1000

    return {
        "count": n,
        "mean_ms": sum(ordered) / n * 1000,
        "min_ms": ordered[0] * 1000,
        "p50_ms": pct(50),
        "p90_ms": pct(90),
        "p99_ms": pct(99),
        "p999_ms": pct(99.9),
        "max_ms": ordered[-1] * 1000,
        "curve": [[p, round(pct(p), 4)] for p in CURVE_PERCENTILES],
    }


@dataclass
class _Tally:
    latencies: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    errors: int = 0
    error_sample: str | None = None

    def status(self, code: int) -> None:
        self.statuses[code] = self.statuses.get(code, 0) + 1

    def error(self, exc: BaseException) -> None:
        self.errors += 1
        if self.error_sample is None:
            self.error_sample = f"{type(exc).__name__}: {exc}"

    def result(self, elapsed: float) -> dict[str, Any]:
        ok = sum(v for k, v in self.statuses.items() if 200 <= k < 300)
        return {
            "requests": len(self.latencies),
            "ok": ok,
            "errors": self.errors + len(self.latencies) - ok,
            "statuses": {str(k): v for k, v in self.statuses.items()},
            "error_sample": self.error_sample,
            "elapsed_s": elapsed,
            "throughput_rps": ok / elapsed if elapsed > 0 else 0.0,
            "latency": summarize(self.latencies),
        }


async def _closed_loop(
    session: Any, req: dict[str, Any], concurrency: int, seconds: float, total: int | None
) -> dict[str, Any]:
    """Fixed concurrency: each worker sends its next request as soon as the last one ends."""
    url, body, headers = req["url"], req["body"].encode(), req["headers"]
    tally = _Tally()
    remaining = [total if total is not None else -1]
    start = time.perf_counter()
    deadline = start + seconds if total is None else math.inf

    async def worker() -> None:
        while time.perf_counter() < deadline:
            if remaining[0] == 0:
                return
            remaining[0] -= 1
            t0 = time.perf_counter()
            try:
                async with session.post(url, data=body, headers=headers) as resp:
                    await resp.read()
                    tally.status(resp.status)
            except Exception as exc:
                tally.error(exc)
                await asyncio.sleep(0.01)
                continue
            tally.latencies.append(time.perf_counter() - t0)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return tally.result(time.perf_counter() - start)


async def _open_loop(
    session: Any, req: dict[str, Any], rate: float, seconds: float, max_in_flight: int = 4000
) -> dict[str, Any]:
    """Fixed arrival rate; latency runs from the scheduled send time (no coordinated omission)."""
    url, body, headers = req["url"], req["body"].encode(), req["headers"]
    tally = _Tally()
    in_flight: set[asyncio.Task[None]] = set()
    skipped = 0

    async def one(scheduled: float) -> None:
        try:
            async with session.post(url, data=body, headers=headers) as resp:
                await resp.read()
                tally.status(resp.status)
        except Exception as exc:
            tally.error(exc)
            return
        tally.latencies.append(time.perf_counter() - scheduled)

    start = time.perf_counter()
    n = int(rate * seconds)
    for i in range(n):
        scheduled = start + i / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        if len(in_flight) >= max_in_flight:
            skipped += 1
            continue
        task = asyncio.create_task(one(scheduled))
        in_flight.add(task)
        task.add_done_callback(in_flight.discard)
    if in_flight:
        await asyncio.wait(in_flight)
    result = tally.result(time.perf_counter() - start)
    result["target_rate_rps"] = rate
    result["skipped"] = skipped
    return result


async def _streams(
    session: Any,
    req: dict[str, Any],
    concurrency: int,
    seconds: float,
    total: int | None,
    marker: str,
    expect_events: int | None,
) -> dict[str, Any]:
    """Streaming requests: time to first byte, to first content chunk, and to the end."""
    url, body, headers = req["url"], req["body"].encode(), req["headers"]
    marker_b = marker.encode()
    ttfb: list[float] = []
    ttfc: list[float] = []
    tally = _Tally()
    complete = 0
    incomplete = 0
    remaining = [total if total is not None else -1]
    start = time.perf_counter()
    deadline = start + seconds if total is None else math.inf

    async def worker() -> None:
        nonlocal complete, incomplete
        while time.perf_counter() < deadline:
            if remaining[0] == 0:
                return
            remaining[0] -= 1
            t0 = time.perf_counter()
            first_byte = first_content = None
            data = bytearray()
            try:
                async with session.post(url, data=body, headers=headers) as resp:
                    tally.status(resp.status)
                    async for chunk in resp.content.iter_any():
                        now = time.perf_counter()
                        if first_byte is None:
                            first_byte = now
                        tail_from = max(0, len(data) - len(marker_b))
                        data += chunk
                        if first_content is None and marker_b in data[tail_from:]:
                            first_content = now
            except Exception as exc:
                tally.error(exc)
                incomplete += 1
                continue
            tally.latencies.append(time.perf_counter() - t0)
            if first_byte is not None:
                ttfb.append(first_byte - t0)
            if first_content is not None:
                ttfc.append(first_content - t0)
            # SSE comments (the proxy's `: budget-proxy cost=...`) are not events
            events = (data.count(b"\n\n") - data.count(b"\n\n:")
                      - (1 if data.startswith(b":") else 0))
            if expect_events is None or events == expect_events:
                complete += 1
            else:
                incomplete += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    result = tally.result(time.perf_counter() - start)
    result["total"] = result.pop("latency")
    result["ttfb"] = summarize(ttfb)
    result["ttfc"] = summarize(ttfc)
    result["complete"] = complete
    result["incomplete"] = incomplete
    return result


async def _big_prompt(
    session: Any,
    small: dict[str, Any],
    big: dict[str, Any],
    rate: float,
    seconds: float,
    big_count: int,
) -> dict[str, Any]:
    """Small requests at a fixed rate while a few huge prompts go through one after another."""
    windows: list[tuple[float, float]] = []
    big_lat: list[float] = []
    small_spans: list[tuple[float, float]] = []
    small_task = asyncio.create_task(_open_loop_spans(session, small, rate, seconds, small_spans))
    big_body = big["body"].encode()
    start = time.perf_counter()
    for i in range(big_count):
        at = start + seconds * (0.25 + 0.5 * i / max(1, big_count))
        await asyncio.sleep(max(0.0, at - time.perf_counter()))
        t0 = time.perf_counter()
        async with session.post(big["url"], data=big_body, headers=big["headers"]) as resp:
            await resp.read()
            big_status = resp.status
        t1 = time.perf_counter()
        windows.append((t0, t1))
        big_lat.append(t1 - t0)
    small_result = await small_task
    during = [e - s for s, e in small_spans if any(s < w1 and e > w0 for w0, w1 in windows)]
    outside = [e - s for s, e in small_spans if not any(s < w1 and e > w0 for w0, w1 in windows)]
    small_result["big"] = summarize(big_lat)
    small_result["big_status"] = big_status
    small_result["small_during_big"] = summarize(during)
    small_result["small_outside_big"] = summarize(outside)
    return small_result


async def _open_loop_spans(
    session: Any, req: dict[str, Any], rate: float, seconds: float, spans: list[tuple[float, float]]
) -> dict[str, Any]:
    url, body, headers = req["url"], req["body"].encode(), req["headers"]
    tally = _Tally()
    tasks: set[asyncio.Task[None]] = set()

    async def one(scheduled: float) -> None:
        try:
            async with session.post(url, data=body, headers=headers) as resp:
                await resp.read()
                tally.status(resp.status)
        except Exception as exc:
            tally.error(exc)
            return
        end = time.perf_counter()
        spans.append((scheduled, end))
        tally.latencies.append(end - scheduled)

    start = time.perf_counter()
    for i in range(int(rate * seconds)):
        scheduled = start + i / rate
        await asyncio.sleep(max(0.0, scheduled - time.perf_counter()))
        task = asyncio.create_task(one(scheduled))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.wait(tasks)
    return tally.result(time.perf_counter() - start)


async def _loadgen_main(spec: dict[str, Any]) -> dict[str, Any]:
    import aiohttp

    connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=None)
    timeout = aiohttp.ClientTimeout(total=spec.get("timeout_s", 120))
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        warm = spec.get("warmup")
        if warm:
            await _closed_loop(session, warm["request"], warm["concurrency"], warm["seconds"], None)
        print("READY", flush=True)
        sys.stdin.readline()
        mode = spec["mode"]
        if mode == "closed":
            return await _closed_loop(
                session, spec["request"], spec["concurrency"], spec["seconds"], spec.get("total")
            )
        if mode == "rate":
            return await _open_loop(session, spec["request"], spec["rate"], spec["seconds"])
        if mode == "stream":
            return await _streams(
                session,
                spec["request"],
                spec["concurrency"],
                spec["seconds"],
                spec.get("total"),
                spec["marker"],
                spec.get("expect_events"),
            )
        if mode == "big_prompt":
            return await _big_prompt(
                session,
                spec["request"],
                spec["big"],
                spec["rate"],
                spec["seconds"],
                spec["big_count"],
            )
        raise ValueError(f"unknown load mode {mode}")


def loadgen_entry() -> None:
    """Subprocess side: spec on stdin, READY after warm-up, waits for a line, prints JSON."""
    spec = json.loads(sys.stdin.readline())
    result = asyncio.run(_loadgen_main(spec))
    print("RESULT " + json.dumps(result), flush=True)


# Processes ------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pin_to_core(core: int | None) -> Callable[[], None] | None:
    if core is None or not hasattr(os, "sched_setaffinity") or (os.cpu_count() or 1) < 2:
        return None

    def pin() -> None:
        os.sched_setaffinity(0, {core})

    return pin


@dataclass
class Proc:
    """A server process the harness started, with /proc readings for CPU and memory."""

    name: str
    popen: subprocess.Popen[bytes]
    url: str
    log_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def cpu_s(self) -> float:
        with open(f"/proc/{self.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK

    def _status_kb(self, key: str) -> int:
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1])
        return 0

    def rss_mb(self) -> float:
        return self._status_kb("VmRSS:") / 1024

    def peak_rss_mb(self) -> float:
        return self._status_kb("VmHWM:") / 1024

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, n: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        return ""

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)


def spawn(
    name: str, argv: list[str], env: dict[str, str], core: int | None, url: str, log_dir: Path
) -> Proc:
    log_path = log_dir / f"{name}.log"
    log = open(log_path, "wb")
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **env}
    full_env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p
    )
    popen = subprocess.Popen(
        argv,
        stdout=log,
        stderr=subprocess.STDOUT,
        env=full_env,
        cwd=ROOT,
        preexec_fn=pin_to_core(core),
    )
    log.close()
    return Proc(name, popen, url, log_path)


def http(method: str, url: str, body: Any = None, timeout: float = 5.0) -> tuple[int, bytes]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def wait_ready(proc: Proc, url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited ({proc.popen.returncode}):\n{proc.log_tail()}")
        try:
            status, _ = http("GET", url, timeout=2)
            if status == 200:
                return
            last = f"HTTP {status}"
        except OSError as exc:
            last = str(exc)
        time.sleep(0.05)
    raise RuntimeError(
        f"{proc.name} not ready at {url} after {timeout}s ({last}):\n{proc.log_tail()}"
    )


# Targets ---------------------------------------------------------------------------------------


@dataclass
class RunContext:
    """What a target or scenario hook may use: where things live and how to clean up."""

    quick: bool
    workdir: Path
    fake_url: str = ""
    cleanups: list[Callable[[], None]] = field(default_factory=list)

    def on_cleanup(self, fn: Callable[[], None]) -> None:
        self.cleanups.append(fn)

    def run_cleanups(self) -> None:
        while self.cleanups:
            with contextlib.suppress(Exception):
                self.cleanups.pop()()


def default_proxy_command(port: int) -> list[str]:
    return [sys.executable, "-m", "budget_proxy", "serve", "--port", str(port)]


def default_proxy_env(ctx: RunContext, data_dir: Path) -> dict[str, str]:
    return {
        "BUDGET_OPENAI_BASE_URL": f"{ctx.fake_url}/v1",
        "BUDGET_ANTHROPIC_BASE_URL": ctx.fake_url,
        "BUDGET_DATA_DIR": str(data_dir),
        "BUDGET_LOG_LEVEL": "WARNING",
        "OPENAI_API_KEY": "sk-fake",
        "ANTHROPIC_API_KEY": "sk-ant-fake",
    }


@dataclass
class ProxyTarget:
    """How to start the real proxy; swap fields to benchmark another build or configuration."""

    name: str = "proxy"
    command: Callable[[int], list[str]] = default_proxy_command
    env: Callable[[RunContext, Path], dict[str, str]] = default_proxy_env
    health_path: str = "/health"
    startup_timeout_s: float = 60.0


def proxy_importable(module: str = "budget_proxy.app") -> bool:
    """Checked in a child so a half-written proxy cannot break or bloat the harness."""
    done = subprocess.run(
        [sys.executable, "-c", f"import {module}"], capture_output=True, cwd=ROOT, check=False
    )
    return done.returncode == 0


@dataclass
class Target:
    """One measured path to the fake: its base URL and the process whose cost is measured."""

    name: str
    url: str
    proc: Proc
    fake: Proc
    # RSS of a process started for this target, read when it first answered its readiness
    # probe: after start-up, before any measured request (None for `direct`: the fake)
    idle_rss_mb: float | None = None


# Scenarios -------------------------------------------------------------------------------------


ProxySetup = Callable[[RunContext, Path], dict[str, str]]
"""Scenario hook run before each proxy start: gets the proxy's data dir, may write policies or
start services (register their teardown with ``ctx.on_cleanup``), returns extra env vars."""


@dataclass
class Scenario:
    """A named measurement run against every target; ``measure`` returns {variant: metrics}."""

    name: str
    description: str
    measure: Callable[[Harness, Target], dict[str, dict[str, Any]]]
    fake_config: Callable[[bool], dict[str, Any]] = lambda quick: {}
    proxy_setup: ProxySetup | None = None
    targets: tuple[str, ...] = ("direct", "floor", "proxy")
    proxy_workers: int = 1  # `serve --workers N` (the Redis store)
    pinned: bool = True  # False: floor and proxy may use every core (worker scaling)
    by_default: bool = True  # False: run only when named in --scenarios


SCENARIOS: dict[str, Scenario] = {}


def register_scenario(scenario: Scenario) -> Scenario:
    """Add a scenario (for example one whose ``proxy_setup`` enables Redis or policies)."""
    SCENARIOS[scenario.name] = scenario
    return scenario


def _req(
    target: Target, path: str, body: dict[str, Any], headers: dict[str, str]
) -> dict[str, Any]:
    return {"url": target.url + path, "body": json.dumps(body), "headers": headers}


class Harness:
    """Runs the load generator against a target and turns its output into metrics."""

    def __init__(self, quick: bool, generator: str, workdir: Path) -> None:
        self.quick = quick
        self.workdir = workdir
        self.wrk = shutil.which("wrk") if generator in ("auto", "wrk") else None
        if generator == "wrk" and not self.wrk:
            raise SystemExit("--generator wrk asked for but wrk is not installed")
        self.generator = "wrk" if self.wrk else "python"

    def dur(self, quick_s: float, full_s: float) -> float:
        return quick_s if self.quick else full_s

    def warmup(self, target: Target) -> dict[str, Any]:
        return {
            "request": _req(target, CHAT_PATH, SMALL_CHAT, OPENAI_HEADERS),
            "concurrency": 4,
            "seconds": self.dur(0.2, 2.0),
        }

    def python_load(
        self, target: Target, spec: dict[str, Any], sample: Callable[[], None] | None = None
    ) -> dict[str, Any]:
        """Run the Python generator pinned to the load core; CPU is read around the measurement."""
        spec = {"warmup": self.warmup(target), **spec}
        argv = [sys.executable, str(Path(__file__).resolve()), "--loadgen"]
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            preexec_fn=pin_to_core(CORE_LOAD),
        )
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(json.dumps(spec) + "\n")
        proc.stdin.flush()
        line = proc.stdout.readline()
        if line.strip() != "READY":
            proc.kill()
            raise RuntimeError(f"load generator failed to start: {line!r}")
        before = self._readings(target)
        proc.stdin.write("GO\n")
        proc.stdin.flush()
        stop = threading.Event()
        sampler = None
        if sample is not None:
            sampler = threading.Thread(target=_sample_loop, args=(sample, stop), daemon=True)
            sampler.start()
        out, _ = proc.communicate(timeout=3600)
        stop.set()
        if sampler is not None:
            sampler.join()
        after = self._readings(target)
        result_line = next((ln for ln in out.splitlines() if ln.startswith("RESULT ")), None)
        if result_line is None:
            raise RuntimeError(f"load generator produced no result (exit {proc.returncode})")
        result = json.loads(result_line[7:])
        result["generator"] = "python"
        self._attach_costs(result, before, after, target)
        return result

    def wrk_load(
        self,
        target: Target,
        path: str,
        body: dict[str, Any],
        headers: dict[str, str],
        concurrency: int,
        seconds: float,
    ) -> dict[str, Any]:
        """Fixed concurrency with wrk (C, one thread) pinned to the load core."""
        assert self.wrk is not None
        script = self.workdir / "post.lua"
        script.write_text(_wrk_script(body, headers))
        url = target.url + path
        pin = ["taskset", "-c", str(CORE_LOAD)] if shutil.which("taskset") else []
        if self.quick:
            _warm_serial(url, body, headers, 30)
        else:
            warm = [*pin, self.wrk, "-t1", "-c4", "-d2s", "-s", str(script), url]
            subprocess.run(warm, capture_output=True, check=False, timeout=120)
        before = self._readings(target)
        argv = [
            *pin,
            self.wrk,
            "-t1",
            f"-c{concurrency}",
            f"-d{max(1, round(seconds))}s",
            "--timeout",
            "30s",
            "-s",
            str(script),
            url,
        ]
        done = subprocess.run(
            argv, capture_output=True, text=True, check=False, timeout=seconds + 120
        )
        after = self._readings(target)
        line = next((ln for ln in done.stdout.splitlines() if ln.startswith("WRKJSON ")), None)
        if line is None:
            raise RuntimeError(f"wrk failed: {done.stdout}\n{done.stderr}")
        raw = json.loads(line[8:])
        elapsed = raw["duration_us"] / 1e6
        errors = sum(raw["errors"].values())
        ok = raw["requests"] - raw["errors"]["status"]
        curve = [[p, v / 1000] for p, v in raw["percentiles"]]
        pmap = {p: v for p, v in curve}
        result: dict[str, Any] = {
            "requests": raw["requests"],
            "ok": ok,
            "errors": errors,
            "elapsed_s": elapsed,
            "throughput_rps": ok / elapsed if elapsed else 0.0,
            "latency": {
                "count": raw["requests"],
                "mean_ms": raw["mean_us"] / 1000,
                "min_ms": raw["min_us"] / 1000,
                "p50_ms": pmap[50],
                "p90_ms": pmap[90],
                "p99_ms": pmap[99],
                "p999_ms": pmap[99.9],
                "max_ms": raw["max_us"] / 1000,
                "curve": curve,
            },
            "generator": "wrk",
        }
        self._attach_costs(result, before, after, target)
        return result

    def closed(
        self,
        target: Target,
        path: str,
        body: dict[str, Any],
        headers: dict[str, str],
        concurrency: int,
        seconds: float,
    ) -> dict[str, Any]:
        if self.wrk:
            return self.wrk_load(target, path, body, headers, concurrency, seconds)
        spec = {
            "mode": "closed",
            "request": _req(target, path, body, headers),
            "concurrency": concurrency,
            "seconds": seconds,
        }
        return self.python_load(target, spec)

    @staticmethod
    def _readings(target: Target) -> dict[str, float]:
        return {
            "cpu": target.proc.cpu_s(),
            "fake_cpu": target.fake.cpu_s(),
            "wall": time.perf_counter(),
        }

    @staticmethod
    def _attach_costs(
        result: dict[str, Any], before: dict[str, float], after: dict[str, float], target: Target
    ) -> None:
        n = max(1, result.get("requests", 0))
        result["cpu_us_per_req"] = (after["cpu"] - before["cpu"]) / n * 1e6
        result["fake_cpu_us_per_req"] = (after["fake_cpu"] - before["fake_cpu"]) / n * 1e6
        result["cpu_util"] = (after["cpu"] - before["cpu"]) / max(
            1e-9, after["wall"] - before["wall"]
        )
        result["rss_mb"] = target.proc.rss_mb()
        result["peak_rss_mb"] = target.proc.peak_rss_mb()


def _warm_serial(url: str, body: dict[str, Any], headers: dict[str, str], n: int) -> None:
    """A few blocking requests so lazy imports and connection set-up are not measured."""
    data = json.dumps(body).encode()
    for _ in range(n):
        req = urllib.request.Request(url, data=data, headers=headers, method="POST")
        with contextlib.suppress(OSError), urllib.request.urlopen(req, timeout=30) as resp:
            resp.read()


def _sample_loop(sample: Callable[[], None], stop: threading.Event) -> None:
    while not stop.wait(0.05):
        with contextlib.suppress(Exception):
            sample()


def _lua_str(value: str) -> str:
    level = 0
    while f"]{'=' * level}]" in value:
        level += 1
    eq = "=" * level
    return f"[{eq}[{value}]{eq}]"


def _wrk_script(body: dict[str, Any], headers: dict[str, str]) -> str:
    lines = ['wrk.method = "POST"', f"wrk.body = {_lua_str(json.dumps(body))}"]
    lines += [f"wrk.headers[ {_lua_str(k)} ] = {_lua_str(v)}" for k, v in headers.items()]
    pcts = ", ".join(str(p) for p in CURVE_PERCENTILES)
    lines.append(
        f"""
done = function(summary, latency, requests)
  local e = summary.errors
  local parts = {{}}
  for _, p in ipairs({{{pcts}}}) do
    parts[#parts + 1] = string.format("[%s,%d]", p, latency:percentile(p))
  end
  io.write(string.format(
    'WRKJSON {{"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"errors":{{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d}},' ..
    '"min_us":%d,"max_us":%d,"mean_us":%f,"percentiles":[%s]}}\\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.min, latency.max, latency.mean, table.concat(parts, ",")))
end
"""
    )
    return "\n".join(lines)


def _flatten(
    result: dict[str, Any], latency_key: str = "latency", label: str = "request latency"
) -> dict[str, Any]:
    """The common metric names every table row uses, from one load result."""
    lat = result.get(latency_key) or {}
    return {
        "latency_metric": label,
        "throughput_rps": result.get("throughput_rps", 0.0),
        "requests": result.get("requests", 0),
        "errors": result.get("errors", 0),
        "p50_ms": lat.get("p50_ms"),
        "p90_ms": lat.get("p90_ms"),
        "p99_ms": lat.get("p99_ms"),
        "mean_ms": lat.get("mean_ms"),
        "max_ms": lat.get("max_ms"),
        "curve": lat.get("curve", []),
        "cpu_us_per_req": result.get("cpu_us_per_req"),
        "fake_cpu_us_per_req": result.get("fake_cpu_us_per_req"),
        "cpu_util": result.get("cpu_util"),
        "rss_mb": result.get("rss_mb"),
        "peak_rss_mb": result.get("peak_rss_mb"),
        "generator": result.get("generator"),
    }


def measure_serial(h: Harness, t: Target) -> dict[str, dict[str, Any]]:
    r = h.closed(t, CHAT_PATH, SMALL_CHAT, OPENAI_HEADERS, 1, h.dur(1.0, 10.0))
    return {"openai": _flatten(r)}


def measure_throughput(h: Harness, t: Target) -> dict[str, dict[str, Any]]:
    r = h.closed(t, CHAT_PATH, SMALL_CHAT, OPENAI_HEADERS, 32, h.dur(1.0, 10.0))
    return {"openai": _flatten(r)}


def measure_fixed_rate(h: Harness, t: Target) -> dict[str, dict[str, Any]]:
    rate = 200.0
    spec = {
        "mode": "rate",
        "request": _req(t, CHAT_PATH, SMALL_CHAT, OPENAI_HEADERS),
        "rate": rate,
        "seconds": h.dur(1.0, 15.0),
    }
    r = h.python_load(t, spec)
    row = _flatten(r, label="latency from scheduled send")
    row["extra"] = {"target_rate_rps": rate, "skipped": r.get("skipped", 0)}
    return {"openai": row}


STREAM_CHUNKS = 10


def _stream_row(
    r: dict[str, Any], expected: int, key: str = "ttfc", label: str = "time to first content chunk"
) -> dict[str, Any]:
    row = _flatten(r, key, label)
    total = r.get("total") or {}
    row["extra"] = {
        "ttfb_p50_ms": (r.get("ttfb") or {}).get("p50_ms"),
        "total_p50_ms": total.get("p50_ms"),
        "total_p99_ms": total.get("p99_ms"),
        "complete": r.get("complete"),
        "incomplete": r.get("incomplete"),
        "expected": expected,
    }
    return row


def _expected_events(family: str, chunks: int) -> int:
    # OpenAI: role chunk + deltas + finish chunk + usage chunk + [DONE].
    # Anthropic: message_start, block start, ping, deltas, block stop, message_delta, stop.
    return chunks + 4 if family == "openai" else chunks + 6


def messages_path(t: Target) -> str:
    """Anthropic's Messages API: the fake and the floor serve it at its own path; the proxy
    serves Anthropic under its `/anthropic` prefix."""
    return MESSAGES_PATH if t.name in ("direct", "floor") else "/anthropic" + MESSAGES_PATH


def measure_stream_ttfc(h: Harness, t: Target) -> dict[str, dict[str, Any]]:
    rows = {}
    for family, path, body, headers, marker in (
        ("openai", CHAT_PATH, STREAM_CHAT, OPENAI_HEADERS, OPENAI_CONTENT_MARKER),
        ("anthropic", messages_path(t), STREAM_MESSAGES, ANTHROPIC_HEADERS,
         ANTHROPIC_CONTENT_MARKER),
    ):
        expected = _expected_events(family, STREAM_CHUNKS)
        spec = {
            "mode": "stream",
            "request": _req(t, path, body, headers),
            "concurrency": 1,
            "seconds": h.dur(0.5, 8.0),
            "marker": marker,
            "expect_events": expected,
        }
        rows[family] = _stream_row(h.python_load(t, spec), expected)
    return rows


def measure_open_streams(h: Harness, t: Target) -> dict[str, dict[str, Any]]:
    n = 200
    waves = 1 if h.quick else 3
    expected = _expected_events("openai", 5 if h.quick else 20)
    peak = [t.proc.rss_mb()]

    def sample() -> None:
        peak[0] = max(peak[0], t.proc.rss_mb())

    spec = {
        "mode": "stream",
        "request": _req(t, CHAT_PATH, STREAM_CHAT, OPENAI_HEADERS),
        "concurrency": n,
        "seconds": 3600,
        "total": n * waves,
        "marker": OPENAI_CONTENT_MARKER,
        "expect_events": expected,
    }
    rss_before = t.proc.rss_mb()
    r = h.python_load(t, spec, sample=sample)
    row = _stream_row(r, expected, "total", "whole stream")
    row["extra"].update(
        {
            "streams": n * waves,
            "concurrent": n,
            "all_chunks_arrived": r.get("complete") == n * waves,
            "rss_before_mb": rss_before,
            "rss_during_max_mb": peak[0],
        }
    )
    return {"openai": row}


def _big_text(words: int) -> str:
    rng = random.Random(1234)
    vocab = [
        "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(3, 8)))
        for _ in range(2000)
    ]
    return " ".join(vocab[rng.randrange(len(vocab))] for _ in range(words))


def measure_big_prompt(h: Harness, t: Target) -> dict[str, dict[str, Any]]:
    words = 100_000
    big_body = {**SMALL_CHAT, "messages": [{"role": "user", "content": _big_text(words)}]}
    spec = {
        "mode": "big_prompt",
        "request": _req(t, CHAT_PATH, SMALL_CHAT, OPENAI_HEADERS),
        "big": _req(t, CHAT_PATH, big_body, OPENAI_HEADERS),
        "rate": 50.0 if h.quick else 100.0,
        "seconds": h.dur(1.2, 15.0),
        "big_count": 1 if h.quick else 5,
    }
    r = h.python_load(t, spec)
    row = _flatten(r, label="small requests, from scheduled send")
    during = r.get("small_during_big") or {}
    outside = r.get("small_outside_big") or {}
    row["extra"] = {
        "big_prompt_words": words,
        "big_p50_ms": (r.get("big") or {}).get("p50_ms"),
        "big_status": r.get("big_status"),
        "small_during_big_count": during.get("count", 0),
        "small_during_big_p99_ms": during.get("p99_ms"),
        "small_outside_big_p99_ms": outside.get("p99_ms"),
    }
    return {"openai": row}


def measure_memory(h: Harness, t: Target) -> dict[str, dict[str, Any]]:
    """RSS at idle, after a first thousand calls (what loads once: the model's rank table,
    caches) and after N more: growth past the first thousand would be a leak."""
    total, warm = (800, 100) if h.quick else (100_000, 1_000)
    rss_start = t.proc.rss_mb()

    def spec(n: int) -> dict[str, Any]:
        return {"mode": "closed", "request": _req(t, CHAT_PATH, SMALL_CHAT, OPENAI_HEADERS),
                "concurrency": 32, "seconds": 3600, "total": n}

    h.python_load(t, spec(warm))
    rss_warm = t.proc.rss_mb()
    r = h.python_load(t, spec(total))
    row = _flatten(r)
    rss_end = t.proc.rss_mb()
    row["extra"] = {
        "total_requests": total,
        "warm_requests": warm,
        "rss_start_mb": rss_start,
        "rss_warm_mb": rss_warm,
        "rss_end_mb": rss_end,
        "rss_growth_mb": rss_end - rss_warm,
        "growth_kb_per_1k_req": (rss_end - rss_warm) * 1024 / (total / 1000),
    }
    return {"openai": row}


def _stream_fake(chunks: int, delay_s: float) -> Callable[[bool], dict[str, Any]]:
    def config(quick: bool) -> dict[str, Any]:
        return {"reply_chunks": [f" tok{i}" for i in range(chunks)], "chunk_delay_s": delay_s}

    return config


for _scenario in (
    Scenario("nonstream_serial", "one request at a time, small OpenAI chat", measure_serial),
    Scenario(
        "nonstream_throughput", "32 concurrent clients, small OpenAI chat", measure_throughput
    ),
    Scenario(
        "fixed_rate", "open loop at 200 req/s, latency from scheduled send", measure_fixed_rate
    ),
    Scenario(
        "stream_ttfc",
        f"serial streams of {STREAM_CHUNKS} chunks 2 ms apart, five policies matching "
        "(a stream's hold is extended on each under BUDGET_STREAM_ENFORCEMENT=incremental)",
        measure_stream_ttfc,
        fake_config=_stream_fake(STREAM_CHUNKS, 0.002),
        proxy_setup=lambda ctx, data_dir: with_five_policies(ctx, data_dir),  # defined below
    ),
    Scenario(
        "open_streams_200",
        "200 concurrent slow streams held open",
        measure_open_streams,
        fake_config=lambda quick: _stream_fake(5 if quick else 20, 0.04 if quick else 0.1)(quick),
    ),
    Scenario(
        "big_prompt",
        "a 100k-token prompt while small requests flow at a fixed rate",
        measure_big_prompt,
    ),
    Scenario("memory_100k", "RSS before and after N requests (100k in full mode)", measure_memory),
):
    register_scenario(_scenario)


# Proxy features: policies per request, and the Redis store ---------------------------------

FIVE_POLICIES = """
# five policies that all match every benchmark request (openai, gpt-4o-mini, component bench)
[policy.bench-daily-hard]
type = "hard_limit"
period = "daily"
cost_limit = 1000000.0

[policy.bench-monthly-openai]
type = "hard_limit"
period = "monthly"
provider = "openai"
cost_limit = 1000000.0

[policy.bench-hourly-tokens]
type = "hard_limit"
period = "hourly"
token_limit = 100000000000

[policy.bench-weekly-warn]
type = "warn"
period = "weekly"
cost_limit = 1000000.0

[policy.bench-daily-model]
type = "soft_limit"
period = "daily"
model = "gpt-4o-mini"
cost_limit = 1000000.0
fallback_model = "gpt-4o-mini"
"""


def with_five_policies(ctx: RunContext, data_dir: Path) -> dict[str, str]:
    """Five policies matching every request (hard, warn and soft limits across periods)."""
    policy_dir = data_dir / "policies"
    policy_dir.mkdir(parents=True, exist_ok=True)
    (policy_dir / "bench.toml").write_text(FIVE_POLICIES)
    return {"BUDGET_POLICIES_DIR": str(policy_dir)}


def with_redis(ctx: RunContext, data_dir: Path) -> dict[str, str]:
    """A private redis-server (AOF everysec, as recommended) on the load core."""
    port = free_port()
    redis_dir = data_dir / "redis"
    redis_dir.mkdir(parents=True, exist_ok=True)
    redis = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "yes", "--appendfsync", "everysec", "--dir", str(redis_dir),
         "--maxmemory-policy", "noeviction"],
        stdout=subprocess.DEVNULL, preexec_fn=pin_to_core(CORE_LOAD),
    )
    ctx.on_cleanup(redis.terminate)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            break
        time.sleep(0.05)
    return {"BUDGET_REDIS_URL": f"redis://127.0.0.1:{port}/0"}


def with_redis_and_five_policies(ctx: RunContext, data_dir: Path) -> dict[str, str]:
    return {**with_redis(ctx, data_dir), **with_five_policies(ctx, data_dir)}


if shutil.which("redis-server"):
    _redis_scenarios: tuple[Scenario, ...] = (
        Scenario("serial_redis", "one request at a time, Redis store", measure_serial,
                 proxy_setup=with_redis),
        Scenario("serial_redis_5_policies", "one request at a time, Redis store, 5 matching "
                 "policies", measure_serial, proxy_setup=with_redis_and_five_policies),
        Scenario("throughput_redis", "32 concurrent clients, Redis store",
                 measure_throughput, proxy_setup=with_redis),
        # worker scaling: nothing pinned, so 1 and 2 workers compete with the load generator
        # and the fake for the same cores; compare the two rows with each other only
        Scenario("throughput_redis_1_worker", "32 clients, Redis store, unpinned, 1 worker",
                 measure_throughput, proxy_setup=with_redis, targets=("floor", "proxy"),
                 pinned=False, by_default=False),
        Scenario("throughput_redis_2_workers", "32 clients, Redis store, unpinned, "
                 "serve --workers 2", measure_throughput, proxy_setup=with_redis,
                 targets=("proxy",), proxy_workers=2, pinned=False, by_default=False),
    )
else:
    _redis_scenarios = ()
for _scenario in (
    Scenario("serial_5_policies", "one request at a time, embedded store, 5 matching policies",
             measure_serial, proxy_setup=with_five_policies),
    *_redis_scenarios,
):
    register_scenario(_scenario)


# Orchestration ---------------------------------------------------------------------------------


@contextlib.contextmanager
def fake_provider(ctx: RunContext, log_dir: Path, core: int) -> Iterator[Proc]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = spawn(
        "fake",
        [
            sys.executable,
            "-m",
            "budget_proxy.testing.fake_provider",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        {},
        core,
        url,
        log_dir,
    )
    try:
        wait_ready(proc, f"{url}/_fake/health", 30)
        yield proc
    finally:
        proc.stop()


@contextlib.contextmanager
def start_target(
    name: str, ctx: RunContext, fake: Proc, scenario: Scenario, proxy: ProxyTarget, log_dir: Path
) -> Iterator[Target]:
    if name == "direct":
        yield Target(name, fake.url, fake, fake)
        return
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    if name == "floor":
        argv = [
            sys.executable,
            str(BENCH_DIR / "floor.py"),
            "--port",
            str(port),
            "--upstream",
            fake.url,
        ]
        core = CORE_UNDER_TEST if scenario.pinned else None
        proc = spawn(f"{scenario.name}-floor", argv, {}, core, url, log_dir)
        ready_url = f"{url}/_fake/health"
    else:
        data_dir = Path(tempfile.mkdtemp(prefix="proxy-data-", dir=ctx.workdir))
        env = proxy.env(ctx, data_dir)
        if scenario.proxy_setup is not None:
            env.update(scenario.proxy_setup(ctx, data_dir))
        argv = proxy.command(port)
        if scenario.proxy_workers > 1:
            argv += ["--workers", str(scenario.proxy_workers)]
        core = CORE_UNDER_TEST if scenario.pinned else None
        proc = spawn(f"{scenario.name}-{proxy.name}", argv, env, core, url, log_dir)
        ready_url = f"{url}{proxy.health_path}"
    try:
        wait_ready(proc, ready_url, proxy.startup_timeout_s if name != "floor" else 30)
        yield Target(name, url, proc, fake, idle_rss_mb=proc.rss_mb())
    finally:
        proc.stop()


def run_scenario(
    h: Harness, scenario: Scenario, targets: list[str], proxy: ProxyTarget, log_dir: Path
) -> dict[str, Any]:
    ctx = RunContext(quick=h.quick, workdir=h.workdir)
    variants: dict[str, dict[str, Any]] = {}
    started = time.monotonic()
    try:
        with fake_provider(ctx, log_dir, CORE_LOAD) as fake:
            ctx.fake_url = fake.url
            knobs = scenario.fake_config(h.quick)
            for name in [t for t in targets if t in scenario.targets]:
                http("POST", f"{fake.url}/_fake/reset")
                if knobs:
                    status, body = http("POST", f"{fake.url}/_fake/config", knobs)
                    if status != 200:
                        raise RuntimeError(f"fake config rejected: {body!r}")
                try:
                    with start_target(name, ctx, fake, scenario, proxy, log_dir) as target:
                        rows = scenario.measure(h, target)
                        for row in rows.values():
                            row.setdefault("idle_rss_mb", target.idle_rss_mb)
                except Exception as exc:
                    rows = {"*": {"error": f"{type(exc).__name__}: {exc}"}}
                for variant, row in rows.items():
                    variants.setdefault(variant, {})[name] = row
    finally:
        ctx.run_cleanups()
    if "*" in variants:
        failed = variants.pop("*")
        for rows in variants.values():
            for name, row in failed.items():
                rows.setdefault(name, row)
        if not variants:
            variants["all"] = failed
    for rows in variants.values():
        base = rows.get("direct")
        for row in rows.values():
            if (
                base
                and "error" not in base
                and "error" not in row
                and row.get("p50_ms") is not None
            ):
                row["added_p50_ms"] = row["p50_ms"] - base["p50_ms"]
                row["added_p99_ms"] = row["p99_ms"] - base["p99_ms"]
    return {
        "description": scenario.description,
        "wall_s": time.monotonic() - started,
        "variants": variants,
    }


def calibrate(h: Harness, log_dir: Path) -> dict[str, Any]:
    """Generator ceiling: the fake alone on the core under test, the generator on the other."""
    ctx = RunContext(quick=h.quick, workdir=h.workdir)
    out: dict[str, Any] = {"placement": "fake on core 0, generator on core 1"}
    seconds = h.dur(0.8, 5.0)
    with fake_provider(ctx, log_dir, CORE_UNDER_TEST) as fake:
        target = Target("direct", fake.url, fake, fake)
        spec = {
            "mode": "closed",
            "request": _req(target, CHAT_PATH, SMALL_CHAT, OPENAI_HEADERS),
            "concurrency": 32,
            "seconds": seconds,
        }
        py = h.python_load(target, spec)
        out["python_c32"] = _flatten(py) | {"curve": []}
        if h.wrk:
            w = h.wrk_load(target, CHAT_PATH, SMALL_CHAT, OPENAI_HEADERS, 32, seconds)
            out["wrk_c32"] = _flatten(w) | {"curve": []}
    return out


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def _notes(scenario: str, row: dict[str, Any]) -> str:
    extra = row.get("extra") or {}
    if "error" in row:
        return f"ERROR: {row['error'][:120]}"
    if scenario == "stream_ttfc":
        return (
            f"total p50 {_fmt(extra.get('total_p50_ms'))} ms, complete "
            f"{extra.get('complete')}/{_fmt(row.get('requests'))}"
        )
    if scenario == "open_streams_200":
        return (
            f"{extra.get('complete')}/{extra.get('streams')} streams complete, RSS "
            f"{_fmt(extra.get('rss_before_mb'), 1)} -> max "
            f"{_fmt(extra.get('rss_during_max_mb'), 1)} MB"
        )
    if scenario == "big_prompt":
        return (
            f"small p99 during big {_fmt(extra.get('small_during_big_p99_ms'))} ms "
            f"(n={extra.get('small_during_big_count')}), outside "
            f"{_fmt(extra.get('small_outside_big_p99_ms'))} ms; big p50 "
            f"{_fmt(extra.get('big_p50_ms'))} ms"
        )
    if scenario == "memory_100k":
        return (
            f"RSS {_fmt(extra.get('rss_start_mb'), 1)} idle, "
            f"{_fmt(extra.get('rss_warm_mb'), 1)} after {extra.get('warm_requests')} req, "
            f"{_fmt(extra.get('rss_end_mb'), 1)} MB after {extra.get('total_requests')} more"
        )
    if scenario == "fixed_rate":
        return f"target {_fmt(extra.get('target_rate_rps'), 0)} req/s"
    return ""


def _loadavg(value: Any) -> str:
    return " ".join(f"{v:.2f}" for v in value) if value else "-"


def markdown(results: dict[str, Any]) -> str:
    meta = results["meta"]
    lines = [
        "# Benchmark results",
        "",
        f"{meta['date']} · {'quick' if meta['quick'] else 'full'} run · generator "
        f"{meta['generator']} · {meta['cpus']} cores · Python {meta['python']} · "
        f"aiohttp {meta['aiohttp']} · event loop "
        f"{'uvloop ' + meta['uvloop'] if meta.get('uvloop') else 'asyncio'} (floor, proxy)",
        "",
        f"Load average before/after: {_loadavg(meta.get('loadavg_start'))} / "
        f"{_loadavg(meta.get('loadavg_end'))} (anything else running skews the numbers).",
        "",
        f"Placement: {meta['placement']}. Latency in ms; `+p50`/`+p99` are over `direct`; "
        "CPU is the measured process's user+system time per request (for `direct`, the fake's).",
        "",
    ]
    cal = results.get("calibration") or {}
    if cal:
        parts = [
            f"{k}: {_fmt(v.get('throughput_rps'), 0)} req/s (p50 {_fmt(v.get('p50_ms'))} ms)"
            for k, v in cal.items()
            if isinstance(v, dict)
        ]
        lines += [
            f"Generator ceiling against the fake ({cal.get('placement')}): " + "; ".join(parts),
            "",
        ]
    lines += [
        "| scenario | variant | target | req/s | p50 | p90 | p99 | +p50 | +p99 | CPU µs/req "
        "| peak RSS MB | notes |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, sc in results["scenarios"].items():
        for variant, rows in sc["variants"].items():
            for target, row in rows.items():
                lines.append(
                    f"| {name} | {variant} | {target} | {_fmt(row.get('throughput_rps'), 0)} "
                    f"| {_fmt(row.get('p50_ms'))} | {_fmt(row.get('p90_ms'))} "
                    f"| {_fmt(row.get('p99_ms'))} | {_fmt(row.get('added_p50_ms'))} "
                    f"| {_fmt(row.get('added_p99_ms'))} | {_fmt(row.get('cpu_us_per_req'), 0)} "
                    f"| {_fmt(row.get('peak_rss_mb'), 1)} | {_notes(name, row)} |"
                )
    skipped = meta.get("skipped_targets")
    if skipped:
        lines += ["", f"Skipped targets: {skipped}"]
    return "\n".join(lines) + "\n"


def _metric_label(rows: dict[str, Any]) -> str:
    return next((r["latency_metric"] for r in rows.values() if r.get("latency_metric")), "")


def plot(results: dict[str, Any], path: Path) -> bool:
    """Latency distributions per scenario and variant, one line per target."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter
    except ImportError:
        return False
    panels = [
        (f"{name} / {variant}\n{_metric_label(rows)}", rows)
        for name, sc in results["scenarios"].items()
        for variant, rows in sc["variants"].items()
        if any(r.get("curve") for r in rows.values())
    ]
    if not panels:
        return False
    cols = 3
    nrows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(5 * cols, 3.6 * nrows), squeeze=False)
    colors = {"direct": "tab:green", "floor": "tab:blue", "proxy": "tab:red"}
    for ax, (title, rows) in zip(axes.flat, panels, strict=False):
        for target, row in rows.items():
            curve = row.get("curve") or []
            if not curve:
                continue
            xs = [max(v, 1e-3) for _, v in curve]
            ys = [p for p, _ in curve]
            ax.plot(xs, ys, label=target, color=colors.get(target))
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("latency (ms, log)")
        ax.set_ylabel("percentile")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    fig.suptitle("Latency distribution: direct vs floor vs proxy")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _versions() -> dict[str, str]:
    import aiohttp

    wrk = shutil.which("wrk")
    wrk_version = ""
    if wrk:
        done = subprocess.run([wrk, "-v"], capture_output=True, text=True, check=False)
        wrk_version = (done.stdout or done.stderr).split("\n")[0].strip()
    try:
        import uvloop  # type: ignore[import-not-found]

        uvloop_version = uvloop.__version__
    except ImportError:  # floor.py and the proxy run on the default asyncio loop
        uvloop_version = ""
    return {"aiohttp": aiohttp.__version__, "wrk": wrk_version, "uvloop": uvloop_version}


def run_benchmarks(
    *,
    quick: bool,
    out: Path,
    scenarios: list[str] | None = None,
    targets: list[str] | None = None,
    generator: str = "auto",
    proxy: ProxyTarget | None = None,
    calibration: bool = True,
) -> dict[str, Any]:
    """Run the chosen scenarios and write results.json, results.md and latency.png into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    proxy = proxy or ProxyTarget()
    wanted = targets or ["direct", "floor", "proxy"]
    skipped: dict[str, str] = {}
    if "proxy" in wanted and not proxy_importable():
        wanted = [t for t in wanted if t != "proxy"]
        skipped["proxy"] = "budget_proxy.app does not import"
    names = scenarios or [name for name, sc in SCENARIOS.items() if sc.by_default]
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        raise SystemExit(f"unknown scenarios: {unknown}; known: {list(SCENARIOS)}")
    pin_self = pin_to_core(CORE_LOAD)
    if pin_self is not None:
        pin_self()
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        workdir = Path(tmp)
        log_dir = out / "logs"
        log_dir.mkdir(exist_ok=True)
        h = Harness(quick, generator, workdir)
        results: dict[str, Any] = {
            "meta": {
                "date": time.strftime("%Y-%m-%d %H:%M:%S"),
                "quick": quick,
                "generator": h.generator,
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
                "platform": platform.platform(),
                "placement": (
                    f"process under test on core {CORE_UNDER_TEST}; load generator and "
                    f"fake provider on core {CORE_LOAD}"
                ),
                "targets": wanted,
                "skipped_targets": skipped,
                "loadavg_start": os.getloadavg(),
                **_versions(),
            },
            "calibration": calibrate(h, log_dir) if calibration else {},
            "scenarios": {},
        }
        for name in names:
            print(f"[bench] {name} ...", flush=True)
            results["scenarios"][name] = run_scenario(h, SCENARIOS[name], wanted, proxy, log_dir)
            print(f"[bench] {name} done in {results['scenarios'][name]['wall_s']:.1f}s", flush=True)
    results["meta"]["loadavg_end"] = os.getloadavg()
    results["meta"]["plot"] = plot(results, out / "latency.png")
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "results.md").write_text(markdown(results))
    return results


def main(argv: list[str] | None = None) -> None:
    args_list = sys.argv[1:] if argv is None else argv
    if args_list[:1] == ["--loadgen"]:
        loadgen_entry()
        return
    parser = argparse.ArgumentParser(description="Benchmark direct vs floor vs budget proxy.")
    parser.add_argument("--quick", action="store_true", help="a few seconds per scenario")
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "results")
    parser.add_argument("--scenarios", help=f"comma list of {', '.join(SCENARIOS)}")
    parser.add_argument("--targets", help="comma list of direct, floor, proxy")
    parser.add_argument(
        "--generator",
        choices=["auto", "wrk", "python"],
        default="auto",
        help="fixed-concurrency load: wrk if installed (auto) or Python",
    )
    parser.add_argument(
        "--no-calibration", action="store_true", help="skip measuring the generators' own ceiling"
    )
    args = parser.parse_args(args_list)
    results = run_benchmarks(
        quick=args.quick,
        out=args.out,
        scenarios=args.scenarios.split(",") if args.scenarios else None,
        targets=args.targets.split(",") if args.targets else None,
        generator=args.generator,
        calibration=not args.no_calibration,
    )
    print(markdown(results))
    print(
        f"[bench] wrote {args.out / 'results.json'} and results.md"
        + (" and latency.png" if results["meta"].get("plot") else "")
    )


if __name__ == "__main__":
    main()

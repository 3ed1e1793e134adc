"""Where the proxy's time goes: py-spy samples the proxy under the benchmark's load.

Starts the fake provider, the proxy (five matching policies by default, as in
`serial_5_policies`), drives it serially or with 32 connections for a while, samples it with
py-spy (`pip install py-spy`; needs ptrace rights), and prints the functions with the most
samples, inclusive and self, as a share of the proxy's samples.

    python benchmarks/profile.py --mode serial --seconds 15 [--redis] [--policies 0]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from run import FIVE_POLICIES, SMALL_CHAT, free_port  # noqa: E402


def wait_ready(url: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer")


async def drive(url: str, seconds: float, concurrency: int) -> int:
    import aiohttp

    done = 0
    deadline = time.monotonic() + seconds
    headers = {"Authorization": "Bearer sk-bench-client"}
    async with aiohttp.ClientSession() as session:

        async def client() -> None:
            nonlocal done
            while time.monotonic() < deadline:
                async with session.post(f"{url}/v1/chat/completions", json=SMALL_CHAT,
                                        headers=headers) as resp:
                    await resp.read()
                    assert resp.status == 200, resp.status
                done += 1

        await asyncio.gather(*(client() for _ in range(concurrency)))
    return done


def summarize(raw: Path, top: int) -> None:
    """py-spy's raw (collapsed) output: `frame;frame;... count` per line."""
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        count = int(count_text)
        frames = [f.split(" (")[0] + " " + f.split(" (")[-1].split(":")[0].rsplit("/", 1)[-1]
                  for f in stack.split(";")]
        total += count
        for frame in set(frames):
            inclusive[frame] += count
        own[frames[-1]] += count
    print(f"{total} samples")
    for title, counter in (("inclusive", inclusive), ("self", own)):
        print(f"\n-- top {top} {title} --")
        for frame, count in counter.most_common(top):
            print(f"{100 * count / total:5.1f}%  {frame}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mode", choices=["serial", "throughput"], default="serial")
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--redis", action="store_true", help="the Redis store (redis-server)")
    parser.add_argument("--policies", type=int, choices=[0, 5], default=5)
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "proxy.spy")
    args = parser.parse_args()
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    work = Path(tempfile.mkdtemp(prefix="bp-profile-"))
    procs: list[subprocess.Popen[bytes]] = []
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    try:
        fake_port, proxy_port = free_port(), free_port()
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "budget_proxy.testing.fake_provider", "--port", str(fake_port)],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_ready(f"http://127.0.0.1:{fake_port}/_fake/health")
        proxy_env = {**env, "BUDGET_DATA_DIR": str(work / "data"), "OPENAI_API_KEY": "sk-fake",
                     "BUDGET_OPENAI_BASE_URL": f"http://127.0.0.1:{fake_port}/v1",
                     "BUDGET_LOG_LEVEL": "WARNING"}
        if args.policies:
            (work / "policies").mkdir()
            (work / "policies" / "bench.toml").write_text(FIVE_POLICIES)
            proxy_env["BUDGET_POLICIES_DIR"] = str(work / "policies")
        if args.redis:
            redis_port = free_port()
            procs.append(subprocess.Popen(
                ["redis-server", "--port", str(redis_port), "--save", "", "--appendonly", "no"],
                stdout=subprocess.DEVNULL))
            proxy_env["BUDGET_REDIS_URL"] = f"redis://127.0.0.1:{redis_port}/0"
        proxy = subprocess.Popen(
            [sys.executable, "-m", "budget_proxy", "serve", "--port", str(proxy_port)],
            env=proxy_env)
        procs.append(proxy)
        url = f"http://127.0.0.1:{proxy_port}"
        wait_ready(f"{url}/health")
        asyncio.run(drive(url, 2, 1))  # warm up: rank table, connections
        spy = subprocess.Popen([py_spy, "record", "--pid", str(proxy.pid), "--format", "raw",
                                "--rate", "250", "--duration", str(int(args.seconds)),
                                "--output", str(args.out), "--nonblocking"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        n = asyncio.run(drive(url, args.seconds, 1 if args.mode == "serial" else 32))
        spy.wait(timeout=60)
        print(f"{args.mode}: {n} requests in {args.seconds:.0f} s ({n / args.seconds:.0f} req/s)")
        summarize(args.out, args.top)
    finally:
        for proc in reversed(procs):
            proc.terminate()
            proc.wait(timeout=20)


if __name__ == "__main__":
    main()

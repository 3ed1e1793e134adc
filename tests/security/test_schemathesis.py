"""A bounded schemathesis run over the admin API's own OpenAPI document, against the real
server, with the admin token so mutations are exercised: no answer may be a 5xx.

Bounded to a minute or two: a fixed number of examples per operation, deterministic
generation (the same cases every run, so a failure reproduces), and a per-request timeout
that fails a hung call.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import sys
from pathlib import Path

ADMIN = "schemathesis-admin-token"
MAX_EXAMPLES = 25  # per operation and phase


async def test_no_admin_route_answers_5xx(proxy_factory, tmp_path: Path):
    proxy = await proxy_factory(admin_token=ADMIN)
    exe = shutil.which("schemathesis", path=str(Path(sys.executable).parent)) or "schemathesis"
    argv = [
        exe, "run", f"{proxy.url}/api/openapi.json", "--url", proxy.url,
        "--checks", "not_a_server_error", "--max-examples", str(MAX_EXAMPLES),
        "--header", f"Authorization: Bearer {ADMIN}",
        "--request-timeout", "30", "--workers", "1", "--no-shrink",
        "--suppress-health-check", "all", "--generation-deterministic",
    ]
    done = await asyncio.to_thread(subprocess.run, argv, capture_output=True, text=True,
                                   timeout=300, cwd=tmp_path)
    output = done.stdout[-6000:] + done.stderr[-2000:]
    assert done.returncode == 0, output
    counts = re.search(r"(\d+) generated, (\d+) passed", output)
    assert counts and counts[1] == counts[2] and int(counts[1]) > 1000, output

"""Waiting on a state in tests: poll until it holds, with a deadline that only fails a hung
test (never a timing assertion)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")
DEADLINE_S = 30.0  # generous: machines running the suite are shared and noisy


async def eventually(probe: Callable[[], Awaitable[T]], timeout_s: float = DEADLINE_S,
                     interval_s: float = 0.02) -> T:
    """Await `probe` until it returns something truthy, and return that."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = await probe()
        if value:
            return value
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(interval_s)

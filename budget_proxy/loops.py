"""Background loops: one shape for every periodic job (reaper, sweeper, cache polls)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable

from budget_proxy.store.base import StoreError

log = logging.getLogger(__name__)


async def every(interval_s: float, action: Callable[[], Awaitable[object]], what: str) -> None:
    """Run `action` every `interval_s`; a store outage is a warning and any other error is
    logged, and the loop goes on (one bad pass must not stop expiry or convergence for good)."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            await action()
        except StoreError as exc:
            log.warning("%s: %s", what, exc)
        except Exception:
            log.exception("%s failed", what)


async def until_done(interval_s: float, action: Callable[[], Awaitable[object]],
                     what: str) -> None:
    """Run `action` every `interval_s` until it completes once (start-up work that waits for
    the store): an outage is logged at debug level, any other error with its traceback."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            await action()
        except StoreError as exc:
            log.debug("%s: store still unavailable: %s", what, exc)
            continue
        except Exception:
            log.exception("%s failed; retrying", what)
            continue
        log.warning("%s done: the budget store is back", what)
        return


async def stop(tasks: Iterable[asyncio.Task[object]]) -> None:
    """Cancel background tasks and wait until they are gone."""
    tasks = list(tasks)
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task

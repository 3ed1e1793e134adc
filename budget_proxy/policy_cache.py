"""The process's view of policies, so the hot path never asks the store for them.

Refreshed when the store's config version moves: right after a local change, on a change
notice from another replica (Redis pub/sub), and by a periodic poll that converges even if a
notice is lost.
"""

from __future__ import annotations

import asyncio
import logging

from budget_proxy.models import BudgetPolicy
from budget_proxy.store.base import Store, StoreError

log = logging.getLogger(__name__)


class PolicyCache:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.policies: tuple[BudgetPolicy, ...] = ()
        self.by_id: dict[str, BudgetPolicy] = {}
        self.version = -1
        self._lock = asyncio.Lock()

    async def refresh(self, force: bool = False) -> bool:
        """Reload if the store's version changed; True if the policies were reloaded."""
        async with self._lock:
            version = await self.store.config_version()
            if version == self.version and not force:
                return False
            policies = await self.store.list_policies()
            self.policies = tuple(policies)
            self.by_id = {p.policy_id: p for p in policies}
            self.version = version
            return True

    async def poll(self, interval_s: float) -> None:
        """Background loop: the fallback that converges when a change notice is missed."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.refresh()
            except StoreError as exc:
                log.warning("policy refresh failed: %s", exc)

"""Process-local copies of configuration documents, so the hot path never asks the store.

Each is refreshed when the store's config version moves: right after a local change, on a
change notice from another replica (Redis pub/sub), and by a periodic poll
(`budget_proxy.loops.every`) that converges even if a notice is lost.
"""

from __future__ import annotations

import asyncio

from budget_proxy.models import BudgetPolicy
from budget_proxy.store.base import Store


class ConfigCache:
    """Reloads itself (`_load`) whenever the store's `config_version` has moved."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.version = -1
        self._lock = asyncio.Lock()

    async def refresh(self, force: bool = False) -> bool:
        """Reload if the store's version changed; True if it was reloaded."""
        async with self._lock:
            version = await self.store.config_version()
            if version == self.version and not force:
                return False
            await self._load()
            self.version = version
            return True

    async def _load(self) -> None:
        raise NotImplementedError


class PolicyCache(ConfigCache):
    def __init__(self, store: Store) -> None:
        super().__init__(store)
        self.policies: tuple[BudgetPolicy, ...] = ()
        self.by_id: dict[str, BudgetPolicy] = {}

    async def _load(self) -> None:
        policies = await self.store.list_policies()
        self.policies = tuple(policies)
        self.by_id = {p.policy_id: p for p in policies}

"""Backends the contract suite runs against; the Redis backends join this list."""

from collections.abc import AsyncIterator

import pytest

from budget_proxy.store.base import Store
from budget_proxy.store.sqlite import SqliteStore

BACKENDS = ["embedded"]


async def make_backend(name: str, request: pytest.FixtureRequest, tmp_path) -> Store:
    if name == "embedded":
        return SqliteStore(tmp_path)
    raise ValueError(name)


@pytest.fixture(params=BACKENDS)
async def store(request: pytest.FixtureRequest, tmp_path) -> AsyncIterator[Store]:
    backend = await make_backend(request.param, request, tmp_path)
    await backend.start()
    yield backend
    await backend.close()

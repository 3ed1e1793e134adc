"""Backends the contract suite runs against: embedded, Redis (one server) and Redis Cluster
(3 masters), each on real servers the tests start (`tests.redis_servers`)."""

from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from budget_proxy.store.base import Store
from budget_proxy.store.redis import RedisStore
from budget_proxy.store.sqlite import SqliteStore
from tests.redis_servers import (  # noqa: F401 - fixtures
    redis_cluster,
    redis_factory,
    redis_server,
)

BACKENDS = ["embedded", "redis", "redis_cluster"]


async def make_backend(name: str, request: pytest.FixtureRequest, tmp_path) -> Store:
    if name == "embedded":
        return SqliteStore(tmp_path)
    if name == "redis":
        server = request.getfixturevalue("redis_server")
        server.flushall()
        return RedisStore(server.url, data_dir=tmp_path)
    if name == "redis_cluster":
        cluster = request.getfixturevalue("redis_cluster")
        cluster.flushall()
        return RedisStore(cluster.url, data_dir=tmp_path)
    raise ValueError(name)


@pytest.fixture(params=BACKENDS)
async def store(request: pytest.FixtureRequest, tmp_path) -> AsyncIterator[Store]:
    backend = await make_backend(request.param, request, tmp_path)
    await backend.start()
    yield backend
    await backend.close()


@pytest.fixture
async def reopen(request: pytest.FixtureRequest, store: Store, tmp_path
                 ) -> AsyncIterator[Callable[[], Awaitable[Store]]]:
    """Another store object on the same data as `store`: the next process after a crash
    (embedded), or another replica or the restarted process (Redis)."""
    name = request.node.callspec.params["store"]
    opened: list[Store] = []

    async def again() -> Store:
        if name == "embedded":
            backend: Store = SqliteStore(tmp_path)
        else:
            server = request.getfixturevalue("redis_server" if name == "redis"
                                             else "redis_cluster")
            backend = RedisStore(server.url, data_dir=tmp_path / f"replica{len(opened)}")
        await backend.start()
        opened.append(backend)
        return backend

    yield again
    for backend in opened:
        await backend.close()


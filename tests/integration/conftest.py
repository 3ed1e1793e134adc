"""Integration fixtures: `redis_url`, a flushed real Redis for multi-replica tests (skipped
when the Redis store or a `redis-server` binary is not available)."""

from __future__ import annotations

import os

import pytest

try:
    from tests.redis_servers import REDIS_SERVER
    from tests.redis_servers import redis_server as redis_server  # a fixture, re-exported

    HAVE_REDIS = os.path.exists(REDIS_SERVER)
    WHY_NOT = f"no redis-server at {REDIS_SERVER}"
except ImportError as exc:  # the Redis store or its test helpers are not there
    HAVE_REDIS = False
    WHY_NOT = f"Redis store not available: {exc}"


@pytest.fixture
def redis_url(request: pytest.FixtureRequest) -> str:
    if not HAVE_REDIS:
        pytest.skip(WHY_NOT)
    server = request.getfixturevalue("redis_server")
    server.flushall()
    return server.url

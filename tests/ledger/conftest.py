from tests.ledger.pg_server import database_url, postgres_server
from tests.redis_servers import redis_cluster, redis_factory, redis_server

__all__ = ["database_url", "postgres_server", "redis_cluster", "redis_factory", "redis_server"]

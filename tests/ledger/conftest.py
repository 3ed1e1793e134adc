from tests.ledger.pg_server import database_url, postgres_server

__all__ = ["database_url", "postgres_server"]

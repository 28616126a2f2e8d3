"""The integration tests' real Redis and PostgreSQL fixtures, for the JAX pass's workers."""

from tests.integration.conftest import broker_url, cluster, database_url, redis_db  # noqa: F401

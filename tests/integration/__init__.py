"""Tests against the real Kafka broker and redis-server (ops/stack, or OBSERVER_BOOTSTRAP_SERVERS /
OBSERVER_REDIS_URL); every test here is marked `integration` by this package's conftest."""

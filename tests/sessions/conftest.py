"""The store tests that need Redis get a real ``redis-server`` on a free loopback port."""

from tests.redis_server import redis_server, redis_url

__all__ = ["redis_server", "redis_url"]

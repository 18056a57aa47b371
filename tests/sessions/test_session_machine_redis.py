"""The session manager's Hypothesis state machine (``tests/runtime/test_session_machine.py``:
submits, progress, completions, crashes, cancels, disconnects, queue timeouts, write
failures) over the Redis store on a real redis-server: every stream ends with exactly
one terminal event, last, and every record agrees with it."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, settings
from redis.exceptions import OutOfMemoryError

from deepresearch.sessions.redis import RedisSessionStore
from deepresearch.sessions.store import SessionStore
from tests.redis_server import RedisServer
from tests.runtime.test_session_machine import SessionMachine

SERVER: dict[str, str] = {}


@pytest.fixture(autouse=True)
def redis_for_the_machine(redis_server: RedisServer) -> Iterator[None]:
    SERVER["url"] = redis_server.url
    yield
    SERVER.clear()


class RedisSessionMachine(SessionMachine):
    def make_store(self) -> SessionStore:
        # A prefix of its own per run: runs share the server and need no flush.
        return RedisSessionStore(SERVER["url"], prefix=f"machine-{uuid.uuid4().hex[:8]}")

    def full(self) -> None:
        raise OutOfMemoryError("command not allowed when used memory > 'maxmemory'.")


RedisSessionMachine.TestCase.settings = settings(
    max_examples=10,
    stateful_step_count=20,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
test_redis_session_state_machine = RedisSessionMachine.TestCase

"""Every follower on a node served by one blocked ``XREAD``, instead of one each.

``RedisSessionStore.tail`` blocks a connection per waiting follower: 10,000 open
streams would hold 10,000 connections to Redis (about 38 KiB each on the server,
see ``docs/deploy.md``). A ``TailHub`` keeps one connection of its own. Each
follower ``subscribe``s once, from its ``Last-Event-ID``; the hub's reader issues
one ``XREAD BLOCK`` over every subscribed stream, each from the lowest sequence
number its subscribers have, and appends what comes to each subscriber's buffer
(past its own cursor). ``Subscription.next`` hands the buffer over, waiting for
it to fill if it is empty.

A new subscription arriving while the reader is blocked on the other streams is
added by interrupting that read (``CLIENT UNBLOCK`` from the main client; the
reader then starts over with the new set). Nothing can be missed: every read asks
for all entries past each cursor, whenever they were written. A subscriber that
does not drain its buffer stops being read for once the buffer holds
``BUFFER_LIMIT`` events, so a stalled client cannot grow the node's memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from types import TracebackType
from typing import Any

from redis.asyncio import Redis

from deepresearch.sessions.records import StoredEvent
from deepresearch.sessions.redis import TAIL_COUNT, RedisSessionStore, stream_event
from deepresearch.tasks import stop_task

log = logging.getLogger(__name__)

# A subscriber holding this many unread events is left out of reads until it reads.
BUFFER_LIMIT = 1000
# After a failed read (Redis restarting), wait this long before the next.
RETRY_SECONDS = 0.2


class Subscription:
    """One follower's view of one session's events, fed by a ``TailHub``."""

    def __init__(self, hub: TailHub, session_id: str, after: int) -> None:
        self._hub = hub
        self.session_id = session_id
        self.cursor = after  # the last sequence number taken into the buffer
        self._buffer: list[StoredEvent] = []
        self._ready = asyncio.Event()

    @property
    def reading(self) -> bool:
        """Whether the hub should read for it (its buffer has room)."""
        return len(self._buffer) < BUFFER_LIMIT

    def _feed(self, events: list[StoredEvent]) -> None:
        fresh = [event for event in events if event.seq > self.cursor]
        if fresh:
            self._buffer += fresh
            self.cursor = fresh[-1].seq
            self._ready.set()

    async def next(self, timeout: float) -> list[StoredEvent]:
        """The events that came since the last call (first the ones after the
        subscription's starting point), waiting up to ``timeout`` s; [] if none."""
        if not self._buffer:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._ready.wait(), timeout)
        events, self._buffer = self._buffer, []
        self._ready.clear()
        if len(events) >= BUFFER_LIMIT:  # it was left out of reads: put it back in
            await self._hub._include(self)
        return events

    def close(self) -> None:
        self._hub._forget(self)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


class TailHub:
    """Subscriptions to session event logs over one Redis connection (``async with``).

    ``block`` bounds one ``XREAD BLOCK``; the reader re-issues it at once, so it
    only sets how soon a change is noticed if an interruption were lost.
    """

    def __init__(self, store: RedisSessionStore, *, block: float = 5.0) -> None:
        self._store = store
        self._block_ms = max(1, int(block * 1000))
        self._subscriptions: dict[str, set[Subscription]] = {}
        self._changed = asyncio.Event()  # a subscription came, went or has room again
        self._reading: dict[str, int] = {}  # what the current XREAD covers
        self._generation = 0  # XREADs issued so far
        self._connection: Redis | None = None
        self._connection_id: int | None = None
        self._reader: asyncio.Task[None] | None = None

    async def __aenter__(self) -> TailHub:
        # Its own client, without redis-py's resend-on-reconnect: a reconnect gives the
        # connection a new id, which the reader must learn before anyone unblocks it.
        self._connection = Redis.from_url(self._store.url, decode_responses=True, retry=None)
        self._reader = asyncio.create_task(self._read(), name="tail hub")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._reader is not None:
            await stop_task(self._reader)
            self._reader = None
        if self._connection is not None:
            await self._connection.aclose()
            self._connection = None

    @property
    def subscriptions(self) -> int:
        return sum(len(subscriptions) for subscriptions in self._subscriptions.values())

    async def subscribe(self, session_id: str, after: int) -> Subscription:
        """Follow a session's events after ``after``; close the subscription when done."""
        subscription = Subscription(self, session_id, after)
        self._subscriptions.setdefault(session_id, set()).add(subscription)
        await self._include(subscription)
        return subscription

    def _forget(self, subscription: Subscription) -> None:
        subscriptions = self._subscriptions.get(subscription.session_id)
        if subscriptions is not None:
            subscriptions.discard(subscription)
            if not subscriptions:
                del self._subscriptions[subscription.session_id]

    async def _include(self, subscription: Subscription) -> None:
        """Make sure the reader reads for it: if its current XREAD does not cover the
        subscription's cursor, interrupt that read so the next one does."""
        if self._reading.get(subscription.session_id, subscription.cursor + 1) <= (
            subscription.cursor
        ):
            return
        self._changed.set()
        generation = self._generation
        while self._reading and self._generation == generation:
            # 0 when the XREAD has been sent but is not yet blocked on the server.
            if self._connection_id is not None and await self._store.client.client_unblock(
                self._connection_id
            ):
                return
            await asyncio.sleep(0.001)

    def _wanted(self) -> dict[str, int]:
        wanted: dict[str, int] = {}
        for session_id, subscriptions in self._subscriptions.items():
            cursors = [s.cursor for s in subscriptions if s.reading]
            if cursors:
                wanted[session_id] = min(cursors)
        return wanted

    async def _read(self) -> None:
        connection = self._connection
        assert connection is not None
        keys = self._store.keys
        while True:
            self._changed.clear()
            wanted = self._wanted()
            if not wanted:
                await self._changed.wait()
                continue
            # Published before the first await: a subscription added from here on sees
            # that this read does not cover it, and interrupts it.
            self._reading = wanted
            self._generation += 1
            try:
                if self._connection_id is None:
                    self._connection_id = int(await connection.client_id())
                answer: list[Any] = await connection.xread(
                    {keys.events(sid): f"{after}-0" for sid, after in wanted.items()},
                    count=TAIL_COUNT,
                    block=self._block_ms,
                )
            except Exception as exc:  # Redis restarting: reconnect, with a new id
                log.warning("tail hub: read failed, retrying: %s", exc)
                self._connection_id = None
                answer = []
                await asyncio.sleep(RETRY_SECONDS)
            finally:
                self._reading = {}
            prefix = keys.events("")
            for key, entries in answer or ():
                events = [stream_event(entry_id, fields) for entry_id, fields in entries]
                for subscription in list(self._subscriptions.get(key.removeprefix(prefix), ())):
                    subscription._feed(events)

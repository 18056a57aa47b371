"""Following a session: its wire events from the event log alone.

A follower replays the stored rows after ``Last-Event-ID`` (a page at a time, its
``WireView`` primed with the earlier rows the text cut at that point needs), then
waits on the log's blocking ``tail`` for more, until the terminal event. It never
talks to the session's runner, so it works the same whether the runner is a task
in this process (``LocalTail`` below: the rows it stored, from memory; else the
SQLite store's ``tail``, woken by each commit) or a worker on another machine
(Redis ``XREAD BLOCK``).

Two questions it cannot answer from the log are asked of whoever knows:
``running(id)``: may more events still come? (the single process: is its task live;
by default: is its record unfinished). ``pending(id)``: a terminal event decided
but not stored (a full disk): it still ends the stream.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Protocol

from deepresearch.events import TERMINAL_TYPES
from deepresearch.runtime.deltas import ACCUMULATED, WireView, since_of
from deepresearch.sessions.records import UNFINISHED, SessionRecord, StoredEvent

# Replays read this many rows at a time (a long session's events are never all in
# memory at once).
READ_PAGE = 1000
# A follower waiting on a quiet session asks whether it still runs this often.
RECHECK = 5.0


class FollowedLog(Protocol):
    """What a follower reads: the store's ``events`` and ``tail`` (and ``get``, to
    ask by default whether a session is unfinished)."""

    async def events(
        self, session_id: str, after: int = 0, limit: int | None = None
    ) -> list[StoredEvent]: ...

    async def tail(self, session_id: str, after: int, timeout: float) -> list[StoredEvent]: ...

    async def get(self, session_id: str) -> SessionRecord | None: ...


class Follower:
    def __init__(
        self,
        log: FollowedLog,
        *,
        running: Callable[[str], Awaitable[bool]] | None = None,
        pending: Callable[[str], StoredEvent | None] | None = None,
        recheck: float = RECHECK,
    ) -> None:
        self._log = log
        self._running = running or self._unfinished
        self._pending = pending or (lambda _: None)
        self._recheck = recheck

    async def _unfinished(self, session_id: str) -> bool:
        record = await self._log.get(session_id)
        return record is not None and record.status in UNFINISHED

    async def follow(
        self,
        session_id: str,
        after: int = 0,
        idle: float | None = None,
        *,
        deltas: bool = False,
    ) -> AsyncIterator[StoredEvent | None]:
        """The session's events after ``after`` as the wire carries them, until the
        terminal one (``deltas``: streamed text as pieces, see ``runtime.deltas``).
        Yields ``None`` when nothing was sent for ``idle`` seconds (a heartbeat)."""
        loop = asyncio.get_running_loop()
        view = WireView(session_id, deltas=deltas)
        last = after  # the last row fed to the view
        quiet_since = loop.time()
        rows = await first_page(self._log, view, session_id, after)
        live = False  # the rows came from a tail that found more: no need to ask
        while True:
            for row in rows:
                for out in view.feed(row):
                    yield out
                    quiet_since = loop.time()
                last = row.seq
                if row.type in TERMINAL_TYPES:
                    return
            if len(rows) >= READ_PAGE:
                rows = await self._log.events(session_id, last, READ_PAGE)
                continue
            if not live:
                # Caught up with a quiet log. Asked in this order: a runner records
                # an unstored outcome before it stops running.
                running = await self._running(session_id)
                if not running:
                    rows = await self._log.events(session_id, last, READ_PAGE)
                    if rows:
                        continue
                terminal = self._pending(session_id)
                if terminal is not None or not running:
                    # Ended, and its terminal event (if any) is not in the store: the
                    # write failed, or is being retried. It is the last event anyway.
                    if terminal is not None and terminal.seq > last:
                        for out in view.feed(terminal):
                            yield out
                    for out in view.flush():
                        yield out
                    return
            wait = self._recheck
            if idle is not None:
                wait = max(0.0, min(wait, quiet_since + idle - loop.time()))
            rows = await self._log.tail(session_id, last, wait)
            live = bool(rows)
            if not rows and idle is not None and loop.time() - quiet_since >= idle:
                yield None
                quiet_since = loop.time()


async def first_page(
    log: FollowedLog, view: WireView, session_id: str, after: int
) -> list[StoredEvent]:
    """The first page of rows after ``after``, with ``view`` primed by the earlier rows
    its streamed text needs (the start of a text cut at ``after``)."""
    rows = await log.events(session_id, after, READ_PAGE)
    starts = []
    for kind in ACCUMULATED:
        first = next((row for row in rows if row.type == kind), None)
        since = since_of(first) if first is not None else None
        if since is not None and since <= after:
            starts.append(since)
    if starts:
        earlier = await log.events(session_id, min(starts) - 1, after - min(starts) + 1)
        view.prime([row for row in earlier if row.seq <= after])
    return rows


# Rows of a live session kept in memory for its followers (a follower further behind
# reads the store).
RECENT = 256


class LocalTail:
    """A log whose ``tail`` is served from memory for the sessions this process writes.

    The single process's fast path: its runner hands each row over once stored
    (``add``), and a follower waiting on that session takes it from here instead
    of reading it back from SQLite. A follower further behind than the rows kept,
    and every session not ``open`` here, reads the store as usual; ``events`` and
    ``get`` always do. So what a follower gets is still exactly the stored log.
    """

    def __init__(self, log: FollowedLog, keep: int = RECENT) -> None:
        self._log = log
        self._keep = keep
        self._recent: dict[str, deque[StoredEvent]] = {}
        self._waiters: dict[str, set[asyncio.Future[None]]] = {}

    def open(self, session_id: str) -> None:
        """Keep this session's rows from now on (it runs in this process)."""
        self._recent.setdefault(session_id, deque(maxlen=self._keep))

    def close(self, session_id: str) -> None:
        """The session ended here: its followers read the store from now on."""
        self._recent.pop(session_id, None)
        self._wake(session_id)

    def add(self, session_id: str, row: StoredEvent) -> None:
        """A row of the session, stored (rows come in order)."""
        recent = self._recent.get(session_id)
        if recent is not None:
            if recent and row.seq != recent[-1].seq + 1:
                # A row stored but not handed over (its writer was cancelled during
                # the write): what is kept starts after the gap; behind it, the store.
                recent.clear()
            recent.append(row)
            self._wake(session_id)

    def _wake(self, session_id: str) -> None:
        for waiter in self._waiters.pop(session_id, ()):
            if not waiter.done():
                waiter.set_result(None)

    def _after(self, session_id: str, after: int) -> list[StoredEvent] | None:
        """The kept rows after ``after``; None when they do not reach back to it (or
        the session is not kept here)."""
        recent = self._recent.get(session_id)
        if recent is None:
            return None
        if not recent or recent[-1].seq <= after:
            return []
        if recent[0].seq > after + 1:
            return None
        newer: list[StoredEvent] = []
        for row in reversed(recent):
            if row.seq <= after:
                break
            newer.append(row)
        newer.reverse()
        return newer

    async def events(
        self, session_id: str, after: int = 0, limit: int | None = None
    ) -> list[StoredEvent]:
        return await self._log.events(session_id, after, limit)

    async def get(self, session_id: str) -> SessionRecord | None:
        return await self._log.get(session_id)

    async def tail(self, session_id: str, after: int, timeout: float) -> list[StoredEvent]:
        if session_id not in self._recent:
            return await self._log.tail(session_id, after, timeout)
        newer = self._after(session_id, after)
        if newer is None:
            return await self._log.events(session_id, after, READ_PAGE)
        if newer or timeout <= 0:
            return newer
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(session_id, set()).add(waiter)
        try:
            async with asyncio.timeout(timeout):
                await waiter
        except TimeoutError:
            return []
        finally:
            waiters = self._waiters.get(session_id)
            if waiters is not None:
                waiters.discard(waiter)
                if not waiters:
                    del self._waiters[session_id]
        newer = self._after(session_id, after)
        if newer is None:  # it ended here (or the follower fell behind): the store has it
            return await self._log.events(session_id, after, READ_PAGE)
        return newer

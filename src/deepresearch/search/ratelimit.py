"""Pacing for live literature services: a shared rate limiter and a paced GET.

NCBI allows 3 requests/s without an API key and 10 with one, per IP or key, and
answers HTTP 429 beyond that. The limit belongs to the server, not to a session,
so the app factory creates one ``RateLimiter`` per service and hands it to every
backend that talks to it.
"""

from __future__ import annotations

import asyncio
import email.utils
import math
import time
from collections.abc import Mapping
from datetime import UTC

import httpx

DEFAULT_RETRY_WAIT = 1.0  # a 429 without Retry-After: one second suits a per-second limit
MAX_RETRY_WAIT = 5.0  # a longer wait would stall the agent's step; fail and let it move on


class RateLimiter:
    """At most ``rate`` acquisitions per second, spaced evenly, granted first come first served.

    Spacing rather than a token bucket: NCBI counts requests per second, so a
    burst of ten at once after a quiet spell could still draw a 429.
    """

    def __init__(self, rate: float) -> None:
        if not rate > 0 or math.isinf(rate):
            raise ValueError(f"rate must be a positive number of requests per second, not {rate}")
        self.rate = rate
        self._interval = 1.0 / rate
        self._next = -math.inf  # loop time at which the next acquisition may go
        # asyncio.Lock wakes its waiters in order, which makes the limiter FIFO-fair.
        self._lock = asyncio.Lock()

    async def acquire(self) -> None:
        """Wait for this caller's turn."""
        loop = asyncio.get_running_loop()
        # The turn is taken while holding the lock, so a caller cancelled while it
        # waits gives its place back instead of leaving a gap in the schedule.
        async with self._lock:
            # Not polling: each sleep lasts until the scheduled time, and it is repeated
            # only when pause() pushed that time back meanwhile.
            while (wait := self._next - loop.time()) > 0:  # noqa: ASYNC110
                await asyncio.sleep(wait)
            self._next = loop.time() + self._interval

    def pause(self, seconds: float) -> None:
        """Hold every caller back for ``seconds``: the service said we went too fast."""
        until = asyncio.get_running_loop().time() + seconds
        self._next = max(self._next, until)


def retry_after(response: httpx.Response, *, cap: float = MAX_RETRY_WAIT) -> float:
    """Seconds a 429 asks us to wait (delta-seconds or an HTTP date), within [0, cap]."""
    value = response.headers.get("Retry-After", "").strip()
    try:
        wait = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except ValueError:  # absent or unreadable
            wait = DEFAULT_RETRY_WAIT
        else:
            # A naive result means "-0000": RFC 5322's UTC with no stated zone.
            when = when if when.tzinfo else when.replace(tzinfo=UTC)
            wait = when.timestamp() - time.time()
    if math.isnan(wait):
        wait = DEFAULT_RETRY_WAIT
    return min(max(wait, 0.0), cap)


async def paced_get(
    client: httpx.AsyncClient,
    limiter: RateLimiter | None,
    url: str,
    params: Mapping[str, str],
    *,
    timeout: float,
) -> httpx.Response:
    """GET through ``limiter``; after a 429, wait as told (capped) and try once more.

    Returns the last response whatever its status; transport errors propagate.
    Raises ``TimeoutError`` when the limiter's queue holds a turn back longer
    than ``timeout``: with many sessions searching, failing that one request
    lets the model go on instead of stalling behind the queue.
    """
    for attempt in range(2):
        if limiter is not None:
            async with asyncio.timeout(timeout):
                await limiter.acquire()
        response = await client.get(url, params=params, timeout=timeout)
        if response.status_code != httpx.codes.TOO_MANY_REQUESTS or attempt == 1:
            return response
        wait = retry_after(response)
        if limiter is not None:
            limiter.pause(wait)  # the quota is shared, so every session backs off
        else:
            await asyncio.sleep(wait)
    raise AssertionError("unreachable")  # pragma: no cover

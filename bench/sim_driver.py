"""The simulator's clock: runs the engine ``time_scale`` times faster than the wall clock."""

from __future__ import annotations

import asyncio
import math
import time

from sim_engine import Engine, Request


class Driver:
    """Runs the engine against a simulated clock: ``time_scale`` simulated s per wall s."""

    def __init__(self, engine: Engine, time_scale: float) -> None:
        self.engine = engine
        self.scale = time_scale
        # Macro steps last at most ~20 ms of wall time, so tokens stream smoothly at any scale.
        engine.config.max_macro_seconds = min(engine.config.max_macro_seconds, 0.02 * time_scale)
        self._origin = time.monotonic()
        self._wake = asyncio.Event()
        self.lag_max = 0.0  # how far the engine fell behind the clock (simulated s)
        self.steps = 0

    def clock(self) -> float:
        return (time.monotonic() - self._origin) * self.scale

    def submit(self, request: Request) -> None:
        request.arrival = self.clock()
        self.engine.add(request)
        self._wake.set()

    def abort(self, request: Request) -> None:
        self.engine.abort(request)
        self._wake.set()

    def reset(self) -> None:
        self.engine.reset()
        self.lag_max = 0.0
        self.steps = 0

    async def run(self) -> None:
        engine = self.engine
        while True:
            if engine.idle:
                self._wake.clear()
                await self._wake.wait()
                engine.now = max(engine.now, self.clock())
            else:
                self.lag_max = max(self.lag_max, self.clock() - engine.now)
            step = engine.schedule()
            if step is None:
                await asyncio.sleep(0)
                continue
            self.steps += 1
            k = step.k
            end = step.start + step.seconds * k
            self._wake.clear()
            while (delay := (end - self.clock()) / self.scale) > 0:
                try:
                    async with asyncio.timeout(delay):
                        await self._wake.wait()
                except TimeoutError:
                    break
                self._wake.clear()
                if k > 1:  # an arrival or abort: stop after the step in progress
                    k = min(k, math.floor((self.clock() - step.start) / step.seconds) + 1)
                    end = step.start + step.seconds * k
            engine.commit(step, k)
            # Let the HTTP side run even when the engine is behind the clock.
            await asyncio.sleep(0)

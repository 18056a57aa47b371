"""How much work this node takes on: the one place that sizes slots and call limits.

With ``DEEPRESEARCH_MAX_CONCURRENT=auto`` each backend has its own
``AdaptiveLimit``; every control interval this loop reads each backend (its
metrics, our calls' latency, whether sessions are waiting), sets that
backend's call limit, and resizes the session slots to the sum of the limits,
within ``DEEPRESEARCH_MAX_CONCURRENT_MIN..MAX``. With ``auto`` the gates also
seat sessions (``CallLimiter``): a session keeps its place on its backend
between calls until it ends, which the pool learns from admission's count of
running sessions. With a number, the slots are
that number and each backend may have as many calls in flight; the loop then
only probes the backends that are down and reads the others' metrics for
``/health``. Without a model (offline evidence mode) ``auto`` is twice the
cores: the digest is CPU work in threads.
"""

from __future__ import annotations

import asyncio
import logging
import os

from deepresearch.config import Settings
from deepresearch.llm.limits import AdaptiveLimit, LimitBounds
from deepresearch.llm.pool import Backend, BackendPool
from deepresearch.runtime.admission import Admission

log = logging.getLogger("deepresearch.capacity")


def offline_slots(settings: Settings) -> int:
    wanted = 2 * (os.cpu_count() or 1)
    return max(settings.max_concurrent_min, min(settings.max_concurrent_max, wanted))


class Capacity:
    def __init__(self, settings: Settings, admission: Admission, pool: BackendPool | None) -> None:
        self._settings = settings
        self._admission = admission
        self._pool = pool
        self.controllers: dict[Backend, AdaptiveLimit] = {}
        if pool is not None and settings.adaptive:
            bounds = LimitBounds(
                initial=min(LimitBounds.initial, settings.max_concurrent_max),
                minimum=1,
                maximum=settings.max_concurrent_max,
            )
            for backend in pool.backends:
                controller = AdaptiveLimit(bounds)
                self.controllers[backend] = controller
                backend.limiter.seats = True
                backend.limiter.resize(controller.limit)
        self._resize_slots()

    @staticmethod
    def initial_slots(settings: Settings) -> int:
        """Slots before the first reading (replaced at once by ``Capacity``)."""
        if isinstance(settings.max_concurrent, int):
            return settings.max_concurrent
        return settings.max_concurrent_min

    def _resize_slots(self) -> None:
        settings = self._settings
        if not settings.adaptive:
            return
        if self._pool is None:
            self._admission.resize(offline_slots(settings))
            return
        total = sum(controller.limit for controller in self.controllers.values())
        slots = max(settings.max_concurrent_min, min(settings.max_concurrent_max, total))
        if slots != self._admission.max_concurrent:
            log.info("capacity: %d session slots (backend call limits %s)", slots, self.limits())
        self._admission.resize(slots)

    def limits(self) -> list[int]:
        return [controller.limit for controller in self.controllers.values()]

    async def step(self) -> None:
        """One control interval: read every backend, set its limit, size the slots."""
        if self._pool is None:
            return
        await self._pool.refresh()
        demand = self._admission.queued > 0
        for backend, controller in self.controllers.items():
            if backend.recovered:
                backend.recovered = False
                controller.restart()
            reading = backend.reading(demand, self._pool.contexts(backend))
            backend.limiter.resize(controller.observe(reading))
        self._resize_slots()

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._settings.llm_control_seconds)
            try:
                await self.step()
            except Exception:
                log.exception("capacity: a control step failed")

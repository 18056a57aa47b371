"""What the runtime needs of an agent."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Protocol

from deepresearch.events import Event


class Agent(Protocol):
    """One research run. Built fresh for every session, never shared."""

    def run(self, question: str) -> AsyncGenerator[Event, None]:
        """Yield the run's events, ending with ``completed`` or ``no_answer``.

        Errors that end the session are raised (``SessionFailure``); the runtime
        turns them, cancellation and time limits into the terminal event.
        """
        ...

"""What the runtime needs of an agent."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from deepresearch.events import Event


@dataclass(frozen=True)
class AgentState:
    """What an agent needs to go on after its last completed round, as JSON values:
    its conversation with the model, the round, its counters, and whatever else a
    resumed run needs to continue as the first one would have (``extra``: e.g. the
    session's numbered sources, the calls already made)."""

    round: int  # the last completed round
    messages: list[dict[str, Any]]
    counters: dict[str, int] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


# Called by an agent after each completed round with its state; the runtime saves it
# as the session's checkpoint (an exception it raises ends the run).
RoundHook = Callable[[AgentState], Awaitable[None]]


class Agent(Protocol):
    """One research run. Built fresh for every session, never shared.

    An agent that keeps checkpoints takes ``on_round=RoundHook`` from its factory and
    awaits it after each completed round; given ``checkpoint=AgentState`` it goes on
    from the round after ``state.round``. (The factory gets these keywords only when
    they are used, so an agent without checkpoints needs neither.)
    """

    def run(self, question: str) -> AsyncGenerator[Event, None]:
        """Yield the run's events, ending with ``completed`` or ``no_answer``.

        Errors that end the session are raised (``SessionFailure``); the runtime
        turns them, cancellation and time limits into the terminal event.
        """
        ...

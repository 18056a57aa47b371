"""One error hierarchy, grouped by who must act.

DeepResearchError
├── ConfigurationError      the operator: refuse to start, name the setting
├── ClientError             the client: a 4xx answer
│   ├── Overloaded          503 + Retry-After: the queue is full
│   ├── SessionNotFound     404
│   └── SessionConflict     409: that session id is taken
├── ToolFailure             the model: fed back as a tool error, the loop goes on
├── SessionFailure          the runtime: ends one session, never another
│   ├── BackendError        the LLM backend failed after its retries
│   └── BudgetExceeded      the run's wall-clock limit was reached
└── LeaseLost               the runtime: another worker runs the session now; stop, write nothing
    └── StaleAppend         the event log already holds that sequence number
"""

from __future__ import annotations


class DeepResearchError(Exception):
    """Base of every error this package raises on purpose."""


class ConfigurationError(DeepResearchError):
    """A setting is wrong; the server must not start."""


class ClientError(DeepResearchError):
    status_code = 400


class Overloaded(ClientError):
    status_code = 503

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class SessionNotFound(ClientError):
    status_code = 404


class SessionConflict(ClientError):
    status_code = 409


class ToolFailure(DeepResearchError):
    """A tool could not do what the model asked; the model is told why."""


class SessionFailure(DeepResearchError):
    """Ends the session it happened in with an ``error`` event."""


class BackendError(SessionFailure):
    """The LLM backend failed (after retries) or timed out."""

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        super().__init__(message)
        # False when asking again cannot help (the request itself was refused).
        self.retryable = retryable


class BudgetExceeded(SessionFailure):
    """The session ran past its wall-clock limit."""


class LeaseLost(DeepResearchError):
    """This process no longer holds the session's lease: another worker has taken it
    over, so this one must stop without writing anything more."""


class StaleAppend(LeaseLost):
    """An append whose first sequence number is not after the log's last one: another
    writer got there first (refused whole; nothing was written)."""

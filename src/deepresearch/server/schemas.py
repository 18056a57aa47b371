"""Request bodies, validated strictly: a wrong type is an error, not a coercion."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

SESSION_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{7,63}$"
# The hard cap; DEEPRESEARCH_MAX_QUESTION_CHARS may set a lower one.
QUESTION_MAX_CHARS = 100_000


class ChatRequest(BaseModel):
    """The body of ``POST /chat/stream`` and ``POST /chat`` (contract section 3)."""

    # Unknown fields are ignored so newer clients keep working with this server.
    model_config = ConfigDict(strict=True, extra="ignore")

    question: Annotated[
        str, StringConstraints(strip_whitespace=True, min_length=1, max_length=QUESTION_MAX_CHARS)
    ]
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    max_tokens: int | None = Field(default=None, ge=1, le=131_072)
    session_id: Annotated[str, StringConstraints(pattern=SESSION_ID_PATTERN)] | None = None
    on_disconnect: Literal["grace", "continue", "cancel"] = "grace"

    @field_validator("question")
    @classmethod
    def _printable(cls, question: str) -> str:
        if "\x00" in question:
            raise ValueError("the question contains a NUL character")
        return question

    def generation(self) -> dict[str, float | int | None]:
        return {
            "temperature": self.temperature,
            "top_p": self.top_p,
            "presence_penalty": self.presence_penalty,
            "max_tokens": self.max_tokens,
        }

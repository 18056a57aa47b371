"""One OpenAI-compatible chat-completions backend (vLLM, SGLang, llama.cpp, hosted)."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncGenerator, Sequence
from typing import Any

import httpx

from deepresearch.config import GenerationSettings
from deepresearch.errors import BackendError
from deepresearch.llm.base import (
    BackendState,
    CallContext,
    Message,
    NativeToolCall,
    Piece,
    estimate_tokens,
    public_url,
)
from deepresearch.llm.signals import BackendSignals, parse_vllm_metrics

# The "user:password@" of a URL in a message.
USERINFO = re.compile(r"(?<=://)[^/\s@'\"]+@")

# Answers meaning "this backend has no /tokenize" (or /metrics): stop asking it.
NOT_OFFERED = frozenset({404, 405, 501})


class OpenAICompatibleModel:
    """Streams ``POST {base_url}/chat/completions``.

    ``model`` unset means the first id ``GET {base_url}/models`` lists, looked up
    once. A backend silent for ``timeout`` seconds counts as failed.
    """

    def __init__(
        self,
        client: httpx.AsyncClient,
        base_url: str,
        *,
        model: str | None = None,
        api_key: str = "EMPTY",
        timeout: float = 120.0,
    ) -> None:
        self._client = client
        self.base_url = base_url.rstrip("/")
        self._model = model
        self._headers = {"Authorization": f"Bearer {api_key}"}
        self._timeout = httpx.Timeout(timeout, connect=min(timeout, 10.0))
        self._healthy: bool | None = None
        self._last_error: str | None = None
        # vLLM serves /tokenize beside /v1; None until we know whether this backend does.
        self._tokenizes: bool | None = None
        self._has_metrics: bool | None = None
        # Shown and logged instead of base_url, which may carry credentials.
        self.name = public_url(self.base_url)

    @property
    def root(self) -> str:
        """Where vLLM serves /tokenize and /metrics: beside /v1."""
        return self.base_url.removesuffix("/v1")

    def states(self) -> list[BackendState]:
        return [BackendState(self.name, self._model, self._healthy, self._last_error)]

    def _failed(self, message: str, *, retryable: bool = True) -> BackendError:
        # httpx's messages quote the request URL, credentials included: never pass them on.
        message = USERINFO.sub("", message)
        if retryable:  # a refused request says nothing about the backend's health
            self._healthy, self._last_error = False, message
        return BackendError(f"LLM backend {self.name}: {message}", retryable=retryable)

    async def probe(self) -> bool:
        """Whether the backend answers ``GET /models`` now."""
        try:
            response = await self._client.get(
                f"{self.base_url}/models", headers=self._headers, timeout=self._timeout
            )
        except httpx.HTTPError as exc:
            self._healthy, self._last_error = False, f"probe: {type(exc).__name__}"
            return False
        self._healthy = response.status_code < 500
        self._last_error = None if self._healthy else f"probe: HTTP {response.status_code}"
        return self._healthy

    async def signals(self) -> BackendSignals | None:
        """vLLM's load figures from ``GET /metrics``; None where it has none."""
        if self._has_metrics is False:
            return None
        try:
            response = await self._client.get(
                f"{self.root}/metrics", headers=self._headers, timeout=self._timeout
            )
        except httpx.HTTPError:
            return None
        if response.status_code in NOT_OFFERED:
            self._has_metrics = False
            return None
        if response.status_code >= 400:
            return None
        found = parse_vllm_metrics(response.text)
        self._has_metrics = found is not None
        return found

    async def model_name(self) -> str:
        if self._model is None:
            try:
                response = await self._client.get(
                    f"{self.base_url}/models", headers=self._headers, timeout=self._timeout
                )
                response.raise_for_status()
                self._model = str(response.json()["data"][0]["id"])
            except (httpx.HTTPError, KeyError, IndexError, ValueError) as exc:
                raise self._failed(f"could not list models ({exc!r})") from exc
        return self._model

    def end_session(self, session_id: str) -> None:
        """Nothing is kept per session here."""

    async def count_tokens(self, messages: Sequence[Message], *, call: CallContext) -> int:
        """The backend's own count via vLLM's ``POST /tokenize``; an estimate elsewhere."""
        if self._tokenizes is False:
            return estimate_tokens(messages)
        try:
            response = await self._client.post(
                f"{self.root}/tokenize",
                json={"model": await self.model_name(), "messages": list(messages)},
                headers=self._headers,
                timeout=self._timeout,
            )
            if response.status_code in NOT_OFFERED:
                self._tokenizes = False
                return estimate_tokens(messages)
            response.raise_for_status()
            count = int(response.json()["count"])
        except (httpx.HTTPError, KeyError, ValueError, TypeError, BackendError):
            # A passing failure: estimate this once, ask again next time.
            return estimate_tokens(messages)
        self._tokenizes = True
        return count

    async def stream(
        self,
        messages: Sequence[Message],
        settings: GenerationSettings,
        stop: Sequence[str],
        *,
        call: CallContext,
        tools: Sequence[dict[str, Any]] | None = None,
    ) -> AsyncGenerator[Piece, None]:
        """The reply's pieces. vLLM's reasoning parsers move the reasoning out of
        ``content`` into ``reasoning_content``: it comes back as ``<think>`` text,
        so everything downstream reads one format."""
        body: dict[str, Any] = {
            "model": await self.model_name(),
            "messages": list(messages),
            "stream": True,
            "stop": list(stop),
            **settings.model_dump(),
        }
        if tools:
            body["tools"] = list(tools)
        calls = _ToolCallAccumulator()
        thinking = False
        try:
            async with self._client.stream(
                "POST",
                f"{self.base_url}/chat/completions",
                json=body,
                headers=self._headers,
                timeout=self._timeout,
            ) as response:
                if response.status_code >= 400:
                    detail = (await response.aread())[:300].decode(errors="replace")
                    status = response.status_code
                    # A refused request (too long, bad parameters) fails the same way
                    # every time; overload, timeouts and server errors may pass.
                    retryable = status in (408, 429) or status >= 500
                    raise self._failed(f"HTTP {status}: {detail}", retryable=retryable)
                async for line in response.aiter_lines():
                    problem = _error_of(line)
                    if problem is not None:
                        raise self._failed(f"error in the stream: {problem}")
                    delta = _delta_of(line)
                    reasoning = delta.get("reasoning_content") or delta.get("reasoning")
                    if reasoning:
                        yield str(reasoning) if thinking else "<think>" + str(reasoning)
                        thinking = True
                    piece = delta.get("content")
                    if piece:
                        yield "</think>" + str(piece) if thinking else str(piece)
                        thinking = False
                    calls.add(delta.get("tool_calls"))
        except httpx.TimeoutException as exc:
            raise self._failed("timed out") from exc
        except httpx.HTTPError as exc:
            raise self._failed(f"{type(exc).__name__}: {exc}") from exc
        if thinking:
            yield "</think>"
        self._healthy, self._last_error = True, None
        for native in calls.finished():
            yield native


def _payload_of(line: str) -> dict[str, Any]:
    """The JSON object in one ``data:`` line of a streamed chat completion, or {}."""
    if not line.startswith("data:"):
        return {}
    payload = line[5:].strip()
    if not payload or payload == "[DONE]":
        return {}
    try:
        parsed = json.loads(payload)
    except ValueError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


def _error_of(line: str) -> str | None:
    """vLLM and others report a failure mid-stream as an error object."""
    payload = _payload_of(line)
    if payload.get("object") == "error":
        return str(payload.get("message") or "unknown error")
    if "error" in payload and not payload.get("choices"):
        error = payload["error"]
        return str(error.get("message") if isinstance(error, dict) else error)
    return None


def _delta_of(line: str) -> dict[str, Any]:
    """The ``delta`` in one ``data:`` line of a streamed chat completion."""
    choices = _payload_of(line).get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return {}
    delta = choices[0].get("delta")
    return delta if isinstance(delta, dict) else {}


class _ToolCallAccumulator:
    """Native tool calls arrive in pieces keyed by ``index``; join them."""

    def __init__(self) -> None:
        self._parts: dict[int, dict[str, str]] = {}

    def add(self, pieces: object) -> None:
        if not isinstance(pieces, list):
            return
        for piece in pieces:
            if not isinstance(piece, dict):
                continue
            part = self._parts.setdefault(
                int(piece.get("index", 0)), {"id": "", "name": "", "arguments": ""}
            )
            part["id"] = part["id"] or str(piece.get("id") or "")
            function = piece.get("function") or {}
            part["name"] += str(function.get("name") or "")
            part["arguments"] += str(function.get("arguments") or "")

    def finished(self) -> list[NativeToolCall]:
        return [
            NativeToolCall(part["id"] or f"call_{index}", part["name"], part["arguments"])
            for index, part in sorted(self._parts.items())
        ]

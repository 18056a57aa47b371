"""The original design note's server, small and faithful: the benchmark's seed baseline.

This is the "after" design of ``../shared/docs/seed-design.md``, kept as the note wrote it,
including what the project does differently: a module-level configuration template
deep-copied per request, ``threading.Semaphore(3)`` taken with a 300 s timeout inside a
*sync* generator (Starlette runs each step of it in its thread pool), a new agent instance
per request with its own synchronous HTTP client, an in-memory ``active_sessions`` dict
guarded by a lock, and uvicorn serving one process. The agent is Tongyi DeepResearch's loop
(think, one ``<tool_call>``, ``<tool_response>``, ... ``<answer>``) with the benchmark's
search tool, streaming ``thinking`` events with the accumulated text as the note's front end
expects.

It is a baseline, not a product: it keeps the note's module-level state on purpose.

Usage: SEED_LLM_URL=http://127.0.0.1:PORT/v1 python bench/baselines/seed_server.py --port P
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import date, datetime
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from deepresearch.agent.prompt import STOP_SEQUENCES, system_prompt

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import workload
from launch_deepresearch import PaddedSearch

agent_config_template: dict[str, Any] | None = None  # read-only template
MAX_CONCURRENT_REQUESTS = int(os.environ.get("SEED_MAX_CONCURRENT", "3"))
processing_semaphore = threading.Semaphore(MAX_CONCURRENT_REQUESTS)
active_sessions: dict[str, dict[str, Any]] = {}
session_lock = threading.Lock()  # only guards the dict

TOOL_CALL = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)
ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
MAX_CONTEXT_TOKENS = 110_000


def initialize_agent_config() -> None:
    global agent_config_template
    agent_config_template = {
        "model": os.environ.get("SEED_LLM_MODEL", "sim-vllm"),
        "model_server": os.environ["SEED_LLM_URL"],
        "generate_cfg": {
            "temperature": 0.85,
            "top_p": 0.95,
            "presence_penalty": 1.1,
            "max_tokens": 8192,
        },
        "max_rounds": 100,
    }


def create_agent_instance(**kwargs: Any) -> StreamingReactAgent:
    config = copy.deepcopy(agent_config_template)
    assert config is not None
    config["generate_cfg"].update({k: v for k, v in kwargs.items() if v is not None})
    return StreamingReactAgent(llm=config)


def event(kind: str, session_id: str, content: str, **extra: Any) -> dict[str, Any]:
    return {
        "type": kind,
        "session_id": session_id,
        "content": content,
        "timestamp": datetime.now().isoformat(),
        **extra,
    }


class StreamingReactAgent:
    """Tongyi DeepResearch's ReAct loop, synchronous, streaming its steps as events."""

    def __init__(self, llm: dict[str, Any]) -> None:
        self.llm = llm
        self.client = httpx.Client(timeout=httpx.Timeout(600.0, connect=10.0))
        self.tool = PaddedSearch()

    def close(self) -> None:
        self.client.close()

    def call_server(self, messages: list[dict[str, str]]) -> Iterator[str]:
        body = {
            "model": self.llm["model"],
            "messages": messages,
            "stream": True,
            "stop": list(STOP_SEQUENCES),
            **self.llm["generate_cfg"],
        }
        url = f"{self.llm['model_server']}/chat/completions"
        with self.client.stream("POST", url, json=body) as response:
            response.raise_for_status()
            for line in response.iter_lines():
                if not line.startswith("data:") or line.strip() == "data: [DONE]":
                    continue
                choices = json.loads(line[5:]).get("choices") or [{}]
                piece = (choices[0].get("delta") or {}).get("content")
                if piece:
                    yield piece

    def stream_run(self, question: str, session_id: str) -> Iterator[dict[str, Any]]:
        messages = [
            {"role": "system", "content": system_prompt([self.tool], date.today())},
            {"role": "user", "content": question},
        ]
        for round_number in range(1, self.llm["max_rounds"] + 1):
            if sum(len(m["content"]) for m in messages) // 4 > MAX_CONTEXT_TOKENS:
                yield event("error", session_id, "the context is full")
                return
            text = ""
            for piece in self.call_server(messages):
                text += piece
                thought = text.split("<think>", 1)[-1].split("</think>", 1)[0]
                yield event("thinking", session_id, thought, round=round_number)
            messages.append({"role": "assistant", "content": text})
            answer = ANSWER.search(text)
            if answer:
                yield event("final_answer", session_id, answer.group(1).strip())
                return
            call = TOOL_CALL.search(text)
            if not call:
                messages.append({"role": "user", "content": "Continue."})
                continue
            arguments = json.loads(call.group(1)).get("arguments", {})
            query = (arguments.get("query") or [""])[0]
            yield event("tool_call_start", session_id, f"search: {query}")
            time.sleep(workload.tool_wait(query))  # a sync tool, as the note's agent has
            result, _ = workload.padded_results(query)
            yield event("tool_result", session_id, result[:200])
            response = f"<tool_response>\n{result}\n</tool_response>"
            messages.append({"role": "user", "content": response})
        yield event("error", session_id, "no answer within the round limit")


class ChatRequest(BaseModel):
    question: str
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    initialize_agent_config()
    yield


app = FastAPI(lifespan=lifespan)


def sse(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


@app.post("/chat/stream")
async def chat_stream(request: ChatRequest) -> StreamingResponse:
    session_id = str(uuid.uuid4())

    def generate_stream() -> Iterator[str]:
        acquired = False
        agent = None
        try:
            yield sse(event("session_start", session_id, session_id))
            acquired = processing_semaphore.acquire(timeout=300)
            if not acquired:
                yield sse(event("error", session_id, "timed out waiting for a slot"))
                return
            with session_lock:
                active_sessions[session_id] = {
                    "question": request.question,
                    "start_time": datetime.now().isoformat(),
                    "status": "processing",
                }
            agent = create_agent_instance(
                temperature=request.temperature,
                top_p=request.top_p,
                max_tokens=request.max_tokens,
            )
            yield sse(event("init", session_id, "slot acquired; agent ready"))
            for item in agent.stream_run(request.question, session_id):
                yield sse(item)
            yield sse(event("completed", session_id, "research complete"))
        except Exception as exc:
            yield sse(event("error", session_id, f"{type(exc).__name__}: {exc}"))
        finally:
            with session_lock:
                if session_id in active_sessions:
                    active_sessions[session_id]["status"] = "completed"
                    active_sessions[session_id]["end_time"] = datetime.now().isoformat()
            if agent:
                agent.close()
                del agent  # release promptly
            if acquired:
                processing_semaphore.release()  # free the slot

    return StreamingResponse(generate_stream(), media_type="text/event-stream")


@app.get("/health")
async def health() -> dict[str, Any]:
    with session_lock:
        active = sum(1 for s in active_sessions.values() if s["status"] == "processing")
    return {
        "status": "healthy",
        "agent_config_initialized": agent_config_template is not None,
        "active_sessions": active,
        "lock_acquired": active >= MAX_CONCURRENT_REQUESTS,
    }


@app.get("/sessions")
async def sessions() -> dict[str, Any]:
    with session_lock:
        return {"active_sessions": dict(active_sessions), "total": len(active_sessions)}


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5006)
    args = parser.parse_args()
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")

"""The same research loop as a LangGraph graph, served by LangGraph's in-memory dev server.

Two nodes, as a LangGraph user would write Tongyi DeepResearch's loop: ``model`` streams one
reply from the OpenAI-compatible backend (``BENCH_LLM_URL``) and writes its text to the
run's custom stream as it arrives; ``search`` runs the benchmark's search tool on the call
and appends the ``<tool_response>``. The state is the message list; the benchmark runs each
session on its own thread, so the dev server checkpoints that state after every step (as
deepresearch stores every session's events).

Served by ``langgraph dev --config bench/baselines/langgraph_peer/langgraph.json``.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
from datetime import date
from pathlib import Path
from typing import Any, TypedDict

import httpx
from langgraph.config import get_stream_writer
from langgraph.graph import END, START, StateGraph

from deepresearch.agent.prompt import STOP_SEQUENCES, system_prompt

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import workload
from launch_deepresearch import PaddedSearch

TOOL_CALL = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)
ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
GENERATION = {"temperature": 0.85, "top_p": 0.95, "presence_penalty": 1.1, "max_tokens": 8192}


class State(TypedDict, total=False):
    question: str
    messages: list[dict[str, str]]
    answer: str


async def model(state: State) -> dict[str, Any]:
    write = get_stream_writer()
    messages = state.get("messages") or [
        {"role": "system", "content": system_prompt([PaddedSearch()], date.today())},
        {"role": "user", "content": state["question"]},
    ]
    body = {
        "model": os.environ.get("BENCH_LLM_MODEL", "sim-vllm"),
        "messages": messages,
        "stream": True,
        "stop": list(STOP_SEQUENCES),
        **GENERATION,
    }
    text = ""
    url = f"{os.environ['BENCH_LLM_URL']}/chat/completions"
    async with (
        httpx.AsyncClient(timeout=httpx.Timeout(600.0, connect=10.0)) as client,
        client.stream("POST", url, json=body) as response,
    ):
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data:") or line.strip() == "data: [DONE]":
                continue
            choices = json.loads(line[5:]).get("choices") or [{}]
            piece = (choices[0].get("delta") or {}).get("content")
            if piece:
                text += piece
                write({"type": "thinking", "delta": piece})
    messages = [*messages, {"role": "assistant", "content": text}]
    answer = ANSWER.search(text)
    if answer:
        write({"type": "final_answer", "content": answer.group(1).strip()})
        return {"messages": messages, "answer": answer.group(1).strip()}
    return {"messages": messages}


async def search(state: State) -> dict[str, Any]:
    write = get_stream_writer()
    messages = state["messages"]
    call = TOOL_CALL.search(messages[-1]["content"])
    if call is None:
        return {"messages": [*messages, {"role": "user", "content": "Continue."}]}
    query = (json.loads(call.group(1)).get("arguments", {}).get("query") or [""])[0]
    write({"type": "tool_call_start", "content": f"search: {query}"})
    await asyncio.sleep(workload.tool_wait(query))  # the search API or page fetch
    result, _ = workload.padded_results(query)
    reply = f"<tool_response>\n{result}\n</tool_response>"
    return {"messages": [*messages, {"role": "user", "content": reply}]}


def route(state: State) -> str:
    return END if state.get("answer") else "search"


graph = (
    StateGraph(State)
    .add_node("model", model)
    .add_node("search", search)
    .add_edge(START, "model")
    .add_conditional_edges("model", route, ["search", END])
    .add_edge("search", "model")
    .compile()
)

"""deepresearch as the serving benchmark runs it: the real server, one benchmark search tool.

The app is the one ``deepresearch serve`` builds (``create_app`` from the environment's
``DEEPRESEARCH_*`` settings); only the tools differ: a single ``search`` whose results are
the trajectory's planned size (``workload.padded_results``), so the simulator's scripted
trajectories get tool responses of 2k-8k tokens without a corpus or the internet.

Usage: python bench/launch_deepresearch.py   (host and port from DEEPRESEARCH_HOST/_PORT)
A bad setting (for instance ``DEEPRESEARCH_MAX_CONCURRENT=auto`` on a server that does not
know it) exits with status 2 and the message, as ``deepresearch serve`` does.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import uvicorn

from deepresearch.config import load_settings
from deepresearch.errors import ConfigurationError
from deepresearch.server import create_app
from deepresearch.services import Services
from deepresearch.tools.base import Source, Tool, ToolContext, ToolOutput
from deepresearch.tools.search import SEARCH_PARAMETERS

sys.path.insert(0, str(Path(__file__).resolve().parent))

import workload


class PaddedSearch:
    """``search`` answering with the trajectory's planned amount of text."""

    name = "search"
    description = (
        "Search the medical literature and evidence sources. Accepts multiple queries; "
        "every result is numbered so it can be cited as [n]."
    )
    parameters: dict[str, Any] = SEARCH_PARAMETERS

    async def call(self, arguments: dict[str, Any], context: ToolContext) -> ToolOutput:
        queries = arguments.get("query")
        query = queries[0] if isinstance(queries, list) and queries else str(queries)
        await asyncio.sleep(workload.tool_wait(str(query)))  # the search API or page fetch
        text, found = workload.padded_results(str(query))
        sources = tuple(
            Source(source_id=sid, title=title, url=f"https://example.org/{sid}", text=title)
            for sid, title in found
        )
        for source in sources:
            context.citations.number(source)
        return ToolOutput(text=text, summary=f"{len(sources)} sources found", sources=sources)


def bench_tools(services: Services) -> Mapping[str, Tool]:
    return {"search": PaddedSearch()}


def main() -> int:
    try:
        settings = load_settings()
    except ConfigurationError as exc:
        print(exc, file=sys.stderr)
        return 2
    uvicorn.run(
        create_app(settings, tools_factory=bench_tools),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        access_log=False,
        timeout_graceful_shutdown=5,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Backend faults from the simulator: each faulty session ends cleanly with exactly one
terminal event, a healthy session beside it completes, and every slot comes back."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from tests.server.conftest import MakeSettings
from tests.server.hardened import hardened_app
from tests.support import TERMINAL, collect

FAULTS = {
    "reset mid-stream": ("[sim:reset]", {"error"}),
    "429": ("[sim:status=429]", {"error"}),
    "500": ("[sim:status=500]", {"error"}),
    "503": ("[sim:status=503]", {"error"}),
    "slow first token": ("[sim:first-delay=5000]", {"error"}),
    "garbage instead of JSON": ("[sim:garbage]", {"error", "no_answer"}),
    "a stream that never ends": ("[sim:endless] [sim:slow=20]", {"timeout"}),
}


@pytest.mark.parametrize("fault", list(FAULTS))
async def test_a_faulty_backend_ends_its_session_cleanly(
    make_settings: MakeSettings, fault: str
) -> None:
    directive, outcomes = FAULTS[fault]
    settings = make_settings(
        llm_timeout=1.0,
        llm_retries=1,
        llm_retry_seconds=5.0,
        max_run_seconds=4.0,
        max_concurrent=4,
    )
    async with hardened_app(settings) as url, httpx.AsyncClient(base_url=url) as client:
        faulty, healthy = await asyncio.wait_for(
            asyncio.gather(
                collect(client, "POST", "/chat/stream", json={"question": f"tok-f {directive}"}),
                collect(client, "POST", "/chat/stream", json={"question": "tok-ok [sim:slow=5]"}),
            ),
            timeout=60,
        )
        terminals = [t for t in faulty.types if t in TERMINAL]
        assert len(terminals) == 1 and faulty.types[-1] == terminals[0], faulty.types
        assert terminals[0] in outcomes, (fault, faulty.events[-1].data)
        assert healthy.types[-1] == "completed"
        sid = faulty.events[0].data["session_id"]
        record = (await client.get(f"/sessions/{sid}")).json()
        assert record["status"] in {"failed", "timeout", "no_answer"}
        state = (await client.get("/health")).json()
        assert (state["active_sessions"], state["queued_sessions"]) == (0, 0)

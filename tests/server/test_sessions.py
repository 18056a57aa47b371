"""Streams through real HTTP: resume, cancel, disconnect policies, slot accounting."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest

from deepresearch.services import Services, default_tools
from deepresearch.tools.base import Tool, ToolContext, ToolOutput
from tests.server.conftest import MakeSettings
from tests.support import Process, SSEStream, collect, free_port, running_app


async def health(client: httpx.AsyncClient) -> dict[str, Any]:
    response = await client.get("/health")
    assert response.status_code == 200
    payload: dict[str, Any] = response.json()
    return payload


async def assert_slots_free(client: httpx.AsyncClient) -> None:
    state = await health(client)
    assert (state["active_sessions"], state["queued_sessions"]) == (0, 0), state


async def wait_for_status(client: httpx.AsyncClient, session_id: str, *statuses: str) -> str:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        status = str((await client.get(f"/sessions/{session_id}")).json()["status"])
        if status in statuses:
            return status
        await asyncio.sleep(0.02)  # polling a condition with a deadline
    raise AssertionError(f"session {session_id} never reached {statuses}")


async def stream(client: httpx.AsyncClient, body: dict[str, Any], **kw: Any) -> SSEStream:
    return await collect(client, "POST", "/chat/stream", json=body, **kw)


async def test_a_stream_is_well_formed_and_ends_with_one_terminal_event(
    make_settings: MakeSettings,
) -> None:
    async with running_app(make_settings()) as url, httpx.AsyncClient(base_url=url) as client:
        result = await stream(client, {"question": "tok-abc how is diabetes managed?"})
        assert result.status == 200
        ids = [event.id for event in result.events]
        assert ids == list(range(1, len(ids) + 1))
        assert result.types[0] == "session_start" and result.types[-1] == "completed"
        assert (
            sum(
                t in {"completed", "error", "timeout", "no_answer", "cancelled"}
                for t in result.types
            )
            == 1
        )
        sid = result.events[0].data["session_id"]
        for event in result.events:
            assert event.data["session_id"] == sid
            assert isinstance(event.data["content"], str) and event.data["timestamp"]
        final = next(e for e in result.events if e.type == "final_answer").data
        assert "tok-abc" in final["answer_data"]["answer"]
        assert final["answer_data"]["citations"][0]["id"] == "1"
        record = (await client.get(f"/sessions/{sid}")).json()
        assert record["status"] == "completed" and "tok-abc" in record["answer"]
        await assert_slots_free(client)


async def test_resume_after_disconnect_gets_exactly_the_remaining_events(
    make_settings: MakeSettings,
) -> None:
    async with running_app(make_settings()) as url, httpx.AsyncClient(base_url=url) as client:
        body = {"question": "tok-res [sim:slow=20] [sim:rounds=2]", "on_disconnect": "continue"}
        first = await stream(client, body, limit=3)
        assert [e.id for e in first.events] == [1, 2, 3]
        sid = first.events[0].data["session_id"]
        rest = await collect(
            client, "GET", f"/sessions/{sid}/events", headers={"Last-Event-ID": "3"}
        )
        assert rest.events[0].id == 4
        assert [e.id for e in rest.events] == list(range(4, 4 + len(rest.events)))
        assert rest.types[-1] == "completed"
        replay = await collect(client, "GET", f"/sessions/{sid}/events")
        assert [e.data for e in replay.events] == [e.data for e in first.events + rest.events]


async def test_delete_cancels_running_and_queued_sessions(make_settings: MakeSettings) -> None:
    settings = make_settings(max_concurrent=1)
    async with running_app(settings) as url, httpx.AsyncClient(base_url=url) as client:
        running = await stream(client, {"question": "tok-run [sim:hang]"}, limit=2)
        queued = await stream(client, {"question": "tok-wait"}, limit=2)
        assert queued.types == ["session_start", "queued"]
        assert queued.events[1].data["position"] == 1
        for result in (queued, running):
            sid = result.events[0].data["session_id"]
            async with asyncio.TaskGroup() as group:
                follower = group.create_task(
                    collect(
                        client, "GET", f"/sessions/{sid}/events", headers={"Last-Event-ID": "2"}
                    )
                )
                response = await client.delete(f"/sessions/{sid}")
            assert response.status_code == 200 and response.json()["status"] == "cancelled"
            assert follower.result().types[-1] == "cancelled"
            assert (await client.delete(f"/sessions/{sid}")).status_code == 409
        await assert_slots_free(client)


async def test_full_queue_gets_503_with_retry_after_and_creates_nothing(
    make_settings: MakeSettings,
) -> None:
    settings = make_settings(max_concurrent=1, max_queue=1)
    async with running_app(settings) as url, httpx.AsyncClient(base_url=url) as client:
        await stream(client, {"question": "tok-a [sim:hang]"}, limit=2)
        await stream(client, {"question": "tok-b"}, limit=2)
        refused = await client.post("/chat/stream", json={"question": "tok-c"})
        assert refused.status_code == 503
        assert int(refused.headers["Retry-After"]) >= 1
        listing = (await client.get("/sessions")).json()
        assert listing["total"] == 2
        metrics = (await client.get("/metrics")).text
        assert "deepresearch_rejected_total 1.0" in metrics


async def test_slot_accounting_stays_exact_on_every_way_out(make_settings: MakeSettings) -> None:
    class Exploding:
        name = "search"
        description = "raises"
        parameters: dict[str, Any] = {"type": "object"}

        async def call(self, arguments: dict[str, Any], context: ToolContext) -> ToolOutput:
            raise RuntimeError("the tool blew up")

    def tools(services: Services) -> dict[str, Tool]:
        return {**default_tools(services), "explode": Exploding()}

    # The hung backend's timeout is short to keep the test fast, but not so short that
    # a loaded machine's pause between two pieces of a healthy reply trips it.
    settings = make_settings(max_concurrent=1, llm_timeout=2.0, queue_timeout=0.5)
    async with (
        running_app(settings, tools_factory=tools) as url,
        httpx.AsyncClient(base_url=url, timeout=30) as client,
    ):
        # A client vanishing mid-stream with on_disconnect=cancel.
        gone = await stream(
            client, {"question": "tok-gone [sim:slow=50]", "on_disconnect": "cancel"}, limit=4
        )
        sid = gone.events[0].data["session_id"]
        assert await wait_for_status(client, sid, "cancelled", "completed") == "cancelled"
        await assert_slots_free(client)

        # Backend error, and backend hanging past its timeout.
        assert (await stream(client, {"question": "tok-e [sim:error]"})).types[-1] == "error"
        await assert_slots_free(client)
        hung = await stream(client, {"question": "tok-h [sim:hang]"})
        assert hung.types[-1] == "error" and "timed out" in hung.events[-1].data["content"]
        await assert_slots_free(client)

        # An exception inside a tool: the model is told, the session still completes.
        exploded = await stream(client, {"question": "tok-x [sim:tool=explode]"})
        assert "tool_error" in exploded.types and exploded.types[-1] == "completed"
        await assert_slots_free(client)

        # The queue timeout: one holds the slot, the next waits too long.
        slow = {"question": "tok-slow [sim:slow=100] [sim:rounds=3]", "on_disconnect": "continue"}
        await stream(client, slow, limit=2)
        waited = await stream(client, {"question": "tok-late"})
        assert waited.types == ["session_start", "queued", "timeout"]
        state = await health(client)
        assert (state["active_sessions"], state["queued_sessions"]) == (1, 0)
        slow_id = (await client.get("/sessions", params={"status": "processing"})).json()
        (running_id,) = slow_id["active_sessions"]
        await wait_for_status(client, running_id, "completed")
        await assert_slots_free(client)


async def test_grace_keeps_a_session_for_a_returning_client(make_settings: MakeSettings) -> None:
    # A grace longer than any pause of a loaded machine between leaving and coming back.
    settings = make_settings(disconnect_grace=60.0)
    async with running_app(settings) as url, httpx.AsyncClient(base_url=url) as client:
        kept = await stream(client, {"question": "tok-k [sim:slow=40] [sim:rounds=2]"}, limit=3)
        kept_id = kept.events[0].data["session_id"]
        rest = await collect(
            client, "GET", f"/sessions/{kept_id}/events", headers={"Last-Event-ID": "3"}
        )
        assert rest.types[-1] == "completed"
        await assert_slots_free(client)


async def test_grace_ends_a_session_nobody_came_back_for(make_settings: MakeSettings) -> None:
    settings = make_settings(disconnect_grace=0.3)
    async with running_app(settings) as url, httpx.AsyncClient(base_url=url) as client:
        left = await stream(client, {"question": "tok-l [sim:slow=200] [sim:rounds=5]"}, limit=3)
        left_id = left.events[0].data["session_id"]
        assert await wait_for_status(client, left_id, "cancelled", "completed") == "cancelled"
        record = (await client.get(f"/sessions/{left_id}")).json()
        assert "no client" in record["error"]
        await assert_slots_free(client)


async def test_idle_streams_get_heartbeats(make_settings: MakeSettings) -> None:
    settings = make_settings(heartbeat_seconds=0.05, max_concurrent=1)
    async with running_app(settings) as url, httpx.AsyncClient(base_url=url) as client:
        await stream(
            client, {"question": "tok-h [sim:slow=300]", "on_disconnect": "continue"}, limit=2
        )
        waiting = await stream(client, {"question": "tok-w"})
        assert waiting.comments >= 1
        assert waiting.types[-1] == "completed"


async def test_health_and_metrics_report_the_admission_state(make_settings: MakeSettings) -> None:
    settings = make_settings(max_concurrent=1)
    async with running_app(settings) as url, httpx.AsyncClient(base_url=url) as client:
        await stream(client, {"question": "tok-1 [sim:hang]"}, limit=2)
        await stream(client, {"question": "tok-2"}, limit=2)
        state = await health(client)
        assert state["status"] == "healthy" and state["agent_config_initialized"] is True
        assert (state["active_sessions"], state["queued_sessions"]) == (1, 1)
        assert state["lock_acquired"] is True and state["max_concurrent"] == 1
        assert state["mode"] == "llm" and state["llm"]["backends"][0]["url"].endswith("/v1")
        metrics = (await client.get("/metrics")).text
        assert "deepresearch_slots_busy 1.0" in metrics
        assert "deepresearch_queue_length 1.0" in metrics
        assert "deepresearch_queue_wait_seconds_bucket" in metrics
        assert "deepresearch_run_seconds_bucket" in metrics


async def test_client_keys_guard_every_route_but_health(make_settings: MakeSettings) -> None:
    settings = make_settings(api_keys=["alpha", "beta"])
    async with running_app(settings) as url, httpx.AsyncClient(base_url=url) as client:
        assert (await client.get("/health")).status_code == 200
        assert (await client.get("/sessions")).status_code == 401
        assert (await client.post("/chat", json={"question": "tok-x"})).status_code == 401
        alpha = {"Authorization": "Bearer alpha"}
        beta = {"Authorization": "Bearer beta"}
        done = (await client.post("/chat", json={"question": "tok-x"}, headers=alpha)).json()
        assert done["status"] == "completed"
        assert (await client.get("/sessions", headers=alpha)).json()["total"] == 1
        assert (await client.get("/sessions", headers=beta)).json()["total"] == 0
        other = await client.get(f"/sessions/{done['session_id']}", headers=beta)
        assert other.status_code == 404


async def test_the_model_can_run_python_in_the_sandbox(make_settings: MakeSettings) -> None:
    # Not root, the server runs code as its own user only when the operator allows it.
    settings = make_settings(python_same_user=True)
    async with running_app(settings) as url, httpx.AsyncClient(base_url=url) as client:
        result = await stream(client, {"question": "tok-py [sim:python]"})
        assert result.types[-1] == "completed"
        ran = next(e for e in result.events if e.type == "tool_result").data
        assert ran["tool_name"] == "PythonInterpreter"
        assert "42" in ran["result"]


async def test_resuming_from_past_the_end_of_a_live_session_ends_the_stream(
    make_settings: MakeSettings,
) -> None:
    async with running_app(make_settings()) as url, httpx.AsyncClient(base_url=url) as client:
        body = {"question": "tok-end [sim:slow=20] [sim:rounds=2]", "on_disconnect": "continue"}
        first = await stream(client, body, limit=2)
        sid = first.events[0].data["session_id"]
        ahead = await asyncio.wait_for(
            collect(client, "GET", f"/sessions/{sid}/events", headers={"Last-Event-ID": "999"}),
            timeout=20,
        )
        assert ahead.status == 200 and ahead.events == []
        odd = await client.get(f"/sessions/{sid}/events", headers={"Last-Event-ID": b"\xb2"})
        assert odd.status_code == 422


async def test_plain_chat_honours_on_disconnect(make_settings: MakeSettings) -> None:
    settings = make_settings(disconnect_grace=0.2)
    async with running_app(settings) as url, httpx.AsyncClient(base_url=url) as client:
        ids = []
        for policy in ("cancel", "grace"):
            question = f"tok-{policy} [sim:slow=100] [sim:rounds=5]"
            with pytest.raises(httpx.ReadTimeout):
                await client.post(
                    "/chat", json={"question": question, "on_disconnect": policy}, timeout=0.5
                )
            listing = (await client.get("/sessions", params={"limit": 1})).json()
            ids.append(next(iter(listing["active_sessions"])))
        for sid in ids:
            assert await wait_for_status(client, sid, "cancelled", "completed") == "cancelled"
        await assert_slots_free(client)


async def test_a_browser_front_end_on_another_origin_may_call_the_api(
    make_settings: MakeSettings,
) -> None:
    allowed = make_settings(cors_origins=["http://localhost:3000"])
    async with running_app(allowed) as url, httpx.AsyncClient(base_url=url) as client:
        preflight = await client.options(
            "/chat/stream",
            headers={
                "Origin": "http://localhost:3000",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "content-type",
            },
        )
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == "http://localhost:3000"
        result = await stream(
            client, {"question": "tok-cors"}, headers={"Origin": "http://localhost:3000"}
        )
        assert result.types[-1] == "completed"
    async with running_app(make_settings()) as url, httpx.AsyncClient(base_url=url) as client:
        response = await client.get("/health", headers={"Origin": "http://elsewhere"})
        assert "access-control-allow-origin" not in response.headers


async def test_a_dead_backend_in_the_list_is_passed_over(
    make_settings: MakeSettings, sim: Process
) -> None:
    dead = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    # Failing over is a second attempt of the call's one budget.
    settings = make_settings(llm_url=[dead, sim.url], llm_model="sim-model", llm_retries=1)
    async with running_app(settings) as url, httpx.AsyncClient(base_url=url) as client:
        for n in range(3):
            result = await stream(client, {"question": f"tok-pool{n}"})
            assert result.types[-1] == "completed"
        backends = (await health(client))["llm"]["backends"]
        assert [b["healthy"] for b in backends] == [False, True]

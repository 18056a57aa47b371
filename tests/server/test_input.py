"""Bad input: 422 naming the field, no session created, never a 5xx."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.server.conftest import MakeSettings
from tests.support import running_app

CASES: list[tuple[str, Any, str]] = [
    ("empty question", {"question": ""}, "question"),
    ("blank question", {"question": "   \n\t "}, "question"),
    ("over-long question", {"question": "why? " * 2000}, "question"),
    ("missing question", {"temperature": 0.5}, "question"),
    ("question of wrong type", {"question": 42}, "question"),
    ("temperature as text", {"question": "q", "temperature": "hot"}, "temperature"),
    ("temperature as bool", {"question": "q", "temperature": True}, "temperature"),
    ("temperature too high", {"question": "q", "temperature": 9}, "temperature"),
    ("top_p zero", {"question": "q", "top_p": 0}, "top_p"),
    ("presence_penalty too low", {"question": "q", "presence_penalty": -3}, "presence_penalty"),
    ("max_tokens fractional", {"question": "q", "max_tokens": 1.5}, "max_tokens"),
    ("max_tokens zero", {"question": "q", "max_tokens": 0}, "max_tokens"),
    ("invalid session_id", {"question": "q", "session_id": "../etc"}, "session_id"),
    ("short session_id", {"question": "q", "session_id": "abc"}, "session_id"),
    ("unknown on_disconnect", {"question": "q", "on_disconnect": "later"}, "on_disconnect"),
    ("body is a list", ["question"], "body"),
]


@pytest.mark.parametrize("route", ["/chat/stream", "/chat"])
async def test_bad_bodies_are_refused_naming_the_field(
    make_settings: MakeSettings, route: str
) -> None:
    async with running_app(make_settings()) as url, httpx.AsyncClient(base_url=url) as client:
        for name, body, field in CASES:
            response = await client.post(route, json=body)
            assert response.status_code == 422, name
            payload = response.json()
            assert field in payload["fields"], (name, payload)
            assert field in payload["error"], name
        for raw in (b"{bad json", b"", b"\xff\xfe"):
            response = await client.post(
                route, content=raw, headers={"Content-Type": "application/json"}
            )
            assert response.status_code == 422
            assert "body" in response.json()["fields"]
        listing = (await client.get("/sessions")).json()
        assert listing["total"] == 0


async def test_bad_query_and_header_values_are_refused(make_settings: MakeSettings) -> None:
    async with running_app(make_settings()) as url, httpx.AsyncClient(base_url=url) as client:
        assert (await client.get("/sessions", params={"limit": 0})).status_code == 422
        assert (await client.get("/sessions", params={"status": "weird"})).status_code == 422
        assert (await client.get("/sessions/nope")).status_code == 404
        assert (await client.delete("/sessions/nope")).status_code == 404
        done = (await client.post("/chat", json={"question": "tok-aaa"})).json()
        response = await client.get(
            f"/sessions/{done['session_id']}/events", headers={"Last-Event-ID": "x1"}
        )
        assert response.status_code == 422 and "Last-Event-ID" in response.json()["fields"]


async def test_reusing_a_finished_session_id_asks_a_follow_up(make_settings: MakeSettings) -> None:
    async with running_app(make_settings()) as url, httpx.AsyncClient(base_url=url) as client:
        body = {"question": "tok-one", "session_id": "my-session-0001"}
        first = await client.post("/chat", json=body)
        assert first.status_code == 200 and first.json()["session_id"] == "my-session-0001"
        again = await client.post("/chat", json=body)
        assert again.status_code == 200
        follow_up = again.json()["session_id"]
        assert follow_up != "my-session-0001"
        detail = (await client.get(f"/sessions/{follow_up}")).json()
        assert (detail["conversation_id"], detail["turn"]) == ("my-session-0001", 2)
        assert (await client.get("/sessions")).json()["total"] == 2

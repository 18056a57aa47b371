"""Conversations over real HTTP: follow-ups with context, listing, the note's routes,
and citations that never cross from one caller to another."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from tests.server.conftest import MakeSettings
from tests.support import collect, running_app


async def ask(client: httpx.AsyncClient, question: str, **body: Any) -> dict[str, Any]:
    response = await client.post("/chat", json={"question": question, **body})
    assert response.status_code == 200, response.text
    answered: dict[str, Any] = response.json()
    assert answered["status"] == "completed", answered
    return answered


async def test_a_follow_up_sees_the_earlier_turn_and_joins_its_conversation(
    make_settings: MakeSettings,
) -> None:
    async with running_app(make_settings()) as url, httpx.AsyncClient(base_url=url) as client:
        first = await ask(client, "tok-first how is diabetes managed?")
        # The simulator answers about the first tok- token of its prompt: the follow-up's
        # answer names tok-first only if the earlier turn reached the model.
        second = await ask(client, "and in children?", session_id=first["session_id"])
        assert "tok-first" in second["answer"]
        assert second["session_id"] != first["session_id"]
        # Following up by the id of any turn lands in the same conversation.
        third = await ask(client, "and in pregnancy?", session_id=second["session_id"])
        other = await ask(client, "tok-other unrelated question")

        listed = (await client.get("/conversations")).json()
        assert listed["total"] == 2
        newest, older = listed["conversations"]
        assert newest["conversation_id"] == other["session_id"] and newest["turns"] == 1
        assert older["conversation_id"] == first["session_id"]
        assert (older["turns"], older["title"], older["status"]) == (
            3,
            "tok-first how is diabetes managed?",
            "completed",
        )
        for some_id in (first["session_id"], third["session_id"]):
            found = (await client.get(f"/conversations/{some_id}")).json()
            assert [t["session_id"] for t in found["turns"]] == [
                first["session_id"],
                second["session_id"],
                third["session_id"],
            ]
            assert [t["turn"] for t in found["turns"]] == [1, 2, 3]
            assert found["turns"][1]["answer"] == second["answer"]
            assert found["turns"][0]["citations"][0]["id"] == "1"
        assert (await client.get("/conversations/no-such-conversation")).status_code == 404


async def test_a_follow_up_waits_for_the_previous_turn(make_settings: MakeSettings) -> None:
    async with running_app(make_settings()) as url, httpx.AsyncClient(base_url=url) as client:
        running = await collect(
            client, "POST", "/chat/stream", json={"question": "tok-slow [sim:hang]"}, limit=2
        )
        sid = running.events[0].data["session_id"]
        refused = await client.post("/chat/stream", json={"question": "next?", "session_id": sid})
        assert refused.status_code == 409 and "still being researched" in refused.json()["error"]
        assert (await client.delete(f"/sessions/{sid}")).json()["status"] == "cancelled"
        follow_up = await client.post("/chat", json={"question": "tok-next", "session_id": sid})
        assert follow_up.status_code == 200
        turns = (await client.get(f"/conversations/{sid}")).json()["turns"]
        assert [t["status"] for t in turns] == ["cancelled", "completed"]


async def test_the_notes_session_routes_map_onto_conversations(
    make_settings: MakeSettings,
) -> None:
    async with running_app(make_settings()) as url, httpx.AsyncClient(base_url=url) as client:
        new = (await client.get("/api/sessions/new")).json()
        assert set(new) == {"session_id", "created_at"}
        conversation_id = new["session_id"]
        # Nothing exists until the first question takes the id.
        assert (await client.get(f"/api/sessions/{conversation_id}")).status_code == 404
        stream = await collect(
            client,
            "POST",
            "/chat/stream",
            json={"question": "tok-note what treats asthma?", "session_id": conversation_id},
        )
        assert stream.events[0].data["session_id"] == conversation_id
        stream = await collect(
            client,
            "POST",
            "/chat/stream",
            json={"question": "how fast?", "session_id": conversation_id},
        )
        assert stream.types[-1] == "completed"
        listed = (await client.get("/api/sessions")).json()
        assert listed["total"] == 1
        assert listed["sessions"][0]["session_id"] == conversation_id
        assert listed["sessions"][0]["message_count"] == 4
        found = (await client.get(f"/api/sessions/{conversation_id}")).json()
        assert found["session_id"] == conversation_id
        assert [m["role"] for m in found["messages"]] == ["user", "assistant"] * 2
        assert found["messages"][2]["content"] == "how fast?"
        assert "tok-note" in found["messages"][3]["content"]


async def test_keys_scope_conversations_and_citations(make_settings: MakeSettings) -> None:
    settings = make_settings(api_keys=["key-alice", "key-bob"])
    async with running_app(settings) as url:
        alice = httpx.AsyncClient(base_url=url, headers={"Authorization": "Bearer key-alice"})
        bob = httpx.AsyncClient(base_url=url, headers={"Authorization": "Bearer key-bob"})
        async with alice, bob:
            mine = await ask(alice, "tok-alice how is hypertension treated?")
            cited = mine["citations"][0]
            got = (await alice.get("/citation/1")).json()
            assert (got["full_content"], got["title"]) == (cited["full_content"], cited["title"])
            assert got["session_id"] == mine["session_id"]
            # Bob has asked nothing: Alice's sources are not his, by any spelling.
            assert (await bob.get("/citation/1")).status_code == 404
            qualified = f"/citation/{mine['session_id']}:1"
            assert (await bob.get(qualified)).status_code == 404
            assert (await alice.get(qualified)).json()["full_content"] == cited["full_content"]
            assert (await bob.get("/conversations")).json()["total"] == 0
            assert (await bob.get("/api/sessions")).json()["total"] == 0
            assert (await bob.get(f"/conversations/{mine['session_id']}")).status_code == 404
            assert (await bob.get(f"/api/sessions/{mine['session_id']}")).status_code == 404
            # Alice's id, posted by Bob, names a new session of his (as a fresh id would).
            hijack = {"question": "tok-bob", "session_id": mine["session_id"]}
            his = await bob.post("/chat", json=hijack)
            assert his.status_code == 200 and his.json()["session_id"] == mine["session_id"]
            assert "hypertension" not in his.text
            assert (await alice.get("/conversations")).json()["total"] == 1
            turns = (await alice.get(f"/conversations/{mine['session_id']}")).json()["turns"]
            assert [t["question"] for t in turns] == ["tok-alice how is hypertension treated?"]
            async with httpx.AsyncClient(base_url=url) as anonymous:
                assert (await anonymous.get("/citation/1")).status_code == 401


async def test_a_bare_citation_number_on_an_open_server_is_the_callers_own(
    make_settings: MakeSettings,
) -> None:
    async with running_app(make_settings()) as url:
        # Two callers from two addresses (the whole of 127.0.0.0/8 is loopback).
        here = httpx.AsyncClient(base_url=url)
        there = httpx.AsyncClient(
            base_url=url, transport=httpx.AsyncHTTPTransport(local_address="127.0.0.2")
        )
        async with here, there:
            assert (await there.get("/citation/1")).status_code == 404
            diabetes = await ask(here, "tok-here how is type 2 diabetes managed with metformin?")
            asthma = await ask(there, "tok-there which inhalers reduce asthma exacerbations?")
            mine = (await here.get("/citation/1")).json()
            theirs = (await there.get("/citation/1")).json()
            assert mine["session_id"] == diabetes["session_id"]
            assert theirs["session_id"] == asthma["session_id"]
            assert mine["full_content"] == diabetes["citations"][0]["full_content"]
            assert theirs["full_content"] == asthma["citations"][0]["full_content"]
            assert (await here.get("/citation/99")).status_code == 404
            bad = await here.get("/citation/1;drop")
            assert bad.status_code == 422 and "citation_id" in bad.json()["fields"]


async def test_two_follow_ups_at_once_one_is_refused(make_settings: MakeSettings) -> None:
    async with running_app(make_settings()) as url, httpx.AsyncClient(base_url=url) as client:
        first = await ask(client, "tok-race how is asthma treated?")
        body = {"question": "and in children?", "session_id": first["session_id"]}
        outcomes = await asyncio.gather(
            client.post("/chat", json=body), client.post("/chat", json=body)
        )
        assert sorted(response.status_code for response in outcomes) == [200, 409]
        turns = (await client.get(f"/conversations/{first['session_id']}")).json()["turns"]
        assert [turn["turn"] for turn in turns] == [1, 2]

"""Chosen session ids per key, over real HTTP: two user keys choosing the same id each
get their own session, stream, record, follow-ups and cancel by that id; neither
sees the other's; what one meets is what a fresh id meets; an admin sees both, each
under its owner-qualified store id."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import httpx

from deepresearch.server.auth import owner_id
from tests.server.conftest import MakeSettings
from tests.server.hardened import hardened_app
from tests.server.test_keys import ANN, BOB, OPS, keys_file
from tests.support import SSEStream, collect

SHARED = "shared-chosen-01"


def store_id(key: str, public: str) -> str:
    """The id the store keeps a user's chosen id under (what an admin sees)."""
    return f"{public}:{owner_id(hashlib.sha256(key.encode()).digest())}"


def shape(stream: SSEStream) -> list[tuple[str, str]]:
    """A stream as types and the session ids its events carry."""
    return [(event.type, event.data["session_id"]) for event in stream.events]


def record_shape(record: dict[str, Any]) -> dict[str, Any]:
    keep = ("session_id", "status", "conversation_id", "turn", "error", "question")
    return {name: record[name] for name in keep}


async def ask_stream(
    client: httpx.AsyncClient, headers: dict[str, str], question: str, session_id: str
) -> SSEStream:
    body = {"question": question, "session_id": session_id}
    stream = await collect(client, "POST", "/chat/stream", json=body, headers=headers)
    assert stream.status == 200 and stream.types[-1] == "completed", stream.types
    return stream


async def test_two_keys_choosing_one_id_each_get_their_own_session(
    make_settings: MakeSettings, tmp_path: Path
) -> None:
    settings = make_settings(keys_file=keys_file(tmp_path))
    async with hardened_app(settings) as url, httpx.AsyncClient(base_url=url) as client:
        ann = await ask_stream(client, ANN, "tok-ann how is asthma treated?", SHARED)
        # Bob's id is Ann's; the same question under an id nobody holds answers alike.
        bob = await ask_stream(client, BOB, "tok-bob how is diabetes treated?", SHARED)
        fresh = await ask_stream(client, BOB, "tok-bob how is diabetes treated?", "fresh-chosen-02")

        # Every event names the session by the id its key chose.
        assert {sid for _, sid in shape(ann)} == {SHARED} == {sid for _, sid in shape(bob)}
        assert ann.events[0].data["content"] == SHARED == bob.events[0].data["content"]
        assert [(t, s.replace("fresh-chosen-02", SHARED)) for t, s in shape(fresh)] == shape(bob)
        assert [event.id for event in bob.events] == [event.id for event in fresh.events]

        # Records: each key reads its own under the shared id, as it would a fresh one.
        for headers, asked in ((ANN, "tok-ann"), (BOB, "tok-bob")):
            record = (await client.get(f"/sessions/{SHARED}", headers=headers)).json()
            assert record["question"].startswith(asked)
            assert (record["session_id"], record["conversation_id"]) == (SHARED, SHARED)
        bobs = (await client.get(f"/sessions/{SHARED}", headers=BOB)).json()
        fresh_record = (await client.get("/sessions/fresh-chosen-02", headers=BOB)).json()
        assert record_shape(fresh_record) | {"session_id": SHARED, "conversation_id": SHARED} == (
            record_shape(bobs)
        )
        assert bobs["answer"] == fresh_record["answer"]
        listed = (await client.get("/sessions", headers=ANN)).json()["active_sessions"]
        assert set(listed) == {SHARED} and listed[SHARED]["question"].startswith("tok-ann")

        # A replay of the events (all of them, and after a Last-Event-ID) is the key's own.
        for headers, live in ((ANN, ann), (BOB, bob)):
            replay = await collect(client, "GET", f"/sessions/{SHARED}/events", headers=headers)
            assert shape(replay) == shape(live)
            assert replay.events[0].data["question"] == live.events[0].data["question"]
            resumed = await collect(
                client,
                "GET",
                f"/sessions/{SHARED}/events",
                headers={**headers, "Last-Event-ID": "2"},
            )
            assert [e.id for e in resumed.events] == [e.id for e in live.events[2:]]

        # Follow-ups by the shared id join each key's own conversation.
        for headers, asked in ((ANN, "tok-ann"), (BOB, "tok-bob")):
            body = {"question": f"{asked} and in children?", "session_id": SHARED}
            turn = (await client.post("/chat", json=body, headers=headers)).json()
            assert turn["status"] == "completed" and turn["session_id"] != SHARED
            found = (await client.get(f"/conversations/{SHARED}", headers=headers)).json()
            assert found["conversation_id"] == SHARED
            turns = found["turns"]
            assert [t["turn"] for t in turns] == [1, 2]
            assert all(t["question"].startswith(asked) for t in turns)
            assert [t["conversation_id"] for t in turns] == [SHARED, SHARED]
            assert turns[0]["session_id"] == SHARED
            by_turn = await client.get(f"/conversations/{turn['session_id']}", headers=headers)
            assert by_turn.json()["conversation_id"] == SHARED
            note = (await client.get(f"/api/sessions/{SHARED}", headers=headers)).json()
            assert note["session_id"] == SHARED and len(note["messages"]) == 4
            assert all(asked in m["content"] for m in note["messages"] if m["role"] == "user")
            citation = (await client.get(f"/citation/{SHARED}:1", headers=headers)).json()
            assert citation["session_id"] == SHARED
            listing = (await client.get("/conversations", headers=headers)).json()
            assert SHARED in {c["conversation_id"] for c in listing["conversations"]}
            note_list = (await client.get("/api/sessions", headers=headers)).json()
            assert SHARED in {s["session_id"] for s in note_list["sessions"]}

        # An unknown id reads the same to every key, and no answer names a store id.
        for headers in (ANN, BOB):
            missing = await client.get("/sessions/never-chosen-09", headers=headers)
            assert missing.status_code == 404
            assert missing.json() == {"error": "no session never-chosen-09"}
            everything = (await client.get("/sessions", headers=headers)).text
            assert SHARED + ":" not in everything

        # The admin sees both sessions under their store ids, and reads each by it.
        ann_store, bob_store = (
            store_id("ann-secret-key", SHARED),
            store_id("bob-secret-key", SHARED),
        )
        every = (await client.get("/sessions", headers=OPS)).json()["active_sessions"]
        assert {ann_store, bob_store} <= set(every)
        assert every[ann_store]["question"].startswith("tok-ann")
        assert every[bob_store]["question"].startswith("tok-bob")
        seen = await collect(client, "GET", f"/sessions/{bob_store}/events", headers=OPS)
        assert {sid for _, sid in shape(seen)} == {bob_store}
        conversations = (await client.get("/conversations", headers=OPS)).json()
        assert {ann_store, bob_store} <= {
            c["conversation_id"] for c in conversations["conversations"]
        }
        cited = await client.get(f"/citation/{ann_store}:1", headers=OPS)
        assert cited.json()["session_id"] == ann_store
        # The admin's own chosen id is a store id: no other key's session is in its way.
        mine = await client.post(
            "/chat", json={"question": "tok-ops", "session_id": SHARED}, headers=OPS
        )
        assert mine.json()["session_id"] == SHARED and mine.json()["status"] == "completed"
        own = (await client.get(f"/sessions/{SHARED}", headers=OPS)).json()
        assert (own["question"], own["turn"]) == ("tok-ops", 1)


async def test_a_key_cancels_its_own_session_under_a_shared_id_and_no_other(
    make_settings: MakeSettings, tmp_path: Path
) -> None:
    settings = make_settings(keys_file=keys_file(tmp_path), max_concurrent=3)
    chosen = "cancel-chosen-03"
    async with hardened_app(settings) as url, httpx.AsyncClient(base_url=url) as client:
        body = {
            "question": "tok-slow [sim:slow=50] [sim:rounds=3]",
            "session_id": chosen,
            "on_disconnect": "continue",
        }
        for headers in (ANN, BOB):
            started = await collect(
                client, "POST", "/chat/stream", json=body, headers=headers, limit=1
            )
            assert started.events[0].data["session_id"] == chosen

        # Ann's own follow-up while it runs: refused, in words naming her id only.
        busy = await client.post("/chat", json={**body, "question": "tok-again"}, headers=ANN)
        assert busy.status_code == 409
        assert busy.json()["error"].startswith(f"conversation {chosen}: the previous question")

        cancelled = await client.delete(f"/sessions/{chosen}", headers=BOB)
        assert cancelled.status_code == 200
        assert (cancelled.json()["session_id"], cancelled.json()["status"]) == (chosen, "cancelled")
        again = await client.delete(f"/sessions/{chosen}", headers=BOB)
        assert again.status_code == 409
        assert again.json() == {"error": f"session {chosen} already ended (cancelled)"}
        stream = await collect(client, "GET", f"/sessions/{chosen}/events", headers=BOB)
        assert stream.types[-1] == "cancelled"
        assert {event.data["session_id"] for event in stream.events} == {chosen}

        # Ann's is untouched; the admin cancels it by its store id.
        anns = (await client.get(f"/sessions/{chosen}", headers=ANN)).json()
        assert anns["status"] in {"queued", "processing"}
        ann_store = store_id("ann-secret-key", chosen)
        stopped = await client.delete(f"/sessions/{ann_store}", headers=OPS)
        assert stopped.json()["status"] == "cancelled"
        assert (await client.get(f"/sessions/{chosen}", headers=ANN)).json()["status"] == (
            "cancelled"
        )


async def test_an_id_resolves_to_the_callers_own_session_only(tmp_path: Path) -> None:
    """The rule on a real store: the caller's own chosen id, else its own session under
    the plain id (a server-generated one, or chosen before namespaces), else a new one
    of its own; an admin's ids are the store's."""
    from deepresearch.events import SessionStart, utc_now
    from deepresearch.runtime.ids import IdSpace
    from deepresearch.sessions.records import SessionRecord, StoredEvent
    from deepresearch.sessions.sqlite import SqliteSessionStore

    store = SqliteSessionStore(tmp_path / "s.sqlite")
    await store.open()
    try:
        ann, bob = IdSpace("a" * 16), IdSpace("b" * 16)
        for session_id, owner in (("legacy-chosen-01", "a" * 16), ("both-chosen-02", "a" * 16)):
            await store.create(SessionRecord(session_id, "q", "completed", utc_now(), owner))
        await store.create(
            SessionRecord(ann.own("both-chosen-02"), "q", "completed", utc_now(), "a" * 16)
        )
        assert await ann.resolve(store, "legacy-chosen-01") == "legacy-chosen-01"
        assert await bob.resolve(store, "legacy-chosen-01") == "legacy-chosen-01:" + "b" * 16
        assert await ann.resolve(store, "both-chosen-02") == "both-chosen-02:" + "a" * 16
        assert await ann.resolve(store, "new-chosen-03") == "new-chosen-03:" + "a" * 16
        assert await IdSpace(None).resolve(store, "legacy-chosen-01") == "legacy-chosen-01"
    finally:
        await store.close()

    stored_id = ann.own("shown-chosen-04")
    start = SessionStart(session_id=stored_id, question="q", content=stored_id)
    event = StoredEvent(1, "session_start", start.model_dump_json())
    shown = ann.event(event)
    assert '"session_id":"shown-chosen-04"' in shown.data
    assert '"content":"shown-chosen-04"' in shown.data and "a" * 16 not in shown.data
    assert bob.event(event) is event and IdSpace(None).event(event) is event
    assert ann.text(f"no session {stored_id}") == "no session shown-chosen-04"

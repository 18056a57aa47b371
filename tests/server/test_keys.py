"""Keys with names and roles: a user sees only its own sessions, an admin all of them;
keys from a file or the variable; rate limits; an audit line per session."""

from __future__ import annotations

import logging
from pathlib import Path

import httpx
import pytest

from deepresearch.errors import ConfigurationError
from deepresearch.server.auth import load_keyring
from tests.server.conftest import MakeSettings
from tests.server.hardened import hardened_app
from tests.support import collect

KEYS = """
[[keys]]
name = "ann"
role = "user"
key = "ann-secret-key"

[[keys]]
name = "bob"
role = "user"
sha256 = "{bob_digest}"

[[keys]]
name = "ops"
role = "admin"
key = "ops-secret-key"
"""
ANN = {"Authorization": "Bearer ann-secret-key"}
BOB = {"Authorization": "Bearer bob-secret-key"}
OPS = {"Authorization": "Bearer ops-secret-key"}
VAR = {"Authorization": "Bearer variable-key-1"}


def keys_file(folder: Path) -> Path:
    import hashlib

    path = folder / "keys.toml"
    digest = hashlib.sha256(b"bob-secret-key").hexdigest()
    path.write_text(KEYS.replace("{bob_digest}", digest))
    return path


async def test_every_route_is_scoped_to_the_key_and_an_admin_sees_all(
    make_settings: MakeSettings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="deepresearch.audit")
    settings = make_settings(keys_file=keys_file(tmp_path), api_keys=["variable-key-1"])
    async with hardened_app(settings) as url, httpx.AsyncClient(base_url=url) as client:
        body = {"question": "tok-private [sim:slow=50] [sim:rounds=3]", "on_disconnect": "continue"}
        first = await collect(client, "POST", "/chat/stream", json=body, headers=ANN, limit=2)
        sid = first.events[0].data["session_id"]
        mine = (await client.post("/chat", json={"question": "tok-b"}, headers=BOB)).json()
        assert mine["status"] == "completed"
        theirs = (await client.post("/chat", json={"question": "tok-v"}, headers=VAR)).json()
        assert theirs["status"] == "completed"

        # Bob: list, read, events, cancel: Ann's session does not exist for him.
        listing = (await client.get("/sessions", headers=BOB)).json()
        assert set(listing["active_sessions"]) == {mine["session_id"]}
        assert (await client.get(f"/sessions/{sid}", headers=BOB)).status_code == 404
        assert (await client.get(f"/sessions/{sid}/events", headers=BOB)).status_code == 404
        assert (await client.delete(f"/sessions/{sid}", headers=BOB)).status_code == 404
        assert (await client.get("/metrics", headers=BOB)).status_code == 403
        assert (await client.get("/metrics", headers=VAR)).status_code == 403
        # Ann sees hers only.
        assert set((await client.get("/sessions", headers=ANN)).json()["active_sessions"]) == {sid}
        # The admin sees everyone's, may read and cancel them, and reads the metrics.
        every = (await client.get("/sessions", headers=OPS)).json()
        assert set(every["active_sessions"]) == {sid, mine["session_id"], theirs["session_id"]}
        assert (await client.get(f"/sessions/{mine['session_id']}", headers=OPS)).is_success
        assert (await client.get("/metrics", headers=OPS)).status_code == 200
        cancelled = await client.delete(f"/sessions/{sid}", headers=OPS)
        assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
        # A wrong key, a key as another scheme: 401.
        for bad in ("Bearer nope-nope-nope", "Basic ann-secret-key", "ann-secret-key"):
            refused = await client.get("/sessions", headers={"Authorization": bad})
            assert refused.status_code == 401

    audit = [r.getMessage() for r in caplog.records if r.name == "deepresearch.audit"]
    assert any("ann" in line and sid in line and "started" in line for line in audit)
    assert any("ops" in line and sid in line and "cancelled" in line for line in audit)
    assert all("tok-private" not in line and "secret" not in line for line in audit)


async def test_a_taken_session_id_says_nothing_of_it_to_another_key(
    make_settings: MakeSettings, tmp_path: Path
) -> None:
    # The owner's own id asks a follow-up there (a new session); for another key the id
    # is not in use: it names that key's new session (tests/server/test_id_namespaces.py).
    settings = make_settings(keys_file=keys_file(tmp_path))
    async with hardened_app(settings) as url, httpx.AsyncClient(base_url=url) as client:
        body = {"question": "tok-id", "session_id": "chosen-session-01"}
        assert (await client.post("/chat", json=body, headers=ANN)).status_code == 200
        own = await client.post("/chat", json=body, headers=ANN)
        other = await client.post("/chat", json={**body, "question": "tok-other"}, headers=BOB)
        assert own.status_code == 200 and own.json()["session_id"] != "chosen-session-01"
        assert other.status_code == 200 and other.json()["session_id"] == "chosen-session-01"
        assert "tok-id" not in other.text
        bobs = (await client.get("/sessions/chosen-session-01", headers=BOB)).json()
        assert (bobs["question"], bobs["turn"]) == ("tok-other", 1)


async def test_a_key_past_its_rate_gets_429_with_retry_after(
    make_settings: MakeSettings, tmp_path: Path
) -> None:
    settings = make_settings(keys_file=keys_file(tmp_path), rate_per_minute=3)
    async with hardened_app(settings) as url, httpx.AsyncClient(base_url=url) as client:
        codes = [(await client.get("/sessions", headers=ANN)).status_code for _ in range(4)]
        assert codes == [200, 200, 200, 429]
        limited = await client.get("/sessions", headers=ANN)
        assert limited.status_code == 429 and int(limited.headers["Retry-After"]) >= 1
        assert (await client.get("/sessions", headers=BOB)).status_code == 200  # its own bucket


def test_a_bad_keys_file_stops_start_up_naming_the_setting(tmp_path: Path) -> None:
    cases = {
        "missing.toml": None,
        "bad.toml": "[[keys]\n",
        "role.toml": '[[keys]]\nname = "x"\nrole = "root"\nkey = "long-enough-key"\n',
        "short.toml": '[[keys]]\nname = "x"\nkey = "short"\n',
        "twice.toml": '[[keys]]\nname = "x"\nkey = "same-key-here"\n'
        '[[keys]]\nname = "y"\nkey = "same-key-here"\n',
    }
    for name, text in cases.items():
        path = tmp_path / name
        if text is not None:
            path.write_text(text)
        with pytest.raises(ConfigurationError) as caught:
            load_keyring([], path)
        assert "DEEPRESEARCH_KEYS_FILE" in str(caught.value), name
        assert "\n" not in str(caught.value)


def test_keys_are_found_whichever_way_they_are_given(tmp_path: Path) -> None:
    ring = load_keyring(["variable-key-1"], keys_file(tmp_path))
    assert len(ring) == 4
    found = {key: ring.identify(key) for key in ("ann-secret-key", "bob-secret-key")}
    assert {k: (p.name, p.role) for k, p in found.items() if p} == {
        "ann-secret-key": ("ann", "user"),
        "bob-secret-key": ("bob", "user"),
    }
    admin = ring.identify("ops-secret-key")
    assert admin is not None and admin.is_admin and admin.scope is None
    user = ring.identify("variable-key-1")
    assert user is not None and user.role == "user" and user.scope == user.owner
    assert ring.identify("ann-secret-ke") is None and ring.identify("") is None


async def test_a_key_past_its_queue_quota_gets_429_others_still_queue(
    make_settings: MakeSettings, tmp_path: Path
) -> None:
    settings = make_settings(
        keys_file=keys_file(tmp_path), max_concurrent=1, max_queue=10, max_queued_per_key=1
    )
    async with hardened_app(settings) as url, httpx.AsyncClient(base_url=url) as client:
        hang = {"question": "tok-hold [sim:hang]", "on_disconnect": "continue"}
        running = await collect(client, "POST", "/chat/stream", json=hang, headers=ANN, limit=2)
        waiting = await collect(client, "POST", "/chat/stream", json=hang, headers=ANN, limit=2)
        assert running.types == ["session_start", "init"]
        assert waiting.types == ["session_start", "queued"]
        refused = await client.post("/chat/stream", json=hang, headers=ANN)
        assert refused.status_code == 429 and int(refused.headers["Retry-After"]) >= 1
        bobs = await collect(client, "POST", "/chat/stream", json=hang, headers=BOB, limit=2)
        assert bobs.types == ["session_start", "queued"]
        # Bob has nothing running: his session is next, ahead of Ann's second.
        assert bobs.events[1].data["position"] == 1
        for stream in (running, waiting, bobs):
            sid = stream.events[0].data["session_id"]
            assert (await client.delete(f"/sessions/{sid}", headers=OPS)).status_code == 200


async def test_conversations_and_citations_are_scoped_to_the_key_and_an_admin_sees_all(
    make_settings: MakeSettings, tmp_path: Path
) -> None:
    settings = make_settings(keys_file=keys_file(tmp_path))
    async with hardened_app(settings) as url, httpx.AsyncClient(base_url=url) as client:
        asked = {"question": "tok-ann how is asthma treated?"}
        ann = (await client.post("/chat", json=asked, headers=ANN)).json()
        asked = {"question": "tok-bob how is diabetes treated?"}
        bob = (await client.post("/chat", json=asked, headers=BOB)).json()
        assert ann["status"] == bob["status"] == "completed"
        assert ann["citations"] and bob["citations"]
        ann_id, bob_id = ann["session_id"], bob["session_id"]

        # Conversations: each user lists and opens only their own; the admin, all.
        def ids(listing: httpx.Response) -> set[str]:
            return {c["conversation_id"] for c in listing.json()["conversations"]}

        assert ids(await client.get("/conversations", headers=ANN)) == {ann_id}
        assert ids(await client.get("/conversations", headers=BOB)) == {bob_id}
        assert ids(await client.get("/conversations", headers=OPS)) == {ann_id, bob_id}
        assert (await client.get(f"/conversations/{ann_id}", headers=BOB)).status_code == 404
        assert (await client.get(f"/conversations/{ann_id}", headers=OPS)).is_success
        # The note's routes, the same way.
        listed = (await client.get("/api/sessions", headers=BOB)).json()["sessions"]
        assert {s["session_id"] for s in listed} == {bob_id}
        assert (await client.get(f"/api/sessions/{ann_id}", headers=BOB)).status_code == 404
        # Citations: a bare number is the caller's own newest answer; another's session, 404.
        own = (await client.get("/citation/1", headers=ANN)).json()
        assert own["session_id"] == ann_id
        assert (await client.get("/citation/1", headers=BOB)).json()["session_id"] == bob_id
        assert (await client.get(f"/citation/{ann_id}:1", headers=BOB)).status_code == 404
        assert (await client.get(f"/citation/{ann_id}:1", headers=OPS)).is_success
        # Another key's conversation id starts Bob's own conversation and shows nothing of it.
        follow = await client.post(
            "/chat", json={"question": "and then?", "session_id": ann_id}, headers=BOB
        )
        assert follow.status_code == 200 and "asthma" not in follow.text
        assert len((await client.get(f"/conversations/{ann_id}", headers=ANN)).json()["turns"]) == 1

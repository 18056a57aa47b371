"""The behaviour every ``SessionStore`` backend must have.

A backend's test module subclasses ``StoreConformance`` and provides a
``store`` fixture (an opened store) and a ``reopen`` fixture (a callable that
closes it and opens a new store on the same data, as a restart would).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import pytest

from deepresearch.errors import SessionConflict
from deepresearch.sessions import SessionChanges, SessionRecord, SessionStore, StoredEvent

T0 = datetime(2026, 1, 1, tzinfo=UTC)

Reopen = Callable[[], Awaitable[SessionStore]]


def record(session_id: str, minutes: int = 0, **fields: object) -> SessionRecord:
    return SessionRecord(
        id=session_id,
        question=f"question of {session_id}",
        status=fields.pop("status", "queued"),  # type: ignore[arg-type]
        created_at=T0 + timedelta(minutes=minutes),
        **fields,  # type: ignore[arg-type]
    )


def events(first: int, last: int, kind: str = "thinking") -> list[StoredEvent]:
    return [StoredEvent(seq, kind, f'{{"seq": {seq}}}') for seq in range(first, last + 1)]


class StoreConformance:
    async def test_create_and_get_round_trip(self, store: SessionStore) -> None:
        original = record("s-1", owner="abc", on_disconnect="continue")
        await store.create(original)
        assert await store.get("s-1") == original
        assert await store.get("missing") is None

    async def test_the_requests_generation_settings_are_kept(
        self, store: SessionStore, reopen: Reopen
    ) -> None:
        chosen = {"temperature": 0.2, "max_tokens": 512}
        await store.create(record("s-1", generation=chosen))
        await store.create(record("s-2", minutes=1))
        again = await reopen()
        first, second = await again.get("s-1"), await again.get("s-2")
        assert first is not None and first.generation == chosen
        assert second is not None and second.generation == {}
        [unfinished] = [r for r in await again.unfinished() if r.id == "s-1"]
        assert unfinished.generation == chosen

    async def test_duplicate_id_is_a_conflict(self, store: SessionStore) -> None:
        await store.create(record("s-1"))
        with pytest.raises(SessionConflict):
            await store.create(record("s-1"))

    async def test_events_keep_order_and_resume_after_a_sequence(self, store: SessionStore) -> None:
        await store.create(record("s-1"))
        await store.append("s-1", events(1, 3))
        await store.append("s-1", events(4, 6))
        assert [e.seq for e in await store.events("s-1")] == [1, 2, 3, 4, 5, 6]
        assert [e.seq for e in await store.events("s-1", after=3)] == [4, 5, 6]
        assert await store.events("s-1", after=6) == []
        stored = await store.get("s-1")
        assert stored is not None and stored.last_seq == 6

    async def test_events_are_read_a_page_at_a_time(self, store: SessionStore) -> None:
        await store.create(record("s-1"))
        await store.append("s-1", events(1, 12))
        assert [e.seq for e in await store.events("s-1", 0, limit=5)] == [1, 2, 3, 4, 5]
        assert [e.seq for e in await store.events("s-1", 10, limit=5)] == [11, 12]
        assert [e.seq for e in await store.events("s-1", 4, None)] == list(range(5, 13))

    async def test_concurrent_appends_from_many_sessions_all_land(
        self, store: SessionStore
    ) -> None:
        ids = [f"s-{n}" for n in range(20)]
        for session_id in ids:
            await store.create(record(session_id))

        async def write(session_id: str) -> None:
            for seq in range(1, 11):
                await store.append(session_id, [StoredEvent(seq, "thinking", f'"{session_id}"')])

        await asyncio.gather(*(write(session_id) for session_id in ids))
        for session_id in ids:
            got = await store.events(session_id)
            assert [e.seq for e in got] == list(range(1, 11))
            assert all(e.data == f'"{session_id}"' for e in got)

    async def test_append_with_changes_updates_the_record(self, store: SessionStore) -> None:
        await store.create(record("s-1"))
        ended = T0 + timedelta(minutes=5)
        citations = [{"id": "1", "source_id": "pubmed:1", "url": "u", "preview": "p"}]
        await store.append(
            "s-1",
            events(1, 1, "completed"),
            SessionChanges(status="completed", ended_at=ended, answer="A [1]", citations=citations),
        )
        stored = await store.get("s-1")
        assert stored is not None
        assert (stored.status, stored.ended_at, stored.answer) == ("completed", ended, "A [1]")
        assert stored.citations == citations
        await store.update("s-1", SessionChanges(error="noted"))
        stored = await store.get("s-1")
        assert stored is not None and stored.status == "completed" and stored.error == "noted"

    async def test_list_is_newest_first_paged_and_filtered(self, store: SessionStore) -> None:
        for n in range(5):
            status = "completed" if n % 2 == 0 else "failed"
            await store.create(record(f"s-{n}", minutes=n, status=status, owner=f"o{n % 2}"))
        page, total = await store.list_sessions(limit=2)
        assert [r.id for r in page] == ["s-4", "s-3"] and total == 5
        page, total = await store.list_sessions(limit=2, offset=4)
        assert [r.id for r in page] == ["s-0"] and total == 5
        page, total = await store.list_sessions(limit=10, status="failed")
        assert [r.id for r in page] == ["s-3", "s-1"] and total == 2
        page, total = await store.list_sessions(limit=10, owner="o0")
        assert [r.id for r in page] == ["s-4", "s-2", "s-0"] and total == 3

    async def test_status_changes_move_a_session_between_listings(
        self, store: SessionStore
    ) -> None:
        await store.create(record("mine", minutes=0, owner="o"))
        await store.create(record("theirs", minutes=1, owner="p"))
        await store.update("mine", SessionChanges(status="processing", started_at=T0))
        assert sorted(r.id for r in await store.unfinished()) == ["mine", "theirs"]
        await store.append("mine", events(1, 1, "completed"), SessionChanges(status="completed"))
        assert [r.id for r in await store.unfinished()] == ["theirs"]
        page, total = await store.list_sessions(limit=10, status="completed", owner="o")
        assert [r.id for r in page] == ["mine"] and total == 1
        page, total = await store.list_sessions(limit=10, status="completed", owner="p")
        assert page == [] and total == 0
        page, total = await store.list_sessions(limit=10, status="queued")
        assert [r.id for r in page] == ["theirs"] and total == 1
        page, total = await store.list_sessions(limit=10, status="processing")
        assert page == [] and total == 0

    async def test_unfinished_lists_queued_and_processing(self, store: SessionStore) -> None:
        await store.create(record("queued", status="queued"))
        await store.create(record("running", minutes=1, status="processing"))
        await store.create(record("done", minutes=2, status="completed"))
        assert sorted(r.id for r in await store.unfinished()) == ["queued", "running"]

    async def test_prune_by_age_and_count_keeps_unfinished(self, store: SessionStore) -> None:
        for n in range(6):
            await store.create(record(f"old-{n}", minutes=n, status="completed"))
            await store.append(f"old-{n}", events(1, 2))
        await store.create(record("running", minutes=0, status="processing"))
        removed = await store.prune(older_than=T0 + timedelta(minutes=2), keep=100)
        assert removed == 2  # old-0 and old-1; the running one is never pruned
        assert await store.get("old-0") is None and await store.events("old-0") == []
        assert await store.get("running") is not None
        removed = await store.prune(older_than=T0, keep=2)
        assert removed == 2  # old-2 and old-3: only the 2 newest finished ones stay
        remaining, total = await store.list_sessions(limit=10)
        assert total == 3
        assert {r.id for r in remaining} == {"old-5", "old-4", "running"}

    async def test_everything_survives_reopening(self, store: SessionStore, reopen: Reopen) -> None:
        await store.create(record("s-1", status="completed"))
        await store.append("s-1", events(1, 4))
        again = await reopen()
        stored = await again.get("s-1")
        assert stored is not None and stored.status == "completed"
        assert [e.seq for e in await again.events("s-1")] == [1, 2, 3, 4]

    async def test_a_bad_write_fails_its_caller_alone(self, store: SessionStore) -> None:
        await store.create(record("bad"))
        await store.create(record("good"))
        await store.append("bad", events(1, 2))
        outcomes = await asyncio.gather(
            store.append("bad", events(2, 3)),  # sequence 2 again: refused
            store.append("good", events(1, 3), SessionChanges(status="completed")),
            return_exceptions=True,
        )
        assert isinstance(outcomes[0], Exception) and outcomes[1] is None
        assert [e.seq for e in await store.events("bad")] == [1, 2]  # nothing half-written
        assert [e.seq for e in await store.events("good")] == [1, 2, 3]
        good = await store.get("good")
        assert good is not None and good.status == "completed"

    # -- conversations ------------------------------------------------------------------

    async def test_a_conversation_is_its_turns_in_order(self, store: SessionStore) -> None:
        first = record("c-1", owner="o", client="k")
        follow_up = record("c-1b", minutes=1, conversation_id="c-1", turn=2, owner="o")
        await store.create(first)
        await store.create(follow_up)
        await store.create(record("other", minutes=2))
        assert await store.conversation("c-1") == [first, follow_up]
        assert first.conversation == "c-1" and follow_up.conversation == "c-1"
        assert await store.conversation("other") == [await store.get("other")]
        assert await store.conversation("missing") == []

    async def test_conversations_are_listed_by_latest_question(self, store: SessionStore) -> None:
        await store.create(record("a", minutes=0, owner="o", status="completed", answer="A"))
        await store.create(record("b", minutes=1, owner="o", status="completed"))
        await store.create(
            record("a2", minutes=2, conversation_id="a", turn=2, owner="o", status="failed")
        )
        await store.create(record("x", minutes=3, owner="someone else"))
        listed, total = await store.list_conversations(limit=10, owner="o")
        assert total == 2
        assert [(c.id, c.turns, c.answered, c.status, c.title) for c in listed] == [
            ("a", 2, 1, "failed", "question of a"),
            ("b", 1, 0, "completed", "question of b"),
        ]
        assert listed[0].created_at == T0 and listed[0].updated_at == T0 + timedelta(minutes=2)
        assert listed[0].owner == "o"
        page, total = await store.list_conversations(limit=1, offset=1)
        assert [c.id for c in page] == ["a"] and total == 3

    async def test_latest_answered_is_scoped_to_owner_and_client(self, store: SessionStore) -> None:
        await store.create(record("mine-old", minutes=0, owner="o", client="k1"))
        await store.create(record("mine-new", minutes=1, owner="o", client="k2"))
        await store.create(record("theirs", minutes=2, owner="p", client="k1"))
        await store.create(record("unanswered", minutes=3, owner="o", client="k1"))
        for session_id in ("mine-old", "mine-new", "theirs"):
            await store.update(session_id, SessionChanges(answer=f"answer of {session_id}"))
        found = await store.latest_answered(owner="o", client=None)
        assert found is not None and found.id == "mine-new"
        found = await store.latest_answered(owner="o", client="k1")
        assert found is not None and found.id == "mine-old"
        found = await store.latest_answered(owner=None, client="k1")
        assert found is not None and found.id == "theirs"
        assert await store.latest_answered(owner="nobody", client=None) is None

    async def test_retention_deletes_whole_conversations(self, store: SessionStore) -> None:
        # An old first turn stays while its conversation has a recent question.
        await store.create(record("talk", minutes=0, status="completed"))
        await store.append("talk", events(1, 2))
        await store.create(
            record("talk-2", minutes=10, conversation_id="talk", turn=2, status="completed")
        )
        await store.create(record("old", minutes=1, status="completed"))
        await store.create(record("busy", minutes=0, status="completed"))
        await store.create(
            record("busy-2", minutes=2, conversation_id="busy", turn=2, status="processing")
        )
        removed = await store.prune(older_than=T0 + timedelta(minutes=5), keep=100)
        assert removed == 1 and await store.get("old") is None
        assert len(await store.conversation("talk")) == 2
        assert len(await store.conversation("busy")) == 2  # a turn is still running
        # Counting: the newest conversation (2 sessions) fits in keep=2, nothing else
        # finished does, and a conversation is never cut in half.
        removed = await store.prune(older_than=T0, keep=3)
        assert removed == 0
        removed = await store.prune(older_than=T0, keep=1)
        assert removed == 2
        assert await store.conversation("talk") == [] and await store.events("talk") == []
        assert len(await store.conversation("busy")) == 2

    async def test_retention_skips_a_conversation_busy_in_any_turn(
        self, store: SessionStore
    ) -> None:
        await store.create(record("a", minutes=5, status="processing"))
        await store.create(record("a2", minutes=6, conversation_id="a", turn=2, status="completed"))
        await store.create(record("d", minutes=4, status="processing"))
        await store.create(record("b", minutes=1, status="completed"))
        removed = await store.prune(older_than=T0 + timedelta(minutes=10), keep=100)
        assert removed == 1 and await store.get("b") is None
        for kept in ("a", "a2", "d"):
            assert await store.get(kept) is not None

    async def test_retention_of_many_conversations_takes_each_whole(
        self, store: SessionStore
    ) -> None:
        # More than one batch's worth (the SQLite store deletes in batches).
        for n in range(260):
            await store.create(record(f"c{n}", minutes=n, status="completed"))
            await store.create(
                record(f"c{n}-2", minutes=n, conversation_id=f"c{n}", turn=2, status="failed")
            )
        await store.create(record("live", minutes=0, status="processing"))
        removed = await store.prune(older_than=T0, keep=10)
        assert removed == 2 * 255  # the five newest conversations fill keep=10
        _, total = await store.list_sessions(limit=1)
        assert total == 11
        for n in range(255, 260):
            assert len(await store.conversation(f"c{n}")) == 2

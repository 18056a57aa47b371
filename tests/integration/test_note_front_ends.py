"""The note's two front ends, unmodified, over real streams from a real server: their
parsing rules (``note_front_ends.py``) replayed on the bytes as they arrive, with a
model (the simulator) and without one (the offline digest)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.integration.note_front_ends import Card, Commit, FrontEnd
from tests.support import Process, server, simulator, write_corpus

COMMITS: list[Commit] = ["c031775", "644adf5"]
# What the note's front ends POST (api.ts).
BODY = {"temperature": 0.85, "top_p": 0.95, "presence_penalty": 1.1, "max_tokens": 10000}


@pytest.fixture(scope="module", params=["model", "offline"])
def note_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Process]:
    folder = tmp_path_factory.mktemp(request.param)
    env = {"DEEPRESEARCH_CORPUS": str(write_corpus(folder / "corpus"))}
    if request.param == "offline":
        with server(folder / "data", **env) as process:
            yield process
        return
    with (
        simulator("--token-delay-ms", "1", "--chunk-chars", "3") as sim,
        server(folder / "data", DEEPRESEARCH_LLM_URL=sim.url, **env) as process,
    ):
        yield process


def replay(
    url: str, question: str, **extra: Any
) -> tuple[dict[Commit, FrontEnd], list[dict[str, Any]]]:
    """One real stream, fed chunk by chunk to both front ends; also the answer's own
    card after every event (to see what a person sees while it streams)."""
    front_ends = {commit: FrontEnd(commit) for commit in COMMITS}
    shown: list[dict[str, Any]] = []
    with httpx.stream(
        "POST", f"{url}/chat/stream", json={"question": question, **BODY, **extra}, timeout=60
    ) as response:
        assert response.status_code == 200
        for chunk in response.iter_text():
            for front_end in front_ends.values():
                front_end.feed(chunk)
            latest = front_ends["644adf5"].cards
            shown.append({"answer_cards": [c.content for c in latest if c.type == "final-answer"]})
    return front_ends, shown


def cards_of(front_end: FrontEnd, kind: str) -> list[Card]:
    return [card for card in front_end.cards if card.event_type == kind]


def test_every_step_keeps_its_card_and_the_answer_gets_its_own(note_server: Process) -> None:
    front_ends, shown = replay(note_server.url, "tok-note How is type 2 diabetes managed?")
    for commit, front_end in front_ends.items():
        answer_data = next(
            card.metadata["answer_data"]
            for card in front_end.cards
            if card.event_type == "final_answer"
        )
        answer = answer_data["answer"]
        # The tool call and its result keep their own cards (no chunk overwrote them).
        [call] = cards_of(front_end, "tool_call_start")
        [result] = cards_of(front_end, "tool_result")
        assert call.content.startswith("search: "), commit
        assert result.content.endswith("sources found") and result.metadata["result"], commit
        # Each round's reasoning is in the card its round opened.
        assert cards_of(front_end, "thinking"), commit
        assert all(card.content for card in cards_of(front_end, "thinking")), commit
        finals = [card for card in front_end.cards if card.type == "final-answer"]
        if commit == "644adf5":
            # The answer once, with its references.
            assert [card.content for card in finals] == [answer], commit
            assert finals[0].metadata["answer_data"]["citations"][0]["id"] == "1"
        else:
            # c031775 shows the streamed answer and the final one as two cards (it did
            # against the note's own server too).
            assert [card.content for card in finals] == [answer, answer], commit
    # While it streamed, the answer card only ever held a prefix of the answer (the
    # latest commit appends `content` unless `accumulated` is sent).
    for step in shown:
        for content in step["answer_cards"]:
            assert answer.startswith(content) or content == answer


def test_without_answer_generation_the_chunks_would_take_the_last_card(
    note_server: Process,
) -> None:
    """Why the event exists: the same stream minus ``answer_generation`` loses a card
    (the tool result offline; the last round's reasoning with a model)."""
    with httpx.stream(
        "POST",
        f"{note_server.url}/chat/stream",
        json={"question": "tok-why How is type 2 diabetes treated?", **BODY},
    ) as response:
        raw = response.read().decode()
    for commit in COMMITS:
        now, before = FrontEnd(commit), FrontEnd(commit)
        now.feed(raw)
        kept = [line for line in raw.split("\n") if "answer_generation" not in line]
        before.feed("\n".join(kept))
        answer_at = next(i for i, c in enumerate(now.cards) if c.type == "final-answer")
        lost = now.cards[answer_at - 1].event_type
        assert lost in {"tool_result", "thinking"}, commit
        assert len(cards_of(before, lost)) == len(cards_of(now, lost)) - 1, commit


def test_the_citation_panel_and_history_of_the_latest_commit(note_server: Process) -> None:
    with httpx.Client(base_url=note_server.url) as client:
        conversation = client.get("/api/sessions/new").json()["session_id"]
        front_ends, _ = replay(
            note_server.url, "tok-cite How is hypertension treated?", session_id=conversation
        )
        final = next(c for c in front_ends["644adf5"].cards if c.event_type == "final_answer")
        for citation in final.metadata["answer_data"]["citations"]:
            # CitationPanel: GET /citation/{citation.id} for the full text and title.
            panel = client.get(f"/citation/{citation['id']}").json()
            assert panel["full_content"] == citation["full_content"]
            assert panel["title"] == citation["title"]
        # (Self-contained: the offline digest answers each question on its own.)
        replay(note_server.url, "What is first-line for type 2 diabetes?", session_id=conversation)
        # SessionSidebar lists sessions with messages; selecting one loads its messages.
        listed = client.get("/api/sessions").json()["sessions"]
        mine = next(s for s in listed if s["session_id"] == conversation)
        assert mine["message_count"] == 4
        messages = client.get(f"/api/sessions/{conversation}").json()["messages"]
        assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant"]
        assert messages[1]["content"] == final.metadata["answer_data"]["answer"]

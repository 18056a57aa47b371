"""The web page at ``/`` in a real headless Chromium against a real server and the simulator."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect

from tests.support import Process, server, write_corpus
from tests.web.proxy import cutting_proxy

LONG = 30_000  # ms: how long a research step may take to show up


def ask(page: Page, question: str) -> None:
    """Type the question and press Enter, as a keyboard user would."""
    page.locator("#question").focus()
    page.keyboard.type(question)
    page.keyboard.press("Enter")


def test_ask_read_the_cited_answer_and_follow_up(
    page: Page, web_server: Process, artifacts: Path
) -> None:
    page.goto(web_server.url + "/")
    expect(page.locator("#status-strip")).to_contain_text("slots busy", timeout=LONG)
    ask(page, "tok-first How is type 2 diabetes managed? [sim:rounds=2]")
    first = page.locator(".turn").nth(0)
    expect(first.locator(".outcome")).to_have_text("Research complete", timeout=LONG)
    expect(first.locator("details.round")).to_have_count(3)  # two searches, then the answer
    expect(first.locator(".answer")).to_contain_text("The answer for tok-first")
    expect(first.locator(".refs li")).to_have_count(1)
    link = first.locator(".refs li a")
    expect(link).to_have_attribute("href", re.compile(r"^https://pubmed\.ncbi\.nlm\.nih\.gov/"))
    expect(link).to_have_text("PubMed")

    # The citation opens the cited passage; the keyboard closes it again.
    first.locator("button.cite").first.focus()
    page.keyboard.press("Enter")
    dialog = page.locator("#source-dialog")
    expect(dialog).to_be_visible()
    expect(dialog.locator("#source-text")).to_contain_text("first-line")
    page.screenshot(path=artifacts / "citation.png")
    page.keyboard.press("Escape")
    expect(dialog).to_be_hidden()

    # A follow-up in the same conversation: the model sees the first question (the
    # simulator answers about the first tok- token of its prompt).
    ask(page, "What about in older adults?")
    second = page.locator(".turn").nth(1)
    expect(second.locator(".outcome")).to_have_text("Research complete", timeout=LONG)
    expect(second.locator(".answer")).to_contain_text("tok-first")
    conversations = page.locator("#conversation-list button")
    expect(conversations.first).to_contain_text("2 questions", timeout=LONG)
    expect(conversations.first).to_have_attribute("aria-current", "true")
    page.screenshot(path=artifacts / "conversation.png", full_page=True)

    # A phone's width: nothing runs off the side, and the question box is reachable.
    page.set_viewport_size({"width": 390, "height": 844})
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    expect(page.locator("#question")).to_be_visible()
    page.screenshot(path=artifacts / "phone.png")

    # The conversation reopens from its stored events in a fresh page.
    fresh = page.context.new_page()
    fresh.goto(web_server.url + "/")
    fresh.locator("#conversation-list button").first.click()
    expect(fresh.locator(".turn")).to_have_count(2, timeout=LONG)
    expect(fresh.locator(".turn .outcome")).to_have_text(["Research complete"] * 2)
    expect(fresh.locator(".turn").nth(1).locator(".answer")).to_contain_text("tok-first")
    expect(fresh.locator(".turn").nth(0).locator("details.round")).to_have_count(3)


def test_a_reload_mid_run_picks_the_stream_up_again(page: Page, web_server: Process) -> None:
    page.goto(web_server.url + "/")
    ask(page, "tok-reload What lowers blood pressure? [sim:rounds=3] [sim:slow=40]")
    turn = page.locator(".turn").first
    expect(turn.locator("details.round").nth(1)).to_be_visible(timeout=LONG)
    expect(page).to_have_url(re.compile(r"#c="))
    page.reload()
    turn = page.locator(".turn").first
    expect(turn.locator(".outcome")).to_have_text("Research complete", timeout=LONG)
    expect(turn.locator("details.round")).to_have_count(4)  # every round exactly once
    expect(turn.locator(".answer")).to_have_count(1)
    expect(turn.locator(".answer")).to_contain_text("The answer for tok-reload")
    expect(page.locator(".turn")).to_have_count(1)


def test_cancel_stops_the_research(page: Page, web_server: Process) -> None:
    page.goto(web_server.url + "/")
    ask(page, "tok-stop A question that never ends [sim:hang]")
    cancel = page.locator("#cancel")
    expect(cancel).to_be_visible(timeout=LONG)
    expect(page.locator(".turn details.round")).to_have_count(1, timeout=LONG)
    cancel.click()
    outcome = page.locator(".turn .outcome")
    expect(outcome).to_have_text(re.compile(r"^Cancelled: cancelled by the client"), timeout=LONG)
    expect(cancel).to_be_hidden()
    expect(page.locator("#ask")).to_be_enabled()
    health = httpx.get(f"{web_server.url}/health").json()
    assert (health["active_sessions"], health["queued_sessions"]) == (0, 0)


def test_a_waiting_question_shows_its_place_in_the_queue(page: Page, web_server: Process) -> None:
    """Every slot busy (3 hanging sessions), the page's question waits and says where."""
    with httpx.Client(base_url=web_server.url) as client:
        ids = []
        for n in range(3):
            body = {"question": f"tok-busy{n} [sim:hang]", "on_disconnect": "continue"}
            with client.stream("POST", "/chat/stream", json=body) as response:
                first = next(line for line in response.iter_lines() if line.startswith("data: "))
                ids.append(json.loads(first.removeprefix("data: "))["session_id"])
        try:
            page.goto(web_server.url + "/")
            ask(page, "tok-queued Which inhalers help asthma?")
            expect(page.locator(".turn .queue")).to_have_text(
                "Waiting for a free research slot: position 1 in the queue", timeout=LONG
            )
            expect(page.locator("#status-strip")).to_contain_text("3/3 slots busy", timeout=LONG)
        finally:
            for session_id in ids:
                client.delete(f"/sessions/{session_id}")
        expect(page.locator(".turn .outcome")).to_have_text("Research complete", timeout=LONG)


def test_a_server_with_keys_asks_for_one_once(
    browser: Browser, tmp_path_factory: pytest.TempPathFactory
) -> None:
    folder = tmp_path_factory.mktemp("keys")
    corpus = write_corpus(folder / "corpus")
    with server(
        folder / "data", DEEPRESEARCH_CORPUS=str(corpus), DEEPRESEARCH_API_KEYS="k-secret"
    ) as keyed:
        context = browser.new_context()
        page = context.new_page()
        page.goto(keyed.url + "/")
        key = page.locator("#api-key")
        expect(key).to_be_focused(timeout=LONG)
        key.fill("wrong")
        page.keyboard.press("Enter")
        expect(page.locator("#key-error")).to_have_text("That key was not accepted.", timeout=LONG)
        key.fill("k-secret")
        page.keyboard.press("Enter")
        expect(page.locator("#key-form-area")).to_be_hidden()
        ask(page, "How is hypertension treated?")  # no model: the offline digest answers
        expect(page.locator(".turn .outcome")).to_have_text("Research complete", timeout=LONG)
        expect(page.locator(".turn .answer")).to_contain_text("Extractive evidence digest")
        page.reload()  # the key is kept in this browser
        expect(page.locator("#conversation-list button")).to_have_count(1, timeout=LONG)
        expect(page.locator("#key-form-area")).to_be_hidden()
        context.close()


def test_a_dropped_connection_reconnects_with_last_event_id(
    page: Page, web_server: Process
) -> None:
    port = int(web_server.url.rsplit(":", 1)[1])
    # The stream's connection drops right after round 2 begins.
    with cutting_proxy(port, b'"round":2') as proxy:
        page.goto(f"http://127.0.0.1:{proxy.port}/")
        ask(page, "tok-flaky What lowers cholesterol? [sim:rounds=3] [sim:slow=20]")
        turn = page.locator(".turn").first
        expect(turn.locator(".outcome")).to_have_text("Research complete", timeout=LONG)
        assert proxy.cut
        resumed = [r for r in proxy.requests if b"/events" in r and b"last-event-id:" in r.lower()]
        assert resumed, "the page did not resume with Last-Event-ID"
        expect(turn.locator("details.round")).to_have_count(4)  # every round exactly once
        expect(turn.locator(".answer")).to_contain_text("The answer for tok-flaky")

"""A real server and the LLM simulator as processes, and Debian's Chromium driven by Playwright."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from tests.support import ROOT, Process, server, simulator, write_corpus

CHROMIUM = "/usr/bin/chromium"
# docs/field-notes.md: Debian's Chromium under Playwright, never `playwright install`.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ARTIFACTS = ROOT / ".artifacts" / "web"


@pytest.fixture(scope="module")
def web_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    folder = tmp_path_factory.mktemp("web")
    corpus = write_corpus(folder / "corpus")
    with (
        simulator("--token-delay-ms", "2") as sim,
        server(
            folder / "data",
            DEEPRESEARCH_LLM_URL=sim.url,
            DEEPRESEARCH_CORPUS=str(corpus),
            DEEPRESEARCH_LLM_RETRIES="0",
            DEEPRESEARCH_MAX_CONCURRENT="3",  # a fixed number of slots to fill
        ) as process,
    ):
        yield process


# Playwright's expect() waits 5 s unless told: too little for a page, a server and a
# simulator sharing a loaded machine's two cores. A check that fails still fails.
EXPECT_TIMEOUT_MS = 30_000


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    expect.set_options(timeout=EXPECT_TIMEOUT_MS)
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    opened = context.new_page()
    errors: list[str] = []
    opened.on("pageerror", lambda error: errors.append(str(error)))
    yield opened
    context.close()
    assert errors == [], f"the page raised: {errors}"


@pytest.fixture
def artifacts() -> Path:
    """Screenshots land here (gitignored), for a person to look at."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS

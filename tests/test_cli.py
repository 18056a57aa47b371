"""The `deepresearch` command as a person runs it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from rich.console import Console
from rich.text import Text

from deepresearch.render import link
from tests.support import simulator, write_corpus


def deepresearch(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("DEEPRESEARCH_")}
    environment.update(env)
    environment["COLUMNS"] = "120"
    environment.setdefault("DEEPRESEARCH_SEARCH", "local")  # no test talks to the internet
    return subprocess.run(
        [sys.executable, "-m", "deepresearch.cli", *args],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_a_bad_setting_stops_the_server_naming_the_variable(tmp_path: Path) -> None:
    result = deepresearch("serve", cwd=tmp_path, DEEPRESEARCH_MAX_CONCURRENT="zero")
    assert result.returncode == 2
    assert "DEEPRESEARCH_MAX_CONCURRENT" in result.stderr
    result = deepresearch("serve", cwd=tmp_path, DEEPRESEARCH_LLM_URL="ftp://x")
    assert result.returncode == 2 and "DEEPRESEARCH_LLM_URL" in result.stderr
    result = deepresearch("serve", cwd=tmp_path, DEEPRESEARCH_QUEUE_TIMEOUT="-1")
    assert result.returncode == 2 and "DEEPRESEARCH_QUEUE_TIMEOUT" in result.stderr


def test_bad_flags_are_named(tmp_path: Path) -> None:
    result = deepresearch("ask", "q", "--temperature", "7", cwd=tmp_path)
    assert result.returncode == 2 and "--temperature" in result.stderr
    result = deepresearch("ask", "   ", cwd=tmp_path)
    assert result.returncode == 2 and "QUESTION" in result.stderr
    result = deepresearch("index", str(tmp_path / "missing.jsonl"), cwd=tmp_path)
    assert result.returncode == 2 and "missing.jsonl" in result.stderr


def test_ask_offline_renders_the_digest_with_its_sources(tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path / "corpus")
    result = deepresearch(
        "ask",
        "What is the first-line therapy for type 2 diabetes?",
        cwd=tmp_path,
        DEEPRESEARCH_CORPUS=str(corpus),
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "round 1" in out and "search: What is the first-line therapy" in out
    assert "Extractive evidence digest" in out
    assert "Metformin is the first-line therapy" in out
    assert "Sources" in out and "pubmed:1000" in out
    assert "evidence digest complete" in out
    # The first ask built the index and said so; the next finds it up to date.
    assert "index ready: 3 documents (3 added)" in out
    again = deepresearch(
        "ask", "How is hypertension treated?", cwd=tmp_path, DEEPRESEARCH_CORPUS=str(corpus)
    )
    assert again.returncode == 0, again.stderr
    assert "index ready" not in again.stdout and "Hypertension treatment" in again.stdout


def test_long_urls_stay_whole_links_when_wrapped() -> None:
    url = "https://www.niddk.nih.gov/health-information/" + "a-very-long-path/" * 8
    console = Console(width=40, force_terminal=True, color_system="standard")
    with console.capture() as captured:
        console.print(Text("    ") + link(url), overflow="fold")
    printed = captured.get()
    # Every wrapped piece carries the whole address as its hyperlink target.
    pieces = [line for line in printed.splitlines() if line.strip()]
    assert len(pieces) > 1
    assert all("\x1b]8;id=" in line and url in line for line in pieces)


def test_ask_with_a_model_shows_rounds_tools_and_the_cited_answer(tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path / "corpus")
    with simulator() as sim:
        result = deepresearch(
            "ask",
            "tok-cli how is diabetes managed?",
            cwd=tmp_path,
            DEEPRESEARCH_CORPUS=str(corpus),
            DEEPRESEARCH_LLM_URL=sim.url,
        )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "round 1" in out and "round 2" in out
    assert "I should search for evidence about tok-cli" in out
    assert "→ search: how is diabetes managed?" in out
    assert "The answer for tok-cli is supported by the evidence [1]." in out
    assert "[1] Metformin in type 2 diabetes  pubmed:1000" in out


def test_index_builds_then_skips_unchanged_files(tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path / "corpus")
    first = deepresearch("index", str(corpus.parent), cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "3 documents" in first.stdout and "3 added" in first.stdout
    again = deepresearch("index", str(corpus), cwd=tmp_path)
    assert "0 added" in again.stdout and "1 unchanged files skipped" in again.stdout
    assert (tmp_path / ".deepresearch" / "index.sqlite").exists()

"""`deepresearch worker` refuses to start without a cluster, and names the setting;
bad distributed settings are named too; `ask` runs its question here even where the
servers are pointed at a cluster."""

from __future__ import annotations

from pathlib import Path

from tests.support import write_corpus
from tests.test_cli import deepresearch


def test_a_worker_needs_the_redis_url(tmp_path: Path) -> None:
    result = deepresearch("worker", cwd=tmp_path)
    assert result.returncode == 2
    assert "DEEPRESEARCH_REDIS_URL" in result.stderr


def test_bad_distributed_settings_are_named(tmp_path: Path) -> None:
    result = deepresearch(
        "worker",
        cwd=tmp_path,
        DEEPRESEARCH_REDIS_URL="redis://127.0.0.1:1/0",
        DEEPRESEARCH_RECOVERY_SECONDS="1",
    )
    assert result.returncode == 2 and "DEEPRESEARCH_RECOVERY_SECONDS" in result.stderr
    result = deepresearch(
        "serve",
        cwd=tmp_path,
        DEEPRESEARCH_REDIS_URL="redis://127.0.0.1:1/0",
        DEEPRESEARCH_REDIS_PREFIX="a b",
    )
    assert result.returncode == 2 and "DEEPRESEARCH_REDIS_PREFIX" in result.stderr


def test_ask_answers_here_even_with_a_cluster_configured(tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path / "corpus")
    result = deepresearch(
        "ask",
        "What is the first-line therapy for type 2 diabetes?",
        cwd=tmp_path,
        DEEPRESEARCH_CORPUS=str(corpus),
        DEEPRESEARCH_REDIS_URL="redis://127.0.0.1:1/0",  # nothing listens there
    )
    assert result.returncode == 0, result.stderr
    assert "Metformin" in result.stdout


def test_an_unreachable_redis_is_named_without_its_password(tmp_path: Path) -> None:
    result = deepresearch(
        "worker", cwd=tmp_path, DEEPRESEARCH_REDIS_URL="redis://app:s3cret@127.0.0.1:1/0"
    )
    assert result.returncode == 2
    assert "cannot reach Redis at redis://app:***@127.0.0.1:1/0" in result.stderr
    assert "s3cret" not in result.stderr

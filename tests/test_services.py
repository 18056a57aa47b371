"""Choosing the search backends, the tools a server offers, and a process's role."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from deepresearch.config import Settings
from deepresearch.errors import ConfigurationError
from deepresearch.search import EvidenceIndex
from deepresearch.services import IndexState, choose_search_backends, open_services, role_for
from tests.support import write_corpus


def settings(tmp_path: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {"data_dir": tmp_path, "corpus": [write_corpus(tmp_path / "c")]}
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


async def choose(tmp_path: Path, answer: int, **overrides: object) -> list[str]:
    asked: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        asked.append(request.url.host)
        return httpx.Response(answer, json={"einforesult": {}, "resultList": {"result": []}})

    index = EvidenceIndex(tmp_path / "index.sqlite")
    try:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            chosen = await choose_search_backends(
                settings(tmp_path, **overrides), index, IndexState(), client
            )
    finally:
        index.close()
    return [backend.name for backend in chosen] + [f"asked:{host}" for host in sorted(asked)]


async def test_auto_adds_live_sources_that_answer_the_probe(tmp_path: Path) -> None:
    names = await choose(tmp_path, 200, search=["auto"])
    assert names[:3] == ["local", "pubmed", "europepmc"]
    assert "asked:eutils.ncbi.nlm.nih.gov" in names and "asked:www.ebi.ac.uk" in names


async def test_auto_leaves_out_live_sources_that_fail_the_probe(tmp_path: Path) -> None:
    names = await choose(tmp_path, 503, search=["auto"])
    assert [n for n in names if not n.startswith("asked:")] == ["local"]


async def test_named_backends_are_used_without_probing(tmp_path: Path) -> None:
    assert await choose(tmp_path, 200, search=["europepmc", "local"]) == ["local", "europepmc"]


async def test_the_server_offers_the_trained_tool_names(tmp_path: Path) -> None:
    async with open_services(settings(tmp_path, search=["local"])) as services:
        assert set(services.tools) == {
            "search",
            "google_scholar",
            "visit",
            "PythonInterpreter",
            "parse_file",
        }


async def test_a_cluster_role_needs_the_redis_url(tmp_path: Path) -> None:
    for role in ("api", "worker"):
        with pytest.raises(ConfigurationError, match="DEEPRESEARCH_REDIS_URL"):
            async with open_services(settings(tmp_path), role=role):  # type: ignore[arg-type]
                pass


def test_a_server_is_an_api_node_with_a_cluster_unless_it_keeps_its_own_store(
    tmp_path: Path,
) -> None:
    clustered = settings(tmp_path, redis_url="redis://127.0.0.1:1/0")
    assert role_for(settings(tmp_path)) == "single"
    assert role_for(clustered) == "api"
    assert role_for(clustered, store_dir=tmp_path) == "single"  # `ask`

"""Schemathesis against the server's own OpenAPI schema: generated valid and invalid
requests to every route of a real ``deepresearch serve``; never a 5xx, and on every
route that documents the server's error answers, every response (status, media type,
body) as the schema says."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from tests.support import Process, server, write_corpus

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


def checks_for(operation: schemathesis.APIOperation) -> list[Any]:
    """Every check for a route that documents the server's error answers (413 is the
    mark of ``server.openapi.ERROR_RESPONSES``); a route that does not yet is still
    held to the first rule: never a 5xx."""
    documented = "413" in operation.definition.raw.get("responses", {})
    return CHECKS if documented else [not_a_server_error]


@pytest.fixture(scope="module")
def offline_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    folder: Path = tmp_path_factory.mktemp("fuzz")
    corpus = write_corpus(folder / "corpus")
    with server(
        folder / "data", DEEPRESEARCH_CORPUS=str(corpus), DEEPRESEARCH_MAX_QUEUE="20"
    ) as process:
        yield process


def fuzz(operation: schemathesis.APIOperation, mode: GenerationMode, url: str) -> None:
    checks = checks_for(operation)

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=15,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    def check(case: schemathesis.Case) -> None:
        response = case.call(base_url=url, timeout=30)
        case.validate_response(response, checks=checks)

    check()


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_generated_requests_never_get_a_5xx_and_match_the_schema(
    offline_server: Process, mode: GenerationMode
) -> None:
    schema = schemathesis.openapi.from_url(f"{offline_server.url}/openapi.json")
    labels, tried = [], 0
    for result in schema.get_all_operations():
        operation = result.ok()
        labels.append(operation.label)
        try:
            fuzz(operation, mode, offline_server.url)
        except Unsatisfiable:
            # An operation with nothing to get wrong (GET /health takes no input).
            assert mode is GenerationMode.NEGATIVE, operation.label
            continue
        tried += 1
    assert "POST /chat/stream" in labels and "DELETE /sessions/{session_id}" in labels
    assert tried == len(labels) if mode is GenerationMode.POSITIVE else tried >= 3, labels

"""The retrieval evaluation (bench/eval_retrieval.py) over a tiny corpus of its own."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import eval_retrieval
import pytest

GOUT = {
    "id": "medquad:1-3",
    "source": "NIHSeniorHealth",
    "url": "https://example.org/gout",
    "title": "Gout",
    "question_type": "symptoms",
    "question": "What are the symptoms of Gout ?",
    "text": "Attacks Usually Start at Night Gout is a form of arthritis that causes sudden "
    "onset of intense pain and swelling in the joints, which also may be warm and red. Other "
    "Signs and Symptoms Signs of gout include redness and warmth over the joint.",
}
ABSTRACT = {
    "id": "pubmed:9",
    "source": "PubMed",
    "url": "https://pubmed.ncbi.nlm.nih.gov/9/",
    "mesh": ["Gout", "Allopurinol"],
    "text": "Background: We asked whether allopurinol dosing affects gout flares in older "
    "adults.\nConclusions: Higher allopurinol doses reduced gout flares in older adults.",
}


def lines(records: list[dict[str, object]]) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


async def test_medquad_figures_count_hits_quotes_and_the_off_topic_abstentions(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "corpus.jsonl").write_text(lines([GOUT, ABSTRACT]))
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "medquad-dev.jsonl").write_text(
        lines(
            [
                {
                    "question": "What are the symptoms of gout?",
                    "gold_ids": ["medquad:1-3"],
                    "question_type": "symptoms",
                    "focus": "Gout",
                },
                {
                    "question": "Who painted the Mona Lisa?",
                    "gold_ids": [],
                    "question_type": "off-topic",
                    "focus": None,
                },
            ]
        )
    )
    (tmp_path / "eval" / "pubmedqa-dev.jsonl").write_text(
        lines([{"question": "Does allopurinol dosing affect gout flares?", "gold_id": "pubmed:9"}])
    )
    args = argparse.Namespace(
        split="dev",
        k="1,5",
        limit=0,
        corpus=tmp_path / "corpus",
        data_dir=tmp_path / "data",
        eval_dir=tmp_path / "eval",
        skip_pubmedqa=False,
        skip_medquad=False,
        show_misses=True,
        show_answers=1,
    )
    assert await eval_retrieval.evaluate(args) == 0
    out = capsys.readouterr().out
    # The first digest is printed to be read, its heading split off.
    assert "Q: What are the symptoms of gout? [symptoms]" in out
    assert "- Gout is a form of arthritis that causes sudden onset" in out
    assert "Start at Night" not in out
    row = next(line for line in out.splitlines() if line.startswith("| 1 + 1 off-topic |"))
    assert [cell.strip() for cell in row.split("|")[2:8]] == [
        "1.000",
        "1.000",
        "1 of 1",
        "1.000",
        "2.0",
        "0",
    ]
    digest = next(line for line in out.splitlines() if line.startswith("| digest citations |"))
    cells = [cell.strip() for cell in digest.split("|")]
    assert cells[2] == "1.000"  # R@1: the gold abstract is cited first
    assert cells[7] == "1.000"  # and its conclusion quoted


def test_the_mechanical_check_flags_what_reads_badly() -> None:
    answer = "\n".join(
        [
            "**Gout**",
            "- Other Signs And Symptoms These can include redness. [2]",
            "- Acquired cystic kidney disease occurs in adults who have [1]",
            "- Gout is caused by uric acid crystals.The joint swells. [2]",
            "- Gout is caused by uric acid crystals in the joint. [1]",
        ]
    )
    assert [flag.split(":")[0] for flag in eval_retrieval.flags(answer)] == [
        "run-in heading or list",
        "cut short",
        "spacing",
        "repeated",
        "citations out of order",
    ]
    assert eval_retrieval.flags("- Gout is a form of arthritis. [1]\n- It is treated. [2]") == []

"""The local evidence index, on small hand-made corpora."""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from deepresearch.search import EvidenceIndex
from deepresearch.search.local_index import fts_query

CORPUS: list[dict[str, Any]] = [
    {
        "id": "pubmed:1",
        "source": "PubMed",
        "url": "https://pubmed.ncbi.nlm.nih.gov/1/",
        "year": "1994",
        "mesh": ["Air Ambulances", "Intubation, Intratracheal"],
        "text": "Background: Flight nurses performed endotracheal intubation in a helicopter.\n"
        "Results: In-flight intubation took twice as long as intubation on the ground.",
    },
    {
        "id": "medquad:1",
        "source": "GHR",
        "url": "https://ghr.nlm.nih.gov/condition/acatalasemia",
        "title": "Acatalasemia",
        "question": "What is (are) acatalasemia ?",
        "text": "Acatalasemia is a condition with very low levels of the enzyme catalase.",
    },
    {
        "id": "medquad:2",
        "source": "NHLBI",
        "url": "https://www.nhlbi.nih.gov/health/angina",
        "title": "Angina",
        "text": "Angina is chest pain or discomfort caused when the heart muscle does not get "
        "enough oxygen-rich blood.",
    },
]


def write_jsonl(path: Path, records: list[dict[str, Any]], *raw_lines: str) -> Path:
    lines = [json.dumps(r) for r in records] + list(raw_lines)
    data = ("\n".join(lines) + "\n").encode()
    if path.name.endswith(".gz"):
        data = gzip.compress(data)
    path.write_bytes(data)
    return path


@pytest.fixture
def index(tmp_path: Path) -> Iterator[EvidenceIndex]:
    idx = EvidenceIndex(tmp_path / "not" / "yet" / "index.sqlite")  # parents get created
    yield idx
    idx.close()


async def test_build_then_search_ranks_the_matching_record_first(
    index: EvidenceIndex, tmp_path: Path
) -> None:
    corpus = write_jsonl(tmp_path / "corpus.jsonl.gz", CORPUS)
    stats = await index.build([corpus])
    assert (stats.documents, stats.added, stats.skipped_files, stats.bad_records) == (3, 3, 0, 0)
    assert stats.size_bytes == index.path.stat().st_size > 0

    results = await index.search("Is in-flight intubation in a helicopter long?")
    assert results[0].source_id == "pubmed:1"
    first = results[0]
    assert first.year == 1994
    assert first.url == "https://pubmed.ncbi.nlm.nih.gov/1/"
    # No title in the record: its first sentence stands in, marked as such.
    assert first.title.startswith("Untitled abstract: Flight nurses performed")
    assert first.title_derived
    # The snippet is one plain line: no newlines, no highlight markup.
    assert "intubation" in first.snippet
    assert "\n" not in first.snippet and "<" not in first.snippet
    # Porter stemming: "enzymes" finds "enzyme"; MeSH terms are searchable too.
    assert (await index.search("catalase enzymes"))[0].source_id == "medquad:1"
    assert (await index.search("air ambulances"))[0].source_id == "pubmed:1"
    assert await index.count() == 3


async def test_title_outweighs_the_same_word_in_the_text(
    index: EvidenceIndex, tmp_path: Path
) -> None:
    filler = "Patients were followed for several years by their clinicians."
    records = [
        {"id": "a", "title": "Diet advice", "text": f"Hypertension is common. {filler}"},
        {"id": "b", "title": "Hypertension", "text": f"Blood pressure is common. {filler}"},
    ]
    await index.build([write_jsonl(tmp_path / "c.jsonl", records)])
    assert next(s.source_id for s in await index.search("hypertension")) == "b"


async def test_rebuild_skips_unchanged_files_and_reingests_changed_ones(
    index: EvidenceIndex, tmp_path: Path
) -> None:
    plain = write_jsonl(tmp_path / "a.jsonl", CORPUS[1:])
    zipped = write_jsonl(tmp_path / "b.jsonl.gz", CORPUS[:1])
    await index.build([plain, zipped])

    again = await index.build([plain, zipped])
    assert (again.added, again.skipped_files, again.documents) == (0, 2, 3)

    changed = {**CORPUS[1], "text": "Acatalasemia now mentions zebrafish models."}
    write_jsonl(plain, [changed])  # medquad:2 is gone from the file
    os.utime(plain, ns=(1, 1))  # a distinct mtime even on coarse clocks
    stats = await index.build([plain, zipped])
    assert (stats.added, stats.skipped_files, stats.documents) == (1, 1, 2)
    assert [s.source_id for s in await index.search("zebrafish")] == ["medquad:1"]
    assert await index.search("catalase enzyme") == []
    assert await index.get("medquad:2") is None  # dropped with its file's old contents


async def test_a_folder_means_its_jsonl_files(index: EvidenceIndex, tmp_path: Path) -> None:
    folder = tmp_path / "corpus"
    folder.mkdir()
    write_jsonl(folder / "one.jsonl", CORPUS[:1])
    write_jsonl(folder / "two.jsonl.gz", CORPUS[1:])
    (folder / "notes.txt").write_text("not a corpus file")
    stats = await index.build([folder])
    assert (stats.documents, stats.bad_records) == (3, 0)


async def test_bad_lines_are_counted_and_skipped(index: EvidenceIndex, tmp_path: Path) -> None:
    corpus = write_jsonl(
        tmp_path / "c.jsonl",
        CORPUS,
        "{not json",
        json.dumps({"text": "no id"}),
        json.dumps({"id": "x:1"}),
        json.dumps({"id": 7, "text": "id is not a string"}),
        json.dumps(["a", "list"]),
        '{"id": "x:2", "text": "NaN cannot be stored", "score": NaN}',
        "",  # blank lines are not records, so not bad ones either
    )
    stats = await index.build([corpus])
    assert (stats.documents, stats.added, stats.bad_records) == (3, 3, 6)


def record(rid: str, source: str, url: str, text: str) -> dict[str, Any]:
    return {"id": rid, "source": source, "url": url, "text": text}


# MedQuAD's shape: one id for several sources' passages, and one source's page split in two.
REPEATED = [
    record("m:1", "GHR", "https://ghr.example/a", "Acatalasemia lowers catalase."),
    record("m:1", "GARD", "https://gard.example/a", "Acatalasemia may cause oral ulcers."),
    record("m:1", "GARD", "https://gard.example/a", "Acatalasemia is inherited recessively."),
    record("m:1", "GHR", "https://ghr.example/a", "Acatalasemia lowers catalase."),  # same again
    record("m:1", "", "", "Acatalasemia was described in Japan."),
    record("m:2", "GARD", "https://gard.example/b", "Angina is chest pain."),
]


async def test_a_repeated_id_is_renamed_unless_the_record_repeats(
    index: EvidenceIndex, tmp_path: Path
) -> None:
    corpus = write_jsonl(tmp_path / "c.jsonl", REPEATED)
    stats = await index.build([corpus])
    # Three renamed and one collapsed: duplicate_ids counts both.
    assert (stats.documents, stats.added, stats.duplicate_ids) == (5, 5, 4)
    texts = {rid: (await index.get(rid)) for rid in ["m:1", "m:1@GARD", "m:1@GARD-2", "m:1@2"]}
    assert {rid: s.text if s else None for rid, s in texts.items()} == {
        "m:1": "Acatalasemia lowers catalase.",
        "m:1@GARD": "Acatalasemia may cause oral ulcers.",
        "m:1@GARD-2": "Acatalasemia is inherited recessively.",
        "m:1@2": "Acatalasemia was described in Japan.",
    }
    assert [s.source_id for s in await index.search("oral ulcers")] == ["m:1@GARD"]
    found = await index.get("m:1@GARD")
    assert found is not None and found.url == "https://gard.example/a"


async def test_renamed_ids_are_the_same_after_a_rebuild(
    index: EvidenceIndex, tmp_path: Path
) -> None:
    corpus = write_jsonl(tmp_path / "c.jsonl", REPEATED)
    await index.build([corpus])
    first = sorted([s.source_id for s in await index.search("acatalasemia", limit=10)])

    write_jsonl(corpus, REPEATED)  # the same records, rewritten: the file counts as changed
    os.utime(corpus, ns=(1, 1))
    again = await index.build([corpus])
    assert (again.skipped_files, again.added, again.documents) == (0, 5, 5)
    assert sorted([s.source_id for s in await index.search("acatalasemia", limit=10)]) == first
    assert first == ["m:1", "m:1@2", "m:1@GARD", "m:1@GARD-2"]


async def test_an_index_built_by_an_older_version_is_ingested_again(
    index: EvidenceIndex, tmp_path: Path
) -> None:
    corpus = write_jsonl(tmp_path / "c.jsonl", REPEATED)
    await index.build([corpus])
    # What the previous version left: renamed records missing, no ingest version.
    with sqlite3.connect(index.path) as conn:
        conn.execute("DELETE FROM documents WHERE id LIKE '%@%'")
        conn.execute("PRAGMA user_version = 0")
    conn.close()
    stats = await index.build([corpus])
    assert (stats.skipped_files, stats.documents) == (0, 5)
    assert await index.get("m:1@GARD-2") is not None
    assert (await index.build([corpus])).skipped_files == 1  # and only once


@pytest.mark.parametrize(
    "query",
    [
        '"intubation',
        "intubation*",
        "NEAR(intubation helicopter",
        "intubation AND helicopter",
        "-intubation",
        "text: intubation",
        "intubation OR NOT ^helicopter {title}",
    ],
)
async def test_fts_syntax_in_a_query_is_just_text(
    index: EvidenceIndex, tmp_path: Path, query: str
) -> None:
    await index.build([write_jsonl(tmp_path / "c.jsonl", CORPUS)])
    # No FTS error; words the corpus lacks ("near", "title") may leave it answering nothing.
    assert [s.source_id for s in await index.search(query)][:1] in ([], ["pubmed:1"])


def test_queries_become_quoted_terms() -> None:
    # Operators lose their meaning; one-letter pieces and stopwords go.
    assert fts_query('What is "NEAR(a* b)" -x_y: AND col:rna^?') == '"near" OR "col" OR "rna"'
    assert fts_query("Is diabetes, or DIABETES, treated?") == '"diabetes" OR "treated"'


async def test_a_query_of_stopwords_finds_nothing(index: EvidenceIndex, tmp_path: Path) -> None:
    await index.build([write_jsonl(tmp_path / "c.jsonl", CORPUS)])
    for query in ["Is it that they were there?", "", "?! -- *", "a b c"]:
        assert await index.search(query) == []


async def test_get_and_count(index: EvidenceIndex, tmp_path: Path) -> None:
    assert await index.count() == 0  # an index never built is empty, not an error
    assert await index.search("angina") == []
    await index.build([write_jsonl(tmp_path / "c.jsonl", CORPUS)])
    found = await index.get("medquad:2")
    assert found is not None
    assert (found.title, found.url, found.year) == ("Angina", CORPUS[2]["url"], None)
    assert found.text == CORPUS[2]["text"]
    assert await index.get("medquad:404") is None


async def test_searches_run_while_a_build_writes(index: EvidenceIndex, tmp_path: Path) -> None:
    await index.build([write_jsonl(tmp_path / "base.jsonl", CORPUS)])
    bulk = [
        {"id": f"bulk:{i}", "title": f"Record {i}", "text": f"Filler about topic {i} and more."}
        for i in range(4000)
    ]
    big = write_jsonl(tmp_path / "bulk.jsonl", bulk)
    seen: list[int] = []
    writing = asyncio.Event()

    def progress(n: int) -> None:
        seen.append(n)
        writing.set()  # the build now holds an open write transaction

    building = asyncio.create_task(index.build([tmp_path / "base.jsonl", big], progress))
    await writing.wait()
    results = await asyncio.gather(*(index.search("angina chest pain") for _ in range(20)))
    stats = await building
    assert all(r[0].source_id == "medquad:2" for r in results)
    assert (stats.added, stats.skipped_files, stats.documents) == (4000, 1, 4003)
    assert seen == [1000, 2000, 3000, 4000]
    assert (await index.search("topic 3999"))[0].source_id == "bulk:3999"


async def test_a_cancelled_build_is_finished_by_the_next_one(
    index: EvidenceIndex, tmp_path: Path
) -> None:
    records = [{"id": f"r:{i}", "text": f"record number {i}"} for i in range(3000)]
    corpus = write_jsonl(tmp_path / "c.jsonl", records)
    with anyio.CancelScope() as scope:
        await index.build([corpus], lambda n: scope.cancel())  # stop after the first batch
    assert scope.cancelled_caught
    assert await index.count() == 0  # the file's open transaction was rolled back
    stats = await index.build([corpus])
    assert (stats.added, stats.skipped_files, stats.documents) == (3000, 0, 3000)


async def test_accented_and_composed_queries_find_what_the_index_folded(tmp_path: Path) -> None:
    corpus = tmp_path / "c.jsonl"
    record = {"id": "medquad:s1", "url": "u", "title": "Sjögren syndrome", "text": "Dry eyes."}
    corpus.write_text(json.dumps(record) + "\n")
    index = EvidenceIndex(tmp_path / "i.sqlite")
    try:
        await index.build([corpus])
        for query in ("Sjögren", "sjogren", "SJO\u0308GREN"):
            results = await index.search(query, 5)
            assert [r.source_id for r in results] == ["medquad:s1"], query
    finally:
        index.close()


async def test_a_kind_of_disease_also_finds_its_parent_topics_answer(
    index: EvidenceIndex, tmp_path: Path
) -> None:
    """ "How should type 2 diabetes be managed?": the type 2 page says what it is; the
    treatment passage is on the page of what it is a kind of ("Diabetes"), which speaks
    of type 2 diabetes as its own. Another disease's page that mentions it in passing
    stays out."""

    def page(rid: str, title: str, kind: str, asked: str, text: str) -> dict[str, Any]:
        return {
            "id": rid,
            "source": "NIH",
            "title": title,
            "question_type": kind,
            "question": f"{asked} {title} ?",
            "text": text,
        }

    records = [
        page("t2", "Diabetes Type 2", "information", "What is (are)",
             "With type 2 diabetes, your body does not make or use insulin well."),
        page("dm", "Diabetes", "treatment", "What are the treatments for",
             "Diabetes cannot be cured, but it can be managed. Many people with type 2 "
             "diabetes can control blood glucose levels with diet and exercise alone."),
        page("ob", "Obesity", "treatment", "What are the treatments for",
             "Losing weight lowers the risk of type 2 diabetes. Diet and exercise come first."),
        page("dx", "Diabetes", "information", "What is (are)",
             "Diabetes means your blood glucose is too high."),
    ]  # fmt: skip
    await index.build([write_jsonl(tmp_path / "c.jsonl", records)])
    found = [r.source_id for r in await index.search("How should type 2 diabetes be managed?")]
    assert found[0] == "t2"
    assert "dm" in found and "ob" not in found

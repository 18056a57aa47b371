"""How often the offline digest cites what answers the question, and the index finds it.

Usage: python bench/eval_retrieval.py [--split dev|test] [--k 1,5,10] [--limit N]
                                      [--corpus PATH] [--data-dir DIR] [--eval-dir DIR]
                                      [--skip-pubmedqa] [--skip-medquad] [--show-misses]
                                      [--show-answers N]

MedQuAD (``medquad-dev.jsonl``; consumer-style questions, each with the passages
that answer it, and off-topic questions that nothing should answer), through the
real offline mode:

- hit: an answering passage is among the digest's citations (a citation answers
  when its id, less the ``@source`` the index adds to repeated ids, is in
  ``gold_ids`` and its title is the question's ``focus``);
- lead: the answer's first citation is one;
- abstain: off-topic questions answered with no citation at all;
- quoted: answers that quote at least one sentence (the others only name the
  sources found), and the mean number of sentences quoted per answer;
- flagged: quotes that read badly by a mechanical check (``flags``): opening with
  three capitalised words (a heading or a list run in), not ending a sentence, space
  before punctuation or a lost space ("disease.The"), repeating 80 % of an earlier
  quote's words; and answers whose citations are not numbered in order of first
  use. A reading aid: it cannot see a heading with small words in it, nor a quote
  that does not answer;
- seconds per question, p50 and p95.

``--show-answers N`` prints the digests of the first N MedQuAD questions, to be
read as a clinician would (headings run into sentences, quotes cut short,
passages that mention the question's words without answering it).

Over the PubMedQA questions of a split (each with the id of the abstract it was
written from), two measures:

- index: the local index searched with the question text; recall@k is the
  share of questions whose gold abstract is among the first k results.
- digest: the real offline mode (``EvidenceDigestAgent`` with the server's own
  search tool, built by ``open_services``); recall@k is the share whose gold
  abstract is among the first k citations of the final answer, in order. The
  digest cites at most six sentences from at most six sources, so recall@10 can
  only count what was cited; "found" is the share citing gold anywhere (for the
  index: anywhere in its first max(k) results). "cited sources" is the mean number
  of distinct sources a digest cites; "conclusion quoted" is the share of questions
  whose digest quotes, cited to the gold abstract, a sentence of its Conclusions.

The corpus is read where it lies (default ``../shared/data/corpus`` next to the
repository), never copied. The index lives in ``--data-dir`` (the server's
``DEEPRESEARCH_DATA_DIR``; default ``bench/results/eval-data``), so a second run
reuses it; the build is incremental, so a changed corpus is picked up. Tune on
the dev split; run the test split once, to report.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio

from deepresearch.agent import EvidenceDigestAgent
from deepresearch.config import load_settings
from deepresearch.services import open_services

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


@dataclass
class Measure:
    name: str
    ranks: list[int | None] = field(default_factory=list)  # gold's 1-based rank, if found
    seconds: list[float] = field(default_factory=list)
    no_answer: int | None = None  # for the digest: answers that were ``no_answer``
    cited: list[int] = field(default_factory=list)  # for the digest: sources per answer
    concluded: list[bool] = field(default_factory=list)  # for the digest: gold's conclusion quoted

    def recall(self, k: int) -> float:
        return sum(r is not None and r <= k for r in self.ranks) / len(self.ranks)

    def row(self, ks: list[int]) -> str:
        n = len(self.ranks)
        found = sum(r is not None for r in self.ranks) / n
        p50 = statistics.median(self.seconds)
        p95 = statistics.quantiles(self.seconds, n=20)[-1] if n > 1 else p50
        cells = [f"{self.recall(k):.3f}" for k in ks] + [f"{found:.3f}"]
        cells.append("-" if self.no_answer is None else f"{self.no_answer / n:.3f}")
        cells.append(f"{statistics.mean(self.cited):.1f}" if self.cited else "-")
        cells.append(f"{statistics.mean(self.concluded):.3f}" if self.concluded else "-")
        return f"| {self.name} | " + " | ".join([*cells, f"{p50:.4f}", f"{p95:.4f}"]) + " |"


def conclusion_quoted(answer: Any, gold: str) -> bool:
    """Whether the digest quotes, cited to ``gold``, a sentence of its Conclusions."""
    cited = next((c for c in answer.citations if c.source_id == gold), None)
    if cited is None:
        return False
    found = re.search(r"^Conclusions?:(.*)$", cited.full_content, re.MULTILINE)
    marker = f" [{cited.id}]"
    return found is not None and any(
        line[2:].removesuffix(marker)[:60] in found.group(1)
        for line in answer.answer.splitlines()
        if line.startswith("- ") and line.endswith(marker)
    )


def rank_of(gold: str, ids: list[str]) -> int | None:
    return ids.index(gold) + 1 if gold in ids else None


@dataclass
class MedQuad:
    hits: int = 0
    leads: int = 0
    answerable: int = 0
    abstained: int = 0
    off_topic: int = 0
    quoted: int = 0  # answerable questions whose digest quotes at least one sentence
    flagged: int = 0  # quotes (and answers' numbering) the mechanical check flags
    points: list[int] = field(default_factory=list)  # sentences quoted per answerable question
    seconds: list[float] = field(default_factory=list)
    misses: list[str] = field(default_factory=list)

    def table(self) -> str:
        p50 = statistics.median(self.seconds)
        p95 = statistics.quantiles(self.seconds, n=20)[-1] if len(self.seconds) > 1 else p50
        head = (
            "| questions | hit | lead | off-topic without citations | quoted | quotes (mean) "
            "| flagged | p50 s | p95 s |"
        )
        n = max(1, self.answerable)
        row = (
            f"| {self.answerable} + {self.off_topic} off-topic | {self.hits / n:.3f} | "
            f"{self.leads / n:.3f} | {self.abstained} of {self.off_topic} | "
            f"{self.quoted / n:.3f} | {statistics.mean(self.points or [0]):.1f} | "
            f"{self.flagged} | {p50:.4f} | {p95:.4f} |"
        )
        return "\n".join([head, "|---|---:|---:|---:|---:|---:|---:|---:|---:|", row])


def answers_question(citation: Any, item: dict[str, Any]) -> bool:
    return bool(
        citation.source_id.split("@")[0] in item["gold_ids"] and citation.title == item["focus"]
    )


def quotes(answer: str) -> int:
    """The sentences a digest quotes: its lines that are list items."""
    return sum(line.startswith("- ") for line in answer.splitlines())


def flags(answer: str) -> list[str]:
    """What reads badly in a digest, by a mechanical check (see the module's doc)."""
    found: list[str] = []
    seen: list[set[str]] = []
    for line in answer.splitlines():
        if not line.startswith("- "):
            continue
        quote = re.sub(r" \[\d+\]$", "", line[2:])
        tokens = quote.split()
        if len(tokens) > 3 and all(t[:1].isupper() for t in tokens[:3]):
            found.append(f"run-in heading or list: {quote[:80]}")
        if not re.search(r"[.!?)\"\u201d%]$", quote):
            found.append(f"cut short: ...{quote[-80:]}")
        if re.search(r"  | [,.;:](?!\d)|[a-z]{2}\.[A-Z][a-z]", quote):
            found.append(f"spacing: {quote[:80]}")
        terms = set(re.findall(r"\w+", quote.lower()))
        if any(len(terms & other) >= 0.8 * min(len(terms), len(other)) for other in seen):
            found.append(f"repeated: {quote[:80]}")
        seen.append(terms)
    numbers = list(dict.fromkeys(int(n) for n in re.findall(r"\[(\d+)\]", answer)))
    if numbers != sorted(numbers):
        found.append(f"citations out of order: {numbers}")
    return found


async def evaluate_medquad(
    services: Any, path: Path, limit: int, show: bool, answers: int = 0
) -> MedQuad:
    text = await anyio.Path(path).read_text()
    items = [json.loads(line) for line in text.splitlines() if line.strip()]
    items = items[:limit] if limit else items
    measure = MedQuad()
    for n, item in enumerate(items):
        t0 = time.perf_counter()
        agent = EvidenceDigestAgent(f"medquad-{n}", services.tools)
        citations: list[Any] = []
        answer = ""
        async for event in agent.run(item["question"]):
            if event.type == "final_answer":
                citations = list(event.answer_data.citations)
                answer = event.answer_data.answer
        measure.seconds.append(time.perf_counter() - t0)
        if n < answers:
            print(f"Q: {item['question']} [{item['question_type']}]\n{answer}\n")
        if not item["gold_ids"]:
            measure.off_topic += 1
            measure.abstained += not citations
            if citations and show:
                measure.misses.append(f"off-topic cited: {item['question']}")
            continue
        measure.answerable += 1
        flagged = flags(answer)
        measure.flagged += len(flagged)
        if show:
            measure.misses.extend(f"flag: {item['question']}: {f}" for f in flagged)
        measure.points.append(quotes(answer))
        measure.quoted += measure.points[-1] > 0
        ok = [answers_question(c, item) for c in citations]
        measure.hits += any(ok)
        measure.leads += bool(ok) and ok[0]
        if show and not (ok and ok[0]):
            cited = "; ".join(c.title for c in citations[:3]) or "nothing"
            measure.misses.append(f"{item['question']} [{item['question_type']}] -> {cited}")
    return measure


async def evaluate(args: argparse.Namespace) -> int:
    questions_path = args.eval_dir / f"pubmedqa-{args.split}.jsonl"
    questions: list[dict[str, Any]] = [
        json.loads(line) for line in questions_path.read_text().splitlines() if line.strip()
    ]
    questions = questions[: args.limit] if args.limit else questions
    ks = sorted({int(k) for k in args.k.split(",")})
    # The local index alone: no model (the offline mode), no live search backends.
    settings = load_settings(
        data_dir=args.data_dir, corpus=[args.corpus], llm_url=[], search=["local"]
    )
    started = time.perf_counter()
    async with open_services(settings, index_in_background=False) as services:
        state = services.index_state
        if state.error or not state.documents:
            print(f"index build failed: {state.error or 'no documents'}", file=sys.stderr)
            return 1
        print(
            f"index: {state.documents} documents in {args.data_dir} "
            f"(ready in {time.perf_counter() - started:.1f} s)\n"
        )
        if not args.skip_medquad:
            medquad = await evaluate_medquad(
                services,
                args.eval_dir / "medquad-dev.jsonl",
                args.limit,
                args.show_misses,
                args.show_answers,
            )
            print("MedQuAD dev, offline digest\n")
            print(medquad.table() + "\n")
            for miss in medquad.misses:
                print("  miss:", miss)
        if args.skip_pubmedqa:
            return 0
        index = Measure("index (question text)")
        digest = Measure("digest citations", no_answer=0)
        for n, item in enumerate(questions):
            gold, question = item["gold_id"], item["question"]
            t0 = time.perf_counter()
            found = await services.index.search(question, limit=max(ks))
            index.seconds.append(time.perf_counter() - t0)
            index.ranks.append(rank_of(gold, [s.source_id for s in found]))

            t0 = time.perf_counter()
            agent = EvidenceDigestAgent(f"eval-{n}", services.tools)
            cited: list[str] = []
            concluded = False
            async for event in agent.run(question):
                if event.type == "final_answer":
                    cited = [c.source_id for c in event.answer_data.citations]
                    concluded = conclusion_quoted(event.answer_data, gold)
                elif event.type == "no_answer":
                    digest.no_answer = (digest.no_answer or 0) + 1
            digest.seconds.append(time.perf_counter() - t0)
            digest.ranks.append(rank_of(gold, cited))
            digest.cited.append(len(cited))
            digest.concluded.append(concluded)

    head = [f"R@{k}" for k in ks] + ["found", "no_answer", "cited sources"]
    head += ["conclusion quoted", "p50 s", "p95 s"]
    print(f"PubMedQA {args.split}, {len(questions)} questions\n")
    print("| measure | " + " | ".join(head) + " |")
    print("|---|" + "---:|" * len(head))
    print(index.row(ks))
    print(digest.row(ks))
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--split", choices=["dev", "test"], default="dev")
    parser.add_argument("--k", default="1,5,10", help="comma-separated cut-offs")
    parser.add_argument("--limit", type=int, default=0, help="only the first N questions")
    parser.add_argument("--corpus", type=Path, default=SHARED / "corpus")
    parser.add_argument("--data-dir", type=Path, default=ROOT / "bench" / "results" / "eval-data")
    parser.add_argument("--eval-dir", type=Path, default=SHARED / "eval")
    parser.add_argument("--skip-pubmedqa", action="store_true")
    parser.add_argument("--skip-medquad", action="store_true")
    parser.add_argument("--show-misses", action="store_true", help="list MedQuAD misses")
    parser.add_argument(
        "--show-answers", type=int, default=0, metavar="N", help="print the first N digests"
    )
    sys.exit(asyncio.run(evaluate(parser.parse_args())))


if __name__ == "__main__":
    main()

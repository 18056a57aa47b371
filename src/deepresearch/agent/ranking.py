"""Choosing the sentences of an extractive digest from the passages search ranked.

The search (``search/relevance.py``) already put the passages that answer the
question first: the page about its focus, the passage about its intent. Here each
passage is cut into sentences: the pages are flattened HTML, so headings run into
the next sentence ("Attacks Usually Start at Night Gout is a form of ...") and are
split off, bullets become one-line lists, a table of signs becomes one line and its
reading note nothing. Each sentence is scored by what it says: the question's words
and its focus's page title, the way an answer to its intent reads ("is treated
with"), an abstract's conclusions over its methods, its place in the passage (NIH
pages answer first). A sentence that answers another question while naming the one
asked ("Treatment focuses on relieving signs and symptoms") does not answer it.
Boilerplate (links, phone numbers, lists of resources) is never quoted. Why each
rule: ``docs/design.md``, "How the digest reads to a clinician".
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from deepresearch.search.text import STOPWORDS, stem, words
from deepresearch.search.understanding import BY_NAME, Intent, Understanding
from deepresearch.tools.base import Source

# A sentence ends at ".", "!", "?" (or one closing a bracket or quote) before a capital;
# some pages lost the space ("the rash.Treatment with ...", "mutations (changes).The genes").
SENTENCE_END = re.compile(
    r"(?:(?<=[.!?])|(?<=[.!?][)\"'\u201d]))\s+(?=[A-Z0-9(\"'])"
    r"|(?:(?<=[a-z]{3}\.)|(?<=[a-z]\)\.))(?=[A-Z][a-z])"
)
# An abstract's label in capitals run into the sentence before ("with lansoprazole.STUDY:
# Sixty-two patients", "ventilatory support.RESEARCH METHODOLOGY/"): a break, not words.
RUN_IN_LABEL = re.compile(r"(?<=[a-z)]\.)[A-Z]{2,}(?: [A-Z]{2,})*[:/]\s*")
# Space the page put before punctuation ("hydrocephalus , and", "history : An exam").
SPACE_BEFORE = re.compile(r"\s+([,;:.!?])(?=\s|$)")
# "Conclusions: ", "Materials And Methods: ", "Summary : ": a heading, not a sentence's start.
SECTION_LABEL = re.compile(r"^([A-Z][a-z]+(?: (?:[A-Z][a-z]+|and|of)){0,3}) ?:\s+")
BULLET = re.compile(r"\s+-\s+")
NAMED_ITEM = re.compile(r"[A-Z][a-z]+: [A-Z]")  # "Registry: Diabetes", not "CI: 1.2"
# Pointers to elsewhere (links, phone numbers, calls to action) are never evidence.
BOILERPLATE = re.compile(
    r"https?://|www\.|\.(?:gov|org|com|aspx?|html?)\b|\b1-?800\b|\d{3}\)? ?\d{3}-\d{4}|\b1\d{10}\b"
    r"|learn more|these resources|\bclick\b|more information|find out more|read more"
    r"|for more details|\bgo to \W|\bresources? (?:address|for)\b"
    r"|fact sheet|available at|web ?site|toll-free|e-?mail|espa.?ol|would like to thank"
    r"|\bvisit (?:the|our|www|http)|\bcall(?:ing)? (?:the|toll|\d)|\bcontact (?:us|the)\b"
    r"|following list|phenotype ontology|the following\W*$|^see\b|this (?:summary|page|section)"
    r"|questions to ask|ask your doctor|\?$|\bpage called\b|\bwritten for\b|useful to anyone"
    r"|\bprovides? (?:a |an )?(?:good |brief |detailed )?(?:overview|summary|review)\b"
    r"|\bprovides? information (?:about|on)\b|\bintended audience\b|\bplease\b|\bgenetests\b"
    r"|\bwe (?:recommend|suggest)\b|^here (?:are|is)\b[^:]*$"
    r"|\bhas (?:a|an) (?:in-depth |detailed )?(?:review|page|article|section)\b"
    r"|medical dictionary|table below|\bvideos?\b|\bkeyboard\b|\bbutton\b|\bdownload"
    r"|\bprint(?:able|er)?\b"
    r"|\b(?:web ?)?pages?\b|\bregist(?:er|ration) (?:to|is)\b|\btagged\b|\bsubscri(?:be|ption)\b"
    r"|(?::|\binclude|\bincluding|\bsuch as|\bdue to|\bfollowing|\bare|\bis)\W*$",
    re.IGNORECASE,
)
# Where the answer usually is, by a word of an abstract's section label.
SECTION_WEIGHTS = {
    "conclusion": 1.4,
    "result": 1.1,
    "background": 0.7,
    "introduction": 0.7,
    "objective": 0.7,
    "purpose": 0.7,
    "aim": 0.7,
    "method": 0.6,
}
# A heading MedQuAD ran into its sentence: capitalised words (small words between
# them), then a sentence that starts with a capitalised word and goes on in lower case.
HEADING_WORD = re.compile(r"(?:[A-Z][\w'\u2019-]*|[0-9][\w-]*)$")
SMALL_WORDS = frozenset(
    [
        "a",
        "an",
        "and",
        "as",
        "at",
        "by",
        "for",
        "from",
        "in",
        "into",
        "of",
        "on",
        "or",
        "the",
        "to",
        "with",
    ]
)
# Words that go on with a sentence after an aside set off by dashes.
CONTINUATIONS = SMALL_WORDS | {"but", "which", "that", "so", "who", "while"}
SECTION_NAMES = frozenset(
    [
        "overview",
        "summary",
        "treatment",
        "treatments",
        "outlook",
        "prognosis",
        "symptoms",
        "causes",
        "cause",
        "diagnosis",
        "prevention",
        "inheritance",
        "complications",
        "research",
        "frequency",
        "description",
    ]
)
# GARD's symptom pages flatten a table into the text: a header, rows "Ascites 90%" (the share
# of patients with the sign, most common first), rows with no share ("Hepatomegaly - "), then
# the same note on how to read it ("The Human Phenotype Ontology (HPO) has collected ...
# may be rare or common."). The rows are the answer; the note answers nothing.
SIGN_TABLE = re.compile(
    r"Signs and Symptoms Approximate number of patients \(when available\)\s*(?P<rows>.*?)\s*"
    r"(?:The Human Phenotype Ontology \(HPO\) has collected .*?may be rare or common\.|$)"
)
SIGN_ROW = re.compile(r"(\S.*?) (\d+(?:\.\d+)?%)(?=\s|$)")
MAX_SIGNS = 12  # rows quoted from such a table; the rest are counted
# The words of some questions are mentioned by sentences that answer others: "Treatment
# focuses on relieving signs and symptoms", "A diagnosis is based on characteristic signs and
# symptoms", "The parents ... carry one copy of the mutated gene, but do not show signs and
# symptoms". A sentence that reads as one of those (by its words outside the page's name) does
# not answer the question, though it names what was asked.
MENTIONED_BY = {
    "symptoms": ("treatment", "exams and tests", "inheritance", "genetic changes"),
    "causes": ("treatment", "exams and tests"),
    "inheritance": ("exams and tests", "treatment"),
    "frequency": ("symptoms", "treatment"),
}
EXAMPLE = re.compile(r"\b(?:for )?examples?\b", re.IGNORECASE)  # never a word about exams
MIN_WORDS, MAX_WORDS = 6, 80  # shorter says nothing; longer is a list, not a sentence
PER_SOURCE, MAX_SOURCES, MAX_POINTS = 2, 4, 6
FIRST_SENTENCES = 3  # a consumer-health passage answers in its first few sentences
INTENT_BONUS = 1.0
TITLE_BONUS = 0.5


@dataclass(frozen=True)
class Point:
    """A sentence to quote, with the source it is from."""

    score: float
    sentence: str
    source: Source


def split_heading(sentence: str) -> tuple[str | None, str]:
    """``(heading, rest)`` when a heading was run into the sentence, else ``(None, it)``.

    "Future Treatments Scientists, doctors, and researchers continue ..." gives
    ("Future Treatments", "Scientists, doctors, and researchers continue ...").
    A heading may hold small words and verbs ("Attacks Usually Start at Night Gout
    is ..."): a capitalised word followed by a small word ("Start at") may still be
    inside the heading, so a later end followed by a word that is not small wins.
    """
    tokens = sentence.split(" ")
    fallback: tuple[str, str] | None = None
    # The heading ends before a capitalised word that a lower-case word follows.
    for end in range(1, min(len(tokens) - 2, 12)):
        head, first, second = tokens[:end], tokens[end].rstrip(",;:"), tokens[end + 1]
        if not (HEADING_WORD.match(first) and first[:1].isupper() and second[:1].islower()):
            continue
        if not all(HEADING_WORD.match(t) or t in SMALL_WORDS for t in head):
            break
        if head[-1] in SMALL_WORDS or not head[0][:1].isupper():
            continue
        if head[0] in ("The", "A", "An"):
            return None, sentence  # a name in a sentence: "The National Cancer Institute"
        if len(head) == 1 and head[0].lower() not in SECTION_NAMES:
            continue
        split = " ".join(head), " ".join(tokens[end:])
        if second.rstrip(",;:") not in SMALL_WORDS:
            return split
        fallback = fallback or split
    return fallback or (None, sentence)


def sentences(text: str) -> Iterator[tuple[str, float, int]]:
    """A source's quotable sentences: ``(sentence, weight of its section, position)``."""
    weight, position = 1.0, 0
    for line in text.splitlines():
        line = line.strip()
        label = SECTION_LABEL.match(line)
        if label:
            heading = {stem(w) for w in words(label.group(1))}
            weight = max((w for k, w in SECTION_WEIGHTS.items() if stem(k) in heading), default=1.0)
            line = line[label.end() :]
        for sentence in _line_sentences(line):
            yield sentence, weight, position
            position += 1


def _line_sentences(line: str) -> Iterator[str]:
    table = SIGN_TABLE.search(line)
    if table:
        yield from _line_sentences(line[: table.start()])
        signs = sign_table(table.group("rows"))
        if signs:
            yield signs
        yield from _line_sentences(line[table.end() :])
        return
    line = SPACE_BEFORE.sub(r"\1", " ".join(RUN_IN_LABEL.sub(" ", line).split()))
    for piece in SENTENCE_END.split(line):
        for item in _items(piece):
            for part in _inline_list(item.strip(" -\t")):
                _, sentence = split_heading(part)
                count = len(words(sentence))
                # A lower-case start is a piece cut at an abbreviation ("e.g. ..."): unquotable.
                if sentence[:1].islower() or not MIN_WORDS <= count <= MAX_WORDS:
                    continue
                if BOILERPLATE.search(sentence) or _is_list(sentence):
                    continue
                yield sentence


def sign_table(rows: str) -> str | None:
    """A flattened table of signs as one line in its own words: "Signs and symptoms
    (approximate number of patients, when available): Ascites 90%; Hepatomegaly." The
    first rows (the most common signs) are quoted and the rest counted; a mode of
    inheritance ("Autosomal dominant inheritance") is not a sign and is left out."""
    found = [f"{name.strip(' -')} {share}" for name, share in SIGN_ROW.findall(rows)]
    last = SIGN_ROW.sub("", rows) if found else rows
    found.extend(item.strip(" -") for item in last.split(" - ") if item.strip(" -"))
    signs = [s for s in found if not s.lower().endswith("inheritance")]
    if not signs:
        return None
    more = f"; and {len(signs) - MAX_SIGNS} more" if len(signs) > MAX_SIGNS else ""
    listed = "; ".join(signs[:MAX_SIGNS])
    return f"Signs and symptoms (approximate number of patients, when available): {listed}{more}."


def _items(piece: str) -> list[str]:
    """Bullets that are statements ("Key Points - X is ... - Y may ...") stand alone;
    bullets that are words ("include - fever - rash") or phrases in lower case ("can
    include - more than one attack of acute arthritis - ...") belong to their sentence.
    Under a heading or after a full stop ("Key Points - X is ... - Y are used: - Surgery
    - Radiation - Z may ..."), each statement or lead-in starts an item and the words
    after it are its list; words after the full stop itself belong to no sentence."""
    items = BULLET.split(piece)
    if len(items) > 1 and all(_statement(i) for i in items[1:]):
        return items
    lead = items[0].strip()
    heading = all(HEADING_WORD.match(w) or w in SMALL_WORDS for w in lead.split(" "))
    if not (heading or lead.endswith((".", "!", "?"))):
        return [piece]
    groups: list[list[str]] = [] if heading else [[lead]]
    for at, item in enumerate(items[1:], start=1):
        following = items[at + 1].lstrip() if at + 1 < len(items) else ""
        starts = _statement(item) and (
            item.rstrip().endswith((".", ":", "!", "?")) or following[:1].islower()
        )
        if starts or not groups or (not heading and len(groups) == 1):
            groups.append([item])
        else:
            groups[-1].append(item)
    return [" - ".join(group) for group in groups]


def _statement(item: str) -> bool:
    """A bullet that is a sentence, or a sentence's start, not a word or a phrase."""
    return len(words(item)) >= MIN_WORDS and item.lstrip()[:1].isupper()


def select(question: Understanding, sources: Sequence[Source]) -> list[Point]:
    """The digest's points, grouped by source in search order: at most two a source."""
    asked = {stem(w) for w in question.terms} | {stem(w) for f in question.focus for w in f.words}
    intent = intent_pattern(question.intent)
    chosen: list[Point] = []
    seen: list[set[str]] = []
    for source in sources:
        if len(chosen) >= MAX_POINTS or len({p.source.source_id for p in chosen}) >= MAX_SOURCES:
            break
        topic = {stem(w) for w in words(source.title) if w not in STOPWORDS} | asked
        quotable = list(sentences(source.text))
        # An abstract's sections say where its answer is; only a page answers first.
        first = 0 if any(weight != 1.0 for _, weight, _ in quotable) else FIRST_SENTENCES
        ranked: list[tuple[float, str]] = sorted(
            (
                (_score(s, weight, position, topic, intent, first), s)
                for s, weight, position in quotable
            ),
            key=lambda pair: -pair[0],
        )
        if intent is not None:
            # A passage is quoted for a sentence that answers what was asked; then its next best.
            named = set(words(source.title))
            answering = [
                pair
                for pair in ranked
                if reads_as(intent, pair[1]) and not answers_another(pair[1], question, named)
            ]
            if not answering:
                continue
            # Its next best need not answer too, but must not answer another question.
            ranked = answering[:1] + [
                pair
                for pair in ranked
                if pair not in answering[:1] and not answers_another(pair[1], question, named)
            ]
        taken = 0
        for score, sentence in ranked:
            if taken == PER_SOURCE or len(chosen) == MAX_POINTS or score <= 0:
                break
            terms = {stem(w) for w in words(sentence)}
            if any(len(terms & other) >= 0.8 * min(len(terms), len(other)) for other in seen):
                continue  # MedQuAD repeats passages across its sources
            seen.append(terms)
            chosen.append(Point(score, sentence, source))
            taken += 1
    return chosen


def reads_as(intent: re.Pattern[str], sentence: str) -> bool:
    """Whether ``sentence`` reads like an answer to the intent (``intent_pattern``);
    "Examples of these medicines include aspirin" is no answer about exams."""
    return intent.search(EXAMPLE.sub("", sentence)) is not None


def answers_another(sentence: str, question: Understanding, named: set[str]) -> bool:
    """Whether ``sentence`` reads as the answer to a question that mentions the one asked
    (``MENTIONED_BY``), by its words outside the page's name (``named``: "Albright's
    hereditary osteodystrophy" names no inheritance)."""
    others = MENTIONED_BY.get(question.intents[0], ()) if question.intents else ()
    # A list answers what its lead-in says ("Signs and symptoms ...: Chromosome breakage").
    lead = sentence.split(": ", 1)[0]
    # "For example" is no exam (the exams cue reads "exam..." as asking about tests).
    text = " ".join(w for w in words(EXAMPLE.sub("", lead)) if w not in named)
    return any(BY_NAME[name].cue.search(text) for name in others)


def intent_pattern(intent: Intent | None) -> re.Pattern[str] | None:
    """How a sentence answering ``intent`` reads, if that can be told."""
    return intent.sentence if intent is not None and intent.sentence.pattern else None


def _score(
    sentence: str,
    weight: float,
    position: int,
    topic: set[str],
    intent: re.Pattern[str] | None,
    first: int = FIRST_SENTENCES,
) -> float:
    stems = {stem(w) for w in words(sentence)}
    score = len(stems & topic) / max(1, len(topic)) + (TITLE_BONUS if stems & topic else 0.0)
    if intent is not None and reads_as(intent, sentence):
        score += INTENT_BONUS
    score += 0.5 if position < first else 0.0
    return score * weight


def _inline_list(sentence: str) -> list[str]:
    """A sentence that runs into a list of items, as one line: "include - a - b" is
    "include: a; b" (the words are the source's; only the list's punctuation changes).
    An item the page doubled ("fever -- a rise fever -- a rise") is quoted once; a
    sentence run into the last item ("- low back pain Risk factors for ... include
    smoking.") is a sentence of its own, after the list."""
    items = [_once(item.strip()) for item in BULLET.split(sentence)]
    if len(items) < 3 or (len(items) == 3 and items[2].split(" ")[0] in CONTINUATIONS):
        return [sentence]  # "make saliva - sometimes called spit - and empty it": an aside
    last, after = _run_on(_unrepeated(items))
    items[-1] = last
    listed = f"{items[0].rstrip(' :.')}: {'; '.join(i.rstrip(' .;') for i in items[1:] if i)}."
    return [listed, after] if after else [listed]


def _unrepeated(items: list[str]) -> str:
    """The last item without the whole list the page repeated after it with no marks
    ("... - having blurry eyesight. being very thirsty frequent urination ... having
    blurry eyesight.")."""
    last = items[-1]
    head, _, tail = last.partition(". ")
    listed = " ".join(i.rstrip(" .") for i in [*items[1:-1], head])
    return head if tail and tail.rstrip(" .") == listed else last


def _once(item: str) -> str:
    tokens = item.split()
    half = len(tokens) // 2
    if half and len(tokens) % 2 == 0 and tokens[:half] == tokens[half:]:
        return " ".join(tokens[:half])
    return item


def _run_on(item: str) -> tuple[str, str | None]:
    """``(item, sentence)`` when a sentence (ending the piece, ``MIN_WORDS`` or more)
    starts at a capitalised word inside a list's last item, else ``(item, None)``."""
    tokens = item.split()
    for at in range(1, len(tokens) - MIN_WORDS + 1):
        before, word = tokens[at - 1], tokens[at]
        # After a word in lower case or an abbreviation in brackets: "(CKD) In most cases".
        ends_item = before[:1].islower() or (before[:1] == "(" and before[-1:] == ")")
        if not (word[:1].isupper() and ends_item) or before in SMALL_WORDS:
            continue
        if before[-1:] in ",;:(" or not tokens[-1].endswith((".", "!", "?")):
            continue
        return " ".join(tokens[:at]), " ".join(tokens[at:])
    return item, None


def _is_list(sentence: str) -> bool:
    # Capitalised names ("Genetic Testing Registry: X - MedlinePlus Encyclopedia: Y") are a
    # list of resources, not a statement.
    tokens = sentence.split()
    capitalised = sum(t[:1].isupper() for t in tokens) / len(tokens)
    return capitalised > 0.5 or len(NAMED_ITEM.findall(sentence)) >= 2

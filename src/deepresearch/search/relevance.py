"""How well a passage answers an understood question: the share of it that it covers.

A question is split into parts, each weighed by how much it tells apart: its focus
(the words naming its topic, weighed by their rarity), its intent (a fixed
weight: what is asked matters as much as a rare word), and its other content
words (each weighed by its rarity). A passage earns each part's weight times how
well it meets it:

- focus: 1 if the passage's page is about it (its title is one of the focus's
  pages), 0.8 if its title or question names it, 0.75 if its text does on the page
  of what the focus is a kind of ("Diabetes" for type 2 diabetes), 0.5 if its text
  does elsewhere (a passing mention in another disease's page), else a share of the
  focus words it has;
- intent: how well the passage's question type answers it (``Intent.answers``:
  1 for a treatment passage asked about treatment, less for a related type);
  for a passage with no type (an abstract), 0.75 if its text reads like an answer;
- a content word: 1 if the passage has it (any field), else 0.

The score is what the passage earns over the question's total weight: 1 when it
covers everything the question asks, whatever its length. BM25 (the FTS index)
only gathers candidates and breaks ties; a question whose best passage covers
too little gets no results at all.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass

from deepresearch.search.text import fold, stem
from deepresearch.search.understanding import BY_NAME, Focus, Understanding
from deepresearch.search.vocabulary import Vocabulary, title_names

# The topic outweighs a word said about it: "Is a mini stroke dangerous?" is answered by
# the page on transient ischemic attacks, not by another page that says "dangerous".
FOCUS_FACTOR = 2.0
# Fixed weights are shares of a word found in a single record (9.4 on the shared corpus's
# 17,407 records, 1 on a test's three), so a small corpus scores as a large one does.
INTENT_WEIGHT = 0.45  # what is asked weighs about half a rare word
MIN_FOCUS_WEIGHT = 0.3  # a focus of common words still weighs this much
SECONDARY = 0.5  # a passage answering a later-priority intent
UNTYPED = 0.75  # a passage with no question type whose text reads like an answer
OTHER_TYPE = 0.5  # a passage of another type whose text reads like an answer
MIN_SCORE = 0.6  # below this share of the question, a passage does not answer it
# ... unless it has this much of a long question's rare words (an article's own title
# has words its abstract does not: "a disaster waiting to happen?").
KNOWN_ITEM_WEIGHT, KNOWN_ITEM_SCORE, KNOWN_ITEM_PARTS = 1.3, 0.35, 5
NEAR_BEST = 0.8  # kept: passages within this share of the best one
PARENT_TOPIC = 0.75  # the focus met by the page of what it is a kind of (see _focus_match)
TIE_BREAK = 0.01  # BM25's rank decides between equal coverage


@dataclass(frozen=True)
class Passage:
    """A candidate record, as ranking needs it."""

    n: int
    title: str
    question: str
    question_type: str
    text: str
    mesh: str  # MeSH headings in natural order, "; "-separated ("rheumatoid arthritis")
    bm25_rank: int | None  # its place in the FTS candidates, if it was one

    @classmethod
    def from_row(cls, row: Sequence[object], bm25_rank: int | None) -> Passage:
        n, title, text, extra = row[0], row[1], row[2], row[3]
        fields = json.loads(str(extra)) if extra else {}
        mesh = fields.get("mesh")
        return cls(
            n=int(str(n)),
            title=str(title or ""),
            question=str(fields.get("question") or ""),
            question_type=str(fields.get("question_type") or ""),
            text=str(text),
            mesh=_headings(mesh),
            bm25_rank=bm25_rank,
        )


def _headings(mesh: object) -> str:
    """MeSH headings as names: "Arthritis, Rheumatoid" reads "rheumatoid arthritis"."""
    if not isinstance(mesh, list):
        return ""
    names = (list(title_names(m))[-1] for m in mesh if isinstance(m, str) and m)
    return "; ".join(name for name in names if name)


_SENTENCE = re.compile(r"(?<=[.!?])\s+")


class Scorer:
    """Scores passages against one understood question."""

    def __init__(self, understanding: Understanding, vocabulary: Vocabulary) -> None:
        self.understanding = understanding
        unit = vocabulary.rare_weight
        self._focus: list[tuple[float, Focus, set[str]]] = []
        for focus in understanding.focus:
            weight = FOCUS_FACTOR * sum(vocabulary.idf(stem(w)) for w in focus.words)
            names = vocabulary.names_of(focus.titles) | {focus.name}
            self._focus.append((max(weight, MIN_FOCUS_WEIGHT * unit), focus, names))
        self._terms = [
            (vocabulary.idf(stem(term)), word_forms(term)) for term in understanding.terms
        ]
        self._intent = INTENT_WEIGHT * unit if understanding.intents else 0.0
        self._known_item = KNOWN_ITEM_WEIGHT * unit
        self._topic = sum(w for w, _, _ in self._focus) + sum(w for w, _ in self._terms)
        self._total = self._topic + self._intent

    @property
    def empty(self) -> bool:
        return self._topic <= 0

    def answers(self, score: float) -> bool:
        """Whether a passage with this score answers the question at all."""
        share = score - TIE_BREAK  # at most; the tie-break is no evidence
        parts = len(self._focus) + len(self._terms) + bool(self._intent)
        return share >= MIN_SCORE or (
            parts >= KNOWN_ITEM_PARTS
            and share >= KNOWN_ITEM_SCORE
            and share * self._total >= self._known_item
        )

    def cohesive(self, passage: Passage) -> bool:
        """Whether a short question with no focus is about one thing in the passage: some
        sentence holds two of its words ("best programming language" is not answered
        by a page with "language" in one sentence and "programming" in another)."""
        if self._focus or len(self._terms) < 2 or len(self._terms) + 1 >= KNOWN_ITEM_PARTS:
            return True
        head = fold(f"{passage.title}; {passage.question}; {passage.mesh}")
        for sentence in [head, *_SENTENCE.split(fold(passage.text))]:
            if sum(bool(forms.search(sentence)) for _, forms in self._terms) >= 2:
                return True
        return False

    def score(self, passage: Passage) -> float:
        if self.empty:
            return 0.0
        # An abstract's MeSH headings say what it is about, as a page's title does.
        head = fold(f"{passage.title}; {passage.question}; {passage.mesh}")
        body = fold(passage.text)
        topic = sum(w * _focus_match(passage, f, names, head, body) for w, f, names in self._focus)
        topic += sum(w for w, forms in self._terms if forms.search(head) or forms.search(body))
        # What is asked counts only as far as the passage is about the topic: any passage
        # "is a definition", but only one about the question's topic answers "What is X?".
        intent = self._intent * _intent_match(passage, self.understanding.intents, body)
        earned = topic + intent * topic / self._topic
        tie = TIE_BREAK / (1 + passage.bm25_rank) if passage.bm25_rank is not None else 0.0
        return earned / self._total + tie


# The endings ``stem`` takes off, so a stem finds its word's forms and no other word:
# "treat" finds "treated" and "treatment", "car" does not find "cardiac".
_ENDINGS = (
    "s|es|e|ed|d|ing|y|ies|ied|ment|ments|ness|ion|ions|ation|ations|ational|ity|ities|ive|"
    "ful|ical|ic|ics|al|ally|ly|er|ers"
)


_INFLECTIONS = "s|es|ed|d|ing"
MIN_STEM = 5  # a shorter stem is a prefix of too many words ("car": "care", "cardiac")


def word_forms(word: str) -> re.Pattern[str]:
    """A pattern for ``word``'s forms in folded text."""
    root = stem(word)
    if len(root) >= MIN_STEM:
        return re.compile(rf"\b(?:{re.escape(root)}(?:{_ENDINGS})?|{re.escape(word)})\b")
    return re.compile(rf"\b{re.escape(word)}(?:{_INFLECTIONS})?\b")


_JOINS = r"(?:^|\band |\bof |\bwith |[:;,(] ?)"


def _heads(name: str, head: str) -> bool:
    return bool(name) and re.search(rf"{_JOINS}{re.escape(name)}\b", head) is not None


def _has(name: str, text: str) -> bool:
    return bool(name) and re.search(rf"\b{re.escape(name)}", text) is not None


def _focus_match(passage: Passage, focus: Focus, names: set[str], head: str, body: str) -> float:
    if passage.title in focus.titles:
        return 1.0
    # A title that starts with the name, or names it after "and", "of", ":" is about it
    # too ("High Blood Pressure and Kidney Disease"); one that qualifies it names another
    # disease ("Pulmonary Hypertension" is not hypertension). Names are kept singular.
    if any(_heads(name, head) for name in names):
        return 0.8
    if any(_has(name, body) for name in names):
        # The page of what the focus is a kind of ("Diabetes" for type 2 diabetes) speaks
        # of the kind as part of its subject ("Many people with type 2 diabetes can ..."),
        # not in passing as another disease's page does.
        return PARENT_TOPIC if _is_parent(passage.title, focus) else 0.5
    forms = [word_forms(w) for w in focus.words]
    have = sum(bool(f.search(head) or f.search(body)) for f in forms)
    return 0.4 * have / max(1, len(forms))


def _is_parent(title: str, focus: Focus) -> bool:
    """Whether ``title`` names what the focus is a kind of: the focus's last words,
    fewer than all of them ("Diabetes" of "type 2 diabetes")."""
    named = fold(title).split()
    said = [fold(w) for w in focus.words]
    return 0 < len(named) < len(said) and said[-len(named) :] == named


def _intent_match(passage: Passage, intents: tuple[str, ...], body: str) -> float:
    best = 0.0
    for rank, name in enumerate(intents):
        intent = BY_NAME[name]
        share = 1.0 if rank == 0 else SECONDARY
        reads = bool(intent.sentence.pattern and intent.sentence.search(body))
        if intent.answers and passage.question_type:
            typed = intent.answers.get(passage.question_type, 0.0)
            # A page with no passage of the asked type may still say it ("flu vaccine").
            best = max(best, share * max(typed, OTHER_TYPE if reads else 0.0))
        elif reads:
            best = max(best, share * UNTYPED)
    return best

"""Choosing the sentences of an extractive digest: query variants and sentence ranking.

Deterministic and cheap (no model): the question becomes a few search queries,
the sources found are cut into sentences, and each sentence is scored with BM25
against the question's terms, the term weights taken from the pool of
candidate sentences. Boilerplate is never quoted; conclusions, key points and
sections about what the question asks (its treatment, say) count for more.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from deepresearch.search.synonyms import LAY_TERMS
from deepresearch.tools.base import Source
from deepresearch.tools.search import MAX_QUERIES

WORD = re.compile(r"[a-z0-9]+")
SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9(\"'])")
# "Conclusions: ", "Materials And Methods: ", "Summary : ": a heading, not a sentence's start.
SECTION_LABEL = re.compile(r"^([A-Z][a-z]+(?: (?:[A-Z][a-z]+|and|of)){0,3}) ?:\s+")
BULLET = re.compile(r"\s+-\s+")
NAMED_ITEM = re.compile(r"[A-Z][a-z]+: [A-Z]")  # "Registry: Diabetes", not "CI: 1.2"
# Pointers to elsewhere (links, phone numbers, calls to action) are never evidence.
BOILERPLATE = re.compile(
    r"https?://|www\.|\.(?:gov|org|com|aspx?|html?)\b|\b1-?800\b|\d{3}\)? ?\d{3}-\d{4}|\b1\d{10}\b"
    r"|learn more|these resources|\bclick\b|more information|find out more|read more"
    r"|for more details|\bgo to \W"
    r"|fact sheet|available at|web ?site|toll-free|e-?mail|espa.?ol|would like to thank"
    r"|\bvisit (?:the|our|www|http)|\bcall(?:ing)? (?:the|toll|\d)|\bcontact (?:us|the)\b"
    r"|following list|phenotype ontology|the following\W*$|^see\b|this (?:summary|page|section)",
    re.IGNORECASE,
)
# Where the answer usually is, by a word of the heading: an abstract's conclusions and
# results; its background, aims and methods only set the question up.
SECTION_WEIGHTS = {
    "conclusions": 1.3,
    "results": 1.1,
    "background": 0.8,
    "introduction": 0.8,
    "objective": 0.8,
    "purpose": 0.8,
    "aims": 0.8,
    "methods": 0.7,
}
KEY_POINT_WEIGHT = 1.2  # a fact sheet's "Key Points" bullets: its own summary
STOPWORD_TEXT = (
    "a about after against all also an and any are as at be been before being between both "
    "but by can could did do does doing during each for from had has have having how i if "
    "in into is it its may might more most must my no nor not of on or other our shall "
    "should so some such than that the their them then there these they this those through "
    "to under until very was we were what when where which while who whom whose why will "
    "with would you your"
)
STOPWORDS = frozenset(STOPWORD_TEXT.split())
# What a question asks about a topic, and the words a passage on that aspect is found
# by. Generic aspects only: the topic itself always comes from the question.
INTENTS: dict[str, tuple[str, ...]] = {
    "treatment": ("treatment", "management"),
    "diagnosis": ("diagnosis", "tests"),
    "cause": ("causes",),
    "prevention": ("prevention",),
    "symptom": ("symptoms",),
}
INTENT_WORDS: dict[str, str] = {
    word: intent
    for intent, words in {
        "treatment": "treat treated treating treatment treatments manage managed managing "
        "management therapy therapies cure cured",
        "diagnosis": "diagnose diagnosed diagnosing diagnosis detect detected test tested",
        "cause": "cause caused causes",
        "prevention": "prevent prevented preventing prevention",
        "symptom": "symptom symptoms sign signs",
    }.items()
    for word in words.split()
}
INFLECTIONS = (
    ("sses", "ss"), ("ies", "y"), ("ied", "y"), ("ss", "ss"), ("us", "us"), ("is", "is"),
    ("s", ""), ("eed", "ee"), ("ed", ""), ("ing", ""),
)  # fmt: skip
DERIVATIONS = ("ational", "ation", "ment", "ness", "ion", "ity", "ive", "ful", "ical", "ic",
               "al", "ly", "is")  # fmt: skip
OPEN_WORDS = frozenset(["how", "what", "which", "when", "where", "who", "why"])
MIN_WORDS, MAX_WORDS = 6, 80  # shorter says nothing; longer is a list, not a sentence
PER_SOURCE, MIN_SENTENCES, MAX_SENTENCES = 2, 4, 6
EXTRA_FLOOR = 0.5  # a 5th or 6th sentence must score at least this share of the best
INTENT_WEIGHT = 0.5  # "treatment" matters, but less than the topic it is about
NEXT_FROM_SOURCE = 0.8  # a source's next sentence gives way a little to another source's
K1, B = 1.2, 0.75
RANK_PRIOR = 1.0  # the first source's sentences count twice, the second's 1.5 times, ...


def stem(word: str) -> str:
    """A crude stemmer: "treatment", "treated" and "treats" all become "treat"."""
    if len(word) <= 3 or not word.isalpha():
        return word
    # An inflection, then a derivation, then a final e or y: "managements" -> "manag".
    for suffix, replacement in INFLECTIONS:
        if word.endswith(suffix):
            if len(word) - len(suffix) >= 3:
                word = word[: -len(suffix)] + replacement
            break
    for suffix in DERIVATIONS:
        if word.endswith(suffix) and len(word) - len(suffix) >= 4:
            word = word[: -len(suffix)]
            break
    return word[:-1] if word.endswith(("e", "y")) and len(word) > 4 else word


@dataclass(frozen=True)
class Question:
    text: str
    topic: tuple[str, ...]  # content words that are not an intent: "type", "2", "diabetes"
    intents: tuple[str, ...]  # what it asks about the topic: ("treatment",)

    @classmethod
    def parse(cls, text: str) -> Question:
        every = WORD.findall(text.lower())
        words = [w for w in every if w not in STOPWORDS]
        # Only an open question asks for an aspect ("How is X treated?"); in a yes/no
        # question ("Is X safe in patients treated for Y?") the words are its topic.
        open_question = bool(every) and every[0] in OPEN_WORDS
        asks = [w for w in words if w in INTENT_WORDS] if open_question else []
        intents = dict.fromkeys(INTENT_WORDS[w] for w in asks)
        topic = [w for w in words if w not in asks]
        return cls(text.strip(), tuple(dict.fromkeys(topic)), tuple(intents))

    def variants(self) -> list[str]:
        """The question, its content words, and the topic with each intent's words."""
        content = " ".join(w for w in WORD.findall(self.text.lower()) if w not in STOPWORDS)
        topic = " ".join(self.topic)
        aspects = [f"{topic} {word}" for i in self.intents for word in INTENTS[i]]
        variants: dict[str, str] = {}  # by their words: "Is X?" and "is x" are one query
        lay = self.lay_topic()
        lay_aspects = [f"{lay} {INTENTS[i][0]}" for i in self.intents[:1]] if lay else []
        lay_queries = lay_aspects or ([lay] if lay else [])
        candidates = [self.text, content, *lay_queries, *(aspects if topic else [])]
        for variant in candidates:
            variants.setdefault(" ".join(WORD.findall(variant.lower())), variant)
        return [v for key, v in variants.items() if key][:MAX_QUERIES]  # one search call

    def lay_topic(self) -> str | None:
        """The topic in consumer-health words, when it names a clinical term."""
        topic = " ".join(self.topic)
        lay = topic
        for term, words in LAY_TERMS.items():
            lay = lay.replace(term, words)
        return lay if lay != topic else None

    def weights(self) -> dict[str, float]:
        weights = {stem(w): INTENT_WEIGHT for i in self.intents for w in INTENTS[i]}
        weights.update((stem(w), 1.0) for w in self.topic)
        lay = self.lay_topic()
        if lay:  # the lay words stand in for the term they replace, not beside it
            weights.update((stem(w), 1.0) for w in WORD.findall(lay) if w not in STOPWORDS)
        return weights


@dataclass(frozen=True)
class Candidate:
    score: float
    sentence: str
    source: Source
    terms: frozenset[str]


@dataclass(frozen=True)
class _Unit:
    sentence: str
    stems: Counter[str]
    heading: frozenset[str]  # stems of the heading it sits under ("how might x be treated?")
    weight: float  # what its place in the source is worth
    rank: int  # its source's position in the search results
    source: Source


def select(question: Question, sources: Sequence[Source]) -> list[Candidate]:
    """The digest's sentences, best first: ranked, de-duplicated, at most two per source."""
    chosen: list[Candidate] = []
    per_source: Counter[str] = Counter()
    for candidate in rank(question, sources):
        key = candidate.source.source_id
        if per_source[key] >= PER_SOURCE or any(_alike(candidate, c) for c in chosen):
            continue
        if len(chosen) >= MIN_SENTENCES and candidate.score < EXTRA_FLOOR * chosen[0].score:
            break
        per_source[key] += 1
        chosen.append(candidate)
        if len(chosen) == MAX_SENTENCES:
            break
    return chosen


def rank(question: Question, sources: Sequence[Source]) -> list[Candidate]:
    """Every sentence that mentions the question's topic, best first."""
    weights = question.weights()
    topic = {stem(w) for w in question.topic}
    asked = {stem(w) for i in question.intents for w in INTENTS[i]}
    units = [u for r, s in enumerate(sources) for u in _units(s, r) if topic & u.stems.keys()]
    if not units:
        return []
    df = Counter(t for u in units for t in u.stems.keys() & weights.keys())
    idf = {t: math.log(1 + (len(units) - n + 0.5) / (n + 0.5)) for t, n in df.items()}
    mean_length = sum(u.stems.total() for u in units) / len(units)
    scored: list[tuple[float, Candidate]] = []
    for unit in units:
        norm = K1 * (1 - B + B * unit.stems.total() / mean_length)
        score = sum(
            weights[t] * idf[t] * tf * (K1 + 1) / (tf + norm)
            for t, tf in unit.stems.items()
            if t in idf
        )
        score *= unit.weight * _list_penalty(unit.sentence)
        if asked:
            # Asked how X is treated, a sentence on X that is not about treating it,
            # under a heading that is not either, does not answer.
            score *= 1.3 if asked & unit.heading else 1.0 if asked & unit.stems.keys() else 0.4
        # Search order is a second opinion on relevance, worth less the further down it is.
        score *= 1 + RANK_PRIOR / (1 + unit.rank)
        scored.append((score, Candidate(score, unit.sentence, unit.source, frozenset(unit.stems))))
    scored.sort(key=lambda pair: -pair[0])
    taken: Counter[str] = Counter()
    spread = []
    for score, candidate in scored:
        spread.append((score * NEXT_FROM_SOURCE ** taken[candidate.source.source_id], candidate))
        taken[candidate.source.source_id] += 1
    spread.sort(key=lambda pair: -pair[0])
    return [candidate for _, candidate in spread]


def _units(source: Source, rank: int) -> Iterator[_Unit]:
    heading: frozenset[str] = frozenset()
    weight = 1.0
    for line in source.text.splitlines():
        label = SECTION_LABEL.match(line.strip())
        if label:
            heading = frozenset(stem(w) for w in WORD.findall(label.group(1).lower()))
            weight = max((w for k, w in SECTION_WEIGHTS.items() if stem(k) in heading), default=1.0)
            line = line.strip()[label.end() :]
        for sentence, key_point in _sentences(line):
            if sentence.endswith("?"):
                # A question heading ("How might X be treated?"): what follows answers it.
                heading, weight = frozenset(stem(w) for w in WORD.findall(sentence.lower())), 1.0
                continue
            # A lower-case start is a piece cut at an abbreviation ("e.g. ..."): unquotable.
            words = WORD.findall(sentence.lower())
            if sentence[:1].islower() or not MIN_WORDS <= len(words) <= MAX_WORDS:
                continue
            if not BOILERPLATE.search(sentence):
                stems = Counter(stem(w) for w in words)
                unit_weight = KEY_POINT_WEIGHT if key_point else weight
                yield _Unit(sentence, stems, heading, unit_weight, rank, source)


def _sentences(line: str) -> Iterator[tuple[str, bool]]:
    """The line's sentences, each with whether it is one of a list of key points."""
    for sentence in SENTENCE_END.split(line.strip()):
        items = [item.strip() for item in BULLET.split(sentence)]
        # Bullets that are statements ("Key Points - X is ... - Y may ...") stand alone;
        # bullets that are words ("include - fever - rash") belong to their sentence.
        if len(items) > 1 and all(len(WORD.findall(i)) >= MIN_WORDS for i in items[1:]):
            key_points = items[0].endswith("Key Points")
            yield items[0], False
            yield from ((item, key_points) for item in items[1:])
        else:
            yield sentence.strip(" -\t"), False


def _list_penalty(sentence: str) -> float:
    # Capitalised names ("Genetic Testing Registry: X - MedlinePlus Encyclopedia: Y") are a
    # list of resources, not a statement.
    words = sentence.split()
    capitalised = sum(w[:1].isupper() for w in words) / len(words)
    return 0.3 if capitalised > 0.5 or len(NAMED_ITEM.findall(sentence)) >= 2 else 1.0


def _alike(a: Candidate, b: Candidate) -> bool:
    """Near-identical wording: MedQuAD repeats passages across its sources."""
    overlap = len(a.terms & b.terms) / max(1, min(len(a.terms), len(b.terms)))
    return overlap >= 0.8

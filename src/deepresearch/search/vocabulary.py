"""The index's own vocabulary: the names of what its pages are about, and word rarity.

No hand-written synonym list: every name comes from the corpus. A consumer-health
page's title names its topic ("High Blood Pressure"); the page itself gives the
topic's other names, in the forms NIH writers use: "high blood pressure
(hypertension)", "acute lymphoblastic leukemia (ALL; also called acute lymphocytic
leukemia)", "X, also known as Y, is ...". A name is only taken from the page about
it, so "cancer (leukemia)" on a leukemia page does not make leukemia a name for
cancer. Inverted titles ("Diabetes, Type 2") get their natural order too.

Word rarity (document frequency of each stem) is counted over every record, so a
question's words can be weighed by how much they tell apart.

Built once per index build (``rebuild``), stored in the index's SQLite file, and
read into memory by the first search (``load``).
"""

from __future__ import annotations

import json
import math
import re
import sqlite3
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from deepresearch.search.text import STOPWORDS, singular, stem, words

SCHEMA = """
CREATE TABLE IF NOT EXISTS vocab_names (
    name TEXT NOT NULL,    -- normalised words, space-separated ("high blood pressure")
    title TEXT NOT NULL,   -- the page title it names ("High Blood Pressure")
    kind TEXT NOT NULL     -- 'title', 'alias' or 'acronym' (matched case-sensitively)
);
CREATE TABLE IF NOT EXISTS vocab_df (term TEXT PRIMARY KEY, df INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS vocab_meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""
# Raised when the same corpus would now give a different vocabulary: the next build redoes it.
VERSION = 5
MAX_NAME_WORDS = 8
MAX_LAY_WORDS = 4
MIN_LAY_SEEN = 2
COMMON_SHARE = 0.05  # a word in more than this share of titled records names nothing
MIN_COMMON = 50  # ... and in more than this many (a small corpus has no common words)
# "X (Y)", "X (Y; also called Z)", "X, also called Y, is": what is inside or after names X.
PARENTHESIS = re.compile(r"\(([^()]{2,120})\)")
ALSO_CALLED = re.compile(
    r"\b(?:also|sometimes|often|commonly|formerly|previously)\s+"
    r"(?:called|known\s+as|referred\s+to\s+as|named|termed)\s+([^.;:()]{2,160})"
)
LIST_SPLIT = re.compile(r",\s*(?:or\s+|and\s+)?|\s+or\s+|;\s*")
LEADING = re.compile(r"^(?:also called|also known as|or|and|e\.g\.|i\.e\.|see)\s+", re.I)
ACRONYM = re.compile(r"^[A-Z][A-Z0-9-]{1,9}$")
# Words that join a name to a sentence, never part of one.
CONNECTORS = frozenset(
    [
        "include",
        "includes",
        "including",
        "such",
        "like",
        "called",
        "known",
        "cause",
        "causes",
        "causing",
        "develop",
        "develops",
        "developing",
        "according",
        "click",
        "here",
        "access",
        "contained",
        "involving",
        "especially",
        "particularly",
        "mainly",
        "mostly",
        "usually",
        "often",
    ]
)
NAME_SMALL_WORDS = frozenset(["of", "and", "with", "in", "to"])
ARTICLES = frozenset({"a", "an", "the", "this", "that", "these", "those", "which", "who"})
VERBS = frozenset(
    [
        "is",
        "are",
        "was",
        "were",
        "be",
        "been",
        "being",
        "has",
        "have",
        "had",
        "can",
        "may",
        "might",
        "will",
        "would",
        "do",
        "does",
        "did",
        "causes",
        "cause",
        "called",
        "known",
    ]
)


def name_key(text: str) -> str:
    """The form names are matched in: folded words, each singular ("Tumors" -> "tumor")."""
    return " ".join(singular(w) for w in words(text))


def title_names(title: str) -> Iterator[str]:
    """A title's own names: as written, in natural order, and without a bracketed part."""
    yield name_key(title)
    bare = re.sub(r"\s*\([^)]*\)", "", title).strip()
    if bare != title:
        yield name_key(bare)
    if bare.count(",") == 1:  # "Diabetes, Type 2" -> "Type 2 Diabetes"
        head, tail = (part.strip() for part in bare.split(","))
        if tail and len(tail.split()) <= 3:
            yield name_key(f"{tail} {head}")


def _alias(raw: str) -> tuple[str, str] | None:
    """``(kind, name)`` for a candidate other name, or ``None`` if it is not a name."""
    raw = LEADING.sub("", raw.strip(" \t\"'.,"))
    if ACRONYM.match(raw) and sum(c.isalpha() for c in raw) >= 2:
        return "acronym", raw
    found = words(raw)
    if not found or len(found) > MAX_NAME_WORDS or raw[:1].isdigit():
        return None
    if found[0] in ARTICLES or any(w in VERBS for w in found) or not _phrase(found):
        return None
    if any(c.isdigit() for c in raw) and len(found) == 1:
        return None  # "(2)", "(1990)": a note, not a name
    return "alias", name_key(raw)


def _phrase(found: list[str]) -> bool:
    """Whether words can be a name: no clause or list around it ("including heart attack",
    "in about half of people"), small words only inside ("tetralogy of fallot")."""
    if found[0] in STOPWORDS or found[-1] in STOPWORDS or found[0] in CONNECTORS:
        return False
    inside = [w for w in found[1:-1] if w in STOPWORDS]
    return all(w in NAME_SMALL_WORDS for w in inside) and not any(w in CONNECTORS for w in found)


def _named(before: str, titles: dict[str, set[str]]) -> tuple[str, set[str]] | None:
    """The longest title name that ``before`` ends with, and its titles."""
    tail = [singular(w) for w in words(before[-160:])][-MAX_NAME_WORDS:]
    for k in range(len(tail)):
        name = " ".join(tail[k:])
        if name in titles:
            return name, titles[name]
    return None


def _list(text: str) -> Iterator[tuple[str, str]]:
    """The names in "A, B, or C": stops at the first part that reads as a clause."""
    for part in LIST_SPLIT.split(text):
        alias = _alias(part)
        if alias is None:
            return
        yield alias


def page_aliases(
    title: str, text: str, titles: dict[str, set[str]]
) -> Iterator[tuple[str, str, str]]:
    """Other names that a passage gives a titled topic, as ``(title, kind, name)``.

    "T (Y)" counts on T's own page, or anywhere when T has several words ("high
    blood pressure (hypertension)"); a one-word name in brackets elsewhere is too
    often a gloss ("cancer (leukemia)"). "T, also called Y" counts anywhere.
    """
    own = set(title_names(title))
    for match in PARENTHESIS.finditer(text):
        named = _named(text[: match.start()], titles)
        if named is None:
            continue
        name, named_titles = named
        if name in own:
            chosen = {title}
        elif " " in name and not LIST_SPLIT.search(match.group(1)):
            chosen = named_titles
        else:
            continue
        for kind, alias in _list(match.group(1)):
            yield from ((t, kind, alias) for t in chosen)
    yield from _lay_names(text, titles)
    for match in ALSO_CALLED.finditer(text):
        named = _named(text[: match.start()].rstrip(" ,("), titles)
        if named is None:
            continue
        for kind, alias in _list(match.group(1)):
            if kind == "alias":
                yield from ((t, kind, alias) for t in named[1])


def _lay_names(text: str, titles: dict[str, set[str]]) -> Iterator[tuple[str, str, str]]:
    """ "Y (T)": the words a writer glosses with a title's name are a name for it, "an
    underactive thyroid gland (hypothyroidism)": the run of up to four words before the
    bracket, stopping at a small word. ``rebuild`` keeps those seen more than once."""
    for match in PARENTHESIS.finditer(text):
        inside = name_key(match.group(1))
        if inside not in titles:
            continue
        # Only the clause it ends: "toe, small head size (microcephaly)" names one thing.
        clause = re.split(r"[,;:.()\[\]]", text[max(0, match.start() - 80) : match.start()])[-1]
        before = words(clause)
        run: list[str] = []
        for word in reversed(before[-MAX_LAY_WORDS:]):
            if word in STOPWORDS or word in CONNECTORS or word.isdigit() or word in VERBS:
                break
            run.insert(0, singular(word))
        if len(run) >= 2 and not run[0].endswith("ing"):
            yield from ((t, "lay", " ".join(run)) for t in titles[inside])


@dataclass
class _Counts:
    """One pass over the records: word rarity, and the titled pages."""

    df: Counter[str] = field(default_factory=Counter)  # stem -> records containing it
    stems: dict[str, str] = field(default_factory=dict)  # each distinct word stemmed once
    pages: list[tuple[str, str]] = field(default_factory=list)  # (title, text)
    titles: dict[str, set[str]] = field(default_factory=dict)  # title name -> titles

    def add(self, title: str | None, text: str, heading: str) -> None:
        distinct = set(words(f"{title or ''} {text} {heading}"))
        for word in distinct:
            if word not in self.stems:
                self.stems[word] = stem(word)
        self.df.update({self.stems[w] for w in distinct})
        if title:
            self.pages.append((title, text))
            for name in title_names(title):
                if name:
                    self.titles.setdefault(name, set()).add(title)

    def usable(self, name: str, kind: str) -> bool:
        """Whether a page's other name can name it: not another page's title ("obesity"
        stays Obesity), and with a word rare enough to tell it apart ("chILD" is no
        name for a child, "type 1 and type 2" none for a syndrome)."""
        if kind == "acronym":
            return True
        if not name or name in self.titles:
            return False
        rare = max(MIN_COMMON, COMMON_SHARE * len(self.pages))
        return any(
            self.df[self.stems.get(w) or stem(w)] < rare for w in name.split() if w not in STOPWORDS
        )

    def names(self) -> set[tuple[str, str, str]]:
        """``(name, title, kind)`` for every title and every other name the pages give."""
        found = {(name, t, "title") for name, titles in self.titles.items() for t in titles}
        glosses: Counter[tuple[str, str]] = Counter()
        for title, text in self.pages:
            for t, kind, name in page_aliases(title, text, self.titles):
                if not self.usable(name, kind):
                    continue
                if kind == "lay":
                    glosses[(name, t)] += 1
                else:
                    found.update((n, t, kind) for n in self._with_shorter(name, kind))
        # A gloss seen once may be a writer's paraphrase; twice, it is how people name it.
        for (name, t), seen in glosses.items():
            if seen >= MIN_LAY_SEEN:
                found.update((n, t, "alias") for n in self._with_shorter(name, "alias"))
        return found

    def _with_shorter(self, name: str, kind: str) -> list[str]:
        """The name, and without its last word when it has three: "underactive thyroid
        gland" is also asked as "underactive thyroid"."""
        if kind != "alias" or name.count(" ") < 2:
            return [name]
        shorter = name.rsplit(" ", 1)[0]
        return [name, shorter] if self.usable(shorter, kind) else [name]


def rebuild(conn: sqlite3.Connection) -> None:
    """Recount the vocabulary from every record in ``documents`` (inside one transaction)."""
    conn.executescript(SCHEMA)
    counts = _Counts()
    for title, text, extra in conn.execute("SELECT title, text, extra FROM documents"):
        mesh = json.loads(extra).get("mesh") if extra else None
        heading = " ".join(m for m in mesh if isinstance(m, str)) if isinstance(mesh, list) else ""
        counts.add(title, text, heading)
    names = counts.names()
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute("DELETE FROM vocab_names")
        conn.execute("DELETE FROM vocab_df")
        conn.executemany("INSERT INTO vocab_names VALUES (?, ?, ?)", sorted(names))
        conn.executemany("INSERT INTO vocab_df VALUES (?, ?)", counts.df.items())
        conn.execute("INSERT OR REPLACE INTO vocab_meta VALUES ('version', ?)", (VERSION,))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def is_current(conn: sqlite3.Connection) -> bool:
    """Whether the index holds a vocabulary built by this version."""
    try:
        row = conn.execute("SELECT value FROM vocab_meta WHERE key = 'version'").fetchone()
    except sqlite3.OperationalError:
        return False
    return row is not None and row[0] == VERSION


@dataclass
class Vocabulary:
    """Names to page titles, and word rarity, held in memory for searching."""

    names: dict[str, set[str]] = field(default_factory=dict)  # "hypertension" -> {titles}
    acronyms: dict[str, set[str]] = field(default_factory=dict)  # "ALL" -> {titles}
    df: dict[str, int] = field(default_factory=dict)  # stem -> records containing it
    documents: int = 0
    aliases: dict[str, set[str]] = field(default_factory=dict)  # title -> its names
    bags: dict[str, set[str]] = field(default_factory=dict)  # names' words sorted -> titles

    @classmethod
    def load(cls, conn: sqlite3.Connection) -> Vocabulary:
        vocabulary = cls()
        try:
            rows = conn.execute("SELECT name, title, kind FROM vocab_names").fetchall()
            df = conn.execute("SELECT term, df FROM vocab_df").fetchall()
        except sqlite3.OperationalError:  # an index built before the vocabulary existed
            return vocabulary
        for name, title, kind in rows:
            table = vocabulary.acronyms if kind == "acronym" else vocabulary.names
            table.setdefault(name, set()).add(title)
            if kind != "acronym":
                vocabulary.aliases.setdefault(title, set()).add(name)
                if " " in name:  # "type 2 diabetes" finds "Diabetes Type 2"
                    bag = " ".join(sorted(name.split()))
                    vocabulary.bags.setdefault(bag, set()).add(title)
        vocabulary.df = dict(df)
        vocabulary.documents = conn.execute("SELECT count(*) FROM documents").fetchone()[0]
        return vocabulary

    def idf(self, term: str) -> float:
        """How much a stem tells apart: log of records over records containing it. A word
        in no record weighs as one in a single record: the most the index can tell apart
        (on a three-record corpus, counting it twice as much made any token sink a question)."""
        n = max(1, self.df.get(term, 0))
        return math.log(1 + (self.documents - n + 0.5) / (n + 0.5))

    @property
    def rare_weight(self) -> float:
        """The weight of a word found in one record: the scale of every weight."""
        return self.idf("") if self.documents else 1.0

    def names_of(self, titles: Iterable[str]) -> set[str]:
        return {name for title in titles for name in self.aliases.get(title, ())}

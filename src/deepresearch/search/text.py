"""Words as search and ranking compare them: folded, split, lightly stemmed."""

from __future__ import annotations

import re
import unicodedata

WORD = re.compile(r"[^\W_]+")
# A common English list, plus the words any question is phrased in ("tell", "know"):
# no domain words; what a question asks about is never here.
STOPWORD_TEXT = (
    "a about above after again against all am an and any are as at be because been before "
    "being below between both but by can could did do does doing down during each few for "
    "from further had has have having he her here hers herself him himself his how i if in "
    "into is it its itself just me more most my myself no nor not now of off on once only "
    "or other our ours ourselves out over own same she should so some such than that the "
    "their theirs them themselves then there these they this those through to too under "
    "until up very was we were what when where which while who whom why will with would "
    "you your yours yourself yourselves whether there's what's it's i'm ive im us one "
    "also may might must shall s t"
)
FILLER_TEXT = (
    "tell know explain information info anything something someone somebody person "
    "people patient patients doctor doctors physician physicians get gets getting got "
    "thing things way ways please need want like mean means really usually typically "
    "generally much many kind kinds lot"
)
STOPWORDS = frozenset(STOPWORD_TEXT.split())
FILLER = frozenset(FILLER_TEXT.split())
INFLECTIONS = (
    ("sses", "ss"), ("ies", "y"), ("ied", "y"), ("ss", "ss"), ("us", "us"), ("is", "is"),
    ("s", ""), ("eed", "ee"), ("ed", ""), ("ing", ""),
)  # fmt: skip
DERIVATIONS = ("ational", "ation", "ment", "ness", "ion", "ity", "ive", "ful", "ical", "ic",
               "al", "ly")  # fmt: skip


def fold(text: str) -> str:
    """Case-folded, accents and compatibility forms removed, as the index's tokenizer does."""
    if text.isascii():
        return text.casefold()
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def words(text: str) -> list[str]:
    """The folded words of ``text``; a possessive's "s" goes ("Crohn's" is "crohn")."""
    return WORD.findall(re.sub(r"['\u2019]s\b", "", fold(text)))


def singular(word: str) -> str:
    """A plural's singular, for matching names: "tumors" is "tumor". Applied alike to names
    and questions, so a wrong singular ("diabete") still matches itself."""
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


def stem(word: str) -> str:
    """A crude stemmer: "treatment", "treated" and "treats" all become "treat"."""
    if len(word) <= 3 or not word.isalpha():
        return word
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


def content_words(text: str) -> list[str]:
    """The words that carry meaning: no stopwords, no question filler."""
    return [w for w in words(text) if w not in STOPWORDS and w not in FILLER and len(w) > 1]


def stems(text: str) -> set[str]:
    return {stem(w) for w in words(text)}

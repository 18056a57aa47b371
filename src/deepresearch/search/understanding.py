"""What a question is about (its focus) and what it asks of it (its intent).

"How is hypertension treated?" has the focus *hypertension*, which the index's
vocabulary knows as the page "High Blood Pressure" (``vocabulary.py``: names come
from the corpus), and the intent *treatment*. The intents are the kinds of
question consumer-health pages answer (MedQuAD's question types: treatment,
symptoms, causes, exams and tests, ...) plus what people ask of drugs (side
effects, dosage) and comparisons; each is recognised by how people phrase it,
and says which kinds of passage answer it and how well.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from deepresearch.search.text import FILLER, STOPWORDS, singular, stem, words
from deepresearch.search.vocabulary import MAX_NAME_WORDS, Vocabulary


@dataclass(frozen=True)
class Intent:
    name: str
    cue: re.Pattern[str]  # how a question asks it, on folded text
    answers: dict[str, float]  # passage question types that answer it, and how well
    sentence: re.Pattern[str]  # how a sentence that answers it reads


def _intent(name: str, cue: str, answers: dict[str, float], sentence: str) -> Intent:
    return Intent(name, re.compile(cue), answers, re.compile(sentence, re.IGNORECASE))


# In priority order: a question matching several asks the first ("What mutations
# cause X?" asks about genes, not causes in general).
INTENTS: tuple[Intent, ...] = (
    _intent(
        "side effects",
        r"\bside[- ]?effects?\b|\badverse\b|\bsafe(?:ty)?\b|\btoxicit\w*|\bharm(?:ful)?\b",
        {},
        r"side effects?|adverse|toxicit|harm|risks?\b|safe",
    ),
    _intent(
        "dosage",
        r"\bdos(?:e|es|age|ing)\b|\bhow much\b.*\btake\b|\bhow often\b.*\btake\b",
        {},
        r"\bdos(?:e|es|age|ing)\b|\bmg\b|daily|per day|times a day",
    ),
    _intent(
        "comparison",
        r"\bvs\b|\bversus\b|\bcompared?\b|\bcomparison\b|\bbetter than\b|\bdifference between\b"
        r"|\bdiffer\w*\b|\b(?:the )?same (?:as|thing)\b",
        {},
        r"compared|than|versus|differ|whereas|while",
    ),
    _intent(
        "inheritance",
        r"\binherit\w*|\bhereditary\b|\bpass(?:ed|es|ing)? (?:down|on)\b|\brun\w* in (?:the )?famil"
        r"|\bpass\w*\b.*\b(?:child\w*|kids?|offspring|bab(?:y|ies)|son|daughter|generation)"
        r"|\bgenetic(?:ally)? (?:passed|transmitted)\b|\bin (?:my|the|our) famil"
        r"|\b(?:from|by) (?:(?:my|your|the|their|his|her|a) )?(?:parents?|mother|father)\b"
        r"|\b(?:is|are) (?:it|they|this|\w+(?: \w+){0,5}) genetic\b",
        {"inheritance": 1.0, "genetic changes": 0.4},
        r"inherit|autosomal|x-linked|pattern|parent|famil|copies of the",
    ),
    _intent(
        "genetic changes",
        r"\bgenes?\b|\bgenetic (?:cause|change|basis|defect|mutation|variant)\w*|\bmutat\w*"
        r"|\bchromosom\w*|\bvariants?\b|\bdna\b|\bgenetics\b",
        {"genetic changes": 1.0, "causes": 0.6, "inheritance": 0.3},
        r"\bgenes?\b|mutation|chromosom|variant",
    ),
    _intent(
        "frequency",
        r"\bhow (?:common|rare|frequent|often|prevalent|widespread)\b|\bhow many\b|\bprevalen\w*"
        r"|\bincidence\b|\bfrequen\w*|\b(?:common|rare) is\b|\bnumber of (?:people|cases)\b"
        r"|\bis \w+(?: \w+){0,4} (?:common|rare)\b",
        {"frequency": 1.0},
        r"\bin (?:every|about|approximately|an estimated)?\s*[\d,]+|affects|prevalence|"
        r"incidence|common|rare|estimated",
    ),
    _intent(
        "outlook",
        r"\bprognos\w*|\boutlook\b|\blife expectancy\b|\bsurviv\w*|\blong[- ]term\b|\brecover\w*"
        r"|\bfatal\b|\bdeadly\b|\bdie\b|\bmortality\b|\blive with\b|\bexpect\b",
        {"outlook": 1.0, "information": 0.2},
        r"prognosis|outlook|survival|surviv|life expectancy|lifespan|recover|fatal|\bdie"
        r"|\blive\b|progress|worsen|improve",
    ),
    _intent(
        "complications",
        r"\bcomplicat\w*|\bwhat (?:happens|can happen)\b|\buntreated\b"
        r"|\b(?:not|isn't|is not|never|left) (?:\w+ )?treated\b",
        {"complications": 1.0, "outlook": 0.5},
        r"complication|lead to|result in|can cause|damage|risk",
    ),
    _intent("stages", r"\bstag(?:e|es|ing)\b", {"stages": 1.0}, r"\bstage"),
    _intent(
        "susceptibility",
        r"\bat risk\b|\brisk factors?\b|\bwho gets\b|\bmore likely\b|\bsusceptib\w*"
        r"|\bchances? of (?:getting|developing)\b|\bwho is (?:likely|affected)\b",
        {"susceptibility": 1.0, "causes": 0.5, "prevention": 0.3},
        r"risk|more likely|increase",
    ),
    _intent(
        "prevention",
        r"\bprevent\w*|\bavoid\w*"
        r"|\b(?:lower|reduce|decrease|cut)\w* (?:my|the|your|our) (?:risk|chance)"
        r"|\bprotect\w*|\bvaccin\w*",
        {"prevention": 1.0, "susceptibility": 0.5},
        r"prevent|avoid|lower|reduce|protect|vaccin",
    ),
    _intent(
        "exams and tests",
        r"\bdiagnos\w*|\btests?\b|\btesting\b|\bdetect\w*|\bscreen\w*|\bexam\w*"
        r"|\bcheck\w* for\b|\bconfirm\w*",
        {"exams and tests": 1.0, "information": 0.2},
        r"diagnos|test|exam|detect|screen|scan|biopsy|imaging",
    ),
    _intent(
        "symptoms",
        r"\bsymptoms?\b|\bsigns?\b|\bknow if (?:i|you|they|he|she|my \w+) (?:ha(?:ve|s)|got)\b"
        r"|\bfeel(?:s|ing)?\b|\blook like\b|\bmanifest\w*|\bpresent(?:s|ation)\b|\bwarning\b"
        r"|\bhow (?:do|can|would|will) (?:i|you|we) (?:know|tell)\b",
        {"symptoms": 1.0, "information": 0.2},
        r"symptom|signs?\b|include|feel|may have|experience",
    ),
    _intent(
        "causes",
        r"\bcaus\w*|\blead(?:s)? to\b|\bwhy (?:do|does|did|would)\b|\breasons?\b|\btrigger\w*"
        r"|\betiolog\w*"
        r"|\bhow (?:do|does|did|can) (?:you|people|someone|one|i|a person) (?:get|catch)\b"
        r"|\bwhat makes\b|\bresult(?:s)? in\b|\bbrings? on\b",
        {"causes": 1.0, "genetic changes": 0.7, "susceptibility": 0.4},
        r"caus|due to|result|lead|trigger|because",
    ),
    _intent(
        "treatment",
        r"\btreat\w*|\btherap\w*|\bmanag\w*|\bcur(?:e|es|ed|ing|able)\b|\bremed\w*|\brelie\w*"
        r"|\bcontrol\w*|\bhelps? (?:with|for)\b|\bwhat (?:can|should) (?:i|you|we) (?:do|take)\b"
        r"|\bwhat (?:medicines?|medications?|drugs?|treatments?|pills?)\b",
        {"treatment": 1.0, "considerations": 0.5, "information": 0.1},
        r"\btreat|\btherap|\bmedications?\b|\bmedicines?\b|\bdrugs?\b|\bsurg|\bmanag"
        r"|\btransplant|\brelie(?:f|ve)|\bcontrol",
    ),
    _intent("research", r"\bresearch\w*|\bclinical trials?\b|\bstudies\b", {"research": 1.0}, ""),
    _intent(
        "information",
        r"^(?:what|who)(?: i|'| a)?(?:s|re)?\b|\bdefin\w*|\bmeaning\b|\boverview\b|\bexplain\b"
        r"|\bdescribe\b|\babout\b",
        {"information": 1.0},
        r"\bis an?\b|\bare\b|refers|condition|disorder|disease",
    ),
)
BY_NAME = {intent.name: intent for intent in INTENTS}


@dataclass(frozen=True)
class Focus:
    words: tuple[str, ...]  # the question's words that name it ("high", "blood", "pressure")
    titles: frozenset[str]  # pages about it ("High Blood Pressure")

    @property
    def name(self) -> str:
        return " ".join(self.words)


@dataclass(frozen=True)
class Understanding:
    text: str
    focus: tuple[Focus, ...]
    intents: tuple[str, ...]  # by priority: the first is what is asked
    terms: tuple[str, ...]  # the other content words, folded

    @property
    def intent(self) -> Intent | None:
        return BY_NAME[self.intents[0]] if self.intents else None

    @property
    def titles(self) -> frozenset[str]:
        return frozenset(t for f in self.focus for t in f.titles)


def understand(text: str, vocabulary: Vocabulary) -> Understanding:
    tokens = words(text)
    spans = _focus_spans(text, tokens, vocabulary)
    covered = {i for start, end, _ in spans for i in range(start, end)}
    focus = tuple(Focus(tuple(tokens[s:e]), frozenset(t)) for s, e, t in spans)
    # Asked outside the focus's name ("hereditary" in "Leber hereditary optic neuropathy"
    # asks nothing), unless only the name holds the cue ("what medicines help").
    named = " ".join(w for i, w in enumerate(tokens) if i not in covered)
    intents = tuple(i.name for i in INTENTS if i.cue.search(named))
    if not intents:
        named = " ".join(tokens)
        intents = tuple(i.name for i in INTENTS if i.cue.search(named))
    cue_words = {
        w for intent in INTENTS if intent.name in intents for m in intent.cue.finditer(named)
        for w in words(m.group(0))
    }  # fmt: skip
    terms = [
        w
        for i, w in enumerate(tokens)
        if i not in covered and w not in STOPWORDS and w not in FILLER and w not in cue_words
        and len(w) > 1
    ]  # fmt: skip
    return Understanding(text.strip(), focus, intents, tuple(dict.fromkeys(terms)))


def _focus_spans(
    text: str, tokens: list[str], vocabulary: Vocabulary
) -> list[tuple[int, int, set[str]]]:
    """The longest runs of the question's words that name pages, left to right."""
    keys = [singular(w) for w in tokens]
    acronyms = set(re.findall(r"\b[A-Z][A-Z0-9-]{1,9}\b", text))
    spans: list[tuple[int, int, set[str]]] = []
    start = 0
    while start < len(keys):
        found = None
        for end in range(min(len(keys), start + MAX_NAME_WORDS), start, -1):
            titles = _titles(keys[start:end], tokens[start:end], acronyms, vocabulary)
            if titles:
                found = (start, end, titles)
                break
        if found is None:
            start += 1
            continue
        spans.append(found)
        start = found[1]
    return spans


def _titles(
    keys: list[str], tokens: list[str], acronyms: set[str], vocabulary: Vocabulary
) -> set[str] | None:
    if len(keys) == 1 and tokens[0].upper() in acronyms:  # "ALL", never "all"
        found = vocabulary.acronyms.get(tokens[0].upper())
        if found:
            return found
    if keys[0] in STOPWORDS or keys[-1] in STOPWORDS:
        return None
    if len(keys) == 1:
        word = tokens[0]
        if word in FILLER or any(i.cue.fullmatch(word) for i in INTENTS) or len(word) < 3:
            return None
    name = " ".join(keys)
    titles = vocabulary.names.get(name)
    if titles is None and len(keys) > 1:
        titles = vocabulary.bags.get(" ".join(sorted(keys)))
    return titles


def sentence_stems(text: str) -> set[str]:
    return {stem(w) for w in words(text)}

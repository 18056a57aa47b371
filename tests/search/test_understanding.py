"""Question understanding: focus from the corpus's own vocabulary, intent from phrasing."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from deepresearch.search.understanding import understand
from deepresearch.search.vocabulary import (
    Vocabulary,
    name_key,
    page_aliases,
    rebuild,
    title_names,
)

PAGES = [
    ("High Blood Pressure", "High blood pressure, also called hypertension, is common."),
    ("Adult Acute Lymphoblastic Leukemia", "Adult acute lymphoblastic leukemia (ALL; also "
     "called acute lymphocytic leukemia) is a cancer of the blood."),
    ("Leukemia", "Leukemia is a cancer (a disease of cells) of the blood."),
    ("Diabetes Type 2", "Type 2 diabetes is the most common form of diabetes."),
    ("Heart Attack", "A heart attack (myocardial infarction) happens when blood flow stops."),
    ("Obesity", "Obesity means having too much body fat."),
    ("Stroke", "Risks include heart disease (obesity) and smoking."),
    ("COPD", "COPD is a lung disease that makes it hard to breathe."),
    ("Sickle Cell Anemia", "Sickle cell anemia is a disease of red blood cells."),
    ("Asthma", "Asthma is a chronic disease of the airways."),
    ("Hereditary angioedema", "Hereditary angioedema causes episodes of swelling."),
    ("Hypothyroidism", "Hypothyroidism is a disorder of the thyroid."),
    ("Down Syndrome", "Some people with Down syndrome have an underactive thyroid gland "
     "(hypothyroidism), and some have heart defects, such as toes, small ears (microtia)."),
    ("Turner Syndrome", "Girls with Turner syndrome may have an underactive thyroid gland "
     "(hypothyroidism)."),
]  # fmt: skip


@pytest.fixture
def vocabulary(tmp_path: Path) -> Vocabulary:
    conn = sqlite3.connect(tmp_path / "v.sqlite", isolation_level=None)
    conn.execute("CREATE TABLE documents (n INTEGER PRIMARY KEY, title, text, extra)")
    conn.executemany(
        "INSERT INTO documents (title, text, extra) VALUES (?, ?, '{}')",
        [*PAGES, (None, "Background: an abstract with no title.")],
    )
    rebuild(conn)
    return Vocabulary.load(conn)


def test_names_come_from_titles_and_what_pages_call_themselves(vocabulary: Vocabulary) -> None:
    assert vocabulary.names["hypertension"] == {"High Blood Pressure"}
    assert vocabulary.names["myocardial infarction"] == {"Heart Attack"}
    assert vocabulary.names["acute lymphocytic leukemia"] == {"Adult Acute Lymphoblastic Leukemia"}
    assert vocabulary.acronyms["ALL"] == {"Adult Acute Lymphoblastic Leukemia"}
    # The words writers gloss with a title's name, seen more than once, name it too.
    assert vocabulary.names["underactive thyroid gland"] == {"Hypothyroidism"}
    assert vocabulary.names["underactive thyroid"] == {"Hypothyroidism"}
    # A gloss is not a name, and a title is never another page's other name.
    assert "a disease of cell" not in vocabulary.names
    assert vocabulary.names["obesity"] == {"Obesity"}
    assert list(title_names("Diabetes, Type 2"))[-1] == name_key("Type 2 Diabetes")


def test_page_aliases_need_the_page_s_own_name_before_them() -> None:
    titles = {"leukemia": {"Leukemia"}}
    found = list(page_aliases("Leukemia", "Blood cells (white cells) and cancer.", titles))
    assert found == []


@pytest.mark.parametrize(
    ("question", "titles", "intent"),
    [
        ("How is hypertension treated?", {"High Blood Pressure"}, "treatment"),
        ("What are the warning signs of a myocardial infarction?", {"Heart Attack"}, "symptoms"),
        ("Is type 2 diabetes hereditary?", {"Diabetes Type 2"}, "inheritance"),
        ("Does high blood pressure run in families?", {"High Blood Pressure"}, "inheritance"),
        ("How would I know if I have ALL?", {"Adult Acute Lymphoblastic Leukemia"}, "symptoms"),
        ("What mutations cause acute lymphocytic leukemia?",
         {"Adult Acute Lymphoblastic Leukemia"}, "genetic changes"),
        ("How rare is a heart attack?", {"Heart Attack"}, "frequency"),
        ("What is the life expectancy after a stroke?", {"Stroke"}, "outlook"),
        ("Which tests detect high blood pressure?", {"High Blood Pressure"}, "exams and tests"),
        ("How can I lower my risk of obesity?", {"Obesity"}, "prevention"),
        ("Why do people get leukemia?", {"Leukemia"}, "causes"),
        ("How is COPD managed?", {"COPD"}, "treatment"),
        ("What are the symptoms of an underactive thyroid?", {"Hypothyroidism"}, "symptoms"),
        ("What happens if hypertension is not treated?", {"High Blood Pressure"},
         "complications"),
        ("Is sickle cell anemia passed from parents?", {"Sickle Cell Anemia"}, "inheritance"),
        ("Is asthma genetic?", {"Asthma"}, "inheritance"),
        ("My child has asthma, what medicines help?", {"Asthma"}, "treatment"),
    ],
)  # fmt: skip
def test_focus_and_intent(
    vocabulary: Vocabulary, question: str, titles: set[str], intent: str
) -> None:
    understood = understand(question, vocabulary)
    assert understood.titles == titles
    assert understood.intents[0] == intent


def test_words_outside_the_vocabulary_stay_terms(vocabulary: Vocabulary) -> None:
    understood = understand("What are the side effects of metformin?", vocabulary)
    assert understood.focus == () and understood.terms == ("metformin",)
    assert understood.intents[0] == "side effects"
    # "all" in lower case is a word, not the acronym.
    assert understand("Is it all inherited?", vocabulary).focus == ()


def test_a_cue_inside_the_focus_name_asks_nothing(vocabulary: Vocabulary) -> None:
    # Only the words around the name say what is asked.
    understood = understand("What are the signs of hereditary angioedema?", vocabulary)
    assert understood.titles == {"Hereditary angioedema"}
    assert understood.intents[0] == "symptoms"

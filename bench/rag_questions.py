"""The RAG quality question set: questions with known answers, and the grader.

Asked at the scenario's ``NOW`` (bench/rag_scenario.py: real captures on a fixed
timeline). A question's *expected facts* are addresses, words and numbers. Numbers are
counted by the grader's own SQL over the store (:class:`Count`), written here,
independent of rag/retrieve.py; "alerts" means label >= 2 and a family such as "SYN
flood" means family ``ddos`` over TCP, the meaning the console documents. Its *relevant
events* come from the scenario's ground truth (labels.csv), never the detector's output.

**Grader.** Per question the score is the mean of two checks: *facts* (every expected
fact is in ``Answer.reply``, case-insensitive; an address matches whole, a number as a
whole number, citation ids ``[e12]`` are not numbers) and *citations* (at least one cited
event and at least 80 % of the cited ones relevant; a question whose right answer is
"nothing" must cite nothing). The set's score is the mean over questions, in [0, 1].
Used by bench/rag_quality.py and tests/rag; not part of the product.
"""

from __future__ import annotations

import re
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from bench.rag_scenario import Scenario, clock
from config import MldConfig, load_config
from rag.answer import Answer, Answerer
from rag.console import Console
from rag.hosts import HostNames
from rag.indexed_store import RagStore

__all__ = [
    "HARDER",
    "HOST_NAMES",
    "QUESTIONS",
    "QUICK",
    "At",
    "Count",
    "Graded",
    "Question",
    "Text",
    "ask_all",
    "grade",
    "set_score",
]

_CITED_RELEVANT = 0.8

# -- expected facts ----------------------------------------------------------------------


@dataclass(frozen=True)
class At:
    """A time parameter of a Count: HH:MM on DAY, or "now", plus an offset in seconds."""

    hhmm: str
    offset_s: float = 0.0

    def ts(self, s: Scenario) -> float:
        return (s.now if self.hhmm == "now" else clock(self.hhmm)) + self.offset_s


@dataclass(frozen=True)
class Text:
    """Any one of these spellings must be in the reply (see _whole)."""

    spellings: tuple[str, ...]

    def __init__(self, *spellings: str) -> None:
        object.__setattr__(self, "spellings", spellings)

    def describe(self, s: Scenario | None) -> str:
        return "|".join(self.spellings)

    def found(self, reply: str, s: Scenario | None) -> bool:
        low = reply.lower()
        return any(re.search(_whole(w.lower()), low) for w in self.spellings)


@dataclass(frozen=True)
class Count:
    """A number the reply must state: ``SELECT <what> FROM <table> WHERE <where>`` (the
    events by default; ``blocks``: the firewall decisions the scenario stored)."""

    where: str
    params: tuple[object, ...] = ()
    table: str = "events"
    what: str = "COUNT(*)"

    def value(self, s: Scenario) -> int:
        params = [p.ts(s) if isinstance(p, At) else p for p in self.params]
        (n,) = s.sql(f"SELECT {self.what} FROM {self.table} WHERE {self.where}", params)[0]
        return int(str(n))

    def describe(self, s: Scenario | None) -> str:
        return str(self.value(s)) if s is not None else "a count"

    def found(self, reply: str, s: Scenario | None) -> bool:
        assert s is not None
        return _has_number(reply, self.value(s))


def _whole(word: str) -> str:
    """``word`` where a word starts; an address or number must also end there (an IPv4
    address may be followed by ":port", an IPv6 address by nothing of its own)."""
    start = r"(?<![\w.:])"
    if not any(c.isdigit() for c in word):
        return start + re.escape(word)  # "scan" finds "scans", "scanned", "scanning"
    after = r"[\w:]" if word.count(":") >= 2 else r"\w"  # IPv6; "10:20" finds "10:20:34"
    return rf"{start}{re.escape(word)}(?!{after}|\.\d)"


def _has_number(reply: str, n: int) -> bool:
    # Citation ids, dates, times, addresses and ports are not the numbers asked for.
    text = re.sub(r"\[e\d+\]", " ", reply)
    text = re.sub(r"\b\d{4}-\d{2}-\d{2}(?:[T ]\d{1,2}:\d{2}(?::\d{2})?Z?)?", " ", text)
    text = re.sub(r"\b\d{1,2}:\d{2}(?::\d{2}(?:\.\d+)?)?Z?", " ", text)
    text = re.sub(r"\b(?:\d{1,3}\.){3}\d{1,3}(?::\d+)?", " ", text)
    text = re.sub(r"(?<=\d)[,\u202f](?=\d{3}\b)", "", text)  # 9,705 -> 9705
    return re.search(rf"(?<![\d.]){n}(?!\d|\.\d)", text) is not None


Fact = Text | Count

# -- the questions -----------------------------------------------------------------------

Relevance = Callable[[Scenario], frozenset[int]]

_SCAN = Text("scan", "portscan", "port scan", "probe", "probing", "reconnaissance")
_DDOS = Text("ddos", "flood", "amplification", "reflect", "denial of service")
_NOTHING = Text(
    "no stored event", "no event", "no alert", "nothing", "not seen", "none", "0 events"
)
_NO_ALERTS = Text("0 of them alerts", "0 alerts", "no alert", "benign", "none of them")
_SCANS = (
    "masscan_udp_0_1000",
    "masscan_tcp_0_1000",
    "nmap_80_vanilla",
    "nmap_80_service_detection",
)
_FLOODS = ("syn_dominate_ecn_cwr", "amp_udp_isakmp")
_ALERT = "label >= 2"


def _nothing(_: Scenario) -> frozenset[int]:
    return frozenset()


def _of(*names: str) -> Relevance:
    return lambda s: s.of(*names)


def _window(since: str, until: str = "now") -> Relevance:
    return lambda s: s.window(At(since).ts(s), At(until).ts(s))


@dataclass(frozen=True)
class Question:
    text: str
    kind: str  # count, who, about, time, benign, nothing: for reading the results
    facts: tuple[Fact, ...]
    relevant: Relevance


QUESTIONS: tuple[Question, ...] = (
    Question("which address scanned the server?", "who", (Text("172.31.15.102"),), _of(*_SCANS)),
    Question(
        "how many SYN flood alerts in the last hour?",
        "count",
        (
            Count(
                f"family = 'ddos' AND {_ALERT} AND proto = 6 AND ts >= ? AND ts < ?",
                (At("now", -3600), At("now")),
            ),
        ),
        _of("syn_dominate_ecn_cwr"),
    ),
    Question(
        "what did 172.31.15.102 do?",
        "about",
        (
            _SCAN,
            Text("198.124.152.15"),
            Count("src = ? OR dst = ?", ("172.31.15.102", "172.31.15.102")),
        ),
        _of("masscan_udp_0_1000", "masscan_tcp_0_1000"),
    ),
    Question("what did 192.0.2.99 do?", "nothing", (_NOTHING,), _nothing),
    Question("who attacked 10.10.10.10?", "who", (_DDOS,), _of(*_FLOODS)),
    Question(
        "which address was the target of the SYN flood?",
        "who",
        (Text("10.10.10.10"),),
        _of("syn_dominate_ecn_cwr"),
    ),
    Question(
        "which hosts used a DNS tunnel?",
        "who",
        (Text("10.0.2.20"), Text("10.0.2.30")),
        _of("iodine_elastic"),
    ),
    Question("what happened since 10:30?", "time", (Text("10.10.10.10"), _DDOS), _window("10:30")),
    Question(
        "alerts between 08:00 and 09:30",
        "time",
        (Text("10.87.1.10"), Text("10.0.2.20", "10.0.2.30")),
        _of("nmap_80_vanilla", "nmap_80_service_detection", "iodine_elastic"),
    ),
    Question(
        "what did 192.168.1.178 do?",
        "benign",
        (
            Text("146.48.58.18"),
            Count("src = ? OR dst = ?", ("192.168.1.178", "192.168.1.178")),
            _NO_ALERTS,
        ),
        _of("firefox", "chrome"),
    ),
    Question(
        "how many alerts from 172.31.15.102 today?",
        "count",
        (Count(f"src = ? AND {_ALERT} AND ts >= ?", ("172.31.15.102", At("00:00"))),),
        _of("masscan_udp_0_1000", "masscan_tcp_0_1000"),
    ),
    Question(
        "how many amplification alerts since 10:30?",
        "count",
        (Count(f"family = 'ddos' AND {_ALERT} AND ts >= ?", (At("10:30"),)),),
        _of("amp_udp_isakmp"),
    ),
    Question(
        "how many flows did 172.31.15.102 send to 198.124.152.15?",
        "count",
        (Count("src = ? AND dst = ?", ("172.31.15.102", "198.124.152.15")),),
        _of("masscan_udp_0_1000", "masscan_tcp_0_1000"),
    ),
    Question(
        "how many events were there between 10:00 and 10:30?",
        "count",
        (Count("ts >= ? AND ts < ?", (At("10:00"), At("10:30"))),),
        _window("10:00", "10:30"),
    ),
    Question(
        "how many UDP flood alerts today?",
        "count",
        (Count(f"family = 'ddos' AND {_ALERT} AND proto = 17 AND ts >= ?", (At("00:00"),)),),
        _of("amp_udp_isakmp"),
    ),
    Question(
        "how many port scan alerts in the last hour?",
        "count",
        (Count(f"family = 'scan' AND {_ALERT} AND ts >= ?", (At("now", -3600),)),),
        _of("masscan_tcp_0_1000"),
    ),
    Question(
        "what did 10.87.1.10 do?",
        "about",
        (_SCAN, Text("130.211.223.103")),
        _of("nmap_80_vanilla", "nmap_80_service_detection"),
    ),
    Question(
        "what happened to 198.124.152.15?",
        "about",
        (Text("172.31.15.102"), _SCAN),
        _of("masscan_udp_0_1000", "masscan_tcp_0_1000"),
    ),
    Question(
        "when did the SYN flood start?", "time", (Text("10:20"),), _of("syn_dominate_ecn_cwr")
    ),
    Question(
        "show blocked traffic to 10.10.10.10 in the last 30 minutes",
        "count",
        (Count("dst = ? AND label >= 3 AND ts >= ?", ("10.10.10.10", At("now", -1800))),),
        _of(*_FLOODS),
    ),
    Question(
        "which hosts scanned in the last hour?",
        "who",
        (Text("172.31.15.102"),),
        _of("masscan_tcp_0_1000"),
    ),
    Question("any alerts from 10.8.0.1?", "nothing", (_NOTHING,), _nothing),
    Question(
        "how many events involved 10.8.0.1 today?",
        "benign",
        (Count("(src = ? OR dst = ?) AND ts >= ?", ("10.8.0.1", "10.8.0.1", At("00:00"))),),
        _of("whatsapp_voice_and_message"),
    ),
    Question(
        "what did 10.0.2.30 do?",
        "about",
        (Text("10.0.2.20"), Text("tunnel", "dns")),
        _of("iodine_elastic"),
    ),
)

# -- the harder set (issue 21): phrased the way operators ask ---------------------------
# Several phrasings per intent, misspellings, relative times, host names (HOST_NAMES, as
# rag.host_names would give them), the firewall's decisions, disagreements between the
# fast rules and the forests, follow-ups (asked right after the question before them, in
# one conversation), and questions whose honest answer is "nothing matched".

HOST_NAMES = {"workstation": "192.168.1.178", "vpn-gw": "10.8.0.1", "webserver": "198.124.152.15"}

_SCANNER = Text("172.31.15.102")
_BLOCKED_ADDRS = Count(
    "action = 'block' AND outcome = 'applied'", table="blocks", what="COUNT(DISTINCT addr)"
)
_NOT_BLOCKED = Text("not blocked", "nothing was blocked", "was not blocked")
_NO_DISAGREEMENT = Text("no event where")
_ALL_ATTACKS = (*_SCANS, *_FLOODS, "iodine_elastic")

HARDER: tuple[Question, ...] = (
    # blocks: several phrasings
    Question("was anything blocked?", "blocks", (Text("yes"), _BLOCKED_ADDRS), _of(*_ALL_ATTACKS)),
    Question("did we block anything today?", "blocks", (Text("yes"),), _of(*_ALL_ATTACKS)),
    Question(
        "what did the firewall block in the last hour?",
        "blocks",
        (
            _SCANNER,
            Count(
                "action = 'block' AND outcome = 'applied' AND ts >= ?",
                (At("now", -3600),),
                table="blocks",
                what="COUNT(DISTINCT addr)",
            ),
        ),
        _of(*_ALL_ATTACKS),
    ),
    Question(
        "why was 172.31.15.102 blocked?",
        "blocks",
        (_SCANNER, _SCAN),
        _of("masscan_udp_0_1000", "masscan_tcp_0_1000"),
    ),
    Question(
        "why did the firewall block 172.31.15.102?",
        "blocks",
        (_SCANNER, _SCAN),
        _of("masscan_udp_0_1000", "masscan_tcp_0_1000"),
    ),
    Question(
        "when was 172.31.15.102 unblocked?",
        "blocks",
        (Text("expired"), Text("10:20")),
        _of("masscan_udp_0_1000", "masscan_tcp_0_1000"),
    ),
    Question("was 192.168.1.178 blocked?", "nothing", (_NOT_BLOCKED,), _nothing),
    Question("is 10.10.10.10 blocked?", "nothing", (_NOT_BLOCKED,), _nothing),
    Question("any blocks yesterday?", "nothing", (_NOT_BLOCKED,), _nothing),
    # At 10:45 the last blocks (the reflectors of 10:35, 300 s) have expired.
    Question("what is blocked now?", "nothing", (Text("nothing is blocked now"),), _nothing),
    Question(
        "how many blocks were refused?",
        "blocks",
        (Count("action = 'block' AND outcome != 'applied'", table="blocks"),),
        _of(*_ALL_ATTACKS),
    ),
    Question("did the firewall blokced anyone?", "blocks", (Text("yes"),), _of(*_ALL_ATTACKS)),
    # disagreements
    Question(
        "where did the rules and the models disagree today?",
        "divergent",
        (Count("divergent = 1 AND ts >= ?", (At("00:00"),)), Text("fast rules")),
        _of(*_ALL_ATTACKS),
    ),
    Question(
        "show me disagreements between the fast rules and the forests",
        "divergent",
        (Count("divergent = 1"),),
        _of(*_ALL_ATTACKS),
    ),
    Question(
        "how many divergent events in the last hour?",
        "count",
        (Count("divergent = 1 AND ts >= ?", (At("now", -3600),)),),
        _of(*_ALL_ATTACKS),
    ),
    Question(
        "did the heuristics and the ml disagree on anything yesterday?",
        "nothing",
        (_NO_DISAGREEMENT,),
        _nothing,
    ),
    # follow-ups: each pair or triple is one conversation, asked in this order
    Question(
        "how many scan alerts today?",
        "count",
        (Count(f"family = 'scan' AND {_ALERT} AND ts >= ?", (At("00:00"),)),),
        _of(*_SCANS),
    ),
    Question("and from which hosts?", "followup", (_SCANNER,), _of(*_SCANS)),
    Question("what about yesterday?", "nothing", (_NOTHING,), _nothing),
    Question(
        "which hosts were targeted by the flood?",
        "who",
        (Text("10.10.10.10"),),
        _of(*_FLOODS),
    ),
    Question("and when did it start?", "followup", (Text("10:20"),), _of(*_FLOODS)),
    Question("what did 10.87.1.10 do?", "about", (Text("130.211.223.103"),), _of(*_SCANS)),
    Question(
        "and what about 172.31.15.102?",
        "followup",
        (Count("src = ? OR dst = ?", ("172.31.15.102", "172.31.15.102")), _SCAN),
        _of("masscan_udp_0_1000", "masscan_tcp_0_1000"),
    ),
    # host names
    Question(
        "what did the workstation do?",
        "benign",
        (Text("146.48.58.18"), Count("src = ? OR dst = ?", ("192.168.1.178", "192.168.1.178"))),
        _of("firefox", "chrome"),
    ),
    Question(
        "how many events involved the vpn-gw today?",
        "benign",
        (Count("(src = ? OR dst = ?) AND ts >= ?", ("10.8.0.1", "10.8.0.1", At("00:00"))),),
        _of("whatsapp_voice_and_message"),
    ),
    Question(
        "who scanned the webserver?",
        "who",
        (_SCANNER,),
        _of("masscan_udp_0_1000", "masscan_tcp_0_1000"),
    ),
    Question("was the workstation attacked?", "nothing", (_NOTHING,), _nothing),
    # phrasings, misspellings, relative times
    Question("which adress scaned the server?", "who", (_SCANNER,), _of(*_SCANS)),
    Question("who was scanning us?", "who", (_SCANNER,), _of(*_SCANS)),
    Question(
        "show me the port scans",
        "list",
        (_SCAN, Count(f"family = 'scan' AND {_ALERT}")),
        _of(*_SCANS),
    ),
    Question(
        "how many flod alerts in the past 30 minutes?",
        "count",
        (Count(f"family = 'ddos' AND {_ALERT} AND ts >= ?", (At("now", -1800),)),),
        _of(*_FLOODS),
    ),
    Question(
        "number of syn flood alerts today",
        "count",
        (Count(f"family = 'ddos' AND {_ALERT} AND proto = 6 AND ts >= ?", (At("00:00"),)),),
        _of("syn_dominate_ecn_cwr"),
    ),
    Question(
        "how many alerts in the last 2 hours?",
        "count",
        (Count(f"{_ALERT} AND ts >= ?", (At("now", -7200),)),),
        _of("masscan_tcp_0_1000", *_FLOODS),
    ),
    Question(
        "any attacks in the past 15 minutes?",
        "time",
        (_DDOS, Count(f"{_ALERT} AND ts >= ?", (At("now", -900),))),
        _of("amp_udp_isakmp"),
    ),
    Question(
        "what happened between 06:00 and 07:00?",
        "time",
        (_SCANNER, _SCAN),
        _of("masscan_udp_0_1000"),
    ),
    Question("which hosts attacked us today?", "who", (_SCANNER,), _of(*_ALL_ATTACKS)),
    Question("what did 172.31.15.102 do yesterday?", "nothing", (_NOTHING,), _nothing),
    Question("any brute force attempts against ssh?", "nothing", (_NOTHING,), _nothing),
    Question("show me the brute force attempts against ssh", "nothing", (_NOTHING,), _nothing),
    Question("any lateral movement today?", "nothing", (_NOTHING,), _nothing),
    Question("what did 2001:db8::99 do?", "nothing", (_NOTHING,), _nothing),
    Question(
        "how many events came from 10.87.1.10?",
        "count",
        (Count("src = ?", ("10.87.1.10",)),),
        _of("nmap_80_vanilla", "nmap_80_service_detection"),
    ),
    Question(
        "when did the amplification attack start?",
        "time",
        (Text("10:35"),),
        _of("amp_udp_isakmp"),
    ),
    Question("which address was flooded?", "who", (Text("10.10.10.10"),), _of(*_FLOODS)),
    Question("were there any UDP floods since 10:30?", "time", (_DDOS,), _of("amp_udp_isakmp")),
    Question("tell me about 198.124.152.15", "about", (_SCANNER, _SCAN), _of(*_SCANS)),
)

# The few questions of a --quick run: one of each main intent and the "nothing" case.
QUICK: tuple[Question, ...] = QUESTIONS[:4]

# -- asking and grading ------------------------------------------------------------------


@dataclass(frozen=True)
class Graded:
    """One question's result, with what the grader looked for."""

    question: Question
    reply: str
    cited: tuple[int, ...]
    missing: tuple[str, ...]  # expected facts not in the reply
    relevant_cited: int
    citations_ok: bool
    seconds: float
    # Alerts among the relevant events: 0 means the detector missed the attack, so the
    # RAG could not have found it by its alert filters.
    relevant_alerts: int = 0
    # Why the answerer replaced the model's reply by the facts-only one ("": kept).
    replaced: str = ""

    @property
    def facts_ok(self) -> bool:
        return not self.missing

    @property
    def score(self) -> float:
        return (float(self.facts_ok) + float(self.citations_ok)) / 2


def grade(
    question: Question,
    answer: Answer,
    scenario: Scenario | None,
    relevant: frozenset[int] | None = None,
) -> Graded:
    """Grade one answer. ``relevant`` overrides ``question.relevant(scenario)`` (tests);
    a question with Count facts needs the scenario."""
    if relevant is None:
        assert scenario is not None, "pass the scenario or the relevant ids"
        relevant = question.relevant(scenario)
    missing = tuple(
        f.describe(scenario) for f in question.facts if not f.found(answer.reply, scenario)
    )
    cited = tuple(answer.cited)
    hits = sum(1 for i in cited if i in relevant)
    # When the right answer is "nothing", citing any event is wrong.
    ok = bool(cited) and hits >= _CITED_RELEVANT * len(cited) if relevant else not cited
    alerts = 0
    if scenario is not None and relevant:
        ids = sorted(relevant)
        marks = ",".join("?" * len(ids))
        rows = scenario.sql(
            f"SELECT COUNT(*) FROM events WHERE label >= 2 AND id IN ({marks})", ids
        )
        alerts = int(str(rows[0][0]))
    return Graded(
        question, answer.reply, cited, missing, hits, ok, answer.seconds, alerts, answer.replaced
    )


def ask_all(
    scenario: Scenario,
    answerer: Answerer,
    questions: Sequence[Question] = QUESTIONS,
    *,
    top_k: int | None = None,
    cfg: MldConfig | None = None,
) -> list[Graded]:
    """Ask every question of ``questions`` at the scenario's NOW, in order, in one
    console conversation (follow-ups follow the question before them; a question that
    does not start like a follow-up starts afresh), with HOST_NAMES; graded results. A
    result's ``seconds`` is parse + retrieval + answer."""
    cfg = cfg or load_config()
    rag = RagStore(scenario.db, cfg.rag, readonly=True)
    rag.open_indexes()
    console = Console(
        rag,
        answerer,
        top_k=top_k or cfg.rag.top_k,
        now=scenario.now,
        hosts=HostNames(HOST_NAMES),
    )
    out = []
    try:
        for q in questions:
            started = time.perf_counter()
            answer = console.answer(q.text)
            took = time.perf_counter() - started
            out.append(replace(grade(q, answer, scenario), seconds=took))
    finally:
        rag.close()
    return out


def set_score(results: Sequence[Graded]) -> float:
    """Mean score over the questions, in [0, 1] (nan for none)."""
    return statistics.fmean(g.score for g in results) if results else float("nan")

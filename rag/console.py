"""The console's commands and questions, shared by ``mld rag console`` (interactive),
``mld rag ask`` and the tests.

Lines starting with a command word run that command; anything else is a question::

    alerts [N]       the N most recent alerts (default 10)
    stats            events, alerts by family and label, time span, index sizes
    similar ID [N]   the N events whose flow features are nearest to event ID
    event ID         one event with every stored field
    forget           start a new conversation (the next question is not a follow-up)
    help, quit

The console keeps the conversation: a question that starts like a follow-up ("and from
which hosts?", "what about yesterday?", "only the alerts") is read with the previous
question's filters, replacing only what it says (rag/question.py ``follow_up``). Host
names (rag.host_names, /etc/hosts, the lab's hosts) are read as their addresses.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from google.protobuf.json_format import MessageToDict

from base.terminal import printable
from rag.answer import Answer, Answerer
from rag.hosts import HostNames
from rag.indexed_store import RagStore
from rag.question import Parsed, follow_up, is_followup, parse
from rag.retrieve import retrieve
from rag.store import LABELS, Filters, address_text

__all__ = ["COMMANDS", "Console", "Reply"]

COMMANDS = {
    "alerts": "alerts [N]: the N most recent alerts (10)",
    "stats": "stats: events, alerts by family and label, time span, indexes",
    "similar": "similar ID [N]: events whose flow features are nearest to event ID",
    "event": "event ID: one event with every stored field",
    "forget": "forget: start a new conversation (no follow-up of the last question)",
    "help": "help: this list",
    "quit": "quit (or Ctrl-D)",
}


@dataclass
class Reply:
    text: str
    data: dict[str, Any] = field(default_factory=dict)

    def render(self, as_json: bool) -> str:
        # The text holds strings of stored events (and a model's words): no terminal
        # controls get through; the rows' own fields are escaped whole where they are built.
        return (
            json.dumps(self.data, default=str)
            if as_json
            else printable(self.text, keep_newlines=True)
        )


def _event_id(word: str) -> int:
    word = word.strip().lstrip("[").rstrip("]")
    word = word[1:] if word[:1] in "eE" else word
    if not word.isdigit():
        raise ValueError(f"{word!r} is not an event id (e123 or 123)")
    return int(word)


class Console:
    """Answers lines against one store (read-only) and one answerer."""

    def __init__(
        self,
        rag: RagStore,
        answerer: Answerer,
        *,
        top_k: int = 12,
        now: float | None = None,
        hosts: HostNames | None = None,
    ) -> None:
        self.rag = rag
        self.answerer = answerer
        self.top_k = top_k
        self.now = now
        self.hosts = hosts
        # The last question, for follow-ups.
        self.context: Parsed | None = None

    def handle(self, line: str) -> Reply | None:
        """The reply to one line; None for quit."""
        words = line.strip().split()
        if not words:
            return Reply("", {})
        head = words[0].lower()
        try:
            if head in ("quit", "exit"):
                return None
            if head == "help":
                return Reply(
                    "\n".join(COMMANDS.values()) + "\nanything else: a question",
                    {"commands": COMMANDS},
                )
            if head == "alerts":
                return self.alerts(int(words[1]) if len(words) > 1 else 10)
            if head == "stats":
                return self.stats()
            if head == "forget" and len(words) == 1:
                self.context = None
                return Reply("(new conversation)", {"forgotten": True})
            if head == "similar" and len(words) > 1:
                return self.similar(_event_id(words[1]), int(words[2]) if len(words) > 2 else 10)
            if head == "event" and len(words) > 1:
                return self.event(_event_id(words[1]))
        except ValueError as exc:
            return Reply(f"error: {exc}", {"error": str(exc)})
        return self.ask(line.strip())

    def ask(self, question: str) -> Reply:
        answer = self.answer(question)
        return Reply(answer.text(), answer.to_json())

    def _seen(self, addr: str) -> bool:
        return self.rag.store.count(Filters(addrs=(addr,))) > 0

    def read(self, question: str, now: float) -> Parsed:
        """The question as understood, in the context of the conversation."""
        kw = {"hosts": self.hosts, "seen": self._seen}
        if self.context is not None and is_followup(question):
            return follow_up(self.context, question, now, **kw)
        return parse(question, now, **kw)  # type: ignore[arg-type]

    def answer(self, question: str) -> Answer:
        """Answer one question (and remember it for the follow-ups)."""
        now = self.now if self.now is not None else time.time()
        parsed = self.read(question, now)
        self.context = parsed
        retrieval = retrieve(self.rag.store, self.rag.text, parsed, self.top_k, now)
        return self.answerer.answer(retrieval)

    def alerts(self, n: int) -> Reply:
        rows = self.rag.store.rows(Filters(min_label=2), limit=n, order="ts DESC, id DESC")
        lines = [printable(r.line()) for r in rows] or ["no alerts stored"]
        return Reply("\n".join(lines), {"alerts": [r.to_json() for r in rows]})

    def stats(self) -> Reply:
        store = self.rag.store
        total = store.count()
        span = store.span()
        by_label = dict(store.group("label", limit=10))
        by_family = store.group("family", Filters(min_label=2), limit=10)
        data: dict[str, Any] = {
            "events": total,
            "by_label": {LABELS.get(int(k), k): v for k, v in by_label.items()},
            "alerts_by_family": dict(by_family),
            "first_ts": span[0] if span else None,
            "last_ts": span[1] if span else None,
            "text_index": {"vectors": len(self.rag.text), "kind": self.rag.text.kind},
            "feature_index": {"vectors": len(self.rag.features), "kind": self.rag.features.kind},
            "db": str(store.path),
            "model": self.answerer.model_name or None,
        }
        when = (
            f"{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(span[0]))}Z .. "
            f"{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(span[1]))}Z"
            if span
            else "-"
        )
        text = "\n".join(
            [
                f"events: {total} ({', '.join(f'{k} {v}' for k, v in data['by_label'].items())})",
                "alerts by family: " + (", ".join(f"{k} {v}" for k, v in by_family) or "none"),
                f"time span: {when}",
                f"indexes: text {len(self.rag.text)} ({self.rag.text.kind}), features "
                f"{len(self.rag.features)} ({self.rag.features.kind})",
                f"store: {store.path}",
                f"model: {self.answerer.model_name or 'none'}",
            ]
        )
        return Reply(text, data)

    def similar(self, event_id: int, n: int) -> Reply:
        ev = self.rag.store.event(event_id)
        if ev is None:
            return Reply(f"no event e{event_id}", {"error": f"no event e{event_id}"})
        vector = self.rag.scaler([ev])[0]
        hits = [(i, s) for i, s in self.rag.features.search(vector, n + 1) if i != event_id][:n]
        rows = self.rag.store.get([i for i, _ in hits])
        distance = {i: -s for i, s in hits}
        lines = [f"events nearest to e{event_id} by flow features (L2 distance):"]
        lines += [f"  {distance[r.id]:7.2f}  {printable(r.line())}" for r in rows]
        return Reply(
            "\n".join(lines),
            {
                "event_id": f"e{event_id}",
                "similar": [r.to_json() | {"distance": distance[r.id]} for r in rows],
            },
        )

    def event(self, event_id: int) -> Reply:
        ev = self.rag.store.event(event_id)
        rows = self.rag.store.get([event_id])
        if ev is None or not rows:
            return Reply(f"no event e{event_id}", {"error": f"no event e{event_id}"})
        data = MessageToDict(ev, preserving_proto_field_name=True)
        for part, message in (("record", ev.record), ("flow", ev.verdict.flow)):
            holder = data.get(part) or data.get("verdict", {}).get(part)
            if holder is not None:  # addresses as text, not base64
                for key in ("src_addr", "dst_addr"):
                    holder[key] = address_text(getattr(message, key))
        data["event_id"] = f"e{event_id}"
        data["description"] = rows[0].description
        return Reply(
            printable(rows[0].line()) + "\n" + json.dumps(data, indent=1, default=str), data
        )

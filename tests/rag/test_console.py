"""The console's commands and `mld rag` as a command, without a model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rag.answer import Answerer
from rag.config import RagConfig
from rag.console import Console
from rag.indexed_store import RagStore
from rag.store import Filters
from tests.rag.conftest import NOW, SCANNER
from tests.support import REPO


def test_console_commands(small_store: RagStore) -> None:
    console = Console(small_store, Answerer(RagConfig(), "none"), now=NOW)
    alerts = console.handle("alerts 5")
    assert alerts is not None and len(alerts.data["alerts"]) == 5
    assert all(a["label"] in ("suspicious", "malicious") for a in alerts.data["alerts"])
    stats = console.handle("stats")
    assert stats is not None and stats.data["events"] == small_store.store.count()
    first = alerts.data["alerts"][0]["id"]
    similar = console.handle(f"similar e{first} 3")
    assert similar is not None and len(similar.data["similar"]) == 3
    assert all(s["id"] != first for s in similar.data["similar"])
    event = console.handle(f"event {first}")
    assert event is not None and event.data["record"]["src_addr"] == alerts.data["alerts"][0]["src"]
    assert console.handle("event e999999") is not None
    assert "not an event id" in (console.handle("similar banana") or console.handle("")).text
    assert console.handle("quit") is None


def test_question_through_the_console_cites_real_events(small_store: RagStore) -> None:
    console = Console(small_store, Answerer(RagConfig(), "none"), now=NOW)
    reply = console.handle("which address scanned the server?")
    assert reply is not None
    assert SCANNER in reply.data["reply"] and reply.data["model"] is None
    cited = [int(c[1:]) for c in reply.data["cited"]]
    assert cited and {r.src for r in small_store.store.get(cited)} == {SCANNER}
    assert "no model loaded" in reply.text


def _mld(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mld.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        env=os.environ | {"PYTHONPATH": str(REPO)},
    )


def test_mld_rag_ask_json_and_interactive(small_store: RagStore, tmp_path: Path) -> None:
    db = str(small_store.store.path)
    asked = _mld(
        "rag",
        "ask",
        f"what did {SCANNER} do?",
        "--db",
        db,
        "--now",
        "2026-11-21T10:30:00Z",
        "--no-model",
        "--json",
    )
    assert asked.returncode == 0, asked.stderr
    data = json.loads(asked.stdout)
    assert data["intent"] == "about" and data["facts"]["as_source"] > 900
    # Interactive: lines on stdin, answers on stdout, history written on exit.
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mld.cli",
            "rag",
            "console",
            "--db",
            db,
            "--no-model",
            "--config",
            str(_config(tmp_path)),
        ],
        input="help\nstats\nhow many scan alerts?\nquit\n",
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        env=os.environ | {"PYTHONPATH": str(REPO)},
    )
    assert proc.returncode == 0, proc.stderr
    assert "similar ID" in proc.stdout and "alerts by family" in proc.stdout
    assert "alerts match" in proc.stdout
    missing = _mld("rag", "ask", "hi", "--db", str(tmp_path / "nothing.sqlite"))
    assert missing.returncode == 1 and "no event store" in missing.stderr


def _config(tmp: Path) -> Path:
    path = tmp / "mld.yaml"
    path.write_text(f"node: {{state_dir: {tmp}}}\n")
    return path


EVIL = "\x1b]0;pwned\x07\x1b[2J\n"  # sets the window title, clears the screen, forges a line


def test_console_output_does_not_pass_terminal_controls_from_events(tmp_path: Path) -> None:
    """Attack: a verdict arrives whose family and fast rule carry ESC sequences and a
    newline (a compromised detector or sensor writes what it likes); ``mld rag alerts``,
    ``similar``, ``event`` and ``ask`` printed them raw, driving the operator's terminal.
    The real detection path makes the events; the two strings are then set as an
    attacker would send them, the events stored, and every command's text rendered."""
    from config import load_config
    from detector.analysis import scored_events
    from detector.scoring import default_scorer
    from tests.rag.conftest import SCAN, SCAN_AT

    if not SCAN.exists():
        pytest.skip(f"needs {SCAN}")
    mcfg = load_config()
    scorer = default_scorer(mcfg.detector)
    batches = scored_events([SCAN], mcfg.sniffer, scorer, shift_to=SCAN_AT)
    events = [ev for batch in batches for ev in batch][:40]
    for ev in events:
        ev.verdict.family = f"scan{EVIL}"
        ev.verdict.fast_rule = f"port_scan{EVIL}"
        ev.verdict.label = 2
    rag = RagStore(tmp_path / "events.sqlite", RagConfig())
    try:
        rag.open_indexes()
        rag.ingest(events, "det-test")
        console = Console(rag, Answerer(RagConfig(), "none"), now=NOW)
        first = rag.store.rows(limit=1)[0].id
        for line in ("alerts 5", f"similar e{first} 3", f"event e{first}", "what happened?"):
            reply = console.handle(line)
            assert reply is not None
            text = reply.render(False)
            assert "\x1b" not in text and "\x07" not in text, line
            assert "\\x1b]0;pwned\\x07" in text, line
            # The answer of a question is composed in rag/answer.py: its terminal controls are
            # escaped here, a newline inside an event's string still breaks its line there.
            assert "\\x1b[2J\\n" in text or line.startswith("what"), line
        alerts = console.handle("alerts 5")
        assert alerts is not None and len(alerts.render(False).splitlines()) == 5
    finally:
        rag.close()


def test_disagreements_are_listed_and_explained(small_store: RagStore) -> None:
    console = Console(small_store, Answerer(RagConfig(), "none"), now=NOW)
    answer = console.answer("where did the rules and the models disagree today?")
    n = small_store.store.count(Filters(divergent=True, since_ts=NOW - 10.5 * 3600))
    assert n > 0  # the masscan flows: no fast rule fired, the scan forest is sure
    assert answer.reply.startswith(f"{n} events where the fast rules and the forests disagreed")
    assert "the fast rules (no rule) scored 0.00, the scan forest scored" in answer.reply
    rows = small_store.store.get(answer.cited)
    assert rows and all(r.divergent for r in rows)


def test_the_console_keeps_the_conversation(small_store: RagStore) -> None:
    console = Console(small_store, Answerer(RagConfig(), "none"), now=NOW)
    console.answer("how many scan alerts today?")
    who = console.answer("and from which hosts?")
    assert who.retrieval.parsed.intent == "who" and who.reply.startswith(
        f"The most active source is {SCANNER}"
    )
    none = console.answer("what about yesterday?")
    assert none.retrieval.parsed.filters.families == ("scan",)
    assert none.reply.startswith("No stored event matches") and not none.cited
    console.handle("forget")
    assert console.answer("and from which hosts?").retrieval.parsed.filters.families == ()

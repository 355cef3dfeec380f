"""base/terminal.py: strings from etcd, events and file names printed without driving the
operator's terminal (issue 19, finding 6); the lab monitor's live view through it.

The other print paths are attacked in their own tests: ``mld status`` and ``mld config
list`` (tests/control/test_cli.py), ``mld firewall list`` (tests/firewall/test_cli.py),
the RAG console (tests/rag/test_console.py), ``mld sniffer flows`` and the log lines
(tests/sniffer/test_flows_cli.py).
"""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import pytest

from base.terminal import PrintableFormatter, printable
from control import EtcdServer
from control.cli import gather_status
from control.layout import health_key, service_key
from lab.monitor import PipelineMonitor, render_view
from tests.control.support import client, control_config

EVIL = "\x1b]0;pwned\x07\x1b[2J\n"  # sets the window title, clears the screen, forges a line


def test_printable_escapes_what_drives_a_terminal() -> None:
    assert printable(f"a{EVIL}b") == "a\\x1b]0;pwned\\x07\\x1b[2J\\nb"
    assert printable("cr\rtab\tdel\x7f c1-csi\x9b2J") == "cr\\rtab\\tdel\\x7f c1-csi\\x9b2J"
    # bidi override (reorders what is shown), zero-width space, line separator
    assert printable("x\u202ey\u200bz\u2028") == "x\\u202ey\\u200bz\\u2028"
    assert printable("\udcff") == "\\udcff"  # a lone surrogate from undecodable bytes
    for fine in ("plain text 10.0.0.1:443 -> [::1]:53", "café Ünïcødé 日本語", "nbsp\u00a0x", ""):
        assert printable(fine) == fine
    assert printable(f"one{EVIL}two", keep_newlines=True) == "one\\x1b]0;pwned\\x07\\x1b[2J\ntwo"
    assert printable(42) == "42" and printable(None) == "None"


def test_log_lines_are_one_line_without_controls() -> None:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(PrintableFormatter("%(levelname)s %(name)s: %(message)s"))
    logger = logging.getLogger("tests.terminal")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("cannot open %s", f"bad{EVIL}.pcap")
        try:
            raise ValueError(f"in the traceback{EVIL}")
        except ValueError:
            logger.exception("failed")
    finally:
        logger.removeHandler(handler)
    text = out.getvalue()
    assert "\x1b" not in text and "\x07" not in text
    first, *rest = text.splitlines()
    assert first == "WARNING tests.terminal: cannot open bad\\x1b]0;pwned\\x07\\x1b[2J\\n.pcap"
    assert rest[0] == "ERROR tests.terminal: failed" and rest[1].startswith("Traceback")


@pytest.mark.etcd
def test_lab_monitor_view_escapes_etcd_and_eve_strings(
    etcd_server: EtcdServer, etcd_prefix: str, tmp_path: Path
) -> None:
    """Attack: a service's health state in etcd and an alert category in the EVE log carry
    ESC sequences and a newline; the lab's live view printed them raw on the operator's
    terminal (title changed, screen cleared, lines forged). The monitor reads real etcd
    through ``gather_status`` (as ``Stack.status`` does) and the EVE file the detector
    appends to; the rendered view holds no terminal control."""
    etcd = client(etcd_server)
    eve = tmp_path / "alerts.json"
    alert = {
        "event_type": "alert",
        "src_ip": f"10.0.0.9{EVIL}",
        # The EVE log names the family in the alert's metadata (detector/eve.py).
        "alert": {"category": EVIL, "metadata": {"ml_family": [EVIL]}},
    }
    eve.write_text(json.dumps(alert) + "\n")
    control = control_config(etcd_server, etcd_prefix)
    try:
        etcd.put(service_key(etcd_prefix, "sniffer", "s1"), json.dumps({"host": "h"}))
        etcd.put(
            health_key(etcd_prefix, "sniffer", "s1"),
            json.dumps({"state": f"ok{EVIL}", "ts": 4e9, "counters": {}}),
        )
        monitor = PipelineMonitor(
            lambda: gather_status(etcd, control),
            eve,
            tmp_path / "no-decisions.sqlite",
            tmp_path / "no-pins",
        )
        try:
            monitor.sample(now=1.0)
            view = render_view(monitor, "lab", 1.0, 10.0, [], 0.0, [])
        finally:
            monitor.close()
    finally:
        etcd.close()
    assert "\x1b" not in view and "\x07" not in view
    assert "ok\\x1b]0;pwned\\x07\\x1b[2J\\n" in view
    assert "\\x1b]0;pwned\\x07\\x1b[2J\\n 1" in view  # the alert family and its count
    assert len(view.splitlines()) == 11  # nothing forged

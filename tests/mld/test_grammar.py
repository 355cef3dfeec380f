"""mld.grammar.resolve: old command lines in, the new ones out; new ones untouched."""

from __future__ import annotations

import pytest

from mld.cli import build_parser
from mld.grammar import resolve, value_options

TAKES_VALUE = value_options(build_parser())


@pytest.mark.parametrize(
    ("old", "new", "alias"),
    [
        ("sniff --iface eth0", "sniffer run --iface eth0", "sniff"),
        ("-v --config m.yaml detect --json", "-v --config m.yaml detector run --json", "detect"),
        ("--config=m.yaml analyze a.pcap", "--config=m.yaml detector analyze a.pcap", "analyze"),
        ("keygen --out k --force", "keys new k --force", "keygen --out"),
        ("keygen --show=k --json", "keys show k --json", "keygen --show"),
        ("rag", "rag console", "rag"),
        ("rag --db e.sqlite --no-model", "rag console --db e.sqlite --no-model", "rag"),
        ("rag --db e.sqlite --ask hi --json", "rag ask hi --db e.sqlite --json", "rag --ask"),
        ("rag --ask=hi", "rag ask hi", "rag --ask"),
        ("rag --db e.sqlite serve --listen x", "rag --db e.sqlite run --listen x", "rag serve"),
        ("anomaly --json serve", "anomaly --json run", "anomaly serve"),
        ("watch /srv/drop --once", "watch run /srv/drop --once", "watch DIR"),
        ("watch --db e.sqlite --once /srv", "watch run --db e.sqlite --once /srv", "watch DIR"),
        (
            "gateway --outside a --inside b",
            "gateway run --outside a --inside b",
            "gateway --outside",
        ),
    ],
)
def test_old_spellings(old: str, new: str, alias: str) -> None:
    words, used = resolve(old.split(), TAKES_VALUE)
    assert words == new.split()
    assert used is not None and used.old == alias


@pytest.mark.parametrize(
    "line",
    [
        "",
        "--help",
        "rag --help",
        "rag --db e.sqlite alerts 5",
        "rag ask hi",
        "watch --help",
        "watch run /srv --once",
        "watch --db e.sqlite run /srv",
        "gateway -h",
        "gateway run --outside a --inside b",
        "anomaly train",
        "detector analyze train.pcap",
        "--config train sniffer flows detect.pcap",
        "lab run syn_flood",
    ],
)
def test_new_spellings_are_left_alone(line: str) -> None:
    assert resolve(line.split(), TAKES_VALUE) == (line.split(), None)

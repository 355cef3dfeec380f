"""Label files: the shared format reads, lab windows match exactly the flows they should."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import numpy as np

from detector.families import BENIGN
from detector.labels import LabelRow, label_flows, read_labels, write_labels
from tests.support import SHARED_DATA


def _b(addr: str) -> bytes:
    return ipaddress.ip_address(addr).packed


def _label(
    rows: list[LabelRow], flows: list[tuple[str, str, int, int, int, float, float]]
) -> list[str]:
    src = [_b(f[0]) for f in flows]
    dst = [_b(f[1]) for f in flows]
    cols = [np.array([f[i] for f in flows]) for i in (2, 3, 4)]
    t0 = np.array([int(f[5] * 1e9) for f in flows], dtype=np.uint64)
    t1 = np.array([int(f[6] * 1e9) for f in flows], dtype=np.uint64)
    _family, label = label_flows(rows, src, dst, *cols, t0, t1)
    return label.tolist()


FLOOD = LabelRow(
    pcap="capture.pcap", family="ddos", attack_hosts="203.0.113.66", scope="window",
    label="syn_flood", target_hosts="10.10.0.10", ports="80", proto="tcp",
    start="1000.0", end="1010.0",
)  # fmt: skip


def test_window_rows_match_host_port_proto_and_time() -> None:
    flows = [
        ("203.0.113.66", "10.10.0.10", 40000, 80, 6, 1005.0, 1005.1),  # the flood
        ("10.10.0.10", "203.0.113.66", 80, 40001, 6, 1005.0, 1005.1),  # seen from the reply
        ("203.0.113.66", "10.10.0.10", 40002, 22, 6, 1005.0, 1005.1),  # another port
        ("203.0.113.66", "10.10.0.10", 40003, 80, 17, 1005.0, 1005.1),  # UDP
        ("203.0.113.10", "10.10.0.10", 40004, 80, 6, 1005.0, 1005.1),  # the benign client
        ("203.0.113.66", "10.10.0.10", 40005, 80, 6, 1020.0, 1021.0),  # after the window
        ("203.0.113.66", "10.10.0.10", 40006, 80, 6, 990.0, 1000.5),  # overlaps its start
        ("203.0.113.66", "10.10.0.10", 0, 0, 6, 1005.0, 1005.1),  # a later IP fragment
    ]
    assert _label([FLOOD], flows) == [
        "syn_flood", "syn_flood", BENIGN, BENIGN, BENIGN, BENIGN, "syn_flood", "syn_flood",
    ]  # fmt: skip


def test_forged_random_sources_exclude_the_lab_hosts() -> None:
    row = LabelRow(
        pcap="c.pcap", family="ddos", attack_hosts="*", scope="window", label="syn_flood",
        target_hosts="10.10.0.10", ports="80", proto="tcp", start="0", end="10",
        exclude_hosts="203.0.113.10;203.0.113.66",
    )  # fmt: skip
    flows = [
        ("45.1.2.3", "10.10.0.10", 1234, 80, 6, 5.0, 5.0),
        ("203.0.113.10", "10.10.0.10", 1234, 80, 6, 5.0, 5.0),
    ]
    assert _label([row], flows) == ["syn_flood", BENIGN]


def test_write_then_read_round_trips(tmp_path: Path) -> None:
    write_labels(tmp_path / "labels.csv", [FLOOD])
    assert read_labels(tmp_path / "labels.csv") == [FLOOD]


def test_the_shared_labels_file_reads() -> None:
    rows = read_labels(SHARED_DATA / "labels.csv")
    assert len(rows) >= 10
    assert {r.scope for r in rows} <= {"all_flows", "flows_from_attacker"}
    scan = next(r for r in rows if r.scope == "flows_from_attacker")
    host = scan.attack_hosts.split(";")[0]
    flows = [(host, "192.0.2.1", 1, 2, 6, 0.0, 0.0), ("192.0.2.9", "192.0.2.1", 1, 2, 6, 0.0, 0.0)]
    assert _label([scan], flows) == [scan.family, BENIGN]

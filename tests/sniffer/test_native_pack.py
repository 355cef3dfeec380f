"""The sniffer's packed rows made in C from the flow engine's events (native
``events_to_rows``, ``flow_columns(packed=True)``) against the NumPy path they replace
(``flow_columns`` + ``pack_records`` a column at a time): the same columns, the same
addresses and byte-for-byte the same rows, on real captures (IPv4 and IPv6, TCP, UDP,
ICMP, DNS, fragments, interim records), with the context and fast scores of a real
pipeline filled in."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

import native
from config import load_config
from proto.flowpack import PACKED_DTYPE
from sniffer.pipeline import FlowPipeline
from sniffer.records import flow_columns, pack_records
from sniffer.sources import PcapSource
from tests.support import SHARED_DATA

CAPTURES = [
    SHARED_DATA / "pcaps/ndpi/dns-exf.pcap",
    SHARED_DATA / "pcaps/ndpi/http_ipv6.pcap",
    SHARED_DATA / "pcaps/attacks/scan/masscan_tcp_0_1000.pcap",
    SHARED_DATA / "pcaps/ndpi/reddit.pcap",
    SHARED_DATA / "pcaps/suricata-verify/bug-4663-03__icmp_and_ssh.pcap",
    SHARED_DATA / "pcaps/ndpi/1kxun.pcap",
    SHARED_DATA / "pcaps/ndpi/ip_fragmented_garbage.pcap",
    SHARED_DATA / "pcaps/ndpi/smb_frags.pcap",
    SHARED_DATA / "pcaps/ndpi/dns_long_domainname.pcap",
]


def _events(path: Path, interim_s: float = 0.0) -> list[tuple[np.ndarray, str]]:
    if not path.exists():
        pytest.skip(f"{path} is not in the shared data")
    capture = load_config().sniffer.capture
    if interim_s:
        capture = replace(capture, interim_s=interim_s)
    source = PcapSource([path], capture)
    return [(ev, obs) for ev, obs in [*source.batches(), *source.flush()] if len(ev)]


def _same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return bool(np.ascontiguousarray(a).tobytes() == np.ascontiguousarray(b).tobytes())


@pytest.mark.parametrize("path", CAPTURES, ids=lambda p: p.name)
def test_native_rows_equal_the_numpy_path(path: Path) -> None:
    scfg = load_config().sniffer
    pipeline = FlowPipeline(scfg)
    batches = _events(path)
    assert batches
    rules_seen: set[str] = set()
    for events, obs in batches:
        old = flow_columns(events, obs)
        new = flow_columns(events, obs, packed=True)
        assert new.rows is not None and old.rows is None
        assert new.src_addr == old.src_addr and new.dst_addr == old.dst_addr
        assert set(new.cols) == set(old.cols)
        for name, col in old.cols.items():
            assert new[name].dtype == col.dtype, name
            assert _same_bits(new[name], col), name
        assert _same_bits(new.dns_entropy, old.dns_entropy)
        # The real context, verified sources and fast scores of this batch, then both
        # ways of packing them: the same bytes in every column.
        done = pipeline.process(events, obs, encode=False)
        args = (done.context, done.scores.score, done.scores.rule, done.src_verified)
        want = pack_records(old, *args)
        got = pack_records(new, *args)
        assert got.rows.dtype == PACKED_DTYPE
        assert got.strings == want.strings
        # The rule names as np.unique made them before (sorted, indexes from 1).
        names, index = np.unique(
            np.asarray(done.scores.rule, dtype=object).astype(str), return_inverse=True
        )
        assert got.strings == [obs, *names.tolist()]
        np.testing.assert_array_equal(got.rows["fast_rule"], index + 1)
        rules_seen.update(names.tolist())
        for name in PACKED_DTYPE.names or ():
            assert _same_bits(got.rows[name], want.rows[name]), name
    if path.name == "masscan_tcp_0_1000.pcap":
        assert len(rules_seen) >= 2  # "" and a rule that fired


def test_interim_records_and_handshake_flags_come_out_of_the_native_rows() -> None:
    """Interim records (a 1 s interval over a long capture) keep their flag bit and the
    same rows as the NumPy path, so the detector never takes them for final records."""
    batches = _events(SHARED_DATA / "pcaps/ndpi/webex.pcap", interim_s=1.0)
    seen_interim = seen_verified = 0
    for events, obs in batches:
        want = pack_records(flow_columns(events, obs))
        got = pack_records(flow_columns(events, obs, packed=True))
        assert _same_bits(got.rows, want.rows)
        seen_interim += int(np.count_nonzero(got.rows["flags"] & 8))
        seen_verified += int(np.count_nonzero(got.rows["flags"] & 1))
    assert seen_interim > 0 and seen_verified > 0


def test_events_to_packed_refuses_other_arrays() -> None:
    with pytest.raises(TypeError, match="EVENT_DTYPE"):
        native.events_to_packed(np.zeros(3, dtype=PACKED_DTYPE))
    rows, src, dst = native.events_to_packed(np.zeros(0, dtype=native.EVENT_DTYPE))
    assert len(rows) == 0 and src == [] and dst == []

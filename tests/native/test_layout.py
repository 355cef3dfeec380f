"""native.structs mirrors flow_types.h byte for byte; constants match the header and schema."""

from __future__ import annotations

import ctypes as ct
import re

import numpy as np
import pytest

import native
from native import structs
from tests.support import REPO


@pytest.mark.parametrize("name", sorted(structs.STRUCTS))
def test_members_tile_every_struct(name: str) -> None:
    s = structs.STRUCTS[name]
    owner = [""] * s.size
    for m in s.members:
        for b in range(m.offset, m.offset + m.size * m.count):
            assert owner[b] == "", f"{name}: byte {b} is in {owner[b]} and {m.name}"
            owner[b] = m.name
    assert "" not in owner, (
        f"{name}: bytes not covered: {[i for i, o in enumerate(owner) if not o]}"
    )
    # Multiples of 8, but for the kernel's LPM trie key ABI (u32 prefix length + 16 bytes).
    assert s.size % 8 == 0 or (name, s.size) == ("mld_lpm_key", 20)
    cls = structs.ctype(name)
    assert ct.sizeof(cls) == s.size
    assert [f[0] for f in cls._fields_] == [m.name for m in s.members]
    assert structs.dtype(name).itemsize == s.size
    assert structs.PAD not in (structs.dtype(name).names or ())


def test_event_dtype_is_the_flattened_event() -> None:
    assert native.EVENT_DTYPE is structs.EVENT_DTYPE
    assert native.EVENT_DTYPE.itemsize == structs.STRUCTS["mld_flow_event"].size == 408
    ev = structs.ctype("mld_flow_event")
    state = ev.state.offset
    dir_size = ct.sizeof(structs.ctype("mld_dir_stats"))
    fields = native.EVENT_DTYPE.fields or {}
    assert fields["port_hi"][1] == ev.key.offset + structs.ctype("mld_flow_key").port_hi.offset
    assert fields["flags"][1] == state + structs.ctype("mld_flow_state").flags.offset
    bwd = state + structs.ctype("mld_flow_state").dir.offset + dir_size
    assert fields["bwd_last_ts_ns"][1] == bwd + structs.ctype("mld_dir_stats").last_ts_ns.offset
    assert "pad" not in fields


def test_constants_are_every_integer_define_of_flow_types_h() -> None:
    text = (REPO / "xdp" / "flow_types.h").read_text()
    defined = set(re.findall(r"^#define (MLD_[A-Z0-9_]+) +\(?\d", text, re.MULTILINE))
    assert "MLD_MAX_ACTIVE_TIMEOUT_NS" in defined and "MLD_BLOCK_NEVER" in defined
    assert set(structs.CONSTANTS) == defined
    assert structs.CONSTANTS["MLD_MAX_ACTIVE_TIMEOUT_NS"] == 3600 * 10**9
    assert structs.CONSTANTS["MLD_F_FIN_BWD"] == 0x04


def test_unknown_struct_names_the_known_ones() -> None:
    with pytest.raises(KeyError, match="mld_flow_key"):
        structs.ctype("mld_nothing")


def test_dtype_fields() -> None:
    dt = native.EVENT_DTYPE
    assert dt["addr_lo"] == np.dtype(("u1", (16,)))
    assert dt["dns_qname"] == np.dtype(("u1", (48,)))
    assert dt["port_lo"] == np.dtype("u2")
    assert dt["fwd_packets"] == np.dtype("u8")
    assert dt["bwd_init_window"] == np.dtype("u4")
    names = list(dt.names or ())
    assert names[:6] == ["addr_lo", "addr_hi", "port_lo", "port_hi", "protocol", "ip_version"]
    for d in ("fwd_", "bwd_"):
        for f in ("packets", "bytes", "payload_bytes", "len_sumsq", "iat_sum_ns", "iat_min_ns",
                  "iat_max_ns", "iat_sumsq", "last_ts_ns", "len_min", "len_max", "syn", "fin",
                  "rst", "psh", "ack", "urg", "ece", "cwr", "init_window"):  # fmt: skip
            assert d + f in names
    start = names.index("first_ts_ns")
    assert names[start : start + 11] == [
        "first_ts_ns",
        "last_ts_ns",
        "flags",
        "vlan_id",
        "icmp_type",
        "icmp_code",
        "end_reason",
        "dns_qname_len",
        "dns_queries",
        "dns_qname_len_sum",
        "dns_qname",
    ]
    # Issue 19: after the DNS fields, the fragment counters (finding 3) and then the
    # handshake's ISNs (finding 1), then the time of the latest interim record (issue 18).
    frag = ["frag_count", "tiny_frag_count", "overlap_frag_count", "frag_id", "frag_lo", "frag_hi"]
    tail = [*frag, "init_isn", "resp_isn", "interim_ts_ns"]
    assert names[names.index("dns_qname") + 1 :] == tail


def test_end_reasons_equal_proto() -> None:
    from proto import events_pb2

    reasons = events_pb2.EndReason
    assert reasons.Value("END_REASON_FIN") == native.END_FIN
    assert reasons.Value("END_REASON_RST") == native.END_RST
    assert reasons.Value("END_REASON_IDLE_TIMEOUT") == native.END_IDLE_TIMEOUT
    assert reasons.Value("END_REASON_ACTIVE_TIMEOUT") == native.END_ACTIVE_TIMEOUT
    assert reasons.Value("END_REASON_EVICTED") == native.END_EVICTED
    assert reasons.Value("END_REASON_CAPTURE_END") == native.END_CAPTURE_END


def test_supported_linktypes() -> None:
    names = native.supported_linktypes()
    for lt in ("EN10MB", "RAW", "LINUX_SLL", "LINUX_SLL2", "NULL", "LOOP", "PPP", "C_HDLC"):
        assert lt in names
    assert "unknown" not in names

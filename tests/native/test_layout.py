"""EVENT_DTYPE mirrors struct mld_flow_event byte for byte; constants match the schema."""

from __future__ import annotations

import numpy as np

import native
from native import _flowengine


def test_every_non_pad_byte_is_one_field() -> None:
    itemsize, fields, pads = _flowengine.layout()
    owner = [""] * itemsize
    for name, offset, size, count in [*fields, *pads]:
        for b in range(offset, offset + size * count):
            assert owner[b] == "", f"byte {b} is in {owner[b]} and {name}"
            owner[b] = name
    assert "" not in owner, f"bytes not covered: {[i for i, o in enumerate(owner) if not o]}"
    assert native.EVENT_DTYPE.itemsize == itemsize == 368
    pad_names = {p[0] for p in pads}
    assert not pad_names & set(native.EVENT_DTYPE.names or ())


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
    assert names[-11:] == [
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

"""Offline flow engine: capture files through xdp/flow.h into NumPy arrays of flows.

The C extension ``native._flowengine`` compiles the same ``xdp/flow.h`` the XDP program
uses, so a capture read here and the same traffic seen live give the same counters::

    engine = FlowEngine(idle_timeout_s=30, active_timeout_s=300)
    for path in rotated_captures:
        try:
            for events in engine.feed_file(path):   # arrays of EVENT_DTYPE, never empty
                handle(events)
        except UnsupportedLinkType as exc:           # report and skip the file
            log.warning("%s", exc)
        except CaptureError as exc:                  # corrupt file: flows so far are kept
            log.warning("%s", exc)
    handle(engine.finish())                          # flows still open: CAPTURE_END

The layouts of flow.h's structs reach Python one way, through :mod:`native.structs`
(EVENT_DTYPE here is that module's).

Build: ``make install`` (native/setup.py, ``build_ext --inplace``).
"""

from __future__ import annotations

import os
from collections.abc import Generator
from typing import Any

import numpy as np
import numpy.typing as npt

from native import _flowengine
from native.errors import CaptureError, UnsupportedLinkType
from native.structs import CONSTANTS, EVENT_DTYPE
from proto.flowpack import ENCODE_OPS, FLAG_BITS, PACKED_DTYPE

__all__ = [
    "END_ACTIVE_TIMEOUT",
    "END_CAPTURE_END",
    "END_EVICTED",
    "END_FIN",
    "END_IDLE_TIMEOUT",
    "END_RST",
    "EVENT_DTYPE",
    "CaptureError",
    "FlowEngine",
    "PackedEvents",
    "UnsupportedLinkType",
    "events_to_packed",
    "flow_ids",
    "packed_record_bytes",
    "supported_linktypes",
]

# End reasons (MLD_END_* in xdp/flow_types.h, equal to mld.v1.EndReason).
END_FIN: int = CONSTANTS["MLD_END_FIN"]
END_RST: int = CONSTANTS["MLD_END_RST"]
END_IDLE_TIMEOUT: int = CONSTANTS["MLD_END_IDLE_TIMEOUT"]
END_ACTIVE_TIMEOUT: int = CONSTANTS["MLD_END_ACTIVE_TIMEOUT"]
END_EVICTED: int = CONSTANTS["MLD_END_EVICTED"]
END_CAPTURE_END: int = CONSTANTS["MLD_END_CAPTURE_END"]

_READ_MORE, _READ_EOF, _READ_ERROR = 0, 1, 2
_OPEN_FAILED, _OPEN_LINKTYPE = 1, 2


def supported_linktypes() -> list[str]:
    """Names (pcap_datalink_val_to_name) of the link types feed_file() decodes."""
    return _flowengine.supported_linktypes()


def flow_ids(events: npt.NDArray[np.void]) -> npt.NDArray[np.uint64]:
    """One 64-bit id per flow: FNV-1a 64 over the event's 40 key bytes (struct mld_flow_key
    as laid out in memory, ports in host order, its 2 pad bytes taken as 0) followed by
    first_ts_ns as 8 little-endian bytes. Both directions of a flow share the key, so the id
    names the flow record (an interim record and its flow's final record share it)."""
    if events.dtype != EVENT_DTYPE:
        raise TypeError(f"flow_ids expects an array of EVENT_DTYPE, got {events.dtype}")
    return _flowengine.flow_ids(events)


def _ns(name: str, seconds: float) -> int:
    if not seconds > 0:
        raise ValueError(f"{name} must be > 0 seconds, got {seconds}")
    return round(seconds * 1e9)


class FlowEngine:
    """One flow table fed from capture files; flows carry over from file to file.

    Export rules are xdp/flow.h's, driven by packet timestamps: a flow ends on RST, on the
    last ACK after FINs both ways, when idle for idle_timeout_s (checked before every packet,
    as the kernel's sweeper does), when older than active_timeout_s (it goes on as a new
    record), when the table holds max_flows and a new flow needs room (least recently seen
    flow, END_EVICTED), or at finish() (END_CAPTURE_END).

    With ``interim_s`` > 0 a flow that goes on is also exported as an interim record
    (``flags & MLD_F_INTERIM``, cumulative counters, same flow id as its final record)
    on its first packet ``interim_s`` after its start, and after each interim record, as
    the XDP program does; 0 (the default here) gives final records only.
    """

    def __init__(
        self,
        idle_timeout_s: float = 30,
        active_timeout_s: float = 300,
        max_flows: int = 1_000_000,
        batch_size: int = 65536,
        interim_s: float = 0,
    ) -> None:
        if not interim_s >= 0:
            raise ValueError(f"interim_s must be >= 0 seconds (0: none), got {interim_s}")
        self._engine = _flowengine.Engine(
            idle_timeout_ns=_ns("idle_timeout_s", idle_timeout_s),
            active_timeout_ns=_ns("active_timeout_s", active_timeout_s),
            max_flows=max_flows,
            batch_size=batch_size,
            dtype=EVENT_DTYPE,
            interim_ns=round(interim_s * 1e9),
        )

    def feed_file(
        self, path: str | os.PathLike[str]
    ) -> Generator[npt.NDArray[np.void], None, None]:
        """Read one pcap/pcapng file; yield arrays of up to batch_size exported flows.

        Raises CaptureError when the file cannot be opened or libpcap fails mid-file (the
        batches already yielded stay valid and open flows stay for finish()), and
        UnsupportedLinkType when its link type has no decoder.
        """
        name = os.fspath(path)
        failure = self._engine.open(name)
        if failure is not None:
            kind, detail = failure
            if kind == _OPEN_LINKTYPE:
                raise UnsupportedLinkType(name, detail)
            raise CaptureError(name, f"cannot open: {detail}")
        try:
            while True:
                events, status, detail = self._engine.read()
                if len(events):
                    yield events
                if status == _READ_EOF:
                    return
                if status == _READ_ERROR:
                    raise CaptureError(
                        name,
                        f"read stopped at {detail}. Flows up to there are kept; the file "
                        "is truncated or corrupt",
                    )
        finally:
            # An abandoned iteration: apply the packet in hand and close the file.
            self._engine.close()

    def finish(self) -> npt.NDArray[np.void]:
        """Export every flow still open (END_CAPTURE_END), plus any exported flow an
        abandoned feed_file() iteration did not hand out; the table is empty afterwards."""
        return self._engine.finish()

    @property
    def stats(self) -> dict[str, int]:
        """Counters: packets, bytes (wire lengths), ip_packets, parse_errors (truncated or
        malformed), non_ip, flows_created, flows_exported (flows that ended), flows_evicted,
        live_flows, files, interim_exported (interim records), table_lookups and table_probes
        (flow table slots examined by those lookups: their ratio stays near 1-3 unless keys
        collide)."""
        return self._engine.stats()


def packed_record_bytes(rows: npt.NDArray[np.void], strings: list[str]) -> list[bytes]:
    """One serialized FlowRecord per packed row (proto/flowpack.py), made in C: the
    records of scored events without a message built field by field in Python."""
    if rows.dtype != PACKED_DTYPE:
        raise TypeError(f"expected rows of proto.flowpack.PACKED_DTYPE, got {rows.dtype}")
    return _flowengine.rows_to_protobuf(
        np.ascontiguousarray(rows),
        PACKED_DTYPE.itemsize,
        ENCODE_OPS,
        [s.encode() for s in strings],
    )


def _pack_offsets() -> npt.NDArray[np.intp]:
    """The offset in PACKED_DTYPE of every column events_to_rows writes (packed_fields()),
    after checking that the row holds each one with the kind and width the C code writes."""
    fields: dict[str, Any] = dict(PACKED_DTYPE.fields or {})
    out = []
    for name, kind, width in _flowengine.packed_fields():
        if name not in fields:
            raise TypeError(f"PACKED_DTYPE has no column {name!r} (native/flowengine.c)")
        dt, offset = fields[name][0], fields[name][1]
        if kind == "a":
            ok = dt.shape == (16,) and dt.base == np.dtype(np.uint8)
        else:
            ok = dt.kind == kind and dt.itemsize == width and dt.byteorder in "<=|"
        if not ok:
            raise TypeError(f"PACKED_DTYPE's {name!r} is {dt}, native/flowengine.c writes "
                            f"{kind}{width}")  # fmt: skip
        out.append(offset)
    return np.array(out, dtype=np.intp)


# The C code sets these flag bits by value (flowengine.c, PACK_FLAG_*).
if (FLAG_BITS["handshake_verified"], FLAG_BITS["interim"]) != (1, 8):
    raise TypeError("proto.flowpack.FLAG_BITS moved a bit native/flowengine.c writes")
_PACK_OFFSETS = _pack_offsets()

PackedEvents = tuple[npt.NDArray[np.void], list[bytes], list[bytes]]


def events_to_packed(events: npt.NDArray[np.void]) -> PackedEvents:
    """Rows of ``proto.flowpack.PACKED_DTYPE`` made from an events array in one C pass,
    and each record's source and destination address (4 bytes for IPv4, 16 for IPv6).

    The rows hold what ``sniffer.records.flow_columns`` + ``pack_records`` would put there
    from the events alone (key, scalars, both directions, the handshake and interim flag
    bits), with the same bits; the context, DNS window, fast score and rule, string indexes
    and the other flag bits are 0, for the sniffer to fill."""
    if events.dtype != EVENT_DTYPE:
        raise TypeError(f"expected an array of native.EVENT_DTYPE, got {events.dtype}")
    rows = np.zeros(len(events), dtype=PACKED_DTYPE)
    src, dst = _flowengine.events_to_rows(
        np.ascontiguousarray(events), rows, PACKED_DTYPE.itemsize, _PACK_OFFSETS
    )
    return rows, src, dst

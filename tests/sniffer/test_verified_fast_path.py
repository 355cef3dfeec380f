"""VerifiedSources.update skips the records that neither verify nor come from a stamped
source (set operations instead of a Python step per record). Against the record-by-record
loop it replaced (kept here as the reference), on real captures replayed through the
native engine, with bounds and lifetimes small enough that eviction and lapsing happen:
the same src_verified for every record, the same stamps, the same eviction count."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest

from config import load_config
from sniffer.config import ContextConfig
from sniffer.records import FlowColumns, flow_columns
from sniffer.source_context import VerifiedSources
from sniffer.sources import PcapSource
from tests.support import SHARED_DATA

CAPTURES = [
    SHARED_DATA / "pcaps/ndpi/1kxun.pcap",
    SHARED_DATA / "pcaps/ndpi/reddit.pcap",
    SHARED_DATA / "pcaps/ndpi/webex.pcap",
    SHARED_DATA / "pcaps/attacks/scan/masscan_tcp_0_1000.pcap",
]


class _Reference:
    """The loop VerifiedSources.update ran before (one step per record)."""

    def __init__(self, ttl_ns: int, max_sources: int) -> None:
        self.ttl_ns, self.max_sources = ttl_ns, max_sources
        self.stamps: OrderedDict[bytes, int] = OrderedDict()
        self.evicted = 0

    def update(self, flows: FlowColumns) -> np.ndarray:
        out = np.zeros(len(flows), dtype=bool)
        stamps = self.stamps
        rows = zip(flows.src_addr, flows["handshake_verified"].tolist(),
                   flows["last_ts_ns"].tolist(), strict=True)  # fmt: skip
        for i, (src, verified, ts) in enumerate(rows):
            if verified:
                stamps[src] = max(ts, stamps.get(src, ts))
                stamps.move_to_end(src)
                if len(stamps) > self.max_sources:
                    stamps.popitem(last=False)
                    self.evicted += 1
                out[i] = True
                continue
            stamp = stamps.get(src)
            if stamp is None:
                continue
            if ts - stamp <= self.ttl_ns:
                out[i] = True
            else:
                del stamps[src]
        return out


@pytest.mark.parametrize("ttl_s,max_sources", [(600.0, 65536), (0.5, 1)])
def test_verified_sources_equal_the_record_by_record_loop(ttl_s: float, max_sources: int) -> None:
    cfg = ContextConfig(verified_ttl_s=ttl_s, verified_max_sources=max_sources)
    new = VerifiedSources(cfg)
    ref = _Reference(new.ttl_ns, new.max_sources)
    capture = load_config().sniffer.capture
    marked = records = 0
    for path in CAPTURES:
        if not path.exists():
            pytest.skip(f"{path} is not in the shared data")
        source = PcapSource([path], capture)
        arrays = [(ev, obs) for ev, obs in [*source.batches(), *source.flush()] if len(ev)]
        # Small batches, as live: stamps made in one batch are read in the next ones.
        chunks = [(ev[i : i + 7], obs) for ev, obs in arrays for i in range(0, len(ev), 7)]
        for events, obs in chunks:
            flows = flow_columns(events, obs, packed=True)
            got, want = new.update(flows), ref.update(flows)
            np.testing.assert_array_equal(got, want)
            assert list(new._stamps.items()) == list(ref.stamps.items())
            marked += int(np.count_nonzero(got))
            records += len(got)
    assert new.evicted == ref.evicted
    assert 0 < marked < records  # both kinds of record were seen
    if max_sources == 1:
        assert new.evicted > 0

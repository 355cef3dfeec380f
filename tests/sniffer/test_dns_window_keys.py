"""The DNS windows look their sources up by the packed address column of the flows
(FlowColumns.src_raw, n x 16 bytes) turned into address-key rows in NumPy: the same rows
sniffer.batch_windows.address_keys makes from the per-flow ``bytes`` list, for IPv4 and IPv6
flows of real captures."""

from __future__ import annotations

import numpy as np
import pytest

from sniffer.batch_windows import address_keys
from sniffer.config import SnifferConfig
from sniffer.dns_windows import raw_address_keys
from sniffer.records import flow_columns
from sniffer.sources import PcapSource
from tests.support import SHARED_DATA

CAPTURES = [SHARED_DATA / "pcaps/ndpi/http_ipv6.pcap", SHARED_DATA / "pcaps/ndpi/dns-exf.pcap"]


def test_raw_address_keys_are_the_address_keys_of_the_same_flows() -> None:
    for path in CAPTURES:
        if not path.exists():
            pytest.skip(f"{path} is missing (../shared/data)")
    source = PcapSource(CAPTURES, SnifferConfig().capture)
    versions: set[int] = set()
    for events, obs in [*source.batches(), *source.flush()]:
        flows = flow_columns(events, obs)
        assert flows.src_raw is not None and flows.dst_raw is not None
        for raw, addrs in ((flows.src_raw, flows.src_addr), (flows.dst_raw, flows.dst_addr)):
            np.testing.assert_array_equal(
                raw_address_keys(raw, flows["ip_version"]), address_keys(addrs)
            )
        versions |= set(np.unique(flows["ip_version"]).tolist())
    assert versions == {4, 6}, versions

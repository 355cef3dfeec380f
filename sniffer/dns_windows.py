"""DNS query windows per (source, registered domain), for the ``dns_tunnel`` fast rule.

The flow engine keeps one truncated name per flow, so a flow record cannot say how many
*different* names its source asked for under one domain: the mark of a DNS tunnel of any
tool (iodine, dns2tcp, dnscat2, ...), which must put fresh data in every query name.
:class:`DnsWindows` reads the DNS queries themselves, natively (``native._dnswin``,
native/dnswin.c), from the same packets the flow engine sees:

* offline, the same capture files in the same order (:meth:`DnsWindows.for_files`);
  before a batch of records is looked up, the queries up to the batch's newest
  ``last_ts_ns`` are read, so each record sees the queries sent before its own time;
* live, the interfaces the XDP program watches (:meth:`DnsWindows.for_ifaces`), through
  libpcap with a kernel filter that passes only UDP queries to port 53, inbound only (what
  XDP sees: on a gateway a forwarded query is counted once, not again as it leaves); every
  batch first takes the queries waiting there.

Each record of a flow that sent DNS queries gets the window, over ``dns_window_s`` before
its ``last_ts_ns`` (that time left out: a record whose last packet is a query does not count
that query, live, where XDP stamps it microseconds before libpcap does, as offline, where
both read one time), of its source's registered domain with the most distinct subdomains
(the columns of :data:`DNS_WINDOW_FIELDS`, FlowRecord.dns_window in proto/events.proto);
other records get zeros. Memory is bounded by ``sniffer.context.dns_max_sources`` and
``dns_max_entries`` (see :attr:`DnsWindows.max_bytes`): a forged-source flood of queries
evicts the least recently seen sources and never grows the tables.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

from base.errors import ConfigError
from native._dnswin import N_COLUMNS
from native._dnswin import DnsWindows as _NativeDnsWindows
from sniffer.batch_windows import address_keys
from sniffer.config import ContextConfig
from sniffer.records import Array, FlowColumns, raw_address_keys
from sniffer.sources import CaptureSourceError

__all__ = ["DNS_WINDOW_FIELDS", "DnsWindows", "for_source", "raw_address_keys"]

log = logging.getLogger(__name__)

# Column names (in the order native/dnswin.c fills them); the context dict carries them
# with a ``dns_domain_`` prefix. Meaning and unit: proto/events.proto, DnsDomainWindow.
DNS_WINDOW_FIELDS = (
    "queries",
    "distinct_subdomains",
    "subdomain_mean_len",
    "max_label_len",
    "long_subdomain_entropy",
    "data_type_share",
    "query_rate",
)
assert len(DNS_WINDOW_FIELDS) == N_COLUMNS

PREFIX = "dns_domain_"


class DnsWindows:
    """DNS query windows fed from capture files or live interfaces (module docstring)."""

    def __init__(self, config: ContextConfig) -> None:
        c = config
        if not (
            c.dns_window_s > 0
            and 1 <= c.dns_max_sources <= 1 << 24
            and c.dns_max_entries >= 4
            and 4 <= c.dns_entries_per_domain <= 65536
        ):
            raise ConfigError(
                "invalid sniffer.context DNS windows: dns_window_s must be above 0 (got "
                f"{c.dns_window_s}), dns_max_sources in [1, 16777216] ({c.dns_max_sources}), "
                f"dns_max_entries at least 4 ({c.dns_max_entries}), dns_entries_per_domain "
                f"in [4, 65536] ({c.dns_entries_per_domain}): fix mld.yaml"
            )
        self.window_s = config.dns_window_s
        self._native = _NativeDnsWindows(
            window_ns=int(config.dns_window_s * 1e9),
            max_sources=config.dns_max_sources,
            max_entries=config.dns_max_entries,
            entries_per_domain=config.dns_entries_per_domain,
        )
        # A constant of the caps: read once (stats() builds a dict in C).
        self._max_bytes = int(self._native.stats()["max_bytes"])
        self._files: list[Path] = []
        self._next_file = 0
        self._live = False

    @classmethod
    def for_files(cls, files: Sequence[Path], config: ContextConfig) -> DnsWindows:
        """Windows fed from these capture files, read in this order."""
        win = cls(config)
        win._files = list(files)
        win._open_next()
        return win

    @classmethod
    def for_ifaces(cls, ifaces: Sequence[str], config: ContextConfig) -> DnsWindows:
        """Windows fed from these interfaces (root; the same ones XDP watches).
        CaptureSourceError (exit 1 with its message) when one cannot be opened."""
        win = cls(config)
        for iface in ifaces:
            try:
                win._native.open_live(iface)
            except OSError as exc:
                win.close()
                raise CaptureSourceError(
                    f"cannot read DNS queries on {iface} ({exc}); the dns_tunnel rule reads "
                    "them there: check the interface and run as root, or set "
                    "sniffer.context.dns_windows: false"
                ) from exc
        win._live = True
        return win

    def _open_next(self) -> bool:
        while self._next_file < len(self._files):
            path = self._files[self._next_file]
            self._next_file += 1
            try:
                self._native.open_file(str(path))
                return True
            except OSError as exc:  # the flow engine reports the file; DNS just skips it
                log.debug("DNS windows skip %s: %s", path, exc)
        return False

    def advance(self, until_ns: int) -> None:
        """Take in the queries up to ``until_ns`` (offline) or all waiting ones (live)."""
        if self._live:
            self._native.advance(until_ns)
            return
        while self._native.advance(until_ns) == 1:
            if not self._open_next():
                return

    def lookup(self, flows: FlowColumns) -> dict[str, Array]:
        """The ``dns_domain_*`` columns of ``flows`` (zeros for flows without queries).

        Offline the records are looked up in time order, the files read up to each
        record's ``last_ts_ns`` first (in C), so a record sees the queries up to its own
        time even when a batch spans minutes."""
        n = len(flows)
        out = np.zeros((n, N_COLUMNS), dtype=np.float64)
        if self._live:
            self._native.advance(0)  # every query waiting, also with no DNS flow here
        asked = np.flatnonzero(flows["dns_queries"] > 0)
        if len(asked):
            if flows.src_raw is not None:  # as flow_columns makes them: no Python per flow
                keys = raw_address_keys(flows.src_raw[asked], flows["ip_version"][asked])
            else:
                keys = address_keys([flows.src_addr[i] for i in asked.tolist()])
            out[asked] = self._windows_at_keys(keys, flows["last_ts_ns"][asked])
        cols = {PREFIX + name: out[:, j] for j, name in enumerate(DNS_WINDOW_FIELDS)}
        cols[PREFIX + "window_s"] = np.full(n, self.window_s)
        return cols

    def windows_at(self, addrs: list[bytes], ts_ns: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """(n, len(DNS_WINDOW_FIELDS)): the window of source ``addrs[i]`` (4 or 16 bytes)
        at ``ts_ns[i]``: its busiest registered domain over the window before that time.
        Offline the captures are read up to each time first, in time order."""
        return self._windows_at_keys(address_keys(list(addrs)), ts_ns)

    def _windows_at_keys(
        self, keys: npt.NDArray[np.uint8], ts_ns: npt.ArrayLike
    ) -> npt.NDArray[np.float64]:
        """:meth:`windows_at` of sources given as address-key rows (n, 17)."""
        ts = np.asarray(ts_ns, dtype=np.int64)
        order = np.argsort(ts, kind="stable")
        keys = np.ascontiguousarray(keys[order])
        sorted_ts = np.ascontiguousarray(ts[order])
        got = np.zeros((len(ts), N_COLUMNS), dtype=np.float64)
        done = 0
        while done < len(ts):
            done = self._native.lookup(keys, sorted_ts, got, done, not self._live)
            if done < len(ts) and not self._open_next():
                self._native.lookup(keys, sorted_ts, got, done, False)
                break
        out = np.empty_like(got)
        out[order] = got
        return out

    def stats(self) -> dict[str, int]:
        """sources, entries, evicted_sources, packets, queries, skipped, max_bytes."""
        return {k: int(v) for k, v in self._native.stats().items()}

    @property
    def max_bytes(self) -> int:
        """Upper bound of the memory the windows can take with the configured caps."""
        return self._max_bytes

    def close(self) -> None:
        self._native.close()


def for_source(source: object, config: ContextConfig) -> DnsWindows | None:
    """The DNS windows of a capture source: its files (PcapSource) or its interfaces
    (XdpSource); None when ``sniffer.context.dns_windows`` is off or the source has
    neither (a replay of recorded events)."""
    if not config.dns_windows:
        return None
    files = getattr(source, "files", None)
    if files is not None:
        return DnsWindows.for_files(files, config)
    ifaces = getattr(source, "ifaces", None)
    if ifaces:
        return DnsWindows.for_ifaces(ifaces, config)
    return None

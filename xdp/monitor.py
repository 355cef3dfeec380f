"""FlowMonitor: load xdp/flow_monitor.bpf.c with BCC, attach it, read finished flows.

One program and one flow map serve every interface given, so on a gateway attached to both
NICs the two directions of a flow meet in one record::

    from xdp import FlowMonitor
    from xdp.monitor import raise_on_sigterm

    raise_on_sigterm()                       # SIGTERM -> SystemExit, so `finally` runs
    mon = FlowMonitor(["eth0", "eth1"], idle_timeout_s=30, active_timeout_s=300)
    try:
        mon.attach()
        while True:
            buf = mon.poll(100)              # bytes: N * sizeof(struct mld_flow_event)
            events = numpy.frombuffer(buf, native.EVENT_DTYPE)
    finally:
        tail = mon.flush()                   # what is still in the table (CAPTURE_END)
        mon.close()                          # detaches from every interface

Times: the kernel stamps packets with bpf_ktime_get_ns() (CLOCK_MONOTONIC). poll() and
flush() convert every timestamp of a record to Unix-epoch ns by adding one offset,
CLOCK_REALTIME - CLOCK_MONOTONIC, measured when attach() runs. One fixed offset keeps
durations and gaps exact; the price is that a wall-clock step (NTP, settimeofday) after
attach shifts nothing, so records keep the clock as it was at attach.

Flows that stop receiving packets are found by a sweep of the flow map that poll() runs every
sweep_interval_s (no thread): flows idle for idle_timeout_s are removed and exported with
end reason FIN (both sides sent FIN) or IDLE_TIMEOUT, the rules of mld_flow_idle() and
mld_idle_reason() in flow_update.h.

Overload mode (``overload=OverloadSettings(...)``, off by default here, on in the sniffer):
when new flows come faster than the sniffer can score them (new flows per window), the ring
buffer backs up, or the flow table nearly fills, the program stops giving the new flows of
sources it has not seen repeat an entry and adds them to flood summaries per destination and
per source prefix (xdp/flow_monitor.bpf.c, step 4b). poll() drains the summaries at each
sweep; take_floods() hands them over (sniffer/overload.py makes flood records of them).
Nothing is lost without a count: every new flow is created (flows_created) or summarised
(flows_summarised); a summary the map had no room for is summary_lost; an entry the LRU table
evicted is found by the sweep (``evicted``: the entries the walk found against inserted -
deleted, a lower bound while traffic runs, exact once it stops); a record the ring buffer had
no room for is ringbuf_drops. ``stats()["lost_uncounted"]`` checks the sum.

Records, flow map entries, timeouts and counters are read and written with the layouts
native.structs builds from the C compiler's view of xdp/flow_types.h; attach() checks that
BCC (clang) laid out the program's maps the same way.
"""

from __future__ import annotations

import ctypes as ct
import logging
import math
import mmap
import os
import signal
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from base.signals import sigterm_raises_systemexit
from native import structs
from native.structs import CONSTANTS, EVENT_DTYPE
from xdp import bpf_syscall as sys_bpf
from xdp.blocklist import DEFAULT_PIN_DIR, Blocklist
from xdp.bpffs import check_pin_dir, ensure_pin_dir
from xdp.errors import CompileError, InterfaceError, NotRootError, XdpError

__all__ = [
    "FlowMonitor",
    "Mode",
    "OverloadSettings",
    "ParseErrorAction",
    "ReversePathCheck",
    "raise_on_sigterm",
]

log = logging.getLogger(__name__)

Mode = Literal["auto", "native", "generic"]
ParseErrorAction = Literal["drop", "pass"]
ReversePathCheck = Literal["none", "strict"]

XDP_DIR = Path(__file__).resolve().parent
BPF_SOURCE = XDP_DIR / "flow_monitor.bpf.c"
_KERNEL_HEADERS = XDP_DIR.parent / "build" / "kernel-headers"
_FN_NAME = "xdp_flow_monitor"
_MAX_ACTIVE_TIMEOUT_S = CONSTANTS["MLD_MAX_ACTIVE_TIMEOUT_NS"] / 1e9
_SWEEP_CHUNK = 4096  # flows read per BPF_MAP_LOOKUP_BATCH call

_FIN_BOTH = CONSTANTS["MLD_F_FIN_FWD"] | CONSTANTS["MLD_F_FIN_BWD"]
_Key = structs.ctype("mld_flow_key")
_State = structs.ctype("mld_flow_state")
_Event = structs.ctype("mld_flow_event")
_Config = structs.ctype("mld_flow_config")
_STATE_DTYPE = structs.dtype("mld_flow_state")
_STATS_DTYPE = structs.dtype("mld_xdp_stats")
_OvlConfig = structs.ctype("mld_overload_config")
_OvlUser = structs.ctype("mld_overload_user")
_OvlState = structs.ctype("mld_overload_state")
_FloodKey = structs.ctype("mld_flood_key")
_FloodStats = structs.ctype("mld_flood_stats")
FLOOD_KEY_DTYPE = structs.dtype("mld_flood_key")
FLOOD_STATS_DTYPE = structs.dtype("mld_flood_stats")
_OVERLOAD_WINDOW_NS = 100_000_000  # new flows are counted per 100 ms


@dataclass(frozen=True)
class OverloadSettings:
    """When the XDP program summarises new flows instead of giving each an entry.

    Args:
        new_flows_per_s: new flows a second (counted per 100 ms) past which overload
            starts: what the sniffer and the detector can score. 0: no rate trigger.
        ringbuf_fill: share of the ring buffer waiting to be read that starts overload
            (user space falls behind). 0: no backlog trigger.
        table_fill: share of the flow table in use that starts overload (before the LRU
            table evicts). 0: no table trigger.
        hold_s: overload lasts this long after its latest trigger.
        admit_after: during overload a source's new flows get entries again from its
            (admit_after + 1)-th new flow on (forged random sources never repeat; scanners
            and real clients do). Only flows a TCP SYN (or UDP, ICMP, ...) opens count; a
            new flow starting with a SYN-ACK, RST or ACK is summarised (backscatter, or a
            connection already open). 0: every new flow is summarised during overload.
        src_prefix4, src_prefix6: source prefix length of the per-source summaries.
        max_summaries: flood summaries held between two drains (a full map is counted).
        max_sources: sources remembered during overload (an LRU hash).
    """

    new_flows_per_s: float = 20000.0
    ringbuf_fill: float = 0.5
    table_fill: float = 0.9
    hold_s: float = 2.0
    admit_after: int = 1
    src_prefix4: int = 16
    src_prefix6: int = 32
    max_summaries: int = 65536
    max_sources: int = 65536

    def check(self) -> None:
        if self.new_flows_per_s < 0 or not 0 <= self.ringbuf_fill <= 1:
            raise XdpError("overload: new_flows_per_s must be >= 0, ringbuf_fill in [0, 1]")
        if not 0 <= self.table_fill <= 1 or self.hold_s <= 0:
            raise XdpError("overload: table_fill must be in [0, 1] and hold_s > 0")
        if self.admit_after < 0 or self.admit_after >= 2**32:
            raise XdpError(f"overload: admit_after must be >= 0, got {self.admit_after}")
        if not 0 <= self.src_prefix4 <= 32 or not 0 <= self.src_prefix6 <= 128:
            raise XdpError("overload: src_prefix4 must be in [0, 32], src_prefix6 in [0, 128]")
        if self.max_summaries < 1 or self.max_sources < 1:
            raise XdpError("overload: max_summaries and max_sources must be >= 1")


# Every timestamp of a record: the flow's first and last packet, each direction's last.
_TS_FIELDS = [n for n in EVENT_DTYPE.names or () if n.endswith("_ts_ns")]


def _layout(cls: Any, prefix: str = "") -> list[tuple[str, int, int]]:
    """(path, offset, size) of a ctypes struct and of every member, nested ones included."""
    out = [(prefix, 0, ct.sizeof(cls))]
    for f in cls._fields_:
        name, typ = f[0], f[1]
        off = getattr(cls, name).offset
        out.append((prefix + name, off, ct.sizeof(typ)))
        elem = getattr(typ, "_type_", typ)
        if isinstance(elem, type) and issubclass(elem, ct.Structure):
            for i in range(getattr(typ, "_length_", 1)):
                base = off + i * ct.sizeof(elem)
                sub = _layout(elem, f"{prefix}{name}[{i}].")
                out.extend((path, base + o, size) for path, o, size in sub)
    return out


class FlowMonitor:
    """The XDP flow program attached to one or more interfaces, and its maps.

    Args:
        ifaces: interfaces to attach to, all sharing one flow map.
        idle_timeout_s: a flow without packets for this long is exported.
        active_timeout_s: a flow older than this is exported and continues as a new one
            (at most 3600 s, see MLD_MAX_ACTIVE_TIMEOUT_NS).
        interim_s: a flow that goes on is also exported as an interim record (flags &
            MLD_F_INTERIM, cumulative counters, the flow stays in the table) on its first
            packet this long after its start and after each interim record; 0 (the
            default here) exports final records only (xdp/flow_update.h, mld_interim_due).
        max_flows: flow table size (LRU hash; a full table evicts silently).
        ringbuf_pages: ring buffer size in pages (a power of two).
        mode: "native" (driver XDP), "generic" (skb XDP) or "auto" (native, else generic).
        sweep_interval_s: how often poll() sweeps idle flows out of the table.
        pin_dir: bpffs directory where the blocklist map is pinned (and reused from).
        blocklist_max: blocklist capacity, used only when the map is created.
        parse_error_action: what to do with a packet the parser cannot follow (truncated
            or malformed headers, an IP length that cannot hold its headers, more IPv6
            extension headers than it follows): "drop" (the default: such a packet would
            pass unseen by detection) or "pass". Counted by reason either way. A blocked
            source is dropped whatever follows its IP header.
        reverse_path_check: "strict" drops a packet whose source the kernel would not
            route back out of the interface it arrived on, or not at all (a forged source,
            as strict rp_filter, RFC 3704; counted as rpf_dropped); "none" (the default)
            checks nothing. Only a router answers (forwarding on): elsewhere nothing is
            dropped.
    """

    def __init__(
        self,
        ifaces: Sequence[str],
        *,
        idle_timeout_s: float = 30.0,
        active_timeout_s: float = 300.0,
        interim_s: float = 0.0,
        max_flows: int = 65536,
        ringbuf_pages: int = 256,
        mode: Mode = "auto",
        sweep_interval_s: float = 1.0,
        pin_dir: str | Path = DEFAULT_PIN_DIR,
        blocklist_max: int = 65536,
        parse_error_action: ParseErrorAction = "drop",
        reverse_path_check: ReversePathCheck = "none",
        overload: OverloadSettings | None = None,
    ) -> None:
        if isinstance(ifaces, str) or not ifaces or len(set(ifaces)) != len(ifaces):
            raise XdpError(f"ifaces must be a list of distinct interface names, got {ifaces!r}")
        if not idle_timeout_s > 0:
            raise XdpError(f"idle_timeout_s must be > 0, got {idle_timeout_s}")
        if not 0 < active_timeout_s <= _MAX_ACTIVE_TIMEOUT_S:
            raise XdpError(f"active_timeout_s must be in (0, 3600], got {active_timeout_s}")
        if not 0 <= interim_s <= _MAX_ACTIVE_TIMEOUT_S:
            raise XdpError(
                f"interim_s must be in [0, 3600] (0: no interim records), got {interim_s}"
            )
        if ringbuf_pages < 1 or ringbuf_pages & (ringbuf_pages - 1):
            raise XdpError(f"ringbuf_pages must be a power of two, got {ringbuf_pages}")
        if max_flows < 1 or blocklist_max < 1:
            raise XdpError("max_flows and blocklist_max must be >= 1")
        if mode not in ("auto", "native", "generic"):
            raise XdpError(f"mode must be 'auto', 'native' or 'generic', got {mode!r}")
        if parse_error_action not in ("drop", "pass"):
            raise XdpError(
                f"parse_error_action must be 'drop' or 'pass', got {parse_error_action!r}"
            )
        if reverse_path_check not in ("none", "strict"):
            raise XdpError(
                f"reverse_path_check must be 'none' or 'strict', got {reverse_path_check!r}"
            )
        if sweep_interval_s <= 0:
            raise XdpError(f"sweep_interval_s must be > 0, got {sweep_interval_s}")
        if overload is not None:
            overload.check()
        self.ifaces = list(ifaces)
        self.idle_timeout_ns = int(idle_timeout_s * 1e9)
        self.active_timeout_ns = int(active_timeout_s * 1e9)
        self.interim_ns = int(interim_s * 1e9)
        self.max_flows = max_flows
        self.ringbuf_pages = ringbuf_pages
        self.mode: Mode = mode
        self.sweep_interval_s = sweep_interval_s
        self.pin_dir = check_pin_dir(pin_dir, "pin_dir")
        self.blocklist_max = blocklist_max
        self.parse_error_action: ParseErrorAction = parse_error_action
        self.reverse_path_check: ReversePathCheck = reverse_path_check
        self.modes: dict[str, str] = {}
        self.clock_offset_ns = 0
        self._bpf: Any = None
        self._pending: list[bytes] = []
        self._next_sweep = 0.0
        self._swept = 0
        self._flushed = 0
        self._sweep_races = 0
        self.overload = overload
        self._user_deleted = 0  # flow entries this process removed (sweep, flush)
        self._evicted = 0  # entries the LRU table dropped, as the sweeps found them
        self._gen = 0  # generation the program writes flood summaries under
        self._floods: list[tuple[npt.NDArray[np.void], npt.NDArray[np.void]]] = []
        self._summaries_drained = 0  # destination summaries handed over
        self._summarised_drained = 0  # flows they hold
        self._src_summaries_drained = 0
        self._records_read = 0  # ring buffer records read (exports, interim)

    # ---- lifecycle ----------------------------------------------------------------------

    def attach(self) -> FlowMonitor:
        """Compile, load and attach to every interface (replacing stale XDP programs)."""
        if self._bpf is not None:
            return self
        if os.geteuid() != 0:
            raise NotRootError("loading XDP programs needs root (CAP_BPF and CAP_NET_ADMIN)")
        for iface in self.ifaces:
            try:
                socket.if_nametoindex(iface)
            except OSError as exc:
                raise InterfaceError(f"no interface {iface!r}; list them with `ip link`") from exc
        ensure_pin_dir(self.pin_dir)
        self._bpf = self._load()
        try:
            self._setup_maps()
            for iface in self.ifaces:
                self.modes[iface] = self._attach_one(iface)
        except BaseException:
            self.close()
            raise
        self._next_sweep = time.monotonic() + self.sweep_interval_s
        return self

    def close(self) -> None:
        """Detach from every interface and free the program; safe to call twice.

        Does not flush: call flush() first to export the flows still in the table. The
        pinned blocklist stays (blocks outlive the monitor).
        """
        from bcc import BPF

        for iface, mode in list(self.modes.items()):
            flag = BPF.XDP_FLAGS_DRV_MODE if mode == "native" else BPF.XDP_FLAGS_SKB_MODE
            try:
                BPF.remove_xdp(iface, flag)
            except Exception as exc:  # the interface may be gone already
                log.warning("detaching XDP from %s: %s", iface, exc)
            del self.modes[iface]
        if self._bpf is not None:
            bpf, self._bpf = self._bpf, None
            bpf.cleanup()

    def __enter__(self) -> FlowMonitor:
        return self.attach()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _load(self) -> Any:
        os.environ.setdefault("BCC_KERNEL_SOURCE", str(_KERNEL_HEADERS))
        from bcc import BPF

        pin = check_pin_dir(self.pin_dir, "pin_dir") / "blocklist"  # it reaches the cflags
        if pin.exists():
            Blocklist(self.pin_dir).close()  # BpffsError naming the fix for a stale layout
        cflags = [
            f"-I{XDP_DIR}",
            f"-DMLD_MAX_FLOWS={self.max_flows}",
            f"-DMLD_RINGBUF_PAGES={self.ringbuf_pages}",
            f"-DMLD_BLOCKLIST_MAX={self.blocklist_max}",
            f'-DMLD_BLOCKLIST_PIN="{pin}"',
            f"-DMLD_PARSE_ERROR_DROP={int(self.parse_error_action == 'drop')}",
            f"-DMLD_RPF={int(self.reverse_path_check == 'strict')}",
        ]
        if self.overload is not None:
            cflags += [
                f"-DMLD_FLOOD_MAX={self.overload.max_summaries}",
                f"-DMLD_SRC_SEEN_MAX={self.overload.max_sources}",
            ]
        try:
            bpf = BPF(src_file=str(BPF_SOURCE).encode(), cflags=cflags)
        except Exception as exc:
            raise CompileError(
                f"BCC could not build {BPF_SOURCE.name} ({exc}). Likely causes: "
                f"BCC_KERNEL_SOURCE={os.environ.get('BCC_KERNEL_SOURCE')} does not hold "
                "the kernel headers (run `make install`), or a stale pinned map "
                f"{pin} has another layout (remove it)"
            ) from exc
        try:
            self._fn = bpf.load_func(_FN_NAME, BPF.XDP)
        except Exception as exc:
            bpf.cleanup()
            raise CompileError(
                f"the kernel rejected {BPF_SOURCE.name}: {exc} (the verifier log is above)"
            ) from exc
        return bpf

    def _setup_maps(self) -> None:
        b = self._bpf
        flows = b["flows"]
        self._check_layouts(
            (flows.Key, "mld_flow_key"),
            (flows.Leaf, "mld_flow_state"),
            (b["scratch"].sLeaf, "mld_flow_event"),
            (b["config"].Leaf, "mld_flow_config"),
            (b["stats"].sLeaf, "mld_xdp_stats"),
            (b["ovl_config"].Leaf, "mld_overload_config"),
            (b["ovl_state"].Leaf, "mld_overload_state"),
            (b["ovl_user"].Leaf, "mld_overload_user"),
            (b["floods"].Key, "mld_flood_key"),
            (b["floods"].Leaf, "mld_flood_stats"),
        )
        cfg = b["config"]
        cfg[cfg.Key(0)] = _Config(self.idle_timeout_ns, self.active_timeout_ns, self.interim_ns)
        self._ovl_config = b["ovl_config"]
        self._ovl_user = b["ovl_user"]
        self._write_overload_config()
        self._floods_fd = b["floods"].get_fd()
        fchunk = 4096
        self._fkeys_buf: Any = (_FloodKey * fchunk)()
        self._fstats_buf: Any = (_FloodStats * fchunk)()
        self.record_size = ct.sizeof(_Event)
        self._key_off = _Event.key.offset
        self._state_off = _Event.state.offset
        self._reason_off = _State.end_reason.offset
        chunk = min(self.max_flows, _SWEEP_CHUNK)
        self._keys_buf = (_Key * chunk)()
        self._states_buf: Any = (_State * chunk)()
        self._flows_fd = flows.get_fd()
        self.clock_offset_ns = _realtime_minus_monotonic()
        b["events"].open_ring_buffer(self._on_event)

    @staticmethod
    def _check_layouts(*pairs: tuple[Any, str]) -> None:
        """BCC's ctypes types of the program's maps (clang's layout) against native's."""
        for bcc_type, name in pairs:
            if _layout(bcc_type) != _layout(structs.ctype(name)):
                raise CompileError(
                    f"BCC laid out struct {name} unlike native/ (the C compiler): rebuild "
                    "native/ from this tree's xdp/flow_types.h (`make install`)"
                )

    def _write_overload_config(self) -> None:
        o = self.overload
        c = _OvlConfig()
        if o is not None:
            window_s = _OVERLOAD_WINDOW_NS / 1e9
            c.window_ns = _OVERLOAD_WINDOW_NS
            c.hold_ns = int(o.hold_s * 1e9)
            c.max_new_flows = min(2**32 - 1, math.ceil(o.new_flows_per_s * window_s))
            # A record takes its size plus an 8-byte header in the ring buffer.
            slot = (ct.sizeof(_Event) + 8 + 7) // 8 * 8
            c.ringbuf_high = int(o.ringbuf_fill * self.ringbuf_pages * mmap.PAGESIZE / slot)
            c.table_high = int(o.table_fill * self.max_flows)
            c.admit_after = o.admit_after
            c.src_prefix4 = o.src_prefix4
            c.src_prefix6 = o.src_prefix6
            c.enabled = 1
            c.gen = self._gen
        self._ovl_config[self._ovl_config.Key(0)] = c

    def _write_overload_user(self) -> None:
        u = _OvlUser(self._user_deleted, self._evicted, self._records_read)
        self._ovl_user[self._ovl_user.Key(0)] = u

    def _on_event(self, _ctx: Any, data: Any, size: int) -> int:
        self._pending.append(ct.string_at(data, size))
        self._records_read += 1
        return 0

    def _attach_one(self, iface: str) -> str:
        from bcc import BPF

        for flag in (BPF.XDP_FLAGS_DRV_MODE, BPF.XDP_FLAGS_SKB_MODE):
            try:  # a program left by a crashed monitor (or anyone) is replaced
                BPF.remove_xdp(iface, flag)
            except Exception as exc:
                log.warning("could not remove the XDP program on %s: %s", iface, exc)
        tries = {"native": ["native"], "generic": ["generic"], "auto": ["native", "generic"]}
        errors = []
        for mode in tries[self.mode]:
            flag = BPF.XDP_FLAGS_DRV_MODE if mode == "native" else BPF.XDP_FLAGS_SKB_MODE
            try:
                BPF.attach_xdp(iface, self._fn, flag)
            except Exception as exc:
                errors.append(f"{mode}: {exc}")
                continue
            if errors:
                log.warning("%s: native XDP unavailable (%s); using generic XDP", iface, errors)
            log.info("attached %s to %s in %s mode", _FN_NAME, iface, mode)
            return mode
        hint = " (try mode 'generic' or 'auto')" if self.mode == "native" else ""
        raise InterfaceError(f"cannot attach XDP to {iface!r}: {'; '.join(errors)}{hint}")

    # ---- reading ------------------------------------------------------------------------

    def _require(self) -> Any:
        if self._bpf is None:
            raise XdpError("the monitor is not attached: call attach() first")
        return self._bpf

    def poll(self, timeout_ms: int = 100) -> bytes:
        """Wait up to timeout_ms for exports; return finished flows (epoch-ns times).

        Runs the idle sweep when it is due. The result is a whole number of
        struct mld_flow_event records, possibly empty.
        """
        b = self._require()
        wait = max(0, min(timeout_ms, int((self._next_sweep - time.monotonic()) * 1000)))
        b.ring_buffer_poll(wait)
        _raise_deferred_sigterm()
        if self.overload is not None and self._pending:
            self._write_overload_user()  # the backlog the program measures
        if time.monotonic() >= self._next_sweep:
            self._sweep(final=False)
            self._drain_floods(final=False)
            self._next_sweep = time.monotonic() + self.sweep_interval_s
        return self._drain()

    def flush(self) -> bytes:
        """Export every flow still in the table (end reason CAPTURE_END) and pending exports."""
        b = self._require()
        b.ring_buffer_consume()
        self._sweep(final=True)
        self._drain_floods(final=True)
        return self._drain()

    def take_floods(self) -> tuple[npt.NDArray[np.void], npt.NDArray[np.void]]:
        """The flood summaries drained since the last call: (keys, stats) arrays of
        FLOOD_KEY_DTYPE and FLOOD_STATS_DTYPE (timestamps in epoch ns), both kinds
        (MLD_FLOOD_DST, MLD_FLOOD_SRC). Summaries are drained at each sweep."""
        if not self._floods:
            return np.zeros(0, FLOOD_KEY_DTYPE), np.zeros(0, FLOOD_STATS_DTYPE)
        keys = np.concatenate([k for k, _ in self._floods])
        vals = np.concatenate([v for _, v in self._floods])
        self._floods.clear()
        return keys, vals

    def _drain_floods(self, final: bool) -> None:
        """Move the program to the next generation and drain the summaries of the ones
        before the previous: those were last written a sweep interval ago, so no program
        run still adds to them (a drain of a summary being written could lose an
        increment). ``final``: drain everything (traffic has stopped, or is about to)."""
        if self.overload is None:
            return
        prev = self._gen
        self._gen = (self._gen + 1) % 4
        self._write_overload_config()
        keep = set() if final else {prev, self._gen}
        ksz = ct.sizeof(_FloodKey)
        picked: list[bytes] = []
        for n in sys_bpf.lookup_batches(self._floods_fd, self._fkeys_buf, self._fstats_buf):
            raw = ct.string_at(ct.addressof(self._fkeys_buf), n * ksz)
            keys = np.frombuffer(raw, dtype=FLOOD_KEY_DTYPE)
            for i in np.flatnonzero(~np.isin(keys["gen"], list(keep))):
                picked.append(raw[i * ksz : (i + 1) * ksz])
        if not picked:
            return
        key, val = _FloodKey(), _FloodStats()
        out_k, out_v = bytearray(), bytearray()
        for raw in picked:
            ct.memmove(ct.addressof(key), raw, len(raw))
            if sys_bpf.lookup_and_delete(self._floods_fd, key, val):
                out_k += raw
                out_v += ct.string_at(ct.addressof(val), ct.sizeof(val))
        keys = np.frombuffer(bytes(out_k), dtype=FLOOD_KEY_DTYPE)
        vals = np.frombuffer(out_v, dtype=FLOOD_STATS_DTYPE).copy()
        off = np.uint64(self.clock_offset_ns)
        for name in ("first_ts_ns", "last_ts_ns"):
            vals[name] += off
        # Every summarised flow is in one destination or one reply summary; source-prefix
        # summaries describe the same flows again.
        acct = keys["kind"] != CONSTANTS["MLD_FLOOD_SRC"]
        self._summaries_drained += int(acct.sum())
        self._summarised_drained += int(vals["flows"][acct].sum())
        self._src_summaries_drained += int((~acct).sum())
        self._floods.append((keys, vals))

    def _drain(self) -> bytes:
        if not self._pending:
            return b""
        buf = bytearray(b"".join(self._pending))
        self._pending.clear()
        if len(buf) % self.record_size:
            raise XdpError(f"ring buffer gave {len(buf)} bytes, not whole flow records")
        arr = np.frombuffer(buf, dtype=EVENT_DTYPE)
        off = np.uint64(self.clock_offset_ns)
        for name in _TS_FIELDS:
            col = arr[name]
            col[col != 0] += off
        return bytes(buf)

    def _walk_keys(self, final: bool, now_ns: int) -> list[bytes]:
        """Keys of the flows to remove: idle ones, or all of them when final.

        Also finds the entries the LRU table evicted: the program counts the entries it
        inserted and deleted, this process those it deleted, so inserted - deleted -
        user_deleted - evicted entries should be in the table; fewer found means the
        kernel evicted the difference. ``inserted`` is read before the walk and ``deleted``
        after it, so an entry added or removed during the walk can only make the
        difference smaller: a lower bound while traffic runs, exact when it has stopped.
        """
        keys: list[bytes] = []
        ksz = ct.sizeof(_Key)
        ovl = self._bpf["ovl_state"]
        inserted = int(ovl[ovl.Key(0)].inserted)
        live = 0
        for n in sys_bpf.lookup_batches(self._flows_fd, self._keys_buf, self._states_buf):
            live += n
            raw_keys = ct.string_at(ct.addressof(self._keys_buf), n * ksz)
            if final:
                pick = np.arange(n)
            else:
                st = np.frombuffer(self._states_buf, dtype=_STATE_DTYPE, count=n)
                last = st["last_ts_ns"].astype(np.int64)
                pick = np.flatnonzero(now_ns - last >= self.idle_timeout_ns)
            keys.extend(raw_keys[i * ksz : (i + 1) * ksz] for i in pick)
        deleted = int(ovl[ovl.Key(0)].deleted)
        missing = inserted - deleted - self._user_deleted - live
        if missing > self._evicted:
            log.debug("the flow table evicted %d entries", missing - self._evicted)
            self._evicted = missing
        return keys

    def _sweep(self, final: bool) -> None:
        now = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        key, state = _Key(), _State()
        for raw in self._walk_keys(final, now):
            ct.memmove(ct.addressof(key), raw, len(raw))
            if not sys_bpf.lookup_and_delete(self._flows_fd, key, state):
                continue  # the program exported it meanwhile
            self._user_deleted += 1
            if final:
                reason = CONSTANTS["MLD_END_CAPTURE_END"]
            else:
                if now - state.last_ts_ns < self.idle_timeout_ns:
                    # A packet arrived between the walk and the delete: put the flow back.
                    try:
                        sys_bpf.update(self._flows_fd, key, state, sys_bpf.BPF_NOEXIST)
                        self._user_deleted -= 1  # back in the table
                        continue
                    except OSError:
                        self._sweep_races += 1  # a newer entry exists: export this one
                # mld_idle_reason()
                both = (state.flags & _FIN_BOTH) == _FIN_BOTH
                reason = CONSTANTS["MLD_END_FIN"] if both else CONSTANTS["MLD_END_IDLE_TIMEOUT"]
            rec = bytearray(self.record_size)
            rec[self._key_off : self._key_off + len(raw)] = raw
            so = self._state_off
            rec[so : so + ct.sizeof(state)] = ct.string_at(ct.addressof(state), ct.sizeof(state))
            rec[so + self._reason_off] = reason
            self._pending.append(bytes(rec))
            if final:
                self._flushed += 1
            else:
                self._swept += 1
        self._write_overload_user()

    # ---- introspection ------------------------------------------------------------------

    @property
    def event_type(self) -> Any:
        """The ctypes class of struct mld_flow_event (fields ``key`` and ``state``), from
        native.structs."""
        self._require()
        return _Event

    def decode(self, buf: bytes) -> list[Any]:
        """Split poll()/flush() output into event_type instances (for tests and debugging)."""
        size = self.record_size
        return [_Event.from_buffer_copy(buf, i) for i in range(0, len(buf), size)]

    def live_flows(self) -> int:
        """Entries in the flow table now."""
        self._require()
        return sum(sys_bpf.lookup_batches(self._flows_fd, self._keys_buf, self._states_buf))

    def stats(self) -> dict[str, int]:
        """Per-CPU counters summed (struct mld_xdp_stats) plus user-space figures.

        Adds live_flows, swept (idle exports by the sweep), flushed, sweep_races,
        evicted_estimate = flows_created - flows_exported - swept - flushed - live_flows
        (flows that ended without a record: evicted, or whose final record the ring buffer
        had no room for; approximate while traffic runs), and the overload accounting:

        * ``evicted``: entries the LRU table dropped, found by the sweeps' walks;
        * ``final_dropped``: final records the ring buffer had no room for;
        * ``records_read``: records read from the ring buffer;
        * ``flood_summaries`` / ``flood_summarised_flows`` / ``flood_src_summaries``:
          destination and reply summaries drained, the new flows they hold, source-prefix
          summaries drained;
        * ``lost_uncounted``: new flows neither in a record, in a summary, in the table,
          nor counted as lost (evicted, final_dropped, summary_lost). 0 is the target;
          exact once traffic has stopped and the table was flushed, and a transient
          difference while it runs (flows between the program's counters and the walk).
        """
        b = self._require()
        table = b["stats"]
        per_cpu = table.getvalue(table.Key(0))  # one struct mld_xdp_stats per CPU
        cpus = np.frombuffer(b"".join(bytes(c) for c in per_cpu), dtype=_STATS_DTYPE)
        out = {name: sum(cpus[name].tolist()) for name in _STATS_DTYPE.names or ()}
        out["live_flows"] = self.live_flows()
        out["swept"] = self._swept
        out["flushed"] = self._flushed
        out["sweep_races"] = self._sweep_races
        gone = out["flows_exported"] + self._swept + self._flushed + out["live_flows"]
        out["evicted_estimate"] = max(0, out["flows_created"] - gone)
        out["evicted"] = self._evicted
        out["final_dropped"] = out["ringbuf_drops"] - out["interim_dropped"]
        out["records_read"] = self._records_read
        out["flood_summaries"] = self._summaries_drained
        out["flood_summarised_flows"] = self._summarised_drained
        out["flood_src_summaries"] = self._src_summaries_drained
        out["overloaded"] = int(self.overloaded())
        # Every new flow: created (then exported, dropped at export, swept, flushed, still
        # in the table, or evicted) or summarised (then drained in a summary, still in
        # the map, or lost for want of room).
        ended = (
            out["flows_exported"] + out["final_dropped"] + self._swept + self._flushed
            + out["live_flows"] + self._evicted
        )  # fmt: skip
        pending = out["flows_summarised"] - out["summary_lost"] - self._summarised_drained
        out["lost_uncounted"] = out["flows_created"] - ended + pending - self._in_floods()
        return out

    def overloaded(self) -> bool:
        """Is the program in overload mode now?"""
        b = self._require()
        st = b["ovl_state"][b["ovl_state"].Key(0)]
        return bool(st.until_ns > time.clock_gettime_ns(time.CLOCK_MONOTONIC))

    def _in_floods(self) -> int:
        """New flows held in destination and reply summaries not drained yet."""
        total = 0
        src = CONSTANTS["MLD_FLOOD_SRC"]
        for n in sys_bpf.lookup_batches(self._floods_fd, self._fkeys_buf, self._fstats_buf):
            keys = np.frombuffer(self._fkeys_buf, dtype=FLOOD_KEY_DTYPE, count=n)
            vals = np.frombuffer(self._fstats_buf, dtype=FLOOD_STATS_DTYPE, count=n)
            total += int(vals["flows"][keys["kind"] != src].sum())
        return total

    def blocklist(self) -> Blocklist:
        """The pinned blocklist this program enforces (close it when done)."""
        return Blocklist(self.pin_dir)


def _realtime_minus_monotonic() -> int:
    """CLOCK_REALTIME - CLOCK_MONOTONIC in ns, from the tightest of a few samples."""
    best: tuple[int, int] | None = None
    for _ in range(5):
        r1 = time.clock_gettime_ns(time.CLOCK_REALTIME)
        m = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        r2 = time.clock_gettime_ns(time.CLOCK_REALTIME)
        if best is None or r2 - r1 < best[0]:
            best = (r2 - r1, (r1 + r2) // 2 - m)
    assert best is not None
    return best[1]


# ---- SIGTERM ---------------------------------------------------------------------------

_deferred_sigterm = False
_CALLBACK_NAMES = {FlowMonitor._on_event.__code__.co_name, "ringbuf_cb_"}


def _in_callback(frame: FrameType | None) -> bool:
    """True (and the SIGTERM noted) when ``frame`` is inside a ring-buffer callback."""
    global _deferred_sigterm
    f = frame
    while f is not None:
        # An exception raised inside a ctypes callback would be printed and dropped: note
        # the signal instead, and poll() raises it once the C call has returned.
        if f.f_code.co_name in _CALLBACK_NAMES:
            _deferred_sigterm = True
            return True
        f = f.f_back
    return False


def _raise_deferred_sigterm() -> None:
    global _deferred_sigterm
    if _deferred_sigterm:
        _deferred_sigterm = False
        raise SystemExit(128 + signal.SIGTERM)


def raise_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit(143) so ``finally: mon.close()`` detaches the program.

    Call it from the main thread before attach(). Without it SIGTERM kills the process and
    the XDP program stays attached (the kernel keeps netlink-attached programs).
    """
    sigterm_raises_systemexit(defer=_in_callback)

"""The blocklist: source prefixes the XDP program drops, in a pinned LPM trie.

The map is created and pinned by the first :class:`xdp.FlowMonitor` that loads the program
(``<pin_dir>/blocklist``, by default ``/sys/fs/bpf/mld/blocklist``) and survives it, so
blocks stay in force across monitor restarts and any process (the firewall agent, an
operator's shell) can change them while the monitor runs::

    with Blocklist() as bl:
        bl.add("203.0.113.7")                   # one IPv4 host (/32), no expiry
        bl.add("198.51.100.0/24", ttl_s=600)    # lapses in ten minutes
        bl.add("2001:db8:bad::/48", expires_at=time.time() + 3600)
        print(bl.entries())   # [BlockEntry(prefix='198.51.100.0/24', drops=0,
                              #             expires_at=1767000000.5), ...]
        bl.purge_expired()    # delete lapsed entries, return them

Keys are struct mld_lpm_key (xdp/flow_types.h): the kernel's LPM key layout, a host-order u32
prefix length followed by the address bytes. IPv4 is stored IPv4-mapped (::ffff:a.b.c.d), so
an IPv4 /24 has prefix length 96 + 24. Values are struct mld_block: packets dropped and the
expiry in CLOCK_BOOTTIME ns (0 = never). The program stops dropping for an entry once it has
expired, whether or not anyone deletes it; :meth:`Blocklist.purge_expired` deletes them.
Expiries cross this API as Unix-epoch seconds, converted with CLOCK_REALTIME -
CLOCK_BOOTTIME read at each call (so a wall-clock step moves expiries already set, as seen
from here, but never their remaining time in the kernel).
"""

from __future__ import annotations

import ctypes as ct
import errno
import ipaddress
import os
import time
from pathlib import Path
from types import TracebackType
from typing import NamedTuple

from native import structs
from xdp import bpf_syscall as sys_bpf
from xdp.errors import BlocklistError, BpffsError

__all__ = [
    "DEFAULT_PIN_DIR",
    "BlockEntry",
    "Blocklist",
    "BlocklistProgram",
    "blocklist_enforced",
    "prefix_key",
    "program_attached",
]

# The one definition of the default pin folder: config's node.xdp_pin_dir defaults to it
# (config/mld.yaml writes it out), and the sniffer and the firewall both use that setting.
DEFAULT_PIN_DIR = "/sys/fs/bpf/mld"
_V4_MAPPED = b"\x00" * 10 + b"\xff\xff"


# struct mld_lpm_key (the kernel's LPM trie key ABI, struct bpf_lpm_trie_key_u8 with 16
# data bytes) and struct mld_block, as native.structs builds them from xdp/flow_types.h; the
# pinned map's key and value sizes are checked against them on open.
_LpmKey = structs.ctype("mld_lpm_key")
_Block = structs.ctype("mld_block")


class BlockEntry(NamedTuple):
    """One blocklist entry: the prefix, packets it dropped, expiry (epoch s) or None."""

    prefix: str
    drops: int
    expires_at: float | None


class BlocklistProgram(NamedTuple):
    """A loaded BPF program that uses the blocklist map."""

    id: int
    name: str
    type: int  # BPF_PROG_TYPE_*: 6 is XDP


def _realtime_minus_boottime_ns() -> int:
    """CLOCK_REALTIME - CLOCK_BOOTTIME in ns (boottime read on both sides of realtime)."""
    b0 = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
    rt = time.time_ns()
    b1 = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
    return rt - (b0 + b1) // 2


def prefix_key(prefix: str) -> tuple[int, bytes]:
    """Parse "192.0.2.7", "192.0.2.0/24" or "2001:db8::/32" into (prefixlen, 16 bytes)."""
    try:
        net = ipaddress.ip_network(prefix.strip(), strict=True)
    except ValueError as exc:
        hint = ""
        try:
            loose = ipaddress.ip_network(prefix.strip(), strict=False)
            hint = f"; did you mean {loose}?"
        except ValueError:
            hint = '; expected an address or prefix such as "192.0.2.7", "2001:db8::/32"'
        raise BlocklistError(f"bad blocklist prefix {prefix!r}: {exc}{hint}") from exc
    if isinstance(net, ipaddress.IPv4Network):
        return 96 + net.prefixlen, _V4_MAPPED + net.network_address.packed
    return net.prefixlen, net.network_address.packed


def _format(prefixlen: int, addr: bytes) -> str:
    if addr[:12] == _V4_MAPPED and prefixlen >= 96:
        return f"{ipaddress.IPv4Address(addr[12:])}/{prefixlen - 96}"
    return f"{ipaddress.IPv6Address(addr)}/{prefixlen}"


class Blocklist:
    """The pinned blocklist map, opened by path (works from any process on the host)."""

    def __init__(self, pin_dir: str | Path = DEFAULT_PIN_DIR) -> None:
        self._fd = -1
        self.path = str(Path(pin_dir) / "blocklist")
        try:
            self._fd = sys_bpf.obj_get(self.path)
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                raise BpffsError(
                    f"no blocklist pinned at {self.path}: start the flow monitor first "
                    "(it creates and pins the map), or check pin_dir"
                ) from exc
            raise BpffsError(f"cannot open {self.path}: {exc.strerror} (run as root)") from exc
        info = sys_bpf.map_info(self._fd)
        self.map_id: int = info.id
        want = (sys_bpf.BPF_MAP_TYPE_LPM_TRIE, ct.sizeof(_LpmKey), ct.sizeof(_Block))
        if (info.type, info.key_size, info.value_size) != want:
            self.close()
            raise BpffsError(
                f"{self.path} is not an ML Defender blocklist of this version (map type "
                f"{info.type}, key {info.key_size} B, value {info.value_size} B; expected "
                f"{want}): stop the monitor, remove the stale pin (`rm {self.path}`) and "
                "start it again (blocks in the old map are lost)"
            )

    def _key(self, prefix: str) -> ct.Structure:
        plen, addr = prefix_key(prefix)
        key = _LpmKey(prefixlen=plen)
        ct.memmove(key.addr, addr, 16)
        return key

    def add(
        self, prefix: str, ttl_s: float | None = None, *, expires_at: float | None = None
    ) -> bool:
        """Block a source prefix, for ttl_s seconds, until expires_at (epoch s) or for good.

        Returns True when the prefix was new. When it was already there (lapsed or not) its
        expiry becomes the one given here (none: never) and its drop counter is kept; drops
        counted by the program between our read and our write of the entry are lost.
        """
        expires_ns = self._expiry_ns(prefix, ttl_s, expires_at)
        key = self._key(prefix)
        try:
            sys_bpf.update(self._fd, key, _Block(0, expires_ns), sys_bpf.BPF_NOEXIST)
            return True
        except OSError as exc:
            if exc.errno != errno.EEXIST:
                hint = " (the map is full)" if exc.errno in (errno.ENOSPC, errno.E2BIG) else ""
                raise BlocklistError(f"cannot add {prefix!r}: {exc.strerror}{hint}") from exc
        old = _Block()
        # A lookup with the entry's own prefix length finds that entry (it exists).
        drops = old.drops if sys_bpf.lookup(self._fd, key, old) else 0
        try:
            sys_bpf.update(self._fd, key, _Block(drops, expires_ns))
        except OSError as exc:
            raise BlocklistError(f"cannot update {prefix!r}: {exc.strerror}") from exc
        return False

    @staticmethod
    def _expiry_ns(prefix: str, ttl_s: float | None, expires_at: float | None) -> int:
        if ttl_s is not None and expires_at is not None:
            raise BlocklistError(f"{prefix!r}: give ttl_s or expires_at, not both")
        now = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
        if ttl_s is not None:
            if not ttl_s > 0:
                raise BlocklistError(f"{prefix!r}: ttl_s must be > 0 seconds, got {ttl_s}")
            return now + max(1, round(ttl_s * 1e9))
        if expires_at is not None:
            boot = round(expires_at * 1e9) - _realtime_minus_boottime_ns()
            if boot <= now:
                raise BlocklistError(
                    f"{prefix!r}: expires_at={expires_at} is already past "
                    f"(now {time.time():.3f}); use ttl_s for a relative expiry"
                )
            return boot
        return 0

    def remove(self, prefix: str) -> bool:
        """Unblock a prefix (exact match); False when it was not in the list."""
        try:
            return sys_bpf.delete(self._fd, self._key(prefix))
        except OSError as exc:
            raise BlocklistError(f"cannot remove {prefix!r}: {exc.strerror}") from exc

    def _raw(self) -> list[tuple[ct.Structure, int, int]]:
        out: list[tuple[ct.Structure, int, int]] = []
        key: ct.Structure | None = None
        nxt = _LpmKey()
        val = _Block()
        while sys_bpf.next_key(self._fd, key, nxt):
            key = _LpmKey.from_buffer_copy(nxt)
            if sys_bpf.lookup(self._fd, key, val):
                out.append((key, val.drops, val.expires_ns))
        return out

    @staticmethod
    def _entry(key: ct.Structure, drops: int, expires_ns: int, offset_ns: int) -> BlockEntry:
        when = None if expires_ns == 0 else (expires_ns + offset_ns) / 1e9
        return BlockEntry(_format(key.prefixlen, bytes(key.addr)), drops, when)

    def entries(self) -> list[BlockEntry]:
        """Every entry, lapsed ones included, sorted by prefix."""
        off = _realtime_minus_boottime_ns()
        return sorted(self._entry(k, d, e, off) for k, d, e in self._raw())

    def expired(self, now: float | None = None) -> list[BlockEntry]:
        """Entries whose expiry is at or before now (epoch s; default: the current time)."""
        off = _realtime_minus_boottime_ns()
        limit = self._boot_limit(now, off)
        return sorted(self._entry(k, d, e, off) for k, d, e in self._raw() if 0 < e <= limit)

    @staticmethod
    def _boot_limit(now: float | None, offset_ns: int) -> int:
        if now is None:
            return time.clock_gettime_ns(time.CLOCK_BOOTTIME)
        return round(now * 1e9) - offset_ns

    def purge_expired(self, now: float | None = None) -> list[BlockEntry]:
        """Delete the entries expired at now (default: the current time); return them.

        Each entry is read again just before its delete, so one re-added meanwhile with a
        later expiry stays.
        """
        off = _realtime_minus_boottime_ns()
        limit = self._boot_limit(now, off)
        gone: list[BlockEntry] = []
        val = _Block()
        for key, _, exp in self._raw():
            if not 0 < exp <= limit:
                continue
            if not sys_bpf.lookup(self._fd, key, val) or not 0 < val.expires_ns <= limit:
                continue
            try:
                deleted = sys_bpf.delete(self._fd, key)
            except OSError as exc:
                raise BlocklistError(f"cannot delete an expired entry: {exc.strerror}") from exc
            if deleted:
                gone.append(self._entry(key, val.drops, val.expires_ns, off))
        return sorted(gone)

    def programs(self) -> list[BlocklistProgram]:
        """The loaded BPF programs that use this map (any network namespace)."""
        out: list[BlocklistProgram] = []
        try:
            for pid in sys_bpf.prog_ids():
                got = sys_bpf.prog_info(pid)
                if got is not None and self.map_id in got[1]:
                    info = got[0]
                    out.append(BlocklistProgram(pid, info.name.decode(errors="replace"), info.type))
        except OSError as exc:
            raise BlocklistError(f"cannot list BPF programs: {exc.strerror} (run as root)") from exc
        return out

    def in_use(self) -> bool:
        """True when an XDP program uses this map, i.e. the blocklist is being enforced."""
        return any(p.type == sys_bpf.BPF_PROG_TYPE_XDP for p in self.programs())

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> Blocklist:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def program_attached(pin_dir: str | Path = DEFAULT_PIN_DIR) -> tuple[bool, str]:
    """Is a blocklist pinned under pin_dir and used by a loaded XDP program? And why.

    False when nothing is pinned there (no monitor ever ran, or bpffs was remounted), when
    the pin has another layout, and when the map is pinned but no XDP program uses it (every
    monitor stopped: entries are kept but drop nothing). True while a flow monitor runs, and
    also when a monitor was killed with SIGKILL: its program stays attached (the kernel
    keeps netlink attachments) and keeps enforcing the map. Programs are found by walking
    BPF program ids and their map ids, so this works from any network namespace.
    """
    path = Path(pin_dir) / "blocklist"
    if not path.exists():
        return False, f"no blocklist pinned at {path} (no flow monitor has run with this pin_dir)"
    try:
        with Blocklist(pin_dir) as bl:
            progs = [p for p in bl.programs() if p.type == sys_bpf.BPF_PROG_TYPE_XDP]
    except (BpffsError, BlocklistError) as exc:
        return False, str(exc)
    if not progs:
        return False, f"{path} is pinned but no XDP program uses it (no flow monitor running)"
    names = ", ".join(f"{p.name} (id {p.id})" for p in progs)
    return True, f"XDP program {names} enforces {path}"


def blocklist_enforced(pin_dir: str | Path = DEFAULT_PIN_DIR) -> bool:
    """program_attached() without the reason."""
    return program_attached(pin_dir)[0]

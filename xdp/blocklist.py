"""The blocklist: source prefixes the XDP program drops, in a pinned LPM trie.

The map is created and pinned by the first :class:`xdp.FlowMonitor` that loads the program
(``<pin_dir>/blocklist``, by default ``/sys/fs/bpf/mld/blocklist``) and survives it, so
blocks stay in force across monitor restarts and any process (the firewall agent, an
operator's shell) can change them while the monitor runs::

    with Blocklist() as bl:
        bl.add("203.0.113.7")          # one IPv4 host (/32)
        bl.add("198.51.100.0/24")
        bl.add("2001:db8:bad::/48")
        print(bl.entries())           # [("198.51.100.0/24", 0), ...] with drop counts

Keys are struct mld_lpm_key (xdp/flow.h): the kernel's LPM key layout, a host-order u32
prefix length followed by the address bytes. IPv4 is stored IPv4-mapped (::ffff:a.b.c.d), so
an IPv4 /24 has prefix length 96 + 24. Values are a u64 per entry: packets it dropped.
"""

from __future__ import annotations

import ctypes as ct
import errno
import ipaddress
import os
from pathlib import Path
from types import TracebackType

from xdp import bpf_syscall as sys_bpf
from xdp.errors import BlocklistError, BpffsError

__all__ = ["DEFAULT_PIN_DIR", "Blocklist", "prefix_key"]

DEFAULT_PIN_DIR = "/sys/fs/bpf/mld"
_V4_MAPPED = b"\x00" * 10 + b"\xff\xff"


class _LpmKey(ct.Structure):
    # The kernel's LPM trie key ABI (struct bpf_lpm_trie_key_u8 with 16 data bytes), which
    # struct mld_lpm_key follows; the map's key size is checked against it on open.
    _fields_ = (("prefixlen", ct.c_uint32), ("addr", ct.c_uint8 * 16))


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
        want = (sys_bpf.BPF_MAP_TYPE_LPM_TRIE, ct.sizeof(_LpmKey), 8)
        if (info.type, info.key_size, info.value_size) != want:
            self.close()
            raise BpffsError(
                f"{self.path} is not an ML Defender blocklist (map type {info.type}, key "
                f"{info.key_size} B, value {info.value_size} B; expected {want}): remove "
                "the stale pin and restart the monitor"
            )

    def _key(self, prefix: str) -> _LpmKey:
        plen, addr = prefix_key(prefix)
        key = _LpmKey(prefixlen=plen)
        ct.memmove(key.addr, addr, 16)
        return key

    def add(self, prefix: str) -> bool:
        """Block a source prefix; False when it was already there (its counter is kept)."""
        key = self._key(prefix)
        try:
            sys_bpf.update(self._fd, key, ct.c_uint64(0), sys_bpf.BPF_NOEXIST)
        except OSError as exc:
            if exc.errno == errno.EEXIST:
                return False
            hint = " (the map is full)" if exc.errno in (errno.ENOSPC, errno.E2BIG) else ""
            raise BlocklistError(f"cannot add {prefix!r}: {exc.strerror}{hint}") from exc
        return True

    def remove(self, prefix: str) -> bool:
        """Unblock a prefix (exact match); False when it was not in the list."""
        try:
            return sys_bpf.delete(self._fd, self._key(prefix))
        except OSError as exc:
            raise BlocklistError(f"cannot remove {prefix!r}: {exc.strerror}") from exc

    def entries(self) -> list[tuple[str, int]]:
        """Every blocked prefix with the number of packets it dropped, sorted by prefix."""
        out: list[tuple[str, int]] = []
        key: _LpmKey | None = None
        nxt = _LpmKey()
        hits = ct.c_uint64()
        while sys_bpf.next_key(self._fd, key, nxt):
            if sys_bpf.lookup(self._fd, nxt, hits):
                out.append((_format(nxt.prefixlen, bytes(nxt.addr)), hits.value))
            key = _LpmKey.from_buffer_copy(nxt)
        return sorted(out)

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

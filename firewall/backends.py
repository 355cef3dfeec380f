"""Where blocks are enforced: the XDP blocklist map, nftables, or nowhere (dry run).

Every backend takes the same two calls (``block``, ``unblock``) plus ``close`` when the
agent stops. :func:`choose_backend` picks one and says why:

* **xdp** -- the flow program's pinned LPM trie (``xdp.Blocklist``): a blocked source is
  dropped before the kernel stack. Entries carry their expiry, so a block lapses in the
  kernel even if the agent is gone. Chosen by ``auto`` when a flow program is attached
  (its map is pinned and in use by a program).
* **nftables** -- the agent's own table ``inet mld`` (:mod:`firewall.nft`) with sets whose
  elements expire by nftables' own timeouts; created at start, removed at stop, no other
  table touched. ``auto`` falls back to it when no flow program is attached.
* **none** -- dry run: nothing is applied; decisions are logged as ``dry_run``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Protocol

from base.errors import FirewallError
from firewall.config import FirewallConfig

__all__ = ["Backend", "NoBackend", "XdpBackend", "choose_backend"]

log = logging.getLogger(__name__)


class Backend(Protocol):
    name: str

    def block(self, addr: str, prefix_len: int, ttl_s: int) -> None: ...

    def unblock(self, addr: str, prefix_len: int) -> None: ...

    def close(self) -> None: ...


class NoBackend:
    """Dry run: every call is a no-op."""

    name = "none"

    def block(self, addr: str, prefix_len: int, ttl_s: int) -> None:
        del addr, prefix_len, ttl_s

    def unblock(self, addr: str, prefix_len: int) -> None:
        del addr, prefix_len

    def close(self) -> None:
        pass


class XdpBackend:
    """Blocks in the flow program's pinned blocklist map."""

    name = "xdp"

    def __init__(self, pin_dir: str | Path) -> None:
        from xdp.blocklist import Blocklist

        try:
            self._map: Any = Blocklist(pin_dir)
        except Exception as exc:  # BlocklistError, BpffsError: the map is not there
            raise FirewallError(f"cannot open the XDP blocklist in {pin_dir}: {exc}") from exc

    def block(self, addr: str, prefix_len: int, ttl_s: int) -> None:
        self._map.add(f"{addr}/{prefix_len}", ttl_s=ttl_s)

    def unblock(self, addr: str, prefix_len: int) -> None:
        self._map.remove(f"{addr}/{prefix_len}")

    def close(self) -> None:
        # The map stays pinned with its entries: blocks outlive the agent (they carry
        # their expiry), and a restarted agent takes them back from the decision log.
        self._map.close()


def choose_backend(
    config: FirewallConfig, pin_dir: str, netns: str | None = None
) -> tuple[Backend, str]:
    """The backend to use and why (the agent logs the reason at start). ``pin_dir``: the
    node's bpffs folder where the sniffer's program pins its blocklist (node.xdp_pin_dir)."""
    from firewall.nft import NftBackend

    if config.dry_run:
        return NoBackend(), "dry run: nothing is applied"
    if config.backend in ("auto", "xdp"):
        from xdp.blocklist import program_attached

        attached, why = program_attached(pin_dir)
        if attached:
            return XdpBackend(pin_dir), f"xdp: {why}"
        if config.backend == "xdp":
            raise FirewallError(
                f"firewall.backend is xdp but {why}: start the sniffer (mld sniffer run) first, or "
                "set firewall.backend to auto or nftables"
            )
        reason = f"nftables (fallback): {why}"
    else:
        reason = "nftables: firewall.backend is nftables"
    nft = NftBackend(netns=netns)
    ok, problem = nft.available()
    if not ok:
        raise FirewallError(f"no backend: {reason.split(':')[0]} and nft is unusable ({problem})")
    nft.setup()
    return nft, reason

"""The nftables fallback backend: blocks in a table of our own, expired by nftables itself.

Used when no XDP program is attached. Everything lives in one table, ``inet mld``; no
other table is read, changed or flushed::

    table inet mld {
        set block4 { type ipv4_addr; flags interval, timeout; }
        set block6 { type ipv6_addr; flags interval, timeout; }
        chain prerouting {
            type filter hook prerouting priority -300; policy accept;
            ip saddr @block4 counter drop
            ip6 saddr @block6 counter drop
        }
    }

Why prerouting at -300: it sees every packet that enters, whether the host delivers it
(input) or forwards it as a gateway (forward), with one chain; at the raw priority it runs
before conntrack (-200), so a blocked flood creates no conntrack entries, and before DNAT
(-100), so the source is the one on the wire. Packets the host sends are not filtered.

Each block carries nftables' own ``timeout``: the kernel removes the element when it
expires, even if the agent has died. Re-adding an existing element with a new timeout
replaces the timeout on newer kernels (seen on 6.18) but is a silent no-op on older ones
(Debian bookworm's 6.1), and nft 1.0.6 does not tell them apart. ``setup()`` probes which
on a set no rule uses; where re-adding is a no-op, a block of a prefix already present is
written ``add X; delete X; add X timeout N`` in one transaction (the first add makes the
delete safe should X have just expired).

Every change is one ``nft -f -`` transaction (atomic: all of it or none); ``block_many``
writes any number of blocks in one, which is what makes bulk inserts fast.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import shutil
import subprocess
from collections.abc import Iterable, Sequence
from typing import Any

from base.errors import FirewallError
from firewall.allowlist import IPNetwork, unmap_network

__all__ = ["NftBackend"]

log = logging.getLogger(__name__)

_TIMEOUT_S = 30  # per nft invocation; a batch of 100k elements takes a few seconds


def _network(addr: str, prefix_len: int) -> IPNetwork:
    """``addr/prefix_len`` as a network (host bits cleared), IPv4-mapped IPv6 as IPv4."""
    try:
        net = ipaddress.ip_network(f"{addr}/{prefix_len}", strict=False)
    except ValueError as exc:
        raise FirewallError(
            f"cannot block {addr!r}/{prefix_len}: {exc} (give an IPv4 or IPv6 address and a "
            "prefix length of at most 32 or 128)"
        ) from exc
    return unmap_network(net)


def _element(net: IPNetwork) -> str:
    """How nft spells a set element: a bare address for one host, else ``net/len``."""
    if net.prefixlen == net.max_prefixlen:
        return str(net.network_address)
    return str(net)


def _set_of(net: IPNetwork) -> str:
    return "block4" if net.version == 4 else "block6"


def _parse_elem(val: Any) -> str | None:
    """A JSON set element value as ``addr/len``; None for shapes we never write."""
    if isinstance(val, str):
        return str(ipaddress.ip_network(val))
    if isinstance(val, dict) and "prefix" in val:
        return f"{ipaddress.ip_address(val['prefix']['addr'])}/{int(val['prefix']['len'])}"
    if isinstance(val, dict) and "range" in val:  # a merged interval: only if one prefix
        lo, hi = (ipaddress.ip_address(v) for v in val["range"])
        nets = list(ipaddress.summarize_address_range(lo, hi))
        return str(nets[0]) if len(nets) == 1 else None
    return None


class NftBackend:
    """Blocks source prefixes in the nftables table ``family table`` (``inet mld``).

    ``netns`` runs every nft command inside that network namespace (tests); production
    leaves it None. ``nft`` is the binary to run.
    """

    name = "nftables"

    def __init__(
        self,
        table: str = "mld",
        family: str = "inet",
        netns: str | None = None,
        nft: str = "nft",
    ) -> None:
        self.table = table
        self.family = family
        self.netns = netns
        self.nft = nft
        self._where = f"{family} {table}"
        # Set by setup(): whether re-adding an element replaces its timeout (newer kernels).
        self._readd_updates = False

    # -- running nft ------------------------------------------------------------------

    def _argv(self, *args: str) -> list[str]:
        prefix = ["ip", "netns", "exec", self.netns] if self.netns else []
        return [*prefix, self.nft, *args]

    def _run(self, args: Sequence[str], stdin: str | None = None) -> str:
        """Run nft; its stdout, or FirewallError with nft's stderr and a next step."""
        argv = self._argv(*args)
        try:
            proc = subprocess.run(
                argv, input=stdin, capture_output=True, text=True, timeout=_TIMEOUT_S
            )
        except FileNotFoundError as exc:
            raise FirewallError(
                f"cannot run {argv[0]!r}: not found (install nftables: apt-get install "
                "nftables, or set the nft path)"
            ) from exc
        except subprocess.TimeoutExpired as exc:
            raise FirewallError(
                f"nft did not finish within {_TIMEOUT_S} s ({' '.join(argv)}): check for a "
                "hung nft process or split the batch"
            ) from exc
        if proc.returncode != 0:
            raise FirewallError(self._explain(argv, proc.stderr.strip()))
        return proc.stdout

    def _explain(self, argv: Sequence[str], stderr: str) -> str:
        what = " ".join(argv[argv.index(self.nft) :])
        if "Cannot open network namespace" in stderr:
            step = f"network namespace {self.netns!r} does not exist"
        elif "Operation not permitted" in stderr:
            step = "run the agent as root (or with CAP_NET_ADMIN)"
        elif "No such file or directory" in stderr:
            step = f"table {self._where} or its sets are missing: call setup() (the agent does)"
        elif "interval overlaps" in stderr:
            step = "a block overlapping this prefix exists: unblock it first"
        else:
            step = f"check the command by hand: {what}"
        return f"nft failed ({what}): {stderr or 'no message'}; {step}"

    def _batch(self, lines: Iterable[str]) -> None:
        script = "\n".join(lines) + "\n"
        self._run(["-f", "-"], stdin=script)

    def _table_exists(self) -> bool:
        try:
            self._run(["list", "table", self.family, self.table])
        except FirewallError:
            return False
        return True

    # -- lifecycle --------------------------------------------------------------------

    def available(self) -> tuple[bool, str]:
        """Whether nft is installed and may change the ruleset here, and why not."""
        if shutil.which(self.nft) is None:
            return False, f"{self.nft!r} not found (install nftables)"
        try:
            self._run(["list", "tables"])
        except FirewallError as exc:
            return False, str(exc)
        return True, f"nftables usable ({self.nft}, table {self._where})"

    def setup(self) -> None:
        """Create our table with its sets and chain; a leftover one is replaced, atomically."""
        if self._table_exists():
            log.warning(
                "table %s left over from an earlier run (crash?): replacing it; its blocks "
                "are dropped and restored from the decision log",
                self._where,
            )
        t = self._where
        self._batch(
            [
                f"add table {t}",  # so the delete below cannot fail
                f"delete table {t}",
                f"table {t} {{",
                "  set block4 { type ipv4_addr; flags interval, timeout; }",
                "  set block6 { type ipv6_addr; flags interval, timeout; }",
                "  chain prerouting {",
                "    type filter hook prerouting priority -300; policy accept;",
                "    ip saddr @block4 counter drop",
                "    ip6 saddr @block6 counter drop",
                "  }",
                "}",
            ]
        )
        self._readd_updates = self._probe_readd()
        log.info(
            "nftables table %s ready (sets block4, block6; hook prerouting -300; re-adding "
            "an element %s its timeout)",
            t,
            "updates" if self._readd_updates else "keeps",
        )

    def _probe_readd(self) -> bool:
        """Whether this kernel gives an element re-added with a new timeout that timeout.

        Tried on a set no rule uses, so the probe blocks nothing; the set is then removed.
        """
        probe = f"{self._where} probe"
        self._batch(
            [
                f"add set {probe} {{ type ipv4_addr; flags interval, timeout; }}",
                f"add element {probe} {{ 192.0.2.0 timeout 1000s }}",
            ]
        )
        try:
            # A second transaction: within one, re-adding never updates.
            self._batch([f"add element {probe} {{ 192.0.2.0 timeout 9000s }}"])
            doc = json.loads(self._run(["-j", "list", "set", *probe.split()]))
            elems = next(o["set"].get("elem", []) for o in doc["nftables"] if "set" in o)
            return bool(int(elems[0]["elem"]["timeout"]) > 1000)
        except (ValueError, KeyError, IndexError, TypeError, StopIteration):
            return False
        finally:
            self._run(["delete", "set", *probe.split()])

    def teardown(self) -> None:
        """Remove our table and every block in it; nothing else. No-op when already gone."""
        if not self._table_exists():
            return
        self._run(["delete", "table", self.family, self.table])
        log.info("nftables table %s removed", self._where)

    def close(self) -> None:
        """The agent stops: remove the table (same as :meth:`teardown`)."""
        self.teardown()

    # -- blocks -----------------------------------------------------------------------

    def block(self, addr: str, prefix_len: int, ttl_s: int) -> None:
        """Block ``addr/prefix_len`` for ``ttl_s`` s from now (replaces an earlier timeout)."""
        self.block_many([(addr, prefix_len, ttl_s)])

    def block_many(self, blocks: Iterable[tuple[str, int, int]]) -> int:
        """Apply many ``(addr, prefix_len, ttl_s)`` blocks in one transaction; returns how
        many prefixes were written (a prefix given twice counts once, the last TTL wins).

        When the transaction fails (e.g. one prefix overlaps an existing block) each
        block is retried alone, so the others still apply; the failures are raised then.
        """
        wanted: dict[IPNetwork, int] = {}
        for addr, prefix_len, ttl_s in blocks:
            if not isinstance(ttl_s, int) or ttl_s <= 0:
                raise FirewallError(
                    f"cannot block {addr}: ttl_s must be a positive int, got {ttl_s!r}"
                )
            wanted[_network(addr, prefix_len)] = ttl_s
        if not wanted:
            return 0
        present: set[str] = set()
        if not self._readd_updates:  # only elements already there need delete + add
            present = {prefix for prefix, _ in self.entries()}
        try:
            self._batch(self._block_lines(wanted, present))
        except FirewallError as batch_exc:
            if len(wanted) == 1:
                raise
            failed: list[str] = []
            for net, ttl_s in wanted.items():
                try:
                    self._batch(self._block_lines({net: ttl_s}, present))
                except FirewallError as exc:
                    failed.append(f"{net}: {exc}")
            if failed:
                raise FirewallError(
                    f"{len(failed)} of {len(wanted)} blocks not applied (the rest are): "
                    + "; ".join(failed[:5])
                ) from batch_exc
        return len(wanted)

    def _block_lines(self, wanted: dict[IPNetwork, int], present: set[str]) -> list[str]:
        """One ``add element`` per set; elements in ``present`` are first deleted (after an
        ``add`` that makes the delete safe should one have just expired), so they take
        the new timeout. Deleting from an interval set is slow in nft 1.0.6 (seconds for
        thousands), so only elements already present pay for it."""
        lines: list[str] = []
        for name in ("block4", "block6"):
            nets = {n: ttl for n, ttl in wanted.items() if _set_of(n) == name}
            if not nets:
                continue
            where = f"{self._where} {name}"
            again = ", ".join(_element(n) for n in nets if str(n) in present)
            if again:
                lines += [f"add element {where} {{ {again} }}"]
                lines += [f"delete element {where} {{ {again} }}"]
            timed = ", ".join(f"{_element(n)} timeout {ttl}s" for n, ttl in nets.items())
            lines.append(f"add element {where} {{ {timed} }}")
        return lines

    def unblock(self, addr: str, prefix_len: int) -> None:
        """Remove the block of exactly ``addr/prefix_len``; no-op when there is none."""
        net = _network(addr, prefix_len)
        where = f"{self._where} {_set_of(net)} {{ {_element(net)} }}"
        # The add makes the delete safe when the element is absent (or just expired).
        self._batch([f"add element {where}", f"delete element {where}"])

    def flush(self) -> None:
        """Remove every block (both sets); the table and chain stay."""
        self._batch([f"flush set {self._where} block4", f"flush set {self._where} block6"])

    def entries(self) -> list[tuple[str, int | None]]:
        """Every blocked prefix (``addr/len``) with the seconds until nftables removes it
        (None for an element without timeout, which this backend never writes), sorted."""
        out: list[tuple[str, int | None]] = []
        for name in ("block4", "block6"):
            text = self._run(["-j", "list", "set", self.family, self.table, name])
            try:
                doc = json.loads(text)
            except json.JSONDecodeError as exc:
                raise FirewallError(
                    f"nft -j list set {self._where} {name} printed no JSON ({exc}): is nft "
                    "built with JSON support (libjansson)?"
                ) from exc
            for obj in doc.get("nftables", []):
                for item in obj.get("set", {}).get("elem", []):
                    elem = item.get("elem", item) if isinstance(item, dict) else item
                    val = elem.get("val") if isinstance(elem, dict) and "val" in elem else elem
                    prefix = _parse_elem(val)
                    if prefix is None:
                        log.warning("unexpected element in %s %s: %r", self._where, name, item)
                        continue
                    expires = elem.get("expires") if isinstance(elem, dict) else None
                    out.append((prefix, int(expires) if expires is not None else None))
        return sorted(out)

    def dropped(self) -> tuple[int, int]:
        """Packets and bytes dropped by the two rules since setup()."""
        text = self._run(["-j", "list", "chain", self.family, self.table, "prerouting"])
        packets = octets = 0
        for obj in json.loads(text).get("nftables", []):
            for expr in obj.get("rule", {}).get("expr", []):
                counter = expr.get("counter") if isinstance(expr, dict) else None
                if isinstance(counter, dict):
                    packets += int(counter.get("packets", 0))
                    octets += int(counter.get("bytes", 0))
        return packets, octets

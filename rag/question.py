"""A question in, hard filters for SQL and an intent out.

``parse("how many SYN flood alerts in the last hour?", now)`` gives
``Filters(since_ts=now-3600, families=("ddos",), protos=(6,), min_label=2)``
and the intent ``count``. What is recognised:

* addresses (IPv4, IPv6) anywhere; after "from" they filter the source, after "to" the
  destination, otherwise either end;
* ports: "port 22", "ports 80 and 443", and service names (ssh, dns, http, smb, ...);
* families from their everyday words (scan, flood, brute force, tunnel, lateral ...);
  "syn flood" and "udp flood" also keep TCP or UDP flows only;
* alerts: "alert", "attack", "suspicious" keep labels suspicious and above; "blocked",
  "malicious" keep malicious only;
* time: "last hour", "last 30 minutes", "past 2 days", "today", "yesterday", "since
  10:00", "between 09:30 and 10:15", "after 10:00", "before 11:00" (UTC, the timezone
  events are stored in);
* the intent: ``count`` ("how many"), ``who`` ("which address", "who", "top talkers",
  "which hosts"), ``about`` (a question about an address: "what did 10.0.0.5 do?"),
  otherwise ``list``.

Everything else of the question goes to the vector search as text.
"""

from __future__ import annotations

import calendar
import ipaddress
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Literal

from rag.describe import SERVICES
from rag.hosts import HostNames
from rag.store import PROTOCOLS, Filters

__all__ = ["BlockAsk", "Intent", "Parsed", "follow_up", "is_followup", "parse"]

Intent = Literal["count", "who", "about", "list", "blocks", "divergent"]
# What a question about the firewall's decisions asks: anything blocked (list), why an
# address was blocked, what is blocked now, when something was unblocked, how many.
BlockAsk = Literal["", "list", "why", "now", "unblock", "count"]

# (pattern, family, protocol or None). A flood is a ddos alert whichever part found it
# (the syn_flood rule or the forest), so "SYN flood" means ddos over TCP, not the rule.
_FAMILY_PATTERNS: list[tuple[str, str, int | None]] = [
    (r"\bsyn[- ]?floods?\b", "ddos", 6),
    (r"\budp[- ]?floods?\b", "ddos", 17),
    (r"\b(amplification|reflection|reflected)\b", "ddos", None),
    (r"\b(ddos|dos|floods?|flooding|flooded|denial of service)\b", "ddos", None),
    (r"\bhost[- ]?sweeps?\b", "scan", None),
    (r"\bport[- ]?scans?\b|\bportscans?\b", "scan", None),
    (
        r"\b(scans?|scanned|scanning|scanners?|sweeps?|swept|probe[sd]?|probing|recon\w*)\b",
        "scan",
        None,
    ),
    (r"\bbrute[- ]?forc\w*|\bpassword guess\w*|\bcredential\w*", "bruteforce", None),
    (r"\bdns[- ]?tunnel\w*", "tunnel", None),
    (r"\b(tunnel\w*|exfiltrat\w*|covert|beacon\w*)\b", "tunnel", None),
    (r"\blateral\w*|\bspread\w*", "lateral", None),
    (r"\banomal\w*|\bunusual\b", "anomaly", None),
]

_ALERT = re.compile(r"\b(alerts?|alerted|attacks?|attacked|attackers?|suspicious|threats?)\b")
_BLOCKED = re.compile(r"\b(blocked|malicious|dropped)\b")
# Blocked flows/traffic are malicious events; "was X blocked?" asks the firewall's decisions.
_BLOCKED_EVENTS = re.compile(
    r"\bblocked\s+(traffic|flows?|packets?|events?|connections?|alerts?)\b"
)
_BLOCK_WORDS = re.compile(
    r"\b(block(ed|s|ing)?|unblock\w*|un-block\w*|ban(ned|s)?|firewall\w*|blocklist\w*|"
    r"lifted|released)\b"
)
_UNBLOCK = re.compile(r"\b(unblock\w*|un-block\w*|lifted|released|no longer blocked)\b")
_WHY = re.compile(r"\bwhy\b|\breasons?\b|\bwhat for\b|\bcause\b")
_NOW = re.compile(
    r"\b(now|currently|current|still|active|at the moment|right now|is blocked|are blocked)\b"
)
_DIVERGENT = re.compile(
    r"\bdisagre\w*|\bdiverg\w*|\bconflict\w*|\bcontradict\w*|\bdis?agreement\b"
    r"|\b(rules?|heuristics?) and (the )?(models?|forests?|ml)\b.*\b(differ\w*|not agree)"
)
# Follow-ups: "and from which hosts?", "what about yesterday?", "same for 10.0.0.5".
_FOLLOWUP = re.compile(
    r"^\s*(and|also|what about|how about|and what about|same for|same but|ok,? and|then|"
    r"only|just)\b",
    re.I,
)
_TARGET = re.compile(r"\b(targets?|targeted|victims?|destinations?|flooded|under attack)\b")
_COUNT = re.compile(r"\bhow many\b|\bnumber of\b|\bcount\b")
_WHO = re.compile(
    r"\bwhich (address|addresses|host|hosts|ip|ips|source|sources|machine|client)\b|"
    r"\bwho\b|\btop talkers?\b|\bwhat (address|addresses|host|hosts|ip)\b"
)
_ABOUT = re.compile(
    r"\bwhat did\b|\bwhat (has|have|was|is)\b.*\bdoing\b|\bwhat happened\b|\bactivity\b"
    r"|\bbehaviou?r\b|\btell me about\b"
)
_IPV4 = re.compile(r"\b(?:\d{1,3}\.){3}\d{1,3}\b")
_IPV6 = re.compile(r"(?<![\w:])(?:[0-9a-f]{0,4}:){2,7}[0-9a-f]{0,4}(?![\w:])", re.I)
_PORTS = re.compile(r"\bports?\s+((?:\d{1,5}(?:\s*(?:,|and|or)\s*)?)+)")
_LAST = re.compile(
    r"\b(?:last|past|previous)\s+(\d+|an?|one)?\s*(second|minute|min|hour|day|week)s?\b"
)
_SINCE = re.compile(r"\b(since|after|from)\s+(\d{1,2})(?::(\d{2}))?\s*(am|pm)?\b(?!\.\d)")
_BEFORE = re.compile(r"\b(before|until|till)\s+(\d{1,2})(?::(\d{2}))?\s*(am|pm)?\b(?!\.\d)")
_BETWEEN = re.compile(r"\bbetween\s+(\d{1,2})(?::(\d{2}))?\s*(?:and|-)\s*(\d{1,2})(?::(\d{2}))?")
_UNITS = {"second": 1, "minute": 60, "min": 60, "hour": 3600, "day": 86400, "week": 604800}
_SERVICE_PORTS = {name: port for port, name in SERVICES.items()}


@dataclass(frozen=True)
class Parsed:
    """What a question asks, as filters for SQL, an intent, and the text left over."""

    question: str
    filters: Filters
    intent: Intent
    text: str
    # Human-readable list of what was understood, for --json and the console.
    understood: tuple[str, ...] = ()
    # A "who" question about the target ("which address was the target of the flood?"):
    # answered with destinations, not sources.
    target: bool = False
    # For intent "blocks": what about the firewall's decisions is asked.
    blocks: BlockAsk = ""
    # The question this one follows up on ("and from which hosts?"), if any.
    follows: str = ""


def _day_start(now: float) -> float:
    t = time.gmtime(now)
    return float(calendar.timegm((t.tm_year, t.tm_mon, t.tm_mday, 0, 0, 0)))


def _clock(
    now: float, hour: str, minute: str | None, ampm: str | None = None, *, past: bool = True
) -> float | None:
    h, m = int(hour), int(minute or 0)
    if ampm == "pm" and h < 12:
        h += 12
    if ampm == "am" and h == 12:
        h = 0
    if h > 23 or m > 59:
        return None
    ts = _day_start(now) + h * 3600 + m * 60
    # "since 23:00" asked at 01:00 means yesterday's 23:00; "before 14:00" means today's.
    return ts - 86400 if past and ts > now else ts


def _addresses(text: str) -> list[tuple[str, int]]:
    found = []
    for match in list(_IPV4.finditer(text)) + list(_IPV6.finditer(text)):
        try:
            found.append((str(ipaddress.ip_address(match.group(0))), match.start()))
        except ValueError:
            continue
    return found


def _put_hosts(
    q: str, hosts: HostNames | None, seen: Callable[[str], bool] | None
) -> tuple[str, dict[str, tuple[str, ...]], list[str]]:
    """``q`` with each host name replaced by its first address; the other addresses of
    each, and what was understood."""
    if hosts is None:
        return q, {}, []
    aliases: dict[str, tuple[str, ...]] = {}
    understood = []
    for start, end, host in reversed(hosts.find(q, seen)):
        first = host.addresses[0]
        q = q[:start] + first + q[end:]
        aliases[first] = host.addresses[1:]
        understood.append(f"{host.name} = {', '.join(host.addresses)} ({host.source})")
    return q, aliases, understood[::-1]


def parse(
    question: str,
    now: float | None = None,
    *,
    hosts: HostNames | None = None,
    seen: Callable[[str], bool] | None = None,
) -> Parsed:
    """Parse ``question`` asked at ``now`` (s since the epoch; default: the clock).
    ``hosts``: names the operator may use for addresses; ``seen(addr)``: whether the
    store has events of an address (lab names count only then, see rag/hosts.py)."""
    now = time.time() if now is None else now
    original = question.strip()
    q, aliases, understood = _put_hosts(_fix_spelling(original), hosts, seen)
    low = q.lower()
    f = Filters()

    either, src, dst = [], [], []
    for addr, pos in _addresses(q):
        before = low[max(0, pos - 6) : pos]
        if re.search(r"\bfrom\s+$", before):
            src.append(addr)
        elif re.search(r"\bto\s+$", before) or re.search(
            r"\bagainst\s+$", low[max(0, pos - 9) : pos]
        ):
            dst.append(addr)
        else:
            either.append(addr)
    for found in (either, src, dst):
        found += [a for addr in list(found) for a in aliases.get(addr, ())]
    if either:
        f = replace(f, addrs=tuple(either))
        understood.append("address " + ", ".join(either))
    if src:
        f = replace(f, src=tuple(src))
        understood.append("from " + ", ".join(src))
    if dst:
        f = replace(f, dst=tuple(dst))
        understood.append("to " + ", ".join(dst))
    scrubbed = _IPV4.sub(" ", low)

    ports = [int(p) for m in _PORTS.finditer(scrubbed) for p in re.findall(r"\d{1,5}", m.group(1))]
    for name, port in _SERVICE_PORTS.items():
        if re.search(rf"\b{re.escape(name)}\b", scrubbed) and not (
            name == "dns" and re.search(r"\bdns[- ]?tunnel", scrubbed)
        ):
            ports.append(port)
    ports = sorted({p for p in ports if 0 < p < 65536})
    if ports:
        f = replace(f, ports=tuple(ports))
        understood.append("port " + ", ".join(map(str, ports)))

    families: list[str] = []
    protos: list[int] = []
    for pattern, family, proto in _FAMILY_PATTERNS:
        if re.search(pattern, scrubbed):
            if family not in families:
                families.append(family)
            if proto is not None and proto not in protos:
                protos.append(proto)
    if families:
        f = replace(f, families=tuple(families))
        understood.append("family " + ", ".join(families))
    if protos:
        f = replace(f, protos=tuple(protos))
        understood.append("protocol " + ", ".join(PROTOCOLS[p] for p in protos))
    blocks: BlockAsk = ""
    if _BLOCK_WORDS.search(scrubbed) and not _BLOCKED_EVENTS.search(scrubbed):
        blocks = (
            "unblock"
            if _UNBLOCK.search(scrubbed)
            else "why"
            if _WHY.search(scrubbed)
            else "count"
            if _COUNT.search(scrubbed)
            else "now"
            if _NOW.search(scrubbed)
            else "list"
        )
        understood.append(f"firewall decisions ({blocks})")
    elif _BLOCKED.search(scrubbed):
        f = replace(f, min_label=3)
        understood.append("malicious only")
    elif _ALERT.search(scrubbed) or families:
        f = replace(f, min_label=2)
        understood.append("alerts (suspicious and malicious)")

    since, until = _time_range(scrubbed, now)
    if since is not None:
        f = replace(f, since_ts=since)
        understood.append("since " + time.strftime("%Y-%m-%d %H:%M", time.gmtime(since)) + "Z")
    if until is not None:
        f = replace(f, until_ts=until)
        understood.append("before " + time.strftime("%Y-%m-%d %H:%M", time.gmtime(until)) + "Z")

    divergent = bool(_DIVERGENT.search(scrubbed))
    if divergent:
        f = replace(f, divergent=True, min_label=0)
        understood.append("where the fast rules and the forests disagree")

    intent: Intent = "list"
    if blocks:
        intent = "blocks"
    elif divergent and not _COUNT.search(scrubbed):
        intent = "divergent"
    elif _COUNT.search(scrubbed):
        intent = "count"
    elif _WHO.search(scrubbed):
        intent = "who"
    elif (either or src or dst) and _ABOUT.search(scrubbed):
        intent = "about"
        # "what happened to X" asks about X whichever end it is.
        f = replace(f, addrs=f.addrs + f.src + f.dst, src=(), dst=())
    elif (either or src or dst) and len(scrubbed.split()) <= 4:
        intent = "about"  # "10.0.0.5", "blocked flows from 10.0.0.5": directions kept
    target = intent == "who" and bool(_TARGET.search(scrubbed))
    return Parsed(original, f, intent, q, tuple(understood), target, blocks)


def is_followup(question: str) -> bool:
    """Whether ``question`` reads as a follow-up of the one before ("and from which
    hosts?", "what about yesterday?")."""
    return bool(_FOLLOWUP.search(question))


def follow_up(previous: Parsed, question: str, now: float | None = None, **kw: Any) -> Parsed:
    """``question`` read in the context of ``previous``: what it says replaces the same
    part of the previous question (its addresses, its time, its families, its intent),
    the rest is kept."""
    new = parse(question, now, **kw)
    old, nf = previous.filters, new.filters
    f = old
    if nf.addrs or nf.src or nf.dst:
        f = replace(f, addrs=nf.addrs, src=nf.src, dst=nf.dst)
    if nf.since_ts is not None or nf.until_ts is not None:
        f = replace(f, since_ts=nf.since_ts, until_ts=nf.until_ts)
    if nf.ports:
        f = replace(f, ports=nf.ports)
    if nf.families:
        f = replace(f, families=nf.families, protos=nf.protos)
    if nf.min_label:
        f = replace(f, min_label=nf.min_label)
    if nf.divergent:
        f = replace(f, divergent=True)
    intent, blocks, target = previous.intent, previous.blocks, previous.target
    asks = re.search(r"\bwhich|\bwho|\bhow many|\bwhen\b|\bwhat happened", question, re.I)
    if new.intent not in ("list", "about") or asks:
        intent, blocks, target = new.intent, new.blocks, new.target
    if intent == "about" and not (f.addrs or f.src or f.dst):
        intent = "list"
    understood = (f"follow-up of: {previous.question}", *new.understood)
    kept = [u for u in previous.understood if not u.startswith("follow-up of")]
    return Parsed(
        new.question,
        f,
        intent,
        f"{previous.text} {new.text}",
        (*understood, *(f"kept: {u}" for u in kept)),
        target,
        blocks,
        previous.question,
    )


# Misspellings operators make, corrected before anything else is read.
_SPELLING = {
    r"\bscaned\b": "scanned",
    r"\bscaning\b": "scanning",
    r"\bbrut[- ]?forc\w*": "brute force",
    r"\bbrute-?froce\b": "brute force",
    r"\bflod\w*": "flood",
    r"\bfloood\w*": "flood",
    r"\batacks?\b": "attacks",
    r"\batacked\b": "attacked",
    r"\battaked\b": "attacked",
    r"\bblokced\b": "blocked",
    r"\bbloked\b": "blocked",
    r"\bblcoked\b": "blocked",
    r"\byesterdy\b": "yesterday",
    r"\byestarday\b": "yesterday",
    r"\btoday'?s\b": "today",
    r"\btunel\w*": "tunnel",
    r"\badress\w*": "address",
    r"\bsuspicous\b": "suspicious",
    r"\bmalicous\b": "malicious",
    r"\bhte\b": "the",
}


def _fix_spelling(text: str) -> str:
    for wrong, right in _SPELLING.items():
        text = re.sub(wrong, right, text, flags=re.I)
    return text


def _time_range(low: str, now: float) -> tuple[float | None, float | None]:
    if m := _BETWEEN.search(low):
        return _clock(now, m.group(1), m.group(2)), _clock(now, m.group(3), m.group(4))
    if m := _LAST.search(low):
        amount = m.group(1)
        n = 1 if amount in (None, "a", "an", "one") else int(amount)
        return now - n * _UNITS[m.group(2)], None
    if re.search(r"\btoday\b", low):
        return _day_start(now), None
    if re.search(r"\byesterday\b", low):
        return _day_start(now) - 86400, _day_start(now)
    since = until = None
    if m := _SINCE.search(low):
        since = _clock(now, m.group(2), m.group(3), m.group(4))
    if m := _BEFORE.search(low):
        until = _clock(now, m.group(2), m.group(3), m.group(4), past=False)
    return since, until

"""The short text description of an event, and its text embedding.

The description is one sentence with the words a question about the event would use:
the family in plain words, alert level, protocol and service names, addresses and ports,
the fast rule, sizes and the top features. It is stored with the event and embedded
for the text index.

The embedding is lexical: tokens and token pairs hashed into ``TEXT_DIM`` signed buckets
(the hashing trick), L2-normalised, so an inner product is a cosine over shared words. No
model weights are needed (none may be downloaded here) and it costs microseconds per
event, which matters at millions of events; a question matches events that share its
words ("ssh", "brute force", "10.0.0.5"), not its meaning. The answering model reads the
retrieved events, so wording it differently is its part.
"""

from __future__ import annotations

import functools
import itertools
import re
import time
import zlib
from collections.abc import Iterable, Sequence

import numpy as np
import numpy.typing as npt

from proto.events_pb2 import ScoredEvent
from rag.store import LABELS, PROTOCOLS, address_text

__all__ = [
    "FAMILY_WORDS",
    "SERVICES",
    "TEXT_DIM",
    "describe",
    "embed_codes",
    "embed_texts",
    "text_codes",
    "tokens",
]

TEXT_DIM = 256

# Words people use for each family (and for benign traffic); the question parser maps
# them back to families.
FAMILY_WORDS = {
    "ddos": "ddos flood denial of service syn flood udp flood amplification reflection",
    "scan": "scan port scan portscan sweep reconnaissance probe",
    "bruteforce": "brute force bruteforce password guessing login credential",
    "tunnel": "tunnel dns tunnel exfiltration covert channel beacon",
    "lateral": "lateral movement smb rdp spread",
    "anomaly": "anomaly unusual unseen",
}

SERVICES = {
    21: "ftp",
    22: "ssh",
    23: "telnet",
    25: "smtp",
    53: "dns",
    80: "http",
    110: "pop3",
    123: "ntp",
    139: "netbios",
    143: "imap",
    161: "snmp",
    389: "ldap",
    443: "https",
    445: "smb",
    500: "isakmp",
    1900: "ssdp",
    3306: "mysql",
    3389: "rdp",
    5353: "mdns",
    5432: "postgres",
    5900: "vnc",
    8080: "http-alt",
    11211: "memcached",
    47808: "bacnet",
}

_TOKEN = re.compile(r"[a-z0-9][a-z0-9_.:-]*[a-z0-9]|[a-z0-9]")


def describe(ev: ScoredEvent) -> str:
    """One sentence about the event."""
    r, v = ev.record, ev.verdict
    proto = PROTOCOLS.get(r.protocol, f"protocol {r.protocol}")
    label = LABELS.get(int(v.label), "unscored")
    level = {"malicious": "blocked alert", "suspicious": "alert"}.get(label, "benign flow")
    family = v.family if label != "benign" else f"benign (closest family {v.family})"
    service = SERVICES.get(r.dst_port) or SERVICES.get(r.src_port) or ""
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(r.first_ts_ns / 1e9))
    words = FAMILY_WORDS.get(v.family, "") if label != "benign" else "normal traffic"
    parts = [
        f"{family} {level} ({words})" if words else f"{family} {level}",
        f"{proto} {service} from {address_text(r.src_addr)} port {r.src_port}"
        f" to {address_text(r.dst_addr)} port {r.dst_port}",
        f"at {when}Z",
        f"score {v.final_score:.2f}",
    ]
    if v.fast_rule:
        parts.append(f"rule {v.fast_rule.replace('_', ' ')}")
    parts.append(f"{r.fwd.packets + r.bwd.packets} packets {r.fwd.bytes + r.bwd.bytes} bytes")
    if v.top_features:
        parts.append("top features " + " ".join(f.name for f in v.top_features[:3]))
    return ", ".join(parts)


def tokens(text: str) -> list[str]:
    """Lower-case words, addresses and numbers of ``text``, plus adjacent word pairs."""
    words = _TOKEN.findall(text.lower())
    return words + [f"{a} {b}" for a, b in itertools.pairwise(words)]


# Addresses, ports and words repeat across events; timestamps, scores and byte counts do
# not. 16k entries (about 3 MB) hit as often as 256k on the shared captures' events, at the
# same speed; 256k entries grew the RAG store by about 190 bytes per event until full
# (50 MB), which the soak counted as growth.
@functools.lru_cache(maxsize=1 << 14)
def _code(token: str) -> int:
    """The token's bucket and sign as one code: 2 * bucket, +1 for a negative sign."""
    h = zlib.crc32(token.encode())
    return (h % TEXT_DIM) * 2 + (((h >> 16) & 1) ^ 1)


def text_codes(texts: Iterable[str]) -> list[npt.NDArray[np.uint16]]:
    """The hashed tokens of each text (bucket and sign as ``_code`` gives them), as the
    store keeps them beside the description (``text_codes`` column): a question's
    ranking embeds the events it reads from these (``embed_codes``) without tokenizing
    their descriptions again."""
    # tokens() inlined: ~25 % less per text (min 26 -> 19 us over 5,000 descriptions).
    code, find = _code, _TOKEN.findall
    out = []
    for text in texts:
        words = find(text.lower())
        words += [a + " " + b for a, b in itertools.pairwise(words)]
        out.append(np.array(list(map(code, words)), dtype=np.uint16))
    return out


def embed_codes(codes: Sequence[npt.NDArray[np.uint16]]) -> npt.NDArray[np.float32]:
    """Unit-length hashed bag-of-words vectors of ``text_codes`` rows, one row per text."""
    lengths = np.fromiter((len(c) for c in codes), dtype=np.int64, count=len(codes))
    rows = np.repeat(np.arange(len(codes), dtype=np.int64), lengths)
    flat_codes = np.concatenate(codes).astype(np.int64) if len(codes) else np.zeros(0, np.int64)
    # Count each (row, bucket, sign) at once, then plus minus minus.
    flat = rows * (2 * TEXT_DIM) + flat_codes
    counts = np.bincount(flat, minlength=len(codes) * 2 * TEXT_DIM)
    counts = counts.reshape(len(codes), TEXT_DIM, 2)
    out = (counts[:, :, 0] - counts[:, :, 1]).astype(np.float32)
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    np.divide(out, norms, out=out, where=norms > 0)
    return out


def embed_texts(texts: Iterable[str]) -> npt.NDArray[np.float32]:
    """Unit-length hashed bag-of-words vectors, one row per text."""
    return embed_codes(text_codes(texts))

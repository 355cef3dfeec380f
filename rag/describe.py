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

import itertools
import math
import re
import time
import zlib
from collections.abc import Iterable, Sequence
from typing import TypeVar

import numpy as np
import numpy.typing as npt

from native import _ragtext
from proto.events_pb2 import ScoredEvent
from rag.store import LABELS, PROTOCOLS, address_text

__all__ = [
    "FAMILY_WORDS",
    "SERVICES",
    "TEXT_DIM",
    "code_blobs",
    "describe",
    "describe_batch",
    "embed_code_bytes",
    "embed_codes",
    "embed_flat_codes",
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


# Memos of describe() and text_codes(): plain dicts emptied when full (a dict lookup is a
# third of an lru_cache's, and these run ~60 times per event). Their values repeat across
# events (the family's words, protocols, services, scores, rules, feature names) or within
# a second of traffic (the time); the rest misses and is computed as before.
_MEMO_MAX = 1 << 14
_K = TypeVar("_K")
_V = TypeVar("_V")


def _memo_put(memo: dict[_K, _V], key: _K, value: _V) -> None:
    if len(memo) >= _MEMO_MAX:
        memo.clear()
    memo[key] = value


def _head(family: str, label: str) -> str:
    level = {"malicious": "blocked alert", "suspicious": "alert"}.get(label, "benign flow")
    name = family if label != "benign" else f"benign (closest family {family})"
    words = FAMILY_WORDS.get(family, "") if label != "benign" else "normal traffic"
    return f"{name} {level} ({words})" if words else f"{name} {level}"


_HEADS: dict[tuple[str, int], str] = {}
_WHEN: dict[int, str] = {}  # "at <the second>Z"


def describe(ev: ScoredEvent) -> str:
    """One sentence about the event."""
    return ", ".join(_parts_of(ev))


def _parts_of(ev: ScoredEvent) -> list[str]:
    """The parts of the event's sentence (joined by ", ")."""
    r, v = ev.record, ev.verdict
    label_id, family = int(v.label), v.family
    key = (family, label_id)
    head = _HEADS.get(key)
    if head is None:
        head = _head(family, LABELS.get(label_id, "unscored"))
        _memo_put(_HEADS, key, head)
    proto = PROTOCOLS.get(r.protocol) or f"protocol {r.protocol}"
    sport, dport = r.src_port, r.dst_port
    service = SERVICES.get(dport) or SERVICES.get(sport) or ""
    # time.gmtime floors the float it is given: the same float, floored, is the key.
    start = r.first_ts_ns / 1e9
    second = math.floor(start)
    when = _WHEN.get(second)
    if when is None:
        when = "at " + time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(start)) + "Z"
        _memo_put(_WHEN, second, when)
    fwd, bwd = r.fwd, r.bwd
    parts = [
        head,
        f"{proto} {service} from {address_text(r.src_addr)} port {sport}"
        f" to {address_text(r.dst_addr)} port {dport}",
        when,
        f"score {v.final_score:.2f}",
    ]
    rule = v.fast_rule
    if rule:
        parts.append("rule " + rule.replace("_", " "))
    parts.append(f"{fwd.packets + bwd.packets} packets {fwd.bytes + bwd.bytes} bytes")
    top = v.top_features
    if top:
        parts.append("top features " + " ".join(f.name for f in top[:3]))
    return parts


def tokens(text: str) -> list[str]:
    """Lower-case words, addresses and numbers of ``text``, plus adjacent word pairs."""
    words = _TOKEN.findall(text.lower())
    return words + [f"{a} {b}" for a, b in itertools.pairwise(words)]


def _hash_code(token: str) -> int:
    """The token's bucket and sign as one code: 2 * bucket, +1 for a negative sign."""
    h = zlib.crc32(token.encode())
    return (h % TEXT_DIM) * 2 + (((h >> 16) & 1) ^ 1)


# Addresses, ports and words repeat across events; timestamps, scores and byte counts do
# not. 16k entries hit as often as 256k on the shared captures' events; 256k entries grew
# the RAG store by about 190 bytes per event until full (50 MB), which the soak counted
# as growth.
_CODES: dict[str, int] = {}


def _code(token: str) -> int:
    code = _CODES.get(token)
    if code is None:
        code = _hash_code(token)
        _memo_put(_CODES, token, code)
    return code


# Per part of a text (between ", ", which no token holds: a comma and a space end one):
# its words' codes, the codes of its inner word pairs, its first and last word.
_Part = tuple[list[int], list[int], str, str]
_PARTS: dict[str, _Part | None] = {}


def _part(text: str) -> _Part | None:
    words = _TOKEN.findall(text)
    if not words:
        return None
    code = _code
    inner = [code(a + " " + b) for a, b in itertools.pairwise(words)]
    return list(map(code, words)), inner, words[0], words[-1]


def _flat_codes_py(texts: Iterable[str]) -> tuple[list[int], list[int]]:
    """All texts' codes in one list, and each text's number of codes, in Python, per
    part with memos: for texts that are not all ASCII
    (``str.lower`` of some other characters gives ASCII letters: the Kelvin sign gives
    "k"), and the oracle of the C path (tests/rag/test_describe.py)."""
    flat: list[int] = []
    lengths: list[int] = []
    parts_memo, part_of, code = _PARTS, _part, _code
    for text in texts:
        start = len(flat)
        pairs: list[int] = []
        last = None
        for piece in text.lower().split(", "):
            if piece in parts_memo:
                got = parts_memo[piece]
            else:
                got = part_of(piece)
                _memo_put(parts_memo, piece, got)
            if got is None:
                continue
            words, inner, first, end = got
            flat += words
            if last is not None:
                pairs.append(code(last + " " + first))
            pairs += inner
            last = end
        flat += pairs
        lengths.append(len(flat) - start)
    return flat, lengths


def text_codes(texts: Iterable[str]) -> list[npt.NDArray[np.uint16]]:
    """The hashed tokens of each text (bucket and sign as ``_code`` gives them; the words
    in order, then the word pairs in order: what ``tokens`` gives), as the store keeps
    them beside the description (``text_codes`` column): a question's ranking embeds the
    events it reads from these (``embed_codes``) without tokenizing their descriptions
    again. ASCII texts are tokenized and hashed in C, all at once (native/ragtext.c:
    ~1.4 us a description of the shared captures' events, against ~12 for the Python
    per part with memos, ~40 without); others in Python (``_flat_codes_py``)."""
    texts = list(texts)
    if not texts:
        return []
    all_codes, ends = _batch_codes(texts)
    # Slices, not np.split (~7 us a text in its bookkeeping).
    return [all_codes[a:b] for a, b in zip([0, *ends[:-1]], ends, strict=True)]


def describe_batch(
    events: Iterable[ScoredEvent],
) -> tuple[list[str], npt.NDArray[np.uint16], list[int]]:
    """``describe`` of each event and ``text_codes`` of those sentences, in one pass (the
    ingest's): the sentences, every sentence's codes one after the other, and where each
    sentence's codes end in that array. The same sentences and codes as the two calls
    (tests/rag/test_describe.py), without an array per sentence: the sentences in
    Python, then the whole batch's words hashed in one C call (native/ragtext.c; 22 ->
    ~10 us an event of the shared captures, idle, with the sentences)."""
    texts = [", ".join(_parts_of(ev)) for ev in events]
    return texts, *_batch_codes(texts)


def _batch_codes(texts: list[str]) -> tuple[npt.NDArray[np.uint16], list[int]]:
    """Every text's codes one after the other, and where each text's end: in one C call
    when all are ASCII, else in Python (``_flat_codes_py``)."""
    if all(t.isascii() for t in texts):
        raw, ends = _ragtext.text_codes(texts, TEXT_DIM)
        return np.frombuffer(raw, dtype=np.uint16), ends
    flat, lengths = _flat_codes_py(texts)
    return np.array(flat, dtype=np.uint16), list(itertools.accumulate(lengths))


def code_blobs(flat: npt.NDArray[np.uint16], ends: Sequence[int]) -> list[bytes]:
    """Each sentence's codes of ``describe_batch`` as the bytes the store keeps."""
    buf = flat.tobytes()
    starts = [0, *ends[:-1]]
    return [buf[2 * a : 2 * b] for a, b in zip(starts, ends, strict=True)]


def embed_flat_codes(flat: npt.NDArray[np.uint16], ends: Sequence[int]) -> npt.NDArray[np.float32]:
    """``embed_codes`` of the codes of ``describe_batch``."""
    if not len(ends):
        return np.zeros((0, TEXT_DIM), dtype=np.float32)
    lengths = np.diff(np.asarray(ends, dtype=np.int64), prepend=0).astype(np.int64)
    return _embed_flat(flat, lengths)


def embed_codes(codes: Sequence[npt.NDArray[np.uint16]]) -> npt.NDArray[np.float32]:
    """Unit-length hashed bag-of-words vectors of ``text_codes`` rows, one row per text."""
    n = len(codes)
    if n == 0:
        return np.zeros((0, TEXT_DIM), dtype=np.float32)
    lengths = np.fromiter((len(c) for c in codes), dtype=np.int64, count=n)
    return _embed_flat(np.concatenate(codes), lengths)


def embed_code_bytes(blobs: Sequence[bytes]) -> npt.NDArray[np.float32]:
    """``embed_codes`` of stored ``text_codes`` blobs (uint16 bytes), without an array
    per blob (a question ranks up to 5,000 stored events: ~4 us each)."""
    n = len(blobs)
    if n == 0:
        return np.zeros((0, TEXT_DIM), dtype=np.float32)
    lengths = np.fromiter((len(b) >> 1 for b in blobs), dtype=np.int64, count=n)
    return _embed_flat(np.frombuffer(b"".join(blobs), dtype=np.uint16), lengths)


def _embed_flat(
    flat: npt.NDArray[np.uint16], lengths: npt.NDArray[np.int64]
) -> npt.NDArray[np.float32]:
    n = len(lengths)
    flat_codes = flat.astype(np.int64)
    rows = np.repeat(np.arange(n, dtype=np.int64), lengths)
    # One weighted count per (row, bucket): +1 or -1 by the code's sign bit. The sums are
    # small integers, exact in float64, so the vector is the same as counting each sign.
    signs = 1.0 - 2.0 * (flat_codes & 1)
    sums = np.bincount(rows * TEXT_DIM + (flat_codes >> 1), weights=signs, minlength=n * TEXT_DIM)
    out = sums.reshape(n, TEXT_DIM).astype(np.float32)
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    np.divide(out, norms, out=out, where=norms > 0)
    return out


def embed_texts(texts: Iterable[str]) -> npt.NDArray[np.float32]:
    """Unit-length hashed bag-of-words vectors, one row per text."""
    return embed_codes(text_codes(texts))

"""The description and its hashed tokens, computed per part with memos for ingest speed
(rag/describe.py), are exactly what the plain per-event code gave: the same sentence, the
same codes in the same order, the same vectors. The reference below is that plain code
(the project's own, before the memos), kept here as the oracle."""

from __future__ import annotations

import itertools
import time
import zlib

import numpy as np
import pytest

from proto.events_pb2 import ScoredEvent
from rag import describe as rag_describe
from rag.describe import (
    FAMILY_WORDS,
    SERVICES,
    TEXT_DIM,
    code_blobs,
    describe,
    describe_batch,
    embed_code_bytes,
    embed_codes,
    embed_flat_codes,
    embed_texts,
    text_codes,
)
from rag.indexed_store import RagStore
from rag.store import LABELS, PROTOCOLS, address_text


def _reference_describe(ev: ScoredEvent) -> str:
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


def _reference_codes(text: str) -> list[int]:
    words = rag_describe._TOKEN.findall(text.lower())
    tokens = words + [f"{a} {b}" for a, b in itertools.pairwise(words)]
    out = []
    for token in tokens:
        h = zlib.crc32(token.encode())
        out.append((h % TEXT_DIM) * 2 + (((h >> 16) & 1) ^ 1))
    return out


def _reference_vector(text: str) -> np.ndarray:
    counts = np.zeros((TEXT_DIM, 2), dtype=np.int64)
    for code in _reference_codes(text):
        counts[code >> 1, code & 1] += 1
    out = (counts[:, 0] - counts[:, 1]).astype(np.float32)
    norm = np.linalg.norm(out)
    return out / norm if norm > 0 else out


def _odd_events() -> list[ScoredEvent]:
    """Events the captures lack: no rule, no top features, an unknown protocol, IPv6,
    an unscored label, empty addresses, a start just below a whole second; a family and a
    rule in capitals and with ", " inside (which splits the sentence in other places than
    its parts)."""
    out = []
    for i, (proto, label, rule, addr) in enumerate(
        [
            (47, 0, "", b""),
            (6, 3, "syn_flood", bytes(range(16))),
            (17, 2, "", b"\xc0\x00\x02\x07"),
            (1, 1, "x_y_z", b"\x01\x02\x03"),
        ]
    ):
        ev = ScoredEvent(sensor_id="s")
        r, v = ev.record, ev.verdict
        r.protocol, r.src_addr, r.dst_addr = proto, addr, addr
        r.src_port, r.dst_port = 40000 + i, (22, 0, 53, 65535)[i]
        r.first_ts_ns = 1_764_000_000 * 10**9 - 1 + i  # .999999999 s: the float rounds up
        r.fwd.packets, r.bwd.bytes = i, 10**12
        v.label, v.family, v.fast_rule = label, ("scan", "ddos", "unknown", "tunnel")[i], rule
        v.final_score = (0.005, 0.995, 1.0, 0.0)[i]
        for name in ("a.b", "C-D", "e_f", "g")[: i + 1]:
            v.top_features.add(name=name)
        out.append(ev)
    odd = ScoredEvent()
    odd.CopyFrom(out[1])
    odd.verdict.family, odd.verdict.fast_rule = "Odd, Family", "rule, B"
    odd.verdict.top_features.add(name=", ")
    out.append(odd)
    return out


def _stored_events(rag: RagStore) -> list[ScoredEvent]:
    return [ScoredEvent.FromString(b) for chunk in rag.store.scan(0) for _, b, _ in chunk]


@pytest.mark.parametrize("memo_size", [1 << 14, 3])
def test_descriptions_codes_and_vectors_are_the_plain_codes(
    small_store: RagStore, monkeypatch: pytest.MonkeyPatch, memo_size: int
) -> None:
    """Every stored event of the scan and benign captures, and odd ones, twice (the memos
    hit the second time); with tiny memos too (emptied all the time)."""
    monkeypatch.setattr(rag_describe, "_MEMO_MAX", memo_size)
    events = _stored_events(small_store) + _odd_events()
    assert len(events) > 500
    for _ in range(2):
        texts = [describe(ev) for ev in events]
        assert texts == [_reference_describe(ev) for ev in events]
        codes = text_codes(texts)
        assert [c.tolist() for c in codes] == [_reference_codes(t) for t in texts]
        assert all(c.dtype == np.uint16 for c in codes)
        expected = np.array([_reference_vector(t) for t in texts])
        assert np.array_equal(embed_codes(codes), expected)
        # The ingest's one pass: the same sentences, codes, stored bytes and vectors.
        batch_texts, flat, ends = describe_batch(events)
        assert batch_texts == texts
        assert code_blobs(flat, ends) == [c.tobytes() for c in codes]
        assert np.array_equal(embed_flat_codes(flat, ends), expected)
        assert np.array_equal(embed_code_bytes([c.tobytes() for c in codes]), expected)
        assert np.array_equal(embed_texts(texts), expected)
    assert text_codes([]) == [] and embed_codes([]).shape == (0, TEXT_DIM)
    assert embed_code_bytes([]).shape == (0, TEXT_DIM)
    assert text_codes([""])[0].tolist() == [] and not embed_texts([""]).any()

"""The description and its hashed tokens, computed per part with memos and hashed in C
for ingest speed (rag/describe.py, native/ragtext.c), are exactly what the plain per-event
code gave: the same sentence, the same codes in the same order, the same vectors; and the
store's feature vectors, decoded from the events' bytes in C, are the detector's matrix of
the records. The reference below is that plain code (the project's own, before the memos
and the C), kept here as the oracle."""

from __future__ import annotations

import itertools
import time
import zlib
from typing import Any

import numpy as np
import pytest
from google.protobuf.descriptor import FieldDescriptor

from detector.features import columns_from_records, feature_matrix, packed_feature_matrix
from native import _ragtext
from proto.events_pb2 import FlowRecord, ScoredEvent
from proto.flowpack import ENCODE_OPS, PACKED_DTYPE
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
from rag.indexed_store import RagStore, record_matrix
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


# Texts at the edges of the tokenizer: a word ends at the last letter or digit of a run of
# word characters, separators of every kind, capitals, empty parts, long runs.
_EDGE_TEXTS = [
    "",
    " ",
    ", , ,",
    "a",
    "a.",
    ".a",
    "-a-",
    "a_b.",
    "::1",
    "fe80::1%eth0 port 0",
    "a:.b c",
    "A.B-C_D e",
    "x, y",
    "10.0.0.5 port 22",
    "__",
    "9-",
    "a-.-",
    "a-.-b",
    "-.-",
    "A" * 300 + "." * 10 + "b",
    "tab\tnew\nline\rcr",
    "ddos blocked alert (ddos flood denial of service syn flood udp flood)",
]


def test_native_text_codes_are_the_regex_tokens_hashed() -> None:
    """The C tokenizer and hash (native/ragtext.c) against the plain code, on edge texts
    and on 3,000 random texts of word characters, separators and capitals, one at a time
    and as one batch."""
    rng = np.random.default_rng(21)
    alphabet = list("abzAZ09_.:- ,\t()%")
    randoms = ["".join(rng.choice(alphabet, size=int(rng.integers(0, 40)))) for _ in range(3000)]
    texts = _EDGE_TEXTS + randoms
    for text in texts:
        assert text_codes([text])[0].tolist() == _reference_codes(text), text
    assert [c.tolist() for c in text_codes(texts)] == [_reference_codes(t) for t in texts]


def test_a_text_that_is_not_ascii_is_hashed_in_python() -> None:
    """str.lower() of the Kelvin sign is an ASCII "k": the C path, which lower-cases ASCII
    only, refuses such texts, and text_codes and describe_batch take the Python path."""
    text = "\u212a scan \u00c9t\u00e9 STRASSE \u00df"
    with pytest.raises(ValueError, match="ASCII"):
        _ragtext.text_codes([text], TEXT_DIM)
    assert [c.tolist() for c in text_codes(["ssh", text])] == [
        _reference_codes("ssh"),
        _reference_codes(text),
    ]
    events = _odd_events()
    events[0].verdict.family = "\u212aelvin"
    texts, flat, ends = describe_batch(events)
    assert texts == [_reference_describe(ev) for ev in events]
    assert code_blobs(flat, ends) == [
        np.array(_reference_codes(t), dtype=np.uint16).tobytes() for t in texts
    ]


def _random_record(rng: np.random.Generator, desc: Any, msg: Any) -> None:
    """Every field of ``msg`` set to a random value of its type (sub-messages too)."""
    for f in desc.fields:
        if f.type == FieldDescriptor.TYPE_MESSAGE:
            if rng.random() < 0.8:  # sometimes left out (no src_context, no dns_window)
                _random_record(rng, f.message_type, getattr(msg, f.name))
            continue
        if rng.random() < 0.1:
            continue  # the default: left out of the wire
        if f.type == FieldDescriptor.TYPE_UINT32:
            value: Any = (
                int(rng.integers(0, 2**32)) if rng.random() < 0.5 else int(rng.integers(0, 70000))
            )
        elif f.type == FieldDescriptor.TYPE_UINT64:
            value = int(rng.integers(0, 2**63)) * 2 + int(rng.integers(0, 2))
        elif f.type == FieldDescriptor.TYPE_FLOAT:
            value = float(np.float32(rng.normal() * 10.0 ** rng.integers(-3, 9)))
        elif f.type == FieldDescriptor.TYPE_BOOL:
            value = bool(rng.integers(0, 2))
        elif f.type == FieldDescriptor.TYPE_BYTES:
            value = rng.bytes(int(rng.choice([0, 4, 16, 3, 20])))
        elif f.type == FieldDescriptor.TYPE_STRING:
            value = "rule_x"
        elif f.type == FieldDescriptor.TYPE_ENUM:
            value = int(rng.choice([v.number for v in f.enum_type.values]))
        else:
            raise AssertionError(f"no random value for {f.full_name}")
        if f.name == "ip_version":
            value %= 256  # one byte in the packed row (wider: test_record_rows_refuses...)
        setattr(msg, f.name, value)


def test_feature_vectors_from_the_bytes_are_the_detectors_matrix(small_store: RagStore) -> None:
    """The store's feature matrix decoded from the serialized events in C (record_rows,
    then the detector's packed matrix) is, bit for bit, the detector's matrix of the
    records' fields (feature_matrix(columns_from_records(...))): on the stored events of
    the captures, the odd events, and 2,000 records with every field random (wide
    integers, floats of every size, sub-messages left out), all of which the C decoder
    reads (no fallback)."""
    rng = np.random.default_rng(6)
    randoms = []
    for _ in range(2000):
        ev = ScoredEvent(sensor_id="s")
        _random_record(rng, FlowRecord.DESCRIPTOR, ev.record)
        ev.verdict.family = "scan"
        randoms.append(ev)
    groups = [_stored_events(small_store), _odd_events(), randoms]
    for events in groups + [[ev] for ev in randoms[:200]]:
        expected = feature_matrix(columns_from_records([ev.record for ev in events]))
        assert record_matrix(events).tobytes() == expected.tobytes()
        blobs = [ev.SerializeToString() for ev in events]
        assert record_matrix(events, blobs).tobytes() == expected.tobytes()
        assert record_matrix(None, blobs).tobytes() == expected.tobytes()
    # Every group went through C (record_rows raised nothing: no fallback).
    for events in groups:
        rows = np.zeros(len(events), dtype=PACKED_DTYPE)
        blobs = [ev.SerializeToString() for ev in events]
        _ragtext.record_rows(blobs, 2, ENCODE_OPS, rows, PACKED_DTYPE.itemsize)
        expected = feature_matrix(columns_from_records([ev.record for ev in events]))
        assert packed_feature_matrix(rows).tobytes() == expected.tobytes()


def test_record_rows_refuses_what_it_cannot_read() -> None:
    """Malformed wire bytes and a value wider than its column (an IP version above 255 in
    its one-byte column) raise ValueError (the scaler's cue to take the Python path, which
    gives the detector's matrix) instead of a row of garbage."""
    rows = np.zeros(1, dtype=PACKED_DTYPE)

    def decode(blob: bytes) -> None:
        _ragtext.record_rows([blob], 2, ENCODE_OPS, rows, PACKED_DTYPE.itemsize)

    for bad in (b"\x12\x05\x08", b"\x12\x02\x08\xff", b"\x12\x01", b"\xff"):
        with pytest.raises(ValueError, match="message 0"):
            decode(bad)
    ev = ScoredEvent()
    ev.record.ip_version = 300  # a uint32 field, one byte in the packed row
    with pytest.raises(ValueError):
        decode(ev.SerializeToString())
    expected = feature_matrix(columns_from_records([ev.record]))
    assert record_matrix([ev]).tobytes() == expected.tobytes()
    # From the bytes alone (a stored row's blob): parsed for the Python path.
    assert record_matrix(None, [ev.SerializeToString()]).tobytes() == expected.tobytes()
    with pytest.raises(ValueError, match="wrong size"):
        _ragtext.record_rows([b""], 2, ENCODE_OPS, np.zeros(2, dtype=PACKED_DTYPE), 8)

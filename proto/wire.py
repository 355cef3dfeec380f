"""Assemble a batch from records that are already serialized, without a message tree.

A repeated message field on the wire is just ``tag | length | bytes`` per element, so a
batch's serialization is its header's serialization followed by each framed record. A
producer that serializes each record once when it is made (the native flow engine does)
can then build a batch with one join instead of serializing a Python message tree again:

    framed = [frame_element(FlowBatch, "records", rec.SerializeToString()) for rec in recs]
    payload = join_batch(FlowBatch(sensor_id="s1", batch_seq=7), "records", framed)
    assert FlowBatch.FromString(payload).records[0] == recs[0]
"""

from __future__ import annotations

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

__all__ = ["encode_varint", "frame_element", "join_batch"]

_WIRE_LENGTH_DELIMITED = 2


def encode_varint(value: int) -> bytes:
    """Protobuf base-128 varint of a non-negative integer."""
    if value < 0:
        raise ValueError("varint of a negative number")
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _tag(message_type: type[Message], field: str) -> bytes:
    desc = message_type.DESCRIPTOR.fields_by_name.get(field)
    if desc is None or desc.type != FieldDescriptor.TYPE_MESSAGE or not desc.is_repeated:
        raise ValueError(f"{message_type.__name__}.{field} is not a repeated message field")
    return encode_varint((desc.number << 3) | _WIRE_LENGTH_DELIMITED)


def frame_element(message_type: type[Message], field: str, element: bytes) -> bytes:
    """``element`` (a serialized message) framed as one entry of ``message_type.field``."""
    return _tag(message_type, field) + encode_varint(len(element)) + element


def join_batch(header: Message, field: str, framed: list[bytes]) -> bytes:
    """Serialized ``header`` with the framed elements appended to its repeated ``field``.

    ``header`` must leave ``field`` empty; its other fields are serialized as usual.
    """
    _tag(type(header), field)  # validates the field
    if getattr(header, field):
        raise ValueError(f"header already holds {field}; pass them framed instead")
    return header.SerializeToString() + b"".join(framed)

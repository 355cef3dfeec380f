"""The schema documents itself: every message, field and enum value has a comment."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from google.protobuf import descriptor_pb2

PROTO = Path(__file__).resolve().parents[2] / "proto" / "events.proto"


def _descriptor_with_comments(tmp_path: Path) -> descriptor_pb2.FileDescriptorProto:
    out = tmp_path / "events.desc"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{PROTO.parent}",
            "--include_source_info",
            f"--descriptor_set_out={out}",
            str(PROTO),
        ],
        check=True,
        capture_output=True,
    )
    fds = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    return fds.file[0]


def _undocumented(fdp: descriptor_pb2.FileDescriptorProto) -> list[str]:
    comments = {
        tuple(loc.path): loc.leading_comments.strip()
        for loc in fdp.source_code_info.location
        if loc.leading_comments.strip()
    }
    missing: list[str] = []

    def walk_enum(enum: descriptor_pb2.EnumDescriptorProto, path: tuple[int, ...]) -> None:
        if path not in comments:
            missing.append(f"enum {enum.name}")
        for i, value in enumerate(enum.value):
            if (*path, 2, i) not in comments:
                missing.append(f"{enum.name}.{value.name}")

    def walk_message(msg: descriptor_pb2.DescriptorProto, path: tuple[int, ...]) -> None:
        if path not in comments:
            missing.append(f"message {msg.name}")
        for i, field in enumerate(msg.field):
            if (*path, 2, i) not in comments:
                missing.append(f"{msg.name}.{field.name}")
        for i, nested in enumerate(msg.nested_type):
            if not nested.options.map_entry:
                walk_message(nested, (*path, 3, i))
        for i, enum in enumerate(msg.enum_type):
            walk_enum(enum, (*path, 4, i))

    for i, msg in enumerate(fdp.message_type):
        walk_message(msg, (4, i))
    for i, enum in enumerate(fdp.enum_type):
        walk_enum(enum, (5, i))
    return missing


def test_every_message_field_and_enum_value_is_documented(tmp_path: Path) -> None:
    fdp = _descriptor_with_comments(tmp_path)
    assert len(fdp.message_type) >= 10
    assert _undocumented(fdp) == []


def test_the_check_catches_an_undocumented_field(tmp_path: Path) -> None:
    fdp = _descriptor_with_comments(tmp_path)
    fdp.message_type[0].field.add(name="undocumented_probe", number=999)
    assert _undocumented(fdp) == [f"{fdp.message_type[0].name}.undocumented_probe"]


def test_generated_module_matches_the_schema() -> None:
    from proto import FlowBatch, FlowRecord

    names = {f.name for f in FlowRecord.DESCRIPTOR.fields}
    text = PROTO.read_text()
    assert all(f" {name} = " in text for name in names)
    batch = FlowBatch(sensor_id="s", batch_seq=1)
    batch.records.add(flow_id=1, ip_version=6, src_addr=bytes(16), dst_addr=bytes(16))
    assert FlowBatch.FromString(batch.SerializeToString()) == batch

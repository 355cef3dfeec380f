"""Broken, foreign and unsupported files: errors that name the file, nothing lost."""

from __future__ import annotations

from pathlib import Path

import pytest

import native
from base.errors import MldError
from tests.native import pcapgen as g

T0 = 1_700_000_000 * 10**9


def udp_frames(n: int) -> list[tuple[int, bytes]]:
    return [
        (T0 + i * 1000, g.eth(g.ipv4("10.0.0.1", "10.0.0.2", 17, g.udp(1000 + i, 53, bytes(30)))))
        for i in range(n)
    ]


def test_truncated_file_keeps_flows(tmp_path: Path) -> None:
    path = g.write_pcap(tmp_path / "cut.pcap", udp_frames(10))
    data = path.read_bytes()
    record = (len(data) - 24) // 10
    path.write_bytes(data[: 24 + 6 * record + 30])  # 6 whole records, then half of one
    eng = native.FlowEngine()
    batches: list[object] = []
    with pytest.raises(native.CaptureError) as info:
        batches.extend(eng.feed_file(path))
    msg = str(info.value)
    assert str(path) in msg and "byte offset" in msg and "truncated" in msg
    assert isinstance(info.value, MldError)
    assert not batches
    rest = eng.finish()
    assert sorted(int(e["port_lo"]) for e in rest) == list(range(1000, 1006))
    assert eng.stats["packets"] == 6


def test_not_a_capture(tmp_path: Path) -> None:
    path = tmp_path / "notes.pcap"
    path.write_text("this is not a capture\n" * 10)
    eng = native.FlowEngine()
    with pytest.raises(native.CaptureError, match=r"notes\.pcap: cannot open"):
        list(eng.feed_file(path))
    with pytest.raises(native.CaptureError, match=r"missing\.pcap: cannot open"):
        list(eng.feed_file(tmp_path / "missing.pcap"))
    empty = tmp_path / "empty.pcap"
    empty.write_bytes(b"")
    with pytest.raises(native.CaptureError):
        list(eng.feed_file(empty))
    assert eng.stats["files"] == 0


def test_unsupported_link_type(tmp_path: Path) -> None:
    path = g.write_pcap(tmp_path / "wifi.pcap", [(T0, b"\x00" * 40)], g.LINKTYPE_IEEE802_11)
    eng = native.FlowEngine()
    with pytest.raises(native.UnsupportedLinkType) as info:
        list(eng.feed_file(path))
    assert isinstance(info.value, native.CaptureError)
    assert "wifi.pcap" in str(info.value) and "IEEE802_11" in str(info.value)
    assert info.value.linktype.startswith("IEEE802_11")
    # The engine stays usable.
    good = g.write_pcap(tmp_path / "ok.pcap", udp_frames(2))
    assert not list(eng.feed_file(good))
    assert len(eng.finish()) == 2


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        native.FlowEngine(idle_timeout_s=0)
    with pytest.raises(ValueError):
        native.FlowEngine(active_timeout_s=7200)
    with pytest.raises(ValueError):
        native.FlowEngine(max_flows=0)
    with pytest.raises(ValueError):
        native.FlowEngine(batch_size=0)


def test_one_file_at_a_time(tmp_path: Path) -> None:
    a = g.write_pcap(tmp_path / "a.pcap", udp_frames(3))
    eng = native.FlowEngine(batch_size=1)
    it = eng.feed_file(g.write_pcap(tmp_path / "rst.pcap", [
        (T0 + i, g.eth(g.ipv4("10.0.0.1", "10.0.0.2", 6, g.tcp(i + 1, 80, g.RST))))
        for i in range(3)
    ]))  # fmt: skip
    next(it)
    with pytest.raises(RuntimeError, match="another file"):
        list(eng.feed_file(a))
    it.close()
    assert not list(eng.feed_file(a))

"""Both fuzzers build, run a bounded number of cases and find nothing; and they do report a
finding when there is one (a planted bug), so "nothing found" means something.

The long run is ``bench/fuzz.py --minutes M`` (or ``make fuzz``); this is its smoke test:
about 12 s of the sanitized parser fuzzer and 8 s of the frame fuzzer, seeded from a sample
of the shared captures. No mocks: the parser fuzzer is the real native code under ASan and
UBSan, the frame fuzzer the real Receiver.open.
"""

from __future__ import annotations

import shutil
import struct
from pathlib import Path

import pytest

from tests.fuzz import frame_fuzz, parser_fuzz
from tests.support import SHARED_DATA

pytestmark = pytest.mark.slow


def _require_clang() -> None:
    if shutil.which("clang") is None:
        pytest.skip("needs clang with libFuzzer (make install: clang, libclang-rt-14-dev)")


def test_parser_fuzzer_runs_seeded_from_captures_and_finds_nothing(tmp_path: Path) -> None:
    _require_clang()
    fuzzer, seeds_bin = parser_fuzz.build(tmp_path)
    files = parser_fuzz.captures(SHARED_DATA / "pcaps")
    assert files, f"no captures under {SHARED_DATA / 'pcaps'}"
    seeds = tmp_path / "seeds"
    # Every 8th capture, first packet of each: enough link types and protocols for a smoke run.
    n = parser_fuzz.make_seeds(seeds_bin, seeds, files[::8], per_file=2)
    assert n > 50, n
    res = parser_fuzz.run(fuzzer, tmp_path / "corpus", tmp_path, 12, seed_dirs=[seeds])
    assert res.crashes == 0, f"the parser fuzzer found something: {res.artifacts}"
    assert res.cases > 1000, res


def test_parser_fuzzer_reports_an_overread_of_one_byte(tmp_path: Path) -> None:
    """The harness catches what it is for: a read one byte past a packet (planted in a
    self-test build) is reported as a crash with its input kept."""
    _require_clang()
    fuzzer, _ = parser_fuzz.build(tmp_path, planted_bug=True)
    seeds = tmp_path / "seeds"
    seeds.mkdir()
    packet = b"PLANTED" + bytes(40)
    (seeds / "planted").write_bytes(b"\x00" + b"\x00" + struct.pack("<H", len(packet)) + packet)
    res = parser_fuzz.run(
        fuzzer, tmp_path / "corpus", tmp_path, 30, seed_dirs=[seeds], keep_going=False
    )
    assert res.crashes == 1, res
    (artifact,) = res.artifacts
    assert Path(artifact).name.startswith("crash-")
    log = next((tmp_path / "artifacts").glob("run-*.log")).read_text()
    assert "heap-buffer-overflow" in log, log[-2000:]


def test_frame_fuzzer_runs_every_mutation_kind_and_finds_nothing(tmp_path: Path) -> None:
    res = frame_fuzz.run(8, tmp_path)
    assert res.crashes == 0, f"the frame fuzzer found something: {res.artifacts}"
    assert res.cases > 1000, res
    assert set(res.kinds) == {"wire", "lz4", "proto"}, res.kinds
    # Mutants reached every layer: authentication, LZ4, protobuf, and some were accepted.
    for outcome in ("bad_tag", "bad_compression", "bad_protobuf", "accepted"):
        assert res.outcomes.get(outcome, 0) > 0, res.outcomes


@pytest.mark.parametrize("kind", ["raise", "abort"])
def test_frame_fuzzer_reports_an_exception_and_a_dying_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    """An unexpected exception, and a child killed mid-case (as by a segfault in a C
    extension), each count as a finding with the input kept on disk."""
    monkeypatch.setenv("MLD_FRAME_FUZZ_PLANTED", kind)
    # The finding is planted at a child's 50th case: 60 cases give exactly one.
    res = frame_fuzz.run(60, tmp_path, max_cases=60)
    assert res.crashes == 1, res
    assert res.cases == 60, res
    kept = Path(res.artifacts[0])
    assert kept.is_file() and kept.stat().st_size > 0

"""bench/soak.py tells a service's anonymous memory from its file-backed pages.

A child process first maps a file and reads every page of it (file-backed pages, the
page cache's), then allocates and touches as many bytes of its own (anonymous memory);
``memory_mb`` must put each growth in its own part. A real process and real /proc: the
kernel's accounting is what the soak reads."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from bench.soak import memory_mb

_CHILD = r"""
import mmap, sys
size = 64 << 20
with open(sys.argv[1], "rb") as f:
    mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
total = 0
print("ready", flush=True); sys.stdin.readline()
for at in range(0, size, 4096):
    total += mapped[at]
print("mapped", flush=True); sys.stdin.readline()
own = bytearray(size)
for at in range(0, size, 4096):
    own[at] = 1
print("anon", flush=True); sys.stdin.readline()
"""


def test_memory_parts_follow_mapped_and_anonymous_growth(tmp_path: Path) -> None:
    data = tmp_path / "lists.bin"
    data.write_bytes(b"\x01" * (64 << 20))
    with subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(data)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as child:
        assert child.stdin is not None and child.stdout is not None
        try:
            steps = []
            for expected in ("ready", "mapped", "anon"):
                assert child.stdout.readline().strip() == expected
                got = memory_mb(child.pid)
                assert got is not None
                steps.append(got)
                child.stdin.write("\n")
                child.stdin.flush()
            (rss0, anon0, file0), (_rss1, anon1, file1), (rss2, anon2, file2) = steps
            # Reading the mapped file: file-backed pages, not anonymous memory.
            assert file1 - file0 > 48, steps
            assert anon1 - anon0 < 16, steps
            # Its own bytes: anonymous, not file-backed.
            assert anon2 - anon1 > 48, steps
            assert abs(file2 - file1) < 16, steps
            assert rss2 > rss0 + 96, steps
            assert child.wait(timeout=30) == 0
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()


def test_memory_of_a_gone_process_is_none() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert memory_mb(child.pid) is None

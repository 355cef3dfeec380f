"""Every capture in the shared corpus goes through the engine: no crash, hang or leak.

The walk runs in a child process under a timeout, so a crash (segfault) or a hang fails the
test instead of taking pytest down. Three passes: the first warms allocator arenas; RSS
after the third must match RSS after the second within a small slack.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import REPO, SHARED_DATA

CORPUS = SHARED_DATA / "pcaps"
SLACK_KIB = 4096


@pytest.mark.slow
def test_corpus_no_crash_hang_or_leak() -> None:
    if not CORPUS.is_dir():
        pytest.skip(f"no capture corpus at {CORPUS} (see /work/shared/data/README.md)")
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).with_name("_corpus_walk.py")), str(CORPUS)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
        check=False,
    )
    assert proc.returncode == 0, f"walk died ({proc.returncode}): {proc.stderr[-2000:]}"
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    print(json.dumps(result))
    assert result["files"] >= 1700
    assert result["read"] + result["corrupt"] + result["linktype"] == result["files"]
    assert result["read"] >= 0.95 * result["files"]
    assert result["packets"] > 0 and result["flows"] > 0
    _warmup, second, third = result["rss_kib"]
    assert third - second <= SLACK_KIB, f"RSS grew {third - second} KiB between passes"

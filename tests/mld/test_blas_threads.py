"""``mld detector analyze`` and ``mld sniffer flows`` hold OpenBLAS to one thread.

Their work is per batch in native code and NumPy with no BLAS call, so OpenBLAS's worker
thread (one per other core) only spun: perf of `mld detector analyze` on the bench capture
showed it at 2% of the samples, and `import numpy` alone took 0.14-0.17 s of CPU against
0.08-0.09 s with one thread on this 2-core machine. The services and `mld rag` (FAISS
reads the same setting) keep OpenBLAS's default. Each case is a fresh interpreter whose
argv is the `mld` script's, importing the command line as the script does.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mld.grammar import command_action

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = str(ROOT / ".venv" / "bin" / "mld")

PROBE = """
import json, sys
sys.argv = json.loads(sys.argv[1])
import mld.cli  # what the mld script imports first
from threadpoolctl import threadpool_info
print(json.dumps([i["num_threads"] for i in threadpool_info() if i["internal_api"] == "openblas"]))
"""


def _openblas_threads(argv: list[str], env: dict[str, str] | None = None) -> list[int]:
    environ = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
    environ.update(env or {})
    environ["PYTHONPATH"] = str(ROOT)
    out = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(argv)],
        env=environ,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    threads: list[int] = json.loads(out.stdout.strip().splitlines()[-1])
    assert threads, "OpenBLAS is not loaded by NumPy here"
    return threads


@pytest.mark.parametrize(
    "words",
    [
        ["detector", "analyze", "capture.pcap"],
        ["analyze", "capture.pcap"],  # the old spelling
        ["--config", "mld.yaml", "-q", "detector", "analyze", "capture.pcap"],
        ["sniffer", "flows", "capture.pcap"],
    ],
)
def test_offline_commands_run_openblas_on_one_thread(words: list[str]) -> None:
    assert _openblas_threads([SCRIPT, *words]) == [1]
    assert _openblas_threads(["-m", *words]) == [1]  # python -m mld.cli


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="OpenBLAS uses one thread on one core")
@pytest.mark.parametrize("words", [["detector", "run"], ["rag", "import", "x.pcap"], []])
def test_other_commands_keep_openblas_threads(words: list[str]) -> None:
    assert _openblas_threads([SCRIPT, *words]) != [1]
    # Nor a program that is not mld at all, whatever its arguments.
    assert _openblas_threads(["/usr/bin/other", "detector", "analyze"]) != [1]


def test_a_setting_in_the_environment_wins() -> None:
    if (os.cpu_count() or 1) < 2:
        pytest.skip("OpenBLAS uses one thread on one core")
    argv = [SCRIPT, "detector", "analyze", "capture.pcap"]
    assert _openblas_threads(argv, {"OPENBLAS_NUM_THREADS": "2"}) == [2]


def test_command_action() -> None:
    assert command_action(["detector", "analyze", "x"]) == ("detector", "analyze")
    assert command_action(["--config", "c", "detector", "-v", "analyze"]) == (
        "detector",
        "analyze",
    )
    assert command_action(["analyze", "x.pcap"]) == ("detector", "analyze")
    assert command_action(["--help"]) == (None, None)
    assert command_action(["detector"]) == ("detector", None)

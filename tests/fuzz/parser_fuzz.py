"""Build and run the libFuzzer target of the native packet parser and flow engine.

``fuzz_parser.c`` is compiled with clang ``-fsanitize=fuzzer,address,undefined
-fno-sanitize-recover=all`` together with native/flow_table.c (it includes native/engine.c
itself), into a folder outside git. ``seeds.c`` turns the shared captures into seed inputs
(their first packets, one per input, and short packet trains). A run goes on after a crash:
libFuzzer stops at the first one, writes it as ``crash-*``/``timeout-*``/``oom-*`` under the
artifacts folder, and a new run starts for the time left.

    python -m tests.fuzz.parser_fuzz --seconds 60 --workdir /tmp/parser-fuzz
    ./fuzz_parser crash-...     # replays one input (the binary is in WORKDIR/bin)
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HERE = REPO / "tests" / "fuzz"
SANITIZE = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all"]
CFLAGS = [
    "-g",
    "-O1",
    "-std=gnu11",
    "-Wall",
    "-Wextra",
    "-Werror",
    f"-I{REPO / 'xdp'}",
    f"-I{REPO / 'native'}",
]
MAX_LEN = 8192  # bytes of one input: a packet train of a few full-size frames
CASE_TIMEOUT_S = 10  # one input slower than this is a finding (timeout-*)
_EXECS = re.compile(r"^#(\d+)\s", re.M)
_UNITS = re.compile(r"stat::number_of_executed_units:\s*(\d+)")

__all__ = ["ParserFuzzResult", "build", "make_seeds", "run"]


class FuzzSetupError(RuntimeError):
    """The fuzzer cannot be built (clang or its fuzzer runtime missing)."""


@dataclass
class ParserFuzzResult:
    cases: int = 0
    crashes: int = 0
    artifacts: list[str] = field(default_factory=list)
    runs: int = 0


def _clang() -> str:
    clang = shutil.which(os.environ.get("CC_FUZZ", "clang"))
    if clang is None:
        raise FuzzSetupError(
            "clang not found: the parser fuzzer needs clang with libFuzzer "
            "(apt-get install clang libclang-rt-14-dev; scripts/apt-packages.txt lists them)"
        )
    return clang


def build(workdir: Path, *, planted_bug: bool = False) -> tuple[Path, Path]:
    """Compile the fuzz target and the seed extractor into workdir/bin; their paths.

    ``planted_bug`` builds the harness's self-test variant (FUZZ_PLANTED_BUG in
    fuzz_parser.c), which overreads on purpose: only for checking that findings are caught.
    """
    clang = _clang()
    out = workdir / "bin"
    out.mkdir(parents=True, exist_ok=True)
    fuzzer = out / ("fuzz_parser-planted" if planted_bug else "fuzz_parser")
    seeds = out / "seeds"
    defines = ["-DFUZZ_PLANTED_BUG"] if planted_bug else []
    steps = [
        [clang, *CFLAGS, *defines, "-fsanitize=fuzzer", *SANITIZE, str(HERE / "fuzz_parser.c"),
         str(REPO / "native" / "flow_table.c"), "-lpcap", "-o", str(fuzzer)],
        [clang, *CFLAGS, str(HERE / "seeds.c"), "-lpcap", "-o", str(seeds)],
    ]  # fmt: skip
    for cmd in steps:
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            hint = ""
            if "libclang_rt.fuzzer" in proc.stderr or "fsanitize=fuzzer" in proc.stderr:
                hint = " (libFuzzer's runtime is missing: apt-get install libclang-rt-14-dev)"
            raise FuzzSetupError(f"cannot build {cmd[-1]}{hint}:\n{proc.stderr[-4000:]}")
    return fuzzer, seeds


def captures(root: Path) -> list[Path]:
    return sorted(
        p for p in root.rglob("*") if p.is_file() and p.suffix in (".pcap", ".pcapng", ".cap")
    )


def make_seeds(seeds_bin: Path, corpus: Path, files: list[Path], per_file: int) -> int:
    """Write seed inputs from ``files`` into ``corpus``; how many were new."""
    corpus.mkdir(parents=True, exist_ok=True)
    total = 0
    for i in range(0, len(files), 500):
        chunk = [str(f) for f in files[i : i + 500]]
        proc = subprocess.run(
            [str(seeds_bin), str(corpus), str(per_file), *chunk],
            capture_output=True,
            text=True,
            check=True,
        )
        total += int(proc.stdout.strip() or 0)
    return total


def run(
    fuzzer: Path,
    corpus: Path,
    workdir: Path,
    seconds: float,
    *,
    seed_dirs: list[Path] | None = None,
    keep_going: bool = True,
    log: Callable[[str], None] = lambda _: None,
) -> ParserFuzzResult:
    """Fuzz for ``seconds``: new inputs go to corpus, findings to workdir/artifacts.

    After a finding a new run starts for the time left, unless ``keep_going`` is False."""
    artifacts = workdir / "artifacts"
    artifacts.mkdir(parents=True, exist_ok=True)
    corpus.mkdir(parents=True, exist_ok=True)
    result = ParserFuzzResult()
    deadline = time.monotonic() + seconds
    seen = set(os.listdir(artifacts))
    while (left := deadline - time.monotonic()) > 1:
        cmd = [
            str(fuzzer),
            f"-max_total_time={max(1, int(left))}",
            f"-max_len={MAX_LEN}",
            f"-timeout={CASE_TIMEOUT_S}",
            "-print_final_stats=1",
            f"-artifact_prefix={artifacts}/",
            str(corpus),
            *(str(d) for d in seed_dirs or []),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=left + 300, check=False)
        result.runs += 1
        out = proc.stderr + proc.stdout
        units = _UNITS.search(out)
        execs = [int(n) for n in _EXECS.findall(out)]
        result.cases += int(units.group(1)) if units else max(execs, default=0)
        new = sorted(set(os.listdir(artifacts)) - seen)
        seen.update(new)
        if proc.returncode != 0 or new:
            result.crashes += max(1, len(new))
            result.artifacts += [str(artifacts / n) for n in new]
            log_path = artifacts / f"run-{result.runs}.log"
            log_path.write_text(out[-20000:])
            log(f"parser fuzzer: exit {proc.returncode}, findings {new}, log {log_path}")
            if not new or not keep_going:
                break  # (no artifact: a harness problem, do not loop)
        # Only the seeds of the first run: the corpus holds what was learnt from them.
        seed_dirs = None
    return result


def main(argv: list[str] | None = None) -> int:
    from tests.support import SHARED_DATA

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--workdir", default="/tmp/mld-parser-fuzz")
    parser.add_argument("--per-file", type=int, default=4, help="packets per capture seeded")
    args = parser.parse_args(argv)
    workdir = Path(args.workdir)
    fuzzer, seeds_bin = build(workdir)
    seeds = workdir / "seeds"
    n = make_seeds(seeds_bin, seeds, captures(SHARED_DATA / "pcaps"), args.per_file)
    print(f"seeds: {n} new under {seeds}")
    res = run(fuzzer, workdir / "corpus", workdir, args.seconds, seed_dirs=[seeds], log=print)
    print(f"parser_cases={res.cases} parser_crashes={res.crashes}")
    return 1 if res.crashes else 0


if __name__ == "__main__":
    sys.exit(main())

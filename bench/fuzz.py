"""Fuzz the native packet parser and the transport's frame decoder for a bounded time.

Two fuzzers, one after the other, each for half of the time:

- parser: a libFuzzer target built with AddressSanitizer and UndefinedBehaviorSanitizer
  (tests/fuzz/fuzz_parser.c) over the native parser and flow engine (native/engine.c,
  native/flow_table.c, native/link_layer.h, xdp/flow_parse.h, xdp/flow_update.h), seeded
  with packets from every shared capture (tests/fuzz/seeds.c);
- frame: a mutation loop (tests/fuzz/frame_fuzz.py) over crypto_transport's Receiver.open,
  with wire-level, LZ4-level and protobuf-level mutants of authentic frames.

Needs clang with libFuzzer (apt: clang, libclang-rt-14-dev). The corpus and findings stay in
--workdir (a temp folder by default, never the repository), so a second run continues from
the corpus the first one grew. A finding is a file under WORKDIR/parser/artifacts (replay:
WORKDIR/parser/bin/fuzz_parser FILE) or WORKDIR/frame (a frame-*.bin and its traceback).

    .venv/bin/python bench/fuzz.py --minutes 10     # the long run
    .venv/bin/python bench/fuzz.py --quick          # ~30 s smoke run

Last line: ``parser_cases=N parser_crashes=N frame_cases=N frame_crashes=N``; the exit
status is 1 when anything was found.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.fuzz import frame_fuzz, parser_fuzz
from tests.support import SHARED_DATA


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="total time (split in two)")
    parser.add_argument("--quick", action="store_true", help="a ~30 s smoke run")
    parser.add_argument(
        "--workdir",
        default=os.path.join(tempfile.gettempdir(), f"mld-fuzz-{os.getuid()}"),
        help="corpus, builds and findings (kept between runs)",
    )
    parser.add_argument("--per-file", type=int, default=4, help="packets seeded per capture")
    args = parser.parse_args()
    total_s = 24.0 if args.quick else args.minutes * 60
    per_file = 1 if args.quick else args.per_file
    workdir = Path(args.workdir)

    started = time.monotonic()
    pdir = workdir / "parser"
    fuzzer, seeds_bin = parser_fuzz.build(pdir)
    seeds = pdir / "seeds"
    files = parser_fuzz.captures(SHARED_DATA / "pcaps")
    new = parser_fuzz.make_seeds(seeds_bin, seeds, files, per_file)
    built_s = time.monotonic() - started
    print(f"parser: {len(files)} captures, {new} new seeds, built in {built_s:.0f} s")
    p = parser_fuzz.run(fuzzer, pdir / "corpus", pdir, total_s / 2, seed_dirs=[seeds], log=print)
    print(f"parser: {p.cases} cases in {p.runs} run(s), findings: {p.artifacts or 'none'}")

    f = frame_fuzz.run(total_s / 2, workdir / "frame", log=print)
    print(f"frame: {f.cases} cases {f.kinds}; outcomes {f.outcomes}")
    print(f"frame: findings: {f.artifacts or 'none'}")
    print(
        f"parser_cases={p.cases} parser_crashes={p.crashes} "
        f"frame_cases={f.cases} frame_crashes={f.crashes}"
    )
    return 1 if p.crashes or f.crashes else 0


if __name__ == "__main__":
    sys.exit(main())

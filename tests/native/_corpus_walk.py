"""Child process of test_corpus.py: walk every capture under a folder, several passes.

Usage: _corpus_walk.py DIR [PASSES [LIMIT]]. Prints one JSON line: counts, seconds, and
anonymous RSS (KiB) after each pass.
"""

from __future__ import annotations

import gc
import json
import os
import sys
import time

import native

SKIP_SUFFIXES = (".csv", ".md", ".out", ".txt", ".json", ".yaml", ".py")


def rss_kib() -> int:
    """Anonymous resident memory: the heap, without shared-library pages faulted in lazily."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    raise RuntimeError("no RssAnon in /proc/self/status")


def walk(root: str) -> list[str]:
    return sorted(
        os.path.join(d, f)
        for d, _, files in os.walk(root)
        for f in files
        if not f.endswith(SKIP_SUFFIXES)
    )


def one_pass(files: list[str]) -> dict[str, int]:
    counts = {"files": 0, "read": 0, "corrupt": 0, "linktype": 0, "flows": 0, "packets": 0}
    for path in files:
        counts["files"] += 1
        engine = native.FlowEngine()
        try:
            for events in engine.feed_file(path):
                counts["flows"] += len(events)
            counts["read"] += 1
        except native.UnsupportedLinkType:
            counts["linktype"] += 1
        except native.CaptureError:
            counts["corrupt"] += 1
        counts["flows"] += len(engine.finish())
        counts["packets"] += engine.stats["packets"]
    return counts


def main() -> None:
    files = walk(sys.argv[1])
    passes = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    if len(sys.argv) > 3:
        files = files[: int(sys.argv[3])]
    start = time.perf_counter()
    rss = []
    counts: dict[str, int] = {}
    for _ in range(passes):
        counts = one_pass(files)
        gc.collect()
        rss.append(rss_kib())
    seconds = time.perf_counter() - start
    print(json.dumps({**counts, "seconds": seconds, "rss_kib": rss}))


if __name__ == "__main__":
    main()

"""Hot reload with real bundles: a retrained bundle copied over the serving one is swapped
in between batches while batches keep flowing; a bad bundle is refused and the old one
keeps serving."""

from __future__ import annotations

import functools
import json
import shutil
from pathlib import Path

import pytest

from config import load_config
from detector.bundle import load_bundle, read_manifest
from detector.config import TrainConfig
from detector.dataset import discover
from detector.reload import BundleWatcher, bundle_signature
from detector.train import train_bundle
from proto.events_pb2 import LABEL_MALICIOUS, EventBatch
from tests.detector.conftest import TinyBundle
from tests.detector.service_support import (
    SCAN_PCAP,
    Harness,
    Streamer,
    capture_records,
    collect,
    events_of,
)
from tests.support import SHARED_DATA, wait_for


@pytest.fixture(scope="module")
def second_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Another model: fewer, shallower trees, another seed, fewer captures. Its compiled
    libraries go to a cache of its own, so loading it elsewhere compiles again."""
    root = tmp_path_factory.mktemp("second-bundle")
    captures = discover(None, SHARED_DATA)
    benign = [c for c in captures if c.source == "shared-benign"][:40]
    attacks = [c for c in captures if c.source != "shared-benign"]
    train_bundle(
        attacks + benign,
        root / "bundle",
        load_config().sniffer,
        TrainConfig(
            n_trees=3, max_depth=6, n_trees_per_family={}, max_depth_per_family={}, seed=7, jobs=2
        ),
        cache_dir=root / "cache",
    )
    return root / "bundle"


@pytest.fixture(scope="module")
def scan_records() -> list[bytes]:
    return capture_records(SCAN_PCAP)


def copy_bundle(src: Path, dst: Path) -> None:
    """Copy a bundle over another the way an operator would: models first, manifest last."""
    files = sorted(src.iterdir(), key=lambda p: p.name == "manifest.json")
    for path in files:
        shutil.copyfile(path, dst / path.name)


def break_feature_list(bundle: Path) -> None:
    manifest = bundle / "manifest.json"
    data = json.loads(manifest.read_text())
    data["features"][0], data["features"][1] = data["features"][1], data["features"][0]
    manifest.write_text(json.dumps(data))


def test_watcher_loads_a_changed_bundle_once_and_refuses_bad_ones(
    tmp_path: Path, tiny_bundle: TinyBundle, second_bundle: Path
) -> None:
    serving = tmp_path / "bundle"
    shutil.copytree(tiny_bundle.path, serving)
    load = functools.partial(load_bundle, cache_dir=tmp_path / "cache")
    shutil.copytree(tiny_bundle.cache, tmp_path / "cache")
    first = load(serving)
    watcher = BundleWatcher(serving, load, 0.05, current_version=first.version)
    assert not watcher.check() and watcher.take() is None

    # A manifest whose feature list is not this detector's: refused once, after the
    # folder held still for one look, and not tried again while it stays the same.
    manifest = (serving / "manifest.json").read_bytes()
    break_feature_list(serving)
    assert not watcher.check() and watcher.refused == 0
    assert not watcher.check() and watcher.refused == 1
    assert "feature list does not match" in watcher.last_error
    assert not watcher.check() and watcher.refused == 1

    # A model file that does not match the manifest's hash.
    (serving / "manifest.json").write_bytes(manifest)
    with (serving / "scan.tl").open("ab") as f:
        f.write(b"\0")
    watcher.check()
    assert not watcher.check() and watcher.refused == 2
    assert "sha256" in watcher.last_error
    assert watcher.take() is None and watcher.version == first.version

    # A good new bundle: loaded, handed over once.
    copy_bundle(second_bundle, serving)
    watcher.check()
    assert watcher.check()
    new = watcher.take()
    assert new is not None and watcher.take() is None
    assert new.version == read_manifest(second_bundle).version != first.version
    assert watcher.reloads == 1 and watcher.version == new.version

    # Only the report changed: same version, nothing to swap.
    (serving / "REPORT.md").write_text("edited\n")
    watcher.check()
    assert not watcher.check() and watcher.take() is None
    assert watcher.reloads == 1 and watcher.refused == 2

    # Hidden files (write_bundle's temporaries) are not part of the signature.
    before = bundle_signature(serving)
    (serving / ".manifest.json.123.tmp").write_text("{}")
    assert bundle_signature(serving) == before

    # The folder disappears: refused, the bundle in memory keeps serving.
    shutil.rmtree(serving)
    watcher.check()
    assert not watcher.check() and watcher.refused == 3 and "disappeared" in watcher.last_error


def test_hot_reload_under_load_swaps_between_batches_and_loses_nothing(
    tmp_path: Path, tiny_bundle: TinyBundle, second_bundle: Path, scan_records: list[bytes]
) -> None:
    serving, cache = tmp_path / "bundle", tmp_path / "cache"
    shutil.copytree(tiny_bundle.path, serving)
    shutil.copytree(tiny_bundle.cache, cache)  # the first bundle loads at once; the
    # second one is compiled in the background while batches keep coming
    h = Harness(serving, cache, reload_interval_s=0.05, batch_records=50)
    old = h.service.model_version
    new = read_manifest(second_bundle).version
    streamer = Streamer(h, scan_records, 50)
    batches: list[EventBatch] = []

    def versions() -> list[str]:
        return [e.verdict.model_version for e in events_of(batches)]

    try:
        h.start()
        streamer.start()
        collect(h.rag, lambda got: len(got) >= 5, into=batches)
        copy_bundle(second_bundle, serving)
        collect(h.rag, lambda got: got[-1].events[-1].verdict.model_version == new, 30000, batches)
        assert versions()[-1] == new, "the new bundle was not swapped in"

        # A broken bundle copied over: refused, the new one keeps serving.
        refused = h.service.stats()["reload_refused"]
        break_feature_list(serving)
        wait_for(lambda: h.service.stats()["reload_refused"] == refused + 1, 10, "a refusal")
        seen = len(batches)
        collect(h.rag, lambda got: len(got) >= seen + 5, into=batches)
        assert h.service.model_version == new

        streamer.stop.set()
        streamer.join(10)
        collect(h.rag, lambda got: len(events_of(got)) >= len(streamer.sent), into=batches)
        wait_for(lambda: h.service.stats()["events_sent"] == len(streamer.sent), 5, "counters")
        malicious = [e.verdict for e in events_of(batches) if e.verdict.label == LABEL_MALICIOUS]
        fw = collect(h.firewall, lambda got: sum(len(b.verdicts) for b in got) >= len(malicious))
    finally:
        streamer.stop.set()
        h.close()

    # No batch lost, every record scored once, in order; the swap happened between two
    # batches (each batch scored by one bundle), and old never came back after new.
    events = events_of(batches)
    assert [e.record.SerializeToString() for e in events] == streamer.sent
    assert all(len({e.verdict.model_version for e in b.events}) == 1 for b in batches)
    vs = versions()
    switch = vs.index(new)
    assert switch > 0 and set(vs[:switch]) == {old} and set(vs[switch:]) == {new}
    stats = h.service.stats()
    assert stats["reloads"] == 1 and stats["reload_refused"] >= 1
    assert stats["batches_in"] == streamer.publisher.batches_sent == len(batches)
    assert not any(v for k, v in stats.items() if k.endswith("_dropped"))

    # The firewall got exactly the malicious verdicts, from both bundles.
    assert [v for b in fw for v in b.verdicts] == malicious
    assert stats["verdicts_sent"] == len(malicious)
    assert {v.model_version for v in malicious} == {old, new}

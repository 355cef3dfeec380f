"""Fixtures of the detector tests: a small bundle trained on the shared captures.

Training a real (small) bundle once per session keeps every test on real compiled
forests; it takes a few seconds. The shipped bundle (detector/bundle) is tested by
test_shipped_bundle.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from config import load_config
from detector.config import TrainConfig
from detector.dataset import discover
from detector.train import TrainResult, train_bundle
from tests.support import SHARED_DATA


class TinyBundle:
    def __init__(self, path: Path, cache: Path, result: TrainResult) -> None:
        self.path = path
        self.cache = cache
        self.result = result


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TinyBundle]:
    """A bundle of 6-tree, depth-8 forests trained on ../shared/data, compiled in a temp cache."""
    root = tmp_path_factory.mktemp("tiny-bundle")
    captures = discover(None, SHARED_DATA)
    result = train_bundle(
        captures,
        root / "bundle",
        load_config().sniffer,
        TrainConfig(n_trees=6, max_depth=8, n_trees_per_family={}, max_depth_per_family={}, jobs=2),
        cache_dir=root / "cache",
    )
    yield TinyBundle(root / "bundle", root / "cache", result)

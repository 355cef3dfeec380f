"""Fixtures of the anomaly tests (support.py holds the helpers). ``tiny_bundle`` is the
detector tests' small real bundle, for the scoring service tests here."""

from tests.anomaly.support import anom_pair
from tests.detector.conftest import tiny_bundle

__all__ = ["anom_pair", "tiny_bundle"]

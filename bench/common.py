"""What several benchmarks share (imported as ``bench.common``; the repo is on sys.path)."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["REPO", "shared_data"]

REPO = Path(__file__).resolve().parent.parent


def shared_data() -> Path:
    """The shared captures: $MLD_SHARED_DATA, else ../shared/data beside the repo, else
    /work/shared/data (a clone elsewhere, as CI makes)."""
    override = os.environ.get("MLD_SHARED_DATA")
    if override:
        return Path(override)
    beside = REPO.parent / "shared" / "data"
    return beside if beside.is_dir() else Path("/work/shared/data")

"""Constants of xdp/flow_types.h, read from the header itself so Python never restates them."""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

__all__ = ["FLOW_H", "flow_h_constants"]

FLOW_H = Path(__file__).resolve().parent / "flow_types.h"
_DEFINE = re.compile(r"^#define\s+(MLD_[A-Z0-9_]+)\s+(0x[0-9A-Fa-f]+|\d+)\b", re.MULTILINE)


@cache
def flow_h_constants() -> dict[str, int]:
    """Every ``#define MLD_NAME <integer>`` of flow_types.h, e.g. ``{"MLD_END_FIN": 1, ...}``."""
    return {m[1]: int(m[2], 0) for m in _DEFINE.finditer(FLOW_H.read_text(encoding="utf-8"))}

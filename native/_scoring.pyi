"""Type stubs of native._scoring (native/scoring.c): the per-flow loops of scoring."""

from typing import Any

def top_features(
    x: Any,
    rows: Any,
    importances: Any,
    mean_importance: Any,
    center: Any,
    scale: Any,
    cap: float,
    k: int,
    out_indices: Any,
    out_weights: Any,
    out_tied: Any,
    /,
) -> int: ...
def forest_predict(address: int, x: Any, out: Any, nthread: int, /) -> None: ...

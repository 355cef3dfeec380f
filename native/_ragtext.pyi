"""Type stub of the C extension native._ragtext (native/ragtext.c)."""

from typing import Any

import numpy as np
import numpy.typing as npt

def text_codes(texts: list[str], dim: int, /) -> tuple[bytes, list[int]]: ...
def record_rows(
    blobs: list[bytes],
    field: int,
    ops: npt.NDArray[np.int32],
    rows: npt.NDArray[Any],
    itemsize: int,
    /,
) -> None: ...

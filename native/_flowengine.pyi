"""Type stub of the C extension native._flowengine (native/flowengine.c)."""

from typing import Any

import numpy as np
import numpy.typing as npt

END_FIN: int
END_RST: int
END_IDLE_TIMEOUT: int
END_ACTIVE_TIMEOUT: int
END_EVICTED: int
END_CAPTURE_END: int
MAX_ACTIVE_TIMEOUT_NS: int

def layout() -> tuple[int, list[tuple[str, int, int, int]], list[tuple[str, int, int, int]]]: ...
def supported_linktypes() -> list[str]: ...
def flow_ids(events: npt.NDArray[np.void], /) -> npt.NDArray[np.uint64]: ...

class Engine:
    def __init__(
        self,
        idle_timeout_ns: int,
        active_timeout_ns: int,
        max_flows: int,
        batch_size: int,
        dtype: np.dtype[Any],
    ) -> None: ...
    def open(self, path: str, /) -> tuple[int, str] | None: ...
    def read(self) -> tuple[npt.NDArray[np.void], int, str]: ...
    def close(self) -> None: ...
    def finish(self) -> npt.NDArray[np.void]: ...
    def stats(self) -> dict[str, int]: ...

"""Type stub of the C extension native._flowengine (native/flowengine.c)."""

from typing import Any

import numpy as np
import numpy.typing as npt

def structs() -> dict[str, tuple[int, list[tuple[str, int, int, int, str]]]]: ...
def constants() -> dict[str, int]: ...
def supported_linktypes() -> list[str]: ...
def flow_ids(events: npt.NDArray[np.void], /) -> npt.NDArray[np.uint64]: ...
def json_floats(values: npt.NDArray[np.float64], ndigits: int, /) -> list[str]: ...
def json_addresses(keys: npt.NDArray[np.uint8], /) -> list[str]: ...
def rows_to_protobuf(
    rows: bytes | memoryview | npt.NDArray[Any],
    itemsize: int,
    ops: bytes | npt.NDArray[np.int32],
    strings: list[bytes],
    /,
) -> list[bytes]: ...

class Engine:
    def __init__(
        self,
        idle_timeout_ns: int,
        active_timeout_ns: int,
        max_flows: int,
        batch_size: int,
        dtype: np.dtype[Any],
        interim_ns: int = 0,
    ) -> None: ...
    def open(self, path: str, /) -> tuple[int, str] | None: ...
    def read(self) -> tuple[npt.NDArray[np.void], int, str]: ...
    def close(self) -> None: ...
    def finish(self) -> npt.NDArray[np.void]: ...
    def stats(self) -> dict[str, int]: ...

class Windows:
    def __init__(
        self,
        window_ns: int,
        n_sums: int,
        n_distinct: int,
        key_size: int,
        value_size: int,
        max_keys: int,
        max_entries_per_key: int,
        max_entries: int,
    ) -> None: ...
    def add(
        self,
        n: int,
        keys: npt.NDArray[np.uint8],
        ts: npt.NDArray[np.int64],
        sums: npt.NDArray[np.float64],
        values: npt.NDArray[np.uint8],
        value_mask: npt.NDArray[np.uint8],
        select: npt.NDArray[np.uint8],
        out_count: npt.NDArray[np.int64],
        out_sums: npt.NDArray[np.float64],
        out_distinct: npt.NDArray[np.int64],
        /,
    ) -> None: ...
    def stats(self) -> dict[str, int]: ...

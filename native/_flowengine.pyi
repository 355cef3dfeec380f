"""Type stub of the C extension native._flowengine (native/flowengine.c)."""

from typing import Any, overload

import numpy as np
import numpy.typing as npt

def structs() -> dict[str, tuple[int, list[tuple[str, int, int, int, str]]]]: ...
def constants() -> dict[str, int]: ...
def supported_linktypes() -> list[str]: ...
def flow_ids(events: npt.NDArray[np.void], /) -> npt.NDArray[np.uint64]: ...
def json_floats(values: npt.NDArray[np.float64], ndigits: int, /) -> list[str]: ...
def json_addresses(keys: npt.NDArray[np.uint8], /) -> list[str]: ...
def pack_addresses(addrs: list[bytes], out: npt.NDArray[np.uint8], /) -> None: ...
@overload
def json_lines(n: int, parts: list[bytes | tuple[Any, ...]], /) -> bytes: ...
@overload
def json_lines(n: int, parts: list[bytes | tuple[Any, ...]], fd: int, /) -> int: ...
def rows_to_protobuf(
    rows: bytes | memoryview | npt.NDArray[Any],
    itemsize: int,
    ops: bytes | npt.NDArray[np.int32],
    strings: list[bytes],
    /,
) -> list[bytes]: ...
def rows_to_matrix(
    rows: bytes | memoryview | npt.NDArray[Any],
    itemsize: int,
    ops: npt.NDArray[np.int32],
    out: npt.NDArray[np.float32],
    /,
) -> None: ...
def packed_fields() -> list[tuple[str, str, int]]: ...
def events_to_rows(
    events: npt.NDArray[np.void],
    rows: npt.NDArray[np.void],
    itemsize: int,
    offsets: npt.NDArray[np.intp],
    /,
) -> tuple[list[bytes], list[bytes]]: ...

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

class RuleWindows:
    def __init__(
        self,
        window_ns: int,
        max_keys: int,
        max_entries_per_key: int,
        max_entries: int,
        beacon_window_ns: int,
        beacon_max_per_key: int,
    ) -> None: ...
    def failures(
        self,
        n: int,
        src_keys: npt.NDArray[np.uint8],
        dst_keys: npt.NDArray[np.uint8],
        dst_port: npt.NDArray[np.int64],
        sweep_port: npt.NDArray[np.int64],
        ts: npt.NDArray[np.int64],
        failed: npt.NDArray[np.uint8],
        out_scan_ports: npt.NDArray[np.float64],
        out_sweep_hosts: npt.NDArray[np.float64],
        out_share: npt.NDArray[np.float64],
        /,
    ) -> None: ...
    def rhythm(
        self,
        n: int,
        src_keys: npt.NDArray[np.uint8],
        dst_keys: npt.NDArray[np.uint8],
        dst_port: npt.NDArray[np.int64],
        protocol: npt.NDArray[np.int64],
        start: npt.NDArray[np.int64],
        size: npt.NDArray[np.float64],
        scored: npt.NDArray[np.uint8],
        min_period_s: float,
        min_connections: float,
        out_count: npt.NDArray[np.float64],
        out_regularity: npt.NDArray[np.float64],
        out_size_regularity: npt.NDArray[np.float64],
        /,
    ) -> None: ...
    def reset_beacons(self, beacon_window_ns: int, beacon_max_per_key: int, /) -> None: ...
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

"""The native batch windows (sniffer/batch_windows.py) give, entry for entry, what the
Python SlidingWindows gives: counts, sums (the same doubles) and distinct counts, with the
caps (entries per key, keys, total entries) hit, records out of time order, and values
left out of the distinct count."""

from __future__ import annotations

import numpy as np
import pytest

from sniffer.batch_windows import BatchWindows, address_keys, int_values
from sniffer.sliding_window import SlidingWindows


@pytest.mark.parametrize(
    ("max_keys", "max_per_key", "max_entries"),
    [(10_000, 10_000, 100_000), (7, 5, 20), (50, 3, 60), (3, 100, 10)],
)
def test_same_windows_as_the_python_class(
    max_keys: int, max_per_key: int, max_entries: int
) -> None:
    rng = np.random.default_rng(max_keys * 31 + max_per_key)
    n = 6_000
    caps = {"max_keys": max_keys, "max_entries_per_key": max_per_key, "max_entries": max_entries}
    ref = SlidingWindows(window_s=2.0, n_sums=2, n_distinct=2, **caps)
    batch = BatchWindows(window_s=2.0, n_sums=2, n_distinct=2, **caps)
    pool = [bytes(rng.integers(0, 256, 4, dtype=np.uint8)) for _ in range(12)]
    pool += [bytes(rng.integers(0, 256, 16, dtype=np.uint8)) for _ in range(8)]
    pool += [b"\x00\x00\x00\x00", b"\x00" * 16]  # same bytes, different lengths
    key_i = rng.integers(0, len(pool), n)
    dst_i = rng.integers(0, len(pool), n)
    keys = [pool[i] for i in key_i]
    dsts = [pool[i] for i in dst_i]
    ports = np.where(rng.random(n) < 0.2, -1, rng.integers(0, 40, n))
    # Time goes forward with jitter (records are exported out of last_ts order).
    ts = np.cumsum(rng.integers(0, 20_000_000, n)) + rng.integers(-300_000_000, 300_000_000, n)
    ts = np.maximum(ts, 0).astype(np.int64)
    sums = np.column_stack([rng.random(n) * 1e3, (rng.random(n) < 0.5).astype(float)])
    values = np.stack([address_keys(dsts), int_values(ports)], axis=1)
    counted = np.column_stack([np.ones(n, bool), ports != -1])
    # Two batches, so state carries over between calls.
    half = n // 2
    states = [
        batch.add(address_keys(keys[a:b]), ts[a:b], sums[a:b], values[a:b], counted[a:b])
        for a, b in ((0, half), (half, n))
    ]
    count = np.concatenate([s.count for s in states])
    got_sums = np.concatenate([s.sums for s in states])
    distinct = np.concatenate([s.distinct for s in states])
    for i in range(n):
        win = ref.add(keys[i], int(ts[i]), tuple(sums[i].tolist()), (dsts[i], int(ports[i])))
        assert count[i] == win.count, i
        assert got_sums[i].tolist() == win.sums, i
        assert distinct[i, 0] == win.distinct_count(0), i
        assert distinct[i, 1] == win.distinct_count(1) - (1 if -1 in win.distinct[1] else 0), i
    assert len(batch) == len(ref)
    assert batch.entries == ref.entries
    assert batch.evicted_keys == ref.evicted_keys
    assert batch.evicted_entries == ref.evicted_entries
    # The caps were hit.
    if max_keys < 100:
        assert ref.evicted_keys > 0
    if max_per_key < 10:
        assert ref.evicted_entries > 0


def test_select_skips_rows_and_bad_shapes_are_refused() -> None:
    w = BatchWindows(
        window_s=1.0,
        n_sums=0,
        n_distinct=0,
        max_keys=9,
        max_entries_per_key=9,
        max_entries=99,
        value_size=1,
    )
    keys = address_keys([b"\x01\x02\x03\x04"] * 4)
    state = w.add(keys, [1, 2, 3, 4], select=[True, False, True, True])
    assert state.count.tolist() == [1, 0, 2, 3]
    with pytest.raises(ValueError, match="keys"):
        w.add(keys[:, :5], [1, 2, 3, 4])
    with pytest.raises(ValueError, match="positive"):
        BatchWindows(
            window_s=0, n_sums=0, n_distinct=0, max_keys=1, max_entries_per_key=1, max_entries=1
        )


def test_address_keys_pack_length_and_bytes() -> None:
    """address_keys (native pack_addresses) against the rows written out in Python; an item
    that is no 4- or 16-byte address is refused, not packed."""
    rng = np.random.default_rng(3)
    addrs = [bytes(rng.integers(0, 256, 4 if i % 3 else 16, dtype=np.uint8)) for i in range(500)]
    addrs += [b"\x00" * 4, b"\x00" * 16]
    want = np.array([[len(a), *a.ljust(16, b"\x00")] for a in addrs], dtype=np.uint8)
    assert np.array_equal(address_keys(addrs), want)
    assert address_keys([]).shape == (0, 17)
    with pytest.raises(ValueError, match="item 1 is not an address"):
        address_keys([b"\x01\x02\x03\x04", b"\x01\x02\x03"])


def test_new_keys_take_no_heap_block_each() -> None:
    """A spoofed flood brings a new source with every record: each new key's window (its
    sums, distinct counts, key and first entries) comes from the set's arena, chunks of
    MLD_WIN_CHUNK windows, and an evicted key's block serves the next key. Counted with
    tracemalloc, which sees the extension's PyMem allocations: before the arena, every key
    held about ten blocks of its own (~45,000 here); now the chunks and the tables do."""
    import tracemalloc

    n_keys, max_keys = 20_000, 4096
    w = BatchWindows(
        window_s=60.0,
        n_sums=2,
        n_distinct=2,
        max_keys=max_keys,
        max_entries_per_key=100,
        max_entries=1_000_000,
    )
    rng = np.random.default_rng(7)
    addrs = [(i * 2654435761 % 2**32).to_bytes(4, "big") for i in range(n_keys)]  # distinct
    keys = address_keys(addrs)
    values = np.stack([address_keys(addrs), address_keys(addrs[::-1])], axis=1)
    ts = np.arange(n_keys, dtype=np.int64) * 1000
    sums = rng.random((n_keys, 2))
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        states = [
            w.add(keys[i : i + 4096], ts[i : i + 4096], sums[i : i + 4096], values[i : i + 4096])
            for i in range(0, n_keys, 4096)
        ]
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    domain = tracemalloc.DomainFilter(inclusive=True, domain=0)  # PyMem, not NumPy's data
    grown = after.filter_traces([domain]).compare_to(before.filter_traces([domain]), "filename")
    blocks = sum(max(d.count_diff, 0) for d in grown)
    assert len(w) == max_keys
    assert w.evicted_keys == n_keys - max_keys
    assert all((s.count == 1).all() and (s.distinct == 1).all() for s in states)
    assert blocks < 200, f"{blocks} heap blocks for {max_keys} live keys"

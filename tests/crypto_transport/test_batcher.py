"""Batching by count and by age."""

from __future__ import annotations

import pytest

from crypto_transport import Batcher
from tests.support import FakeClock


def _batcher(
    clock: FakeClock, max_items: int = 3, max_delay_s: float = 0.2
) -> tuple[Batcher[int], list[list[int]]]:
    sent: list[list[int]] = []
    return Batcher(sent.append, max_items=max_items, max_delay_s=max_delay_s, clock=clock), sent


def test_flushes_when_it_holds_max_items() -> None:
    b, sent = _batcher(FakeClock())
    b.add(1)
    b.add(2)
    assert sent == []
    assert len(b) == 2
    b.add(3)
    assert sent == [[1, 2, 3]]
    assert len(b) == 0
    for i in range(4, 11):
        b.add(i)
    assert sent == [[1, 2, 3], [4, 5, 6], [7, 8, 9]]
    assert len(b) == 1


def test_max_items_of_one_sends_every_item() -> None:
    b, sent = _batcher(FakeClock(), max_items=1)
    b.add(7)
    b.add(8)
    assert sent == [[7], [8]]


def test_poll_flushes_when_the_oldest_item_is_too_old() -> None:
    # Binary fractions keep the clock arithmetic exact.
    clock = FakeClock()
    b, sent = _batcher(clock, max_delay_s=0.25)
    b.poll()  # empty: nothing to do
    assert sent == []
    b.add(1)
    clock.now += 0.125
    b.add(2)
    b.poll()
    assert sent == []
    clock.now += 0.0625 + 0.03125
    b.poll()
    assert sent == []
    clock.now += 0.03125  # the first item has now waited exactly max_delay_s
    b.poll()
    assert sent == [[1, 2]]
    assert len(b) == 0
    clock.now += 10
    b.poll()
    assert sent == [[1, 2]]


def test_age_counts_from_the_first_item_of_each_batch() -> None:
    clock = FakeClock()
    b, sent = _batcher(clock, max_delay_s=0.25)
    for i in range(3):
        b.add(i)  # flushed by count at clock 50
    clock.now += 0.125
    b.add(3)  # a new batch starts here
    clock.now += 0.125
    b.poll()
    assert sent == [[0, 1, 2]]
    clock.now += 0.125
    b.poll()
    assert sent == [[0, 1, 2], [3]]


def test_flush_sends_the_remainder_once() -> None:
    b, sent = _batcher(FakeClock(), max_items=100)
    for i in range(5):
        b.add(i)
    b.flush()
    assert sent == [[0, 1, 2, 3, 4]]
    b.flush()  # nothing left: no empty batch
    assert sent == [[0, 1, 2, 3, 4]]
    assert len(b) == 0


def test_time_to_deadline() -> None:
    clock = FakeClock()
    b, _ = _batcher(clock, max_items=10, max_delay_s=0.5)
    assert b.time_to_deadline() is None
    b.add(1)
    assert b.time_to_deadline() == 0.5
    clock.now += 0.125
    b.add(2)  # the deadline follows the oldest item
    assert b.time_to_deadline() == 0.375
    clock.now += 1.0
    assert b.time_to_deadline() == 0.0
    assert len(b) == 2  # only poll flushes
    b.poll()
    assert b.time_to_deadline() is None


def test_max_items_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        Batcher(list.append, max_items=0, max_delay_s=1.0)

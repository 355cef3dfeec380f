"""The anti-replay sliding window."""

from __future__ import annotations

import random

import pytest

from crypto_transport.replay import ReplayWindow


def test_first_and_increasing_numbers_are_accepted() -> None:
    w = ReplayWindow(64)
    assert w.newest is None
    for seq in (1000, 1001, 1002, 1010):
        assert w.check(seq) is None
        w.accept(seq)
        assert w.newest == seq


def test_exact_replay_is_refused() -> None:
    w = ReplayWindow(64)
    for seq in (5, 6, 7):
        w.accept(seq)
    for seq in (5, 6, 7):
        assert w.check(seq) == "replay"


def test_numbers_older_than_the_window_are_refused() -> None:
    w = ReplayWindow(64)
    w.accept(1000)
    assert w.check(1000 - 64) == "out_of_window"
    assert w.check(0) == "out_of_window"
    # The oldest number still inside the window was never seen.
    assert w.check(1000 - 63) is None


def test_unseen_number_inside_the_window_is_accepted_once() -> None:
    w = ReplayWindow(64)
    w.accept(1000)
    assert w.check(990) is None
    assert w.accept(990) == 0
    assert w.newest == 1000
    assert w.check(990) == "replay"
    assert w.check(991) is None
    assert w.check(1000) == "replay"


def test_accept_returns_how_many_numbers_were_skipped() -> None:
    w = ReplayWindow(64)
    assert w.accept(10) == 0
    assert w.accept(11) == 0
    assert w.accept(15) == 3
    assert w.accept(1015) == 999
    # Filling a hole behind the newest skips nothing.
    assert w.accept(1014) == 0


def test_large_jump_resets_the_window() -> None:
    w = ReplayWindow(64)
    w.accept(100)
    w.accept(101)
    assert w.accept(101 + 10**6) == 10**6 - 1
    assert w.newest == 101 + 10**6
    assert w.check(101) == "out_of_window"
    assert w.check(101 + 10**6) == "replay"
    # Nothing inside the new window was seen except its newest number.
    for seq in range(101 + 10**6 - 63, 101 + 10**6):
        assert w.check(seq) is None


def test_jump_of_exactly_the_window_size_forgets_the_old_newest() -> None:
    w = ReplayWindow(8)
    w.accept(10)
    w.accept(18)
    assert w.check(10) == "out_of_window"
    assert all(w.check(seq) is None for seq in range(11, 18))
    assert w.check(18) == "replay"


def test_jump_of_one_less_than_the_window_size_keeps_the_old_newest() -> None:
    w = ReplayWindow(8)
    w.accept(10)
    w.accept(17)
    assert w.check(10) == "replay"
    assert all(w.check(seq) is None for seq in range(11, 17))


def test_every_number_of_a_full_window_is_remembered() -> None:
    w = ReplayWindow(64)
    for seq in range(64):
        w.accept(seq)
    assert all(w.check(seq) == "replay" for seq in range(64))
    w.accept(64)
    assert w.check(0) == "out_of_window"
    assert all(w.check(seq) == "replay" for seq in range(1, 65))


def test_window_size_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        ReplayWindow(0)


def test_window_of_one_only_accepts_new_numbers() -> None:
    w = ReplayWindow(1)
    w.accept(5)
    assert w.check(5) == "replay"
    assert w.check(4) == "out_of_window"
    assert w.check(6) is None


@pytest.mark.parametrize("seed", range(5))
def test_matches_a_reference_model(seed: int) -> None:
    """Random, mostly increasing sequences with replays and stragglers, against a set model."""
    size = 32
    rng = random.Random(seed)
    w = ReplayWindow(size)
    seen: set[int] = set()
    newest: int | None = None
    base = 10**18
    for _ in range(3000):
        r = rng.random()
        if newest is None or r < 0.4:
            seq = (newest or base) + rng.randint(1, 3)
        elif r < 0.5:
            seq = (newest or base) + rng.randint(1, 100)
        elif r < 0.7:
            seq = rng.choice(sorted(seen)[-50:])
        else:
            seq = newest - rng.randint(0, 2 * size)

        if newest is not None and seq <= newest and newest - seq >= size:
            expected: str | None = "out_of_window"
        elif seq in seen:
            expected = "replay"
        else:
            expected = None
        assert w.check(seq) == expected, (seq, newest)

        if expected is None:
            skipped = w.accept(seq)
            assert skipped == (max(0, seq - newest - 1) if newest is not None else 0)
            seen.add(seq)
            newest = seq if newest is None else max(newest, seq)
            assert w.newest == newest

"""Ladder hop keys, levels, and the refusal of delays it cannot carry."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from postdate._command import MAX_QUEUE_LENGTH
from postdate._errors import DelayError
from postdate.delay import _ladder as ladder

LONGEST_QUEUE = ".".join(["q" * 59] * 3)  # 179 bytes, and one more word below
NOW = datetime(2030, 1, 1, 12, 0, 0, 250_000, tzinfo=UTC)


def test_longest_queue_is_the_maximum() -> None:
    assert len((LONGEST_QUEUE + "x").encode()) == MAX_QUEUE_LENGTH


@given(seconds=st.integers(0, ladder.MAX_DELAY_SECONDS))
def test_hop_keys_follow_the_set_bits_and_fit(seconds: int) -> None:
    queue = LONGEST_QUEUE + "x"
    keys = ladder.hop_keys(seconds, queue)
    assert keys[-1] == ladder.deliver_key(queue)
    assert all(len(key.encode()) <= 255 for key in keys)
    visited = ladder.levels(seconds)
    assert [int(key[1 : key.index(">")]) for key in keys[:-1]] == visited
    assert sum(2**level for level in visited) == seconds


def test_known_keys() -> None:
    assert ladder.hop_keys(0, "q") == ("~>q",)
    assert ladder.hop_keys(5, "a.b") == ("~2>0", "~0>", "~>a.b")
    assert ladder.levels(7 * 86400) == [19, 16, 13, 12, 11, 9, 7]  # 604800 s: 7 hops
    assert ladder.levels(0) == []
    assert ladder.levels(ladder.MAX_DELAY_SECONDS) == list(range(27, -1, -1))


@pytest.mark.parametrize("seconds", [-1, ladder.MAX_DELAY_SECONDS + 1, 2**40])
def test_out_of_range_seconds(seconds: int) -> None:
    with pytest.raises(DelayError, match=str(seconds)):
        ladder.hop_keys(seconds, "q")
    with pytest.raises(DelayError):
        ladder.levels(seconds)


def test_max_delay_is_about_eight_and_a_half_years() -> None:
    assert ladder.MAX_DELAY_SECONDS == 2**28 - 1
    assert 8.5 < ladder.MAX_DELAY_SECONDS / (365.25 * 86400) < 8.6


@pytest.mark.parametrize(
    ("due", "expected"),
    [
        (NOW, 0),
        (NOW - timedelta(hours=1), 0),  # overdue: at once
        (NOW + timedelta(seconds=0.999), 0),
        (NOW + timedelta(seconds=1.999), 1),  # rounded down: never early
        (NOW + timedelta(days=7), 604_800),
        (NOW + timedelta(seconds=ladder.MAX_DELAY_SECONDS, milliseconds=999), 2**28 - 1),
    ],
)
def test_ladder_seconds(due: datetime, expected: int) -> None:
    assert ladder.ladder_seconds(due, NOW) == expected


def test_ladder_seconds_across_time_zones() -> None:
    plus_two = timezone(timedelta(hours=2))
    assert ladder.ladder_seconds(NOW.astimezone(plus_two) + timedelta(seconds=3), NOW) == 3


def test_ladder_seconds_refuses_naive_and_too_far() -> None:
    with pytest.raises(DelayError, match="naive"):
        ladder.ladder_seconds(datetime(2030, 1, 2), NOW)
    with pytest.raises(DelayError, match="naive"):
        ladder.ladder_seconds(NOW, datetime(2030, 1, 2))
    with pytest.raises(DelayError, match="maximum"):
        ladder.ladder_seconds(NOW + timedelta(seconds=2**28), NOW)

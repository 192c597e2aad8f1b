"""RetryPolicy: which tier holds a failed attempt, when attempts run out, what is permanent."""

from __future__ import annotations

from datetime import timedelta

import pytest

from postdate import InvalidArgument
from postdate.broker._topology import DEFAULT_RETRY_TIERS
from postdate.consume._retry import RetryPolicy

S10 = timedelta(seconds=10)
M1 = timedelta(minutes=1)
M10 = timedelta(minutes=10)
POLICY = RetryPolicy(max_attempts=5, tiers=(S10, M1, M10))


class Fatal(Exception):
    pass


class VeryFatal(Fatal):
    pass


@pytest.mark.parametrize(
    ("attempt", "tier"),
    [
        pytest.param(1, S10, id="attempt-1-tier-0"),
        pytest.param(2, M1, id="attempt-2-tier-1"),
        pytest.param(3, M10, id="attempt-3-tier-2"),
        pytest.param(4, M10, id="attempt-4-last-tier-repeats"),
        pytest.param(100, M10, id="attempt-100-last-tier-repeats"),
    ],
)
def test_tier_for_attempt(attempt: int, tier: timedelta) -> None:
    assert POLICY.tier_for(attempt) == tier
    assert POLICY.tier_for(attempt, None) == tier


@pytest.mark.parametrize(
    ("attempt", "after", "tier"),
    [
        pytest.param(1, timedelta(0), S10, id="zero-shortest"),
        pytest.param(3, timedelta(seconds=1), S10, id="1s-picks-10s-over-attempt"),
        pytest.param(1, S10, S10, id="exactly-10s"),
        pytest.param(1, timedelta(seconds=11), M1, id="11s-picks-1m"),
        pytest.param(1, timedelta(seconds=59, milliseconds=999), M1, id="just-under-1m"),
        pytest.param(1, M1, M1, id="exactly-1m"),
        pytest.param(1, timedelta(seconds=61), M10, id="61s-picks-10m"),
        pytest.param(1, M10, M10, id="exactly-10m"),
        pytest.param(1, timedelta(hours=3), M10, id="beyond-last-picks-last"),
        pytest.param(1, timedelta(seconds=-5), S10, id="negative-shortest"),
    ],
)
def test_tier_for_after(attempt: int, after: timedelta, tier: timedelta) -> None:
    assert POLICY.tier_for(attempt, after) == tier


@pytest.mark.parametrize(
    ("attempt", "after", "tier"),
    [
        pytest.param(1, None, timedelta(seconds=10), id="default-attempt-1"),
        pytest.param(4, None, timedelta(hours=1), id="default-attempt-4"),
        pytest.param(7, None, timedelta(hours=1), id="default-attempt-7"),
        pytest.param(1, timedelta(minutes=2), timedelta(minutes=10), id="default-after-2m"),
    ],
)
def test_tier_for_default_tiers(attempt: int, after: timedelta | None, tier: timedelta) -> None:
    policy = RetryPolicy()
    assert policy.tiers == DEFAULT_RETRY_TIERS
    assert policy.tier_for(attempt, after) == tier


@pytest.mark.parametrize(
    ("attempt", "after"),
    [
        pytest.param(1, None, id="first"),
        pytest.param(9, None, id="ninth"),
        pytest.param(1, timedelta(days=1), id="after-long"),
        pytest.param(1, timedelta(0), id="after-zero"),
    ],
)
def test_single_tier_is_always_picked(attempt: int, after: timedelta | None) -> None:
    assert RetryPolicy(tiers=(M1,)).tier_for(attempt, after) == M1


@pytest.mark.parametrize(
    ("max_attempts", "attempt", "exhausted"),
    [
        pytest.param(1, 1, True, id="max-1-first-is-last"),
        pytest.param(3, 1, False, id="max-3-attempt-1"),
        pytest.param(3, 2, False, id="max-3-attempt-2"),
        pytest.param(3, 3, True, id="max-3-attempt-3"),
        pytest.param(3, 4, True, id="max-3-beyond"),
        pytest.param(5, 4, False, id="max-5-attempt-4"),
        pytest.param(5, 5, True, id="max-5-attempt-5"),
    ],
)
def test_exhausted(max_attempts: int, attempt: int, exhausted: bool) -> None:
    assert RetryPolicy(max_attempts=max_attempts).exhausted(attempt) is exhausted


@pytest.mark.parametrize(
    ("permanent", "error", "expected"),
    [
        pytest.param((Fatal,), Fatal("x"), True, id="listed"),
        pytest.param((Fatal,), VeryFatal("x"), True, id="subclass-of-listed"),
        pytest.param((VeryFatal,), Fatal("x"), False, id="base-of-listed"),
        pytest.param((Fatal,), ValueError("x"), False, id="unlisted"),
        pytest.param((Fatal, LookupError), KeyError("x"), True, id="second-listed-base"),
        pytest.param((), Fatal("x"), False, id="none-permanent"),
        pytest.param((), Exception("x"), False, id="none-permanent-base-exception"),
    ],
)
def test_is_permanent(
    permanent: tuple[type[BaseException], ...], error: BaseException, expected: bool
) -> None:
    assert RetryPolicy(permanent=permanent).is_permanent(error) is expected


@pytest.mark.parametrize(
    ("max_attempts", "tiers", "match"),
    [
        pytest.param(0, (S10,), "max_attempts must be at least 1, got 0", id="zero-attempts"),
        pytest.param(-2, (S10,), "max_attempts must be at least 1, got -2", id="negative-attempts"),
        pytest.param(3, (), "at least one tier", id="no-tiers"),
        pytest.param(3, (M1, S10), "distinct and in increasing order", id="unsorted"),
        pytest.param(3, (S10, M10, M1), "distinct and in increasing order", id="unsorted-tail"),
        pytest.param(3, (S10, S10), "distinct and in increasing order", id="duplicate"),
        pytest.param(
            3, (S10, timedelta(seconds=10.0)), "distinct and in increasing order", id="equal"
        ),
        pytest.param(3, (timedelta(seconds=1.5),), "positive whole number", id="fractional"),
        pytest.param(3, (timedelta(milliseconds=500),), "positive whole number", id="sub-second"),
        pytest.param(3, (timedelta(0),), "positive whole number", id="zero-tier"),
        pytest.param(3, (timedelta(seconds=-10),), "positive whole number", id="negative-tier"),
        pytest.param(
            3, (S10, timedelta(minutes=1, milliseconds=1)), "positive whole number", id="late-frac"
        ),
    ],
)
def test_constructor_refuses(max_attempts: int, tiers: tuple[timedelta, ...], match: str) -> None:
    with pytest.raises(InvalidArgument, match=match) as caught:
        RetryPolicy(max_attempts=max_attempts, tiers=tiers)
    assert isinstance(caught.value, ValueError)


@pytest.mark.parametrize(
    ("max_attempts", "tiers"),
    [
        pytest.param(1, (S10,), id="one-attempt-one-tier"),
        pytest.param(5, DEFAULT_RETRY_TIERS, id="defaults"),
        pytest.param(2, (timedelta(seconds=90), timedelta(days=1)), id="90s-and-1d"),
        pytest.param(100, (timedelta(seconds=1),), id="one-second"),
    ],
)
def test_constructor_accepts(max_attempts: int, tiers: tuple[timedelta, ...]) -> None:
    policy = RetryPolicy(max_attempts=max_attempts, tiers=tiers)
    assert policy.max_attempts == max_attempts
    assert policy.tiers == tiers
    assert policy.permanent == ()

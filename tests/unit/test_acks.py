"""The ack ledger: a multiple ack never covers a delivery that is not being acked."""

from __future__ import annotations

import gc
from typing import cast

import pytest
from aiormq.abc import AbstractChannel
from hypothesis import given
from hypothesis import strategies as st

from postdate.consume import _acks as acks_module
from postdate.consume._acks import AckFrame, AckLedger, Acks


def test_a_run_from_the_floor_goes_as_one_multiple_ack() -> None:
    ledger = AckLedger()
    assert ledger.plan([3, 1, 2]) == [AckFrame(3, True, (1, 2, 3))]
    assert ledger.floor == 3


def test_a_lone_tag_goes_alone() -> None:
    assert AckLedger().plan([1]) == [AckFrame(1, False, (1,))]


def test_tags_above_a_delivery_still_held_are_acked_alone() -> None:
    ledger = AckLedger()
    assert ledger.plan([2, 3]) == [AckFrame(2, False, (2,)), AckFrame(3, False, (3,))]
    assert ledger.floor == 0
    assert ledger.plan([1]) == [AckFrame(1, False, (1,))]
    assert (ledger.floor, ledger.settled_ahead) == (3, set())


def test_the_run_passes_over_tags_settled_before_and_acks_the_highest_asked() -> None:
    ledger = AckLedger()
    assert ledger.plan([1, 2, 4, 5]) == [
        AckFrame(2, True, (1, 2)),
        AckFrame(4, False, (4,)),
        AckFrame(5, False, (5,)),
    ]
    ledger.settled(6)  # given back
    assert ledger.plan([3, 7]) == [AckFrame(7, True, (3, 7))]
    assert ledger.floor == 7


def test_a_multiple_ack_may_cover_a_tag_given_back() -> None:
    ledger = AckLedger()
    ledger.settled(2)
    assert ledger.plan([1, 3]) == [AckFrame(3, True, (1, 3))]


def test_is_settled_knows_acked_and_given_back_tags() -> None:
    ledger = AckLedger()
    ledger.plan([1, 3])
    ledger.settled(5)
    assert [ledger.is_settled(tag) for tag in range(1, 7)] == [
        True,
        False,
        True,
        False,
        True,
        False,
    ]


@given(
    st.lists(
        st.tuples(st.integers(0, 2), st.lists(st.integers(1, 40), max_size=8)),
        max_size=12,
    )
)
def test_the_broker_sees_each_delivery_settled_once_and_only_when_asked(
    rounds: list[tuple[int, list[int]]],
) -> None:
    """Simulate the broker's unacked set: every frame names an outstanding tag, and a
    multiple ack covers only tags asked for in its round (or settled before)."""
    ledger = AckLedger()
    outstanding = set(range(1, 41))
    asked_ever: set[int] = set()
    for nacks, asked in rounds:
        for tag in sorted(outstanding - asked_ever)[:nacks]:  # some deliveries given back
            outstanding.discard(tag)
            asked_ever.add(tag)
            ledger.settled(tag)
        fresh = {tag for tag in asked if tag not in asked_ever}
        asked_ever |= fresh
        for frame in ledger.plan(fresh):
            assert frame.tag in outstanding  # else: "unknown delivery tag", channel closed
            covered = {t for t in outstanding if t <= frame.tag} if frame.multiple else {frame.tag}
            assert covered == set(frame.covers)
            outstanding -= covered
        assert not outstanding & fresh  # everything asked was acked


def test_the_acks_of_a_channel_that_is_gone_are_forgotten() -> None:
    class Channel:  # only its identity matters to the bookkeeping
        pass

    acks, channel = Acks(), Channel()
    assert acks.of(cast(AbstractChannel, channel)) is acks.of(cast(AbstractChannel, channel))
    assert len(acks) == 1
    del channel
    gc.collect()
    assert len(acks) == 0


def test_tags_settled_before_are_not_acked_again() -> None:
    ledger = AckLedger()
    ledger.plan([1])
    ledger.settled(3)
    assert ledger.plan([1, 3, 2]) == [AckFrame(2, False, (2,))]


def test_past_the_limit_the_ledger_forgets_and_acks_each_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(acks_module, "SETTLED_AHEAD_LIMIT", 3)
    ledger = AckLedger()
    assert len(ledger.plan([2, 3, 4, 5])) == 4  # tag 1 outstanding: each alone
    assert (ledger.singles_only, ledger.settled_ahead) == (True, set())
    assert ledger.plan([1, 6, 7]) == [AckFrame(t, False, (t,)) for t in (1, 6, 7)]

"""Never early: due times on the wire and the hold until due, with sub-millisecond parts."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from postdate._clock import from_epoch_ms, sleep_until, to_epoch_ms
from postdate._command import Command
from postdate.publish._envelope import DUE, Envelope


class Ping(Command, queue="clock.ping"):
    """A command to wrap in an envelope."""


MOMENTS = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(UTC)
)


@given(MOMENTS)
def test_a_due_time_on_the_wire_is_never_before_the_exact_one(due: datetime) -> None:
    carried = from_epoch_ms(to_epoch_ms(due))
    assert due <= carried < due + timedelta(milliseconds=1)


@given(MOMENTS)
def test_an_envelope_carries_a_due_time_never_before_the_exact_one(due: datetime) -> None:
    carried = (Envelope.for_command(Ping(), due).properties().headers or {})[DUE]
    assert isinstance(carried, int)
    assert from_epoch_ms(carried) >= due


@settings(max_examples=40, deadline=None)
@given(st.integers(min_value=0, max_value=15_000))
def test_the_hold_ends_at_the_due_time_never_before(microseconds: int) -> None:
    due = datetime.now(UTC) + timedelta(microseconds=microseconds)
    asyncio.run(sleep_until(due))
    assert datetime.now(UTC) >= due

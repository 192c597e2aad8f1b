"""The scheduling plan: the due time and route of a send, computed without a broker."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pydantic
import pytest

from postdate._command import Command
from postdate._errors import DelayError, InvalidArgument
from postdate._settings import Settings
from postdate.broker._topology import Names
from postdate.delay import _ladder as ladder
from postdate.delay._routing import LADDER_LEAD, Route, When, due_time, plan
from postdate.publish._envelope import Envelope
from postdate.publish._publisher import Publisher

NOW = datetime(2030, 1, 1, 12, 0, 0, 300_000, tzinfo=UTC)
LEAD_S = int(LADDER_LEAD.total_seconds())


class Expire(Command, queue="orders.expire"):
    order: int


class Planner:
    """What a send does before it publishes: the due time, the envelope, the route."""

    names = Names("p")

    def prepare(
        self,
        command: Command,
        delay: When | None = None,
        *,
        at: datetime | None = None,
        message_id: str | None = None,
        correlation_id: str | None = None,
        now: datetime,
    ) -> tuple[Envelope, Route]:
        due = due_time(now, delay, at)
        envelope = Envelope.for_command(
            command, due, message_id=message_id, correlation_id=correlation_id
        )
        return envelope, plan(self.names, envelope, now)


@pytest.fixture
def publisher() -> Planner:
    return Planner()


def test_delay_zero_goes_to_the_deliver_exchange(publisher: Planner) -> None:
    envelope, target = publisher.prepare(Expire(order=1), 0, now=NOW)
    assert target == Route("p.deliver", ladder.deliver_key("orders.expire"))
    assert envelope.due_at == NOW


@pytest.mark.parametrize(
    ("delay", "seconds", "span"),
    [
        (LEAD_S + 1, 1, timedelta(seconds=LEAD_S + 1)),  # the ladder delivers LADDER_LEAD early
        (LEAD_S + 1.999, 1, timedelta(seconds=LEAD_S + 1.999)),  # the consumer holds the rest
        (timedelta(seconds=300), 300 - LEAD_S, timedelta(seconds=300)),
        (timedelta(days=7), 604_800 - LEAD_S, timedelta(days=7)),
        (
            ladder.MAX_DELAY_SECONDS,
            ladder.MAX_DELAY_SECONDS - LEAD_S,
            timedelta(seconds=2**28 - 1),
        ),
    ],
)
def test_delays_enter_the_level_of_their_highest_bit_by_the_default_exchange(
    publisher: Planner, delay: When, seconds: int, span: timedelta
) -> None:
    envelope, target = publisher.prepare(Expire(order=1), delay, now=NOW)
    keys = ladder.hop_keys(seconds, "orders.expire")
    highest = ladder.levels(seconds)[0]
    assert target == Route("", f"p.delay.{highest}", keys)
    assert (envelope.properties(target.cc).headers or {})["CC"] == list(keys)
    assert envelope.due_at == NOW + span


@pytest.mark.parametrize("delay", [0.5, 0.999, LEAD_S, LEAD_S + 0.999, timedelta(milliseconds=1)])
def test_delays_within_the_lead_and_a_second_deliver_at_once(
    publisher: Planner, delay: When
) -> None:
    _, target = publisher.prepare(Expire(order=1), delay, now=NOW)
    assert target.exchange == "p.deliver"


def test_at(publisher: Planner) -> None:
    due = NOW + timedelta(seconds=10, milliseconds=700)
    envelope, target = publisher.prepare(Expire(order=1), at=due, now=NOW)
    assert envelope.due_at == due
    seconds = 10 - LEAD_S  # whole seconds until the lead before due; the worker holds 0.7 s
    highest = ladder.levels(seconds)[0]
    assert target == Route("", f"p.delay.{highest}", ladder.hop_keys(seconds, "orders.expire"))
    # an aware datetime given as the delay means the same
    assert publisher.prepare(Expire(order=1), due, now=NOW)[1] == target


def test_at_in_the_past_delivers_at_once(publisher: Planner) -> None:
    due = NOW - timedelta(days=1)
    envelope, target = publisher.prepare(Expire(order=1), at=due, now=NOW)
    assert target.exchange == "p.deliver"
    assert envelope.due_at == due


def test_no_delay_means_now(publisher: Planner) -> None:
    envelope, target = publisher.prepare(Expire(order=1), now=NOW)
    assert envelope.due_at == NOW
    assert target.exchange == "p.deliver"


def test_ids(publisher: Planner) -> None:
    envelope, _ = publisher.prepare(
        Expire(order=1), 5, message_id="idem-1", correlation_id="c-9", now=NOW
    )
    assert envelope.message_id == "idem-1"
    assert envelope.correlation_id == "c-9"


@pytest.mark.parametrize(
    ("delay", "at", "match"),
    [
        (timedelta(seconds=2**28), None, "maximum"),
        (float(2**28), None, "maximum"),
        (timedelta(days=365 * 9), None, "maximum"),
        (None, datetime(2030, 1, 2), "naive"),
        (datetime(2030, 1, 2), None, "naive"),
        (-1, None, "negative"),
        (timedelta(seconds=-0.5), None, "negative"),
        (5, NOW + timedelta(seconds=5), "not both"),
    ],
)
def test_unschedulable(
    publisher: Planner, delay: When | None, at: datetime | None, match: str
) -> None:
    with pytest.raises(DelayError, match=match):
        publisher.prepare(Expire(order=1), delay, at=at, now=NOW)


@pytest.mark.parametrize(
    ("delay", "match"),
    [
        pytest.param(float("nan"), "finite", id="nan"),
        pytest.param(float("inf"), "finite", id="inf"),
        pytest.param(float("-inf"), "finite", id="-inf"),
        pytest.param(1e300, "maximum", id="huge"),
        pytest.param(-1e300, "negative", id="huge-negative"),
        pytest.param("10", "not a timedelta", id="string"),
        pytest.param(True, "not a timedelta", id="bool"),
        pytest.param([10], "not a timedelta", id="list"),
    ],
)
def test_misused_delays_are_delay_errors_naming_the_delay(delay: object, match: str) -> None:
    with pytest.raises(DelayError, match=match) as caught:
        due_time(NOW, delay)  # type: ignore[arg-type]
    assert "delay" in str(caught.value)


def test_an_at_that_is_not_a_datetime_is_a_delay_error() -> None:
    with pytest.raises(DelayError, match="at="):
        due_time(NOW, at="2030-01-01")  # type: ignore[arg-type]


class Plain(pydantic.BaseModel):
    """A pydantic model that is not a Command."""

    order: int = 1


@pytest.mark.parametrize(
    "command",
    [
        pytest.param({"order": 1}, id="dict"),
        pytest.param(Plain(), id="plain-model"),
        pytest.param(Command(), id="bare-command"),
    ],
)
async def test_sending_what_is_not_a_command_is_refused_before_publishing(
    command: object,
) -> None:
    publisher = Publisher(settings=Settings.load(prefix="p"))  # not started: nothing to publish
    with pytest.raises(InvalidArgument, match="command="):
        await publisher.send(command, 5)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match="command="):
        await publisher.send_many([(command, 5)])  # type: ignore[list-item]

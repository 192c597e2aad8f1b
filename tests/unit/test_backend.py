"""The backends' values without a broker: the plugin's exchange, bindings, routes, x-delay
and refusals, and the choice of a backend from the setting and the broker's answer."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import aiormq
import pamqp.encode
import pytest
import structlog.testing
from pamqp.common import FieldTable

from postdate._command import Command
from postdate._errors import ConfigError, DelayError
from postdate._settings import BackendName, Settings
from postdate.broker._declare import to_definitions, wanted_arguments
from postdate.broker._topology import ExchangeType, Names, command_queue_topology
from postdate.cli.common import load_app, topology_of
from postdate.delay import _ladder as ladder
from postdate.delay import _plugin as plugin
from postdate.delay._backend import LADDER, PLUGIN, decide, probe_name
from postdate.delay._routing import LADDER_LEAD, PLAN_LEEWAY, Route, plan
from postdate.publish._envelope import BROKER_HEADERS, DELAY, Envelope, without_broker_headers
from postdate.publish._wire import encode_table

NOW = datetime(2030, 1, 1, 12, 0, 0, 300_000, tzinfo=UTC)
NAMES = Names("p")
LEAD_MS = LADDER_LEAD // timedelta(milliseconds=1)


class Expire(Command, queue="orders.expire"):
    order: int


def envelope(due_in: timedelta, made: datetime = NOW - timedelta(seconds=5)) -> Envelope:
    """An envelope made at ``made`` (default: long enough ago to count from now)."""
    return Envelope.for_command(Expire(order=1), NOW + due_in, made_at=made)


@pytest.fixture(autouse=True)
def fresh_warnings() -> Iterator[None]:
    plugin._warned_queues.clear()
    yield
    plugin._warned_queues.clear()


def test_the_delayed_exchange_is_an_x_delayed_message_topic_exchange() -> None:
    spec = plugin.delayed_exchange("p")
    assert spec.name == "p.delayed" == NAMES.delayed
    assert spec.type is ExchangeType.DELAYED and spec.type.value == "x-delayed-message"
    assert spec.arguments == {"x-delayed-type": "topic"}  # no alternate exchange: see plugin
    assert wanted_arguments(spec) == {
        "x-delayed-type": "topic",
        "durable": True,
        "type": "x-delayed-message",
    }
    [rendered] = to_definitions(plugin.plugin_topology("p"))["exchanges"]
    assert rendered["type"] == "x-delayed-message"
    assert rendered["arguments"] == {"x-delayed-type": "topic"}


def test_a_queue_binds_on_the_delayed_exchange_with_the_key_a_publish_carries() -> None:
    [on_deliver] = command_queue_topology("p", "orders.expire").bindings
    binding = plugin.queue_binding("p", "orders.expire")
    assert (binding.source, binding.destination, binding.to_exchange) == (
        "p.delayed",
        "orders.expire",
        False,
    )
    assert binding.routing_key == plugin.plugin_key("orders.expire") == "~>orders.expire"
    assert binding.routing_key == on_deliver.routing_key
    assert plugin.plugin_key("a.b") != plugin.plugin_key("b")
    topology = plugin.plugin_topology("p", ("a", "b"))
    assert [b.destination for b in topology.bindings] == ["a", "b"]
    assert [e.name for e in topology.exchanges] == ["p.delayed"]


@pytest.mark.parametrize(
    ("due_in", "expected_ms"),
    [
        (timedelta(seconds=10), 10_000 - LEAD_MS),  # the ladder's lead, held by the worker
        (LADDER_LEAD + timedelta(seconds=1, microseconds=999_999), 1_999),  # ms, rounded down
        (LADDER_LEAD + timedelta(microseconds=1500), 1),
        (LADDER_LEAD, 0),
        (timedelta(milliseconds=300), 0),  # never negative
        (timedelta(seconds=-30), 0),  # a due time in the past: at once
        (timedelta(days=7), 7 * 86_400_000 - LEAD_MS),
    ],
)
def test_x_delay_is_the_whole_ms_until_the_lead_before_due(
    due_in: timedelta, expected_ms: int
) -> None:
    assert plugin.delay_ms(envelope(due_in), NOW) == expected_ms


def test_x_delay_counts_from_the_envelopes_making_within_the_leeway_as_the_ladder_does() -> None:
    made = NOW - PLAN_LEEWAY / 2
    fresh = Envelope.for_command(
        Expire(order=1), made + LADDER_LEAD + timedelta(seconds=2), made_at=made
    )
    assert plugin.delay_ms(fresh, NOW) == 2000
    assert plan(NAMES, fresh, NOW).cc == ladder.hop_keys(2, "orders.expire")


def test_x_delay_never_delivers_later_than_the_ladder() -> None:
    for millis in range(LEAD_MS, LEAD_MS + 4000, 37):
        item = envelope(timedelta(milliseconds=millis))
        target = plan(NAMES, item, NOW)
        seconds = sum(2**level for level in levels_of(target))
        assert plugin.delay_ms(item, NOW) >= seconds * 1000  # the plugin is never behind
        assert NOW + timedelta(milliseconds=plugin.delay_ms(item, NOW)) <= item.due_at


def test_the_longest_delay_is_accepted_and_one_more_ms_refused_naming_the_ladder() -> None:
    longest = timedelta(milliseconds=plugin.MAX_DELAY_MS) + LADDER_LEAD
    assert plugin.delay_ms(envelope(longest), NOW) == 2**32 - 1
    with pytest.raises(DelayError, match=r"2\^32-1 ms.*POSTDATE_BACKEND=ladder"):
        plugin.delay_ms(envelope(longest + timedelta(milliseconds=1)), NOW)
    with pytest.raises(DelayError, match="ladder"):
        PLUGIN.route(NAMES, envelope(timedelta(days=60)), NOW)
    with pytest.raises(DelayError):
        PLUGIN.check([envelope(timedelta(seconds=1)), envelope(timedelta(days=60))], NOW)
    LADDER.check([envelope(timedelta(days=60))], NOW)  # the ladder reaches 8.5 years


def levels_of(target: Route) -> list[int]:
    """The ladder levels a planned route visits: the one it enters, then each hop's."""
    if target.exchange:
        return []
    lowers = [key[key.index(">") + 1 :] for key in target.cc[:-1]]
    return [int(target.routing_key.rsplit(".", 1)[1]), *(int(lower) for lower in lowers if lower)]


def test_a_delayed_route_goes_to_the_delayed_exchange_not_mandatory() -> None:
    item = envelope(LADDER_LEAD + timedelta(seconds=4))
    target = plugin.route(NAMES, item, NOW)
    assert target == Route("p.delayed", plugin.plugin_key("orders.expire"), delay_ms=4000)
    assert not target.mandatory and target.cc == ()
    headers = item.properties(target.cc, target.delay_ms).headers or {}
    assert headers[DELAY] == 4000 and type(headers[DELAY]) is int
    assert "CC" not in headers


def test_a_zero_delay_goes_to_the_deliver_exchange_mandatory_as_the_ladder_sends_it() -> None:
    item = envelope(timedelta(milliseconds=500))
    target = PLUGIN.route(NAMES, item, NOW)
    assert target == plan(NAMES, item, NOW) == Route("p.deliver", ladder.deliver_key(item.queue))
    assert target.mandatory and target.delay_ms is None
    assert DELAY not in (item.properties(target.cc, target.delay_ms).headers or {})


def test_the_ladder_backend_routes_as_the_plan_and_stays_mandatory() -> None:
    item = envelope(timedelta(days=7))
    assert LADDER.route(NAMES, item, NOW) == plan(NAMES, item, NOW)
    assert LADDER.route(NAMES, item, NOW).mandatory
    assert LADDER.topology("p").exchanges == () and PLUGIN.topology("p").exchanges[0].name == (
        "p.delayed"
    )


@pytest.mark.parametrize("millis", [2**31 - 1, 2**31, 2**32 - 1])
def test_x_delay_encodes_as_pamqp_encodes_it(millis: int) -> None:
    table: FieldTable = {DELAY: millis, "x-postdate-queue": "q"}
    assert encode_table(table) == pamqp.encode.field_table(table)


def test_x_delay_is_not_carried_into_copies() -> None:
    assert DELAY in BROKER_HEADERS  # the plugin negates it on delivery: never republished
    assert without_broker_headers({DELAY: -4000, "keep": "me"}) == {"keep": "me"}


def test_a_delay_past_two_days_warns_once_per_queue_naming_the_ladder() -> None:
    with structlog.testing.capture_logs() as captured:
        plugin.route(NAMES, envelope(timedelta(days=2)), NOW)  # within: the lead
        plugin.route(NAMES, envelope(timedelta(days=3)), NOW)
        plugin.route(NAMES, envelope(timedelta(days=4)), NOW)
    warnings = [entry for entry in captured if entry["event"] == "plugin.long_delay"]
    assert len(warnings) == 1
    assert warnings[0]["queue"] == "orders.expire" and warnings[0]["log_level"] == "warning"
    assert "POSTDATE_BACKEND=ladder" in warnings[0]["detail"]
    assert plugin.warn_long_delay("other.queue", timedelta(days=3))
    assert not plugin.warn_long_delay("other.queue", timedelta(days=3))


@pytest.mark.parametrize(
    ("setting", "answer", "chosen"),
    [
        (BackendName.LADDER, None, LADDER),
        (BackendName.PLUGIN, None, PLUGIN),
        (BackendName.PLUGIN, aiormq.exceptions.ConnectionCommandInvalid("x"), PLUGIN),
        (BackendName.AUTO, None, PLUGIN),
        (
            BackendName.AUTO,
            aiormq.exceptions.ConnectionCommandInvalid(
                "COMMAND_INVALID - unknown exchange type 'x-delayed-message'"
            ),
            LADDER,
        ),
        (BackendName.AUTO, aiormq.exceptions.ChannelAccessRefused("no configure"), LADDER),
        (BackendName.AUTO, TimeoutError(), LADDER),
    ],
)
def test_auto_picks_the_plugin_only_when_the_broker_took_the_exchange(
    setting: BackendName, answer: BaseException | None, chosen: object
) -> None:
    choice = decide(setting, answer)
    assert choice.backend is chosen
    assert choice.reason


def test_a_doubtful_answer_is_named_in_the_reason() -> None:
    choice = decide(BackendName.AUTO, aiormq.exceptions.ChannelAccessRefused("no configure"))
    assert "could not tell" in choice.reason and "no configure" in choice.reason
    assert (
        "no delayed-message plugin"
        in decide(BackendName.AUTO, aiormq.exceptions.ConnectionCommandInvalid("x")).reason
    )


def test_the_probe_is_named_under_the_prefix() -> None:
    assert probe_name("p") == "p.delayed.probe"


def test_the_backend_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("POSTDATE_BACKEND", raising=False)
    assert Settings.load().backend is BackendName.LADDER
    monkeypatch.setenv("POSTDATE_BACKEND", "auto")
    assert Settings.load().backend is BackendName.AUTO
    monkeypatch.setenv("POSTDATE_BACKEND", "delayed")
    with pytest.raises(ConfigError, match="backend='delayed'"):
        Settings.load()


def test_topology_show_and_export_include_the_plugin_exchange_only_with_the_plugin() -> None:
    """`postdate topology show/export` with POSTDATE_BACKEND=plugin: P.delayed and one
    binding on it per command queue of the app; the ladder's topology otherwise."""
    spec = "consumers.expire_reservation:app"
    plugin = topology_of(Settings.load(prefix="p", backend="plugin"), spec)
    ladder = topology_of(Settings.load(prefix="p"), spec)
    assert [
        e.name for e in plugin.exchanges if e.name not in {x.name for x in ladder.exchanges}
    ] == ["p.delayed"]
    on_delayed = [b for b in plugin.bindings if b.source == "p.delayed"]
    assert [b.destination for b in on_delayed] == sorted(load_app(spec).queues())
    assert not [b for b in ladder.bindings if b.source == "p.delayed"]

"""The ladder topology as values, and a simulated walk of messages through its bindings."""

from __future__ import annotations

import random
import re
from collections import defaultdict
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from postdate.broker._declare import to_definitions
from postdate.broker._topology import (
    PARKING_DELIVERY_LIMIT,
    BindingSpec,
    ExchangeType,
    Names,
    Topology,
    command_queue_topology,
    ladder_topology,
)
from postdate.delay import _ladder as ladder
from postdate.delay._plugin import plugin_key, plugin_topology
from postdate.delay._routing import route

PREFIXES = ["postdate", "a.b-c.d_e.f9"]  # one word, and the longest allowed: 4 words


def topic_regex(pattern: str) -> re.Pattern[str]:
    """A regex equivalent to an AMQP topic binding pattern, matched against ``"." + key``.

    ``*`` is exactly one word, ``#`` zero or more words.
    """
    parts = []
    for word in pattern.split("."):
        if word == "*":
            parts.append(r"\.[^.]*")
        elif word == "#":
            parts.append(r"(?:\.[^.]*)*")
        else:
            parts.append(r"\." + re.escape(word))
    return re.compile("".join(parts))


def topic_matches(pattern: str, key: str) -> bool:
    return topic_regex(pattern).fullmatch("." + key) is not None


@pytest.mark.parametrize(
    ("pattern", "key", "expected"),
    [
        ("a.b", "a.b", True),
        ("a.*", "a.b", True),
        ("a.*", "a", False),
        ("a.*", "a.b.c", False),
        ("a.#", "a", True),
        ("a.#", "a.b.c", True),
        ("#.b", "b", True),
        ("#.b", "a.b", True),
        ("#.b", "a.bb", False),
        ("*.b", "b", False),
        ("#", "anything.at.all", True),
        ("a.#.c", "a.c", True),
        ("a.#.c", "a.x.y.c", True),
    ],
)
def test_topic_matcher(pattern: str, key: str, expected: bool) -> None:
    assert topic_matches(pattern, key) is expected


@dataclass
class Broker:
    """Just enough of RabbitMQ's routing to walk a message through a topology."""

    topology: Topology
    routes: dict[str, list[tuple[re.Pattern[str], BindingSpec]]] = field(
        default_factory=lambda: defaultdict(list)
    )

    def __post_init__(self) -> None:
        for binding in self.topology.bindings:
            self.routes[binding.source].append((topic_regex(binding.routing_key), binding))
        self.exchanges = {spec.name: spec for spec in self.topology.exchanges}
        self.queues = {spec.name: spec for spec in self.topology.queues}

    def route(self, exchange: str, keys: list[str]) -> set[str]:
        """Queues a message published to ``exchange`` with ``keys`` (key + CC) lands in."""
        spec = self.exchanges[exchange]
        if spec.type is ExchangeType.FANOUT:
            matched = [binding for _, binding in self.routes[exchange]]
        else:
            matched = [
                binding
                for regex, binding in self.routes[exchange]
                if any(regex.fullmatch("." + key) for key in keys)
            ]
        queues: set[str] = set()
        for binding in matched:
            if binding.to_exchange:
                queues |= self.route(binding.destination, keys)
            else:
                queues.add(binding.destination)
        alternate = spec.arguments.get("alternate-exchange")
        if not queues and alternate:
            queues = self.route(alternate, keys)
        return queues


def walk(broker: Broker, prefix: str, seconds: int, queue: str) -> tuple[list[int], set[str]]:
    """Publish like the publisher does and let every ladder queue expire in turn.

    Returns the ladder levels visited, in order, and the queues finally delivered to.
    """
    names = Names(prefix)
    level_of = {names.delay_queue(level): level for level in range(ladder.LEVELS)}
    target = route(names, queue, seconds)
    keys = [target.routing_key, *target.cc]
    # The default exchange puts a message straight into the queue its key names.
    here = {target.routing_key} if target.exchange == "" else broker.route(target.exchange, keys)
    visited: list[int] = []
    while len(here) == 1 and (current := next(iter(here))) in level_of:
        visited.append(level_of[current])
        assert len(visited) <= ladder.LEVELS, f"{seconds} s loops: {visited}"
        arguments = broker.queues[current].arguments
        # No x-dead-letter-routing-key: dead-lettering keeps the original key and the CC.
        assert "x-dead-letter-routing-key" not in arguments
        here = broker.route(arguments["x-dead-letter-exchange"], keys)
    return visited, here


def broker_for(prefix: str) -> Broker:
    return Broker(
        ladder_topology(prefix)
        + command_queue_topology(prefix, "a.b")
        + command_queue_topology(prefix, "b")
    )


_BROKER = broker_for("postdate")


def sample_delays() -> list[int]:
    rng = random.Random(20240511)
    edges = {ladder.MAX_DELAY_SECONDS}
    for bit in range(ladder.LEVELS):
        edges |= {2**bit - 1, 2**bit, 2**bit + 1}
    spread = {rng.randrange(ladder.MAX_DELAY_SECONDS + 1) for _ in range(300)}
    return sorted(set(range(1100)) | edges | spread)


@pytest.mark.parametrize("prefix", PREFIXES)
def test_walk_visits_levels_of_set_bits_then_delivers_to_exactly_its_queue(prefix: str) -> None:
    broker = broker_for(prefix)
    for seconds in sample_delays():
        for queue in ("a.b", "b"):
            visited, delivered = walk(broker, prefix, seconds, queue)
            assert visited == ladder.levels(seconds), f"{seconds} s to {queue}"
            assert delivered == {queue}, f"{seconds} s to {queue} ended in {delivered}"


@settings(max_examples=200, deadline=None)
@given(seconds=st.integers(0, ladder.MAX_DELAY_SECONDS), queue=st.sampled_from(["a.b", "b"]))
def test_walk_property(seconds: int, queue: str) -> None:
    visited, delivered = walk(_BROKER, "postdate", seconds, queue)
    assert visited == ladder.levels(seconds)
    assert delivered == {queue}


def test_hop_keys_name_each_hop_then_the_queue() -> None:
    assert ladder.hop_keys(1, "q") == ("~0>", "~>q")
    assert ladder.hop_keys(9, "a.b") == ("~3>0", "~0>", "~>a.b")
    assert ladder.hop_keys(7 * 86400, "q") == (
        "~19>16", "~16>13", "~13>12", "~12>11", "~11>9", "~9>7", "~7>", "~>q"
    )  # fmt: skip


@pytest.mark.parametrize("seconds", [0, 1, 5, 604_800, ladder.MAX_DELAY_SECONDS])
def test_command_whose_queue_is_gone_ends_in_unroutable(seconds: int) -> None:
    broker = Broker(ladder_topology("postdate") + command_queue_topology("postdate", "a.b"))
    visited, delivered = walk(broker, "postdate", seconds, "gone")
    assert visited == ladder.levels(seconds)
    assert delivered == {"postdate.unroutable"}


def test_deliver_key_is_exact_about_the_queue() -> None:
    bindings = (
        command_queue_topology("p", "a.b").bindings + command_queue_topology("p", "b").bindings
    )
    patterns = {binding.destination: binding.routing_key for binding in bindings}
    assert topic_matches(patterns["a.b"], ladder.deliver_key("a.b"))
    assert topic_matches(patterns["b"], ladder.deliver_key("b"))
    assert not topic_matches(patterns["b"], ladder.deliver_key("a.b"))
    assert not topic_matches(patterns["a.b"], ladder.deliver_key("b"))
    assert not topic_matches(patterns["b"], "postdate.delay.2")


def test_the_plugins_exchange_routes_its_key_into_exactly_its_queue() -> None:
    broker = Broker(plugin_topology("p", ("a.b", "b")))
    for queue in ("a.b", "b"):
        assert broker.route("p.delayed", [plugin_key(queue)]) == {queue}
    assert broker.route("p.delayed", [plugin_key("c")]) == set()


def test_ladder_queues() -> None:
    topology = ladder_topology("p")
    delay_queues = [spec for spec in topology.queues if ".delay." in spec.name]
    assert [spec.name for spec in delay_queues] == [f"p.delay.{level}" for level in range(28)]
    for level, spec in enumerate(delay_queues):
        assert spec.arguments == {
            "x-queue-type": "quorum",
            "x-message-ttl": 2**level * 1000,
            "x-dead-letter-exchange": f"p.after.{level}",
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
        }
    assert delay_queues[-1].arguments["x-message-ttl"] == 2**27 * 1000


def test_ladder_exchanges_and_unroutable() -> None:
    topology = ladder_topology("p")
    exchanges = {spec.name: spec for spec in topology.exchanges}
    assert set(exchanges) == {"p.deliver", "p.unroutable"} | {f"p.after.{n}" for n in range(28)}
    assert exchanges["p.deliver"].type is ExchangeType.TOPIC
    assert exchanges["p.deliver"].arguments == {"alternate-exchange": "p.unroutable"}
    assert exchanges["p.unroutable"].type is ExchangeType.FANOUT
    assert all(exchanges[f"p.after.{n}"].type is ExchangeType.TOPIC for n in range(28))
    queues = {spec.name: spec for spec in topology.queues}
    # nothing expires out of the catch-all, and operator reads never exhaust a limit
    assert queues["p.unroutable"].arguments == {
        "x-queue-type": "quorum",
        "x-delivery-limit": PARKING_DELIVERY_LIMIT,
    }
    assert "x-message-ttl" not in queues["p.unroutable"].arguments
    assert BindingSpec("p.unroutable", "p.unroutable", "") in topology.bindings


def test_ladder_bindings() -> None:
    topology = ladder_topology("p")
    by_source: dict[str, list[BindingSpec]] = defaultdict(list)
    for binding in topology.bindings:
        by_source[binding.source].append(binding)
    for level in range(28):
        # To each lower level and to the deliver exchange: one literal hop key each.
        bindings = by_source[f"p.after.{level}"]
        assert all(not {"*", "#"} & set(b.routing_key.split(".")) for b in bindings)
        assert {(b.destination, b.routing_key) for b in bindings} == {
            *((f"p.delay.{lower}", f"~{level}>{lower}") for lower in range(level)),
            ("p.deliver", f"~{level}>"),
        }
        assert len(bindings) == level + 1
        to_deliver = [b for b in bindings if b.to_exchange]
        assert [b.destination for b in to_deliver] == ["p.deliver"]
    assert len(topology.bindings) == 28 * 27 // 2 + 28 + 1


def test_names_are_unique_and_keys_fit() -> None:
    topology = ladder_topology("a.b-c.d_e.f9")
    names = [spec.name for spec in topology.queues]
    assert len(names) == len(set(names))
    assert all(len(b.routing_key.encode()) <= 255 for b in topology.bindings)


def test_command_queue_binding() -> None:
    topology = command_queue_topology("p", "orders.expire")
    assert topology.bindings == (BindingSpec("p.deliver", "orders.expire", "~>orders.expire"),)


def test_definitions_render_the_same_values() -> None:
    topology = ladder_topology("p") + command_queue_topology("p", "q")
    definitions = to_definitions(topology, vhost="v")
    assert len(definitions["queues"]) == len(topology.queues)
    assert len(definitions["exchanges"]) == len(topology.exchanges)
    assert len(definitions["bindings"]) == len(topology.bindings)
    rendered = {queue["name"]: queue for queue in definitions["queues"]}
    for spec in topology.queues:
        assert rendered[spec.name]["arguments"] == dict(spec.arguments)
        assert rendered[spec.name]["durable"] is True
        assert rendered[spec.name]["vhost"] == "v"
    kinds = {
        (b["source"], b["destination"]): b["destination_type"] for b in definitions["bindings"]
    }
    assert kinds[("p.after.3", "p.deliver")] == "exchange"
    assert kinds[("p.after.3", "p.delay.1")] == "queue"
    deliver = next(e for e in definitions["exchanges"] if e["name"] == "p.deliver")
    assert deliver["arguments"] == {"alternate-exchange": "p.unroutable"}
    assert deliver["type"] == "topic"


def test_poison_queue_keeps_everything() -> None:
    queues = {spec.name: spec for spec in command_queue_topology("p", "orders.expire").queues}
    assert queues["orders.expire.poison"].arguments == {
        "x-queue-type": "quorum",
        "x-delivery-limit": PARKING_DELIVERY_LIMIT,
    }

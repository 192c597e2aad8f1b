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
    command_queue_pattern,
    command_queue_topology,
    ladder_topology,
)
from postdate.delay import _ladder as ladder
from postdate.delay._routing import Route, route

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


def walk(
    broker: Broker, prefix: str, seconds: int, queue: str, target: Route | None = None
) -> tuple[list[int], set[str]]:
    """Publish like the publisher does (or to ``target``) and let every ladder queue
    expire in turn.

    Returns the ladder levels visited, in order, and the queues finally delivered to.
    """
    names = Names(prefix)
    level_of = {names.delay_queue(level): level for level in range(ladder.LEVELS)}
    target = target or route(names, queue, seconds)
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


def old_layout_route(names: Names, queue: str, seconds: int) -> Route:
    """How a command was published before the literal hop keys: one key of 28 bit words
    and the queue, in CC (or as the routing key into the deliver exchange)."""
    key = ladder.routing_key(seconds, queue)
    if seconds == 0:
        return Route(names.deliver, key)
    return Route("", names.delay_queue(seconds.bit_length() - 1), (key,))


@settings(max_examples=200, deadline=None)
@given(seconds=st.integers(0, ladder.MAX_DELAY_SECONDS), queue=st.sampled_from(["a.b", "b"]))
def test_commands_pending_in_the_old_layout_still_reach_exactly_their_queue(
    seconds: int, queue: str
) -> None:
    old = old_layout_route(Names("postdate"), queue, seconds)
    visited, delivered = walk(_BROKER, "postdate", seconds, queue, target=old)
    assert visited == ladder.levels(seconds)
    assert delivered == {queue}


def test_keys_of_either_layout_never_match_the_other_layouts_bindings() -> None:
    bindings = broker_for("p").topology.bindings
    old_patterns = [topic_regex(b.routing_key) for b in bindings if "*" in b.routing_key]
    literal = {b.routing_key for b in bindings if "*" not in b.routing_key}
    for seconds in sample_delays():
        for key in ladder.hop_keys(seconds, "a.b"):
            assert not any(regex.fullmatch("." + key) for regex in old_patterns), key
        assert ladder.routing_key(seconds, "a.b") not in literal


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


def test_command_queue_pattern_is_exact_about_the_queue() -> None:
    key_ab = ladder.routing_key(7, "a.b")
    key_b = ladder.routing_key(7, "b")
    assert topic_matches(command_queue_pattern("a.b"), key_ab)
    assert topic_matches(command_queue_pattern("b"), key_b)
    assert not topic_matches(command_queue_pattern("b"), key_ab)
    assert not topic_matches(command_queue_pattern("a.b"), key_b)
    assert not topic_matches(command_queue_pattern("b"), "postdate.delay.2")


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
        everything = by_source[f"p.after.{level}"]
        # To each lower level and to the deliver exchange: one literal hop key each (the
        # current layout), one wildcard pattern each (the old layout, for what is pending).
        literal = [b for b in everything if not {"*", "#"} & set(b.routing_key.split("."))]
        assert {(b.destination, b.routing_key) for b in literal} == {
            *((f"p.delay.{lower}", f"~{level}>{lower}") for lower in range(level)),
            ("p.deliver", f"~{level}>"),
        }
        bindings = [b for b in everything if b not in literal]
        assert len(bindings) == level + 1
        assert {b.destination for b in bindings if not b.to_exchange} == {
            f"p.delay.{lower}" for lower in range(level)
        }
        to_deliver = [b for b in bindings if b.to_exchange]
        assert [b.destination for b in to_deliver] == ["p.deliver"]
        for binding in bindings:
            words = binding.routing_key.split(".")
            assert words[: 28 - level] == ["*"] * (28 - level)  # spent bits: any value
            assert words[-1] == "#"
    assert len(topology.bindings) == 2 * (28 * 27 // 2 + 28) + 1


def test_names_are_unique_and_keys_fit() -> None:
    topology = ladder_topology("a.b-c.d_e.f9")
    names = [spec.name for spec in topology.queues]
    assert len(names) == len(set(names))
    assert all(len(b.routing_key.encode()) <= 255 for b in topology.bindings)


def test_command_queue_binding() -> None:
    topology = command_queue_topology("p", "orders.expire")
    assert BindingSpec("p.deliver", "orders.expire", command_queue_pattern("orders.expire")) in (
        topology.bindings
    )
    assert command_queue_pattern("orders.expire") == ".".join(["*"] * 28) + ".orders.expire"


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

"""Merging a topology into an existing RabbitMQ definitions document."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from postdate.broker._declare import merge_definitions, to_definitions
from postdate.broker._topology import command_queue_topology, ladder_topology

ROOT = Path(__file__).resolve().parents[2]

USERS = [{"name": "guest", "password": "guest", "tags": ["administrator"]}]
VHOSTS = [{"name": "/"}, {"name": "billing"}]
PERMISSIONS = [{"user": "guest", "vhost": "/", "configure": ".*", "write": ".*", "read": ".*"}]
POLICIES = [{"vhost": "/", "name": "ha", "pattern": "^other\\.", "definition": {}}]


def queue(name: str, vhost: str = "/", **arguments: Any) -> dict[str, Any]:
    return {
        "name": name,
        "vhost": vhost,
        "durable": True,
        "auto_delete": False,
        "arguments": arguments,
    }


def binding(source: str, destination: str, key: str, vhost: str = "/") -> dict[str, Any]:
    return {
        "source": source,
        "vhost": vhost,
        "destination": destination,
        "destination_type": "queue",
        "routing_key": key,
        "arguments": {},
    }


def document(**entries: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "rabbit_version": "3.13.7",
        "users": USERS,
        "vhosts": VHOSTS,
        "permissions": PERMISSIONS,
        "policies": POLICIES,
        "parameters": [],
        "exchanges": [],
        "queues": [],
        "bindings": [],
        **entries,
    }


def test_everything_that_is_not_topology_is_kept() -> None:
    existing = document(
        queues=[queue("other.queue")], bindings=[binding("amq.direct", "other.queue", "k")]
    )
    topology = to_definitions(ladder_topology("postdate"))
    merged = merge_definitions(existing, topology)
    for key in ("rabbit_version", "users", "vhosts", "permissions", "policies", "parameters"):
        assert merged[key] == existing[key]
    assert merged["queues"][0] == queue("other.queue")
    assert merged["bindings"][0] == binding("amq.direct", "other.queue", "k")
    assert merged["queues"][1:] == topology["queues"]
    assert merged["exchanges"] == topology["exchanges"]
    assert merged["bindings"][1:] == topology["bindings"]


def test_an_entry_with_the_same_name_and_vhost_is_replaced_in_place() -> None:
    existing = document(
        queues=[
            queue("a"),
            queue("postdate.unroutable", **{"x-queue-type": "classic"}),
            queue("postdate.unroutable", vhost="billing"),  # another vhost: another queue
            queue("z"),
        ]
    )
    topology = to_definitions(ladder_topology("postdate"))
    merged = merge_definitions(existing, topology)
    names = [(entry["vhost"], entry["name"]) for entry in merged["queues"]]
    assert names[:4] == [
        ("/", "a"),
        ("/", "postdate.unroutable"),
        ("billing", "postdate.unroutable"),
        ("/", "z"),
    ]
    assert merged["queues"][1] == topology["queues"][0]  # the new arguments won
    assert merged["queues"][2] == queue("postdate.unroutable", vhost="billing")
    assert len(names) == len(set(names))


def test_bindings_are_identified_by_every_field() -> None:
    same = binding("postdate.deliver", "jobs", "k")
    other_key = binding("postdate.deliver", "jobs", "old-key")
    with_arguments = {**same, "arguments": {"x-match": "all"}}
    existing = document(bindings=[other_key, same, with_arguments])
    merged = merge_definitions(existing, {"bindings": [same, binding("x", "y", "")]})
    assert merged["bindings"] == [other_key, same, with_arguments, binding("x", "y", "")]


def test_duplicates_of_a_replaced_entry_are_dropped() -> None:
    existing = document(queues=[queue("q", old=1), queue("keep"), queue("q", old=2)])
    merged = merge_definitions(existing, {"queues": [queue("q", new=True)]})
    assert merged["queues"] == [queue("q", new=True), queue("keep")]


def test_merging_twice_changes_nothing_and_the_inputs_are_not_modified() -> None:
    topology = to_definitions(
        ladder_topology("shop") + command_queue_topology("shop", "shop.expire")
    )
    existing = document(queues=[queue("other")])
    before = copy.deepcopy(existing), copy.deepcopy(topology)
    once = merge_definitions(existing, topology)
    assert merge_definitions(once, topology) == once
    assert (existing, topology) == before


def test_a_file_without_topology_sections_gets_them() -> None:
    topology = to_definitions(ladder_topology("postdate"))
    merged = merge_definitions({"users": USERS}, topology)
    assert merged == {"users": USERS, **topology}


@pytest.mark.parametrize(
    ("existing", "problem"),
    [
        pytest.param([], "JSON array", id="array"),
        pytest.param("text", "JSON string", id="string"),
        pytest.param(None, "JSON null", id="null"),
        pytest.param({"queues": {}}, "'queues' is not an array of objects", id="queues-object"),
        pytest.param({"bindings": ["x"]}, "'bindings' is not an array", id="bindings-strings"),
    ],
)
def test_a_document_that_is_not_definitions_is_refused(existing: object, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        merge_definitions(existing, to_definitions(ladder_topology("postdate")))


def test_the_definitions_file_keeps_its_users_vhosts_and_permissions() -> None:
    shipped = json.loads((ROOT / "rabbit" / "definitions.json").read_text())
    merged = merge_definitions(shipped, to_definitions(ladder_topology("postdate")))
    for key in ("users", "vhosts", "permissions"):
        assert merged[key] == shipped[key]
    assert [q["name"] for q in merged["queues"]] == [q["name"] for q in shipped["queues"]]

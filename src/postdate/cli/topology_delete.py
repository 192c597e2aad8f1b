"""What `postdate topology delete` deletes and when it refuses: the app's queues or the
shared delay ladder, never while their queues hold messages or have consumers (unless
``--force``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from aio_pika.abc import AbstractConnection

from postdate._settings import Settings
from postdate.broker._declare import QueueState, delete_topology, existing_exchanges, queue_states
from postdate.broker._registry import unregister
from postdate.broker._topology import Topology, ladder_topology
from postdate.cli._errors import EXIT_FOUND_NOTHING, Failure
from postdate.cli.common import shared_topology, topology_of

EXIT_REFUSED = EXIT_FOUND_NOTHING  # delete refused: queues hold messages or have consumers
MAX_NAMED = 5  # queues named in a refusal; the rest are counted


def count(number: int, noun: str) -> str:
    """``1 queue``, ``3 queues``."""
    return f"{number} {noun}{'s' * (number != 1)}"


@dataclass(frozen=True)
class Part:
    """One thing ``delete`` was asked to delete: the app's queues, or the ladder."""

    label: str
    topology: Topology


def app_part(settings: Settings, spec: str) -> Part:
    """The app's own queues (command queues, retry tiers, poison queues): its topology
    without what every service shares (the ladder; the plugin's exchange)."""
    topology = topology_of(settings, spec)
    common = shared_topology(settings)
    shared = {queue.name for queue in common.queues} | {e.name for e in common.exchanges}
    return Part(
        f"the queues of {spec}",
        Topology(
            exchanges=tuple(e for e in topology.exchanges if e.name not in shared),
            queues=tuple(queue for queue in topology.queues if queue.name not in shared),
        ),
    )


def ladder_part(settings: Settings) -> Part:
    """The delay ladder of the prefix, with the deliver and unroutable exchanges and queue."""
    return Part(f"the delay ladder of prefix {settings.prefix!r}", ladder_topology(settings.prefix))


def refusal(part: Part, states: Mapping[str, QueueState | None]) -> str | None:
    """Why ``part`` must not be deleted without --force, or None: its queues hold
    messages, or consumers are attached (workers whose unacked deliveries are not counted)."""
    present = [
        (queue.name, state)
        for queue in part.topology.queues
        if (state := states.get(queue.name)) is not None
    ]
    held = {name: state.messages for name, state in present if state.messages}
    consumed = {name: state.consumers for name, state in present if state.consumers}
    reasons = []
    if held:
        total = count(sum(held.values()), "message")
        reasons.append(f"its queues still hold {total} ({_listed(held)})")
    if consumed:
        total = count(sum(consumed.values()), "consumer")
        reasons.append(f"{total} still attached, stop the workers first ({_listed(consumed)})")
    if not reasons:
        return None
    return f"refusing to delete {part.label}: {'; '.join(reasons)}; --force deletes anyway"


def _listed(counts: Mapping[str, int]) -> str:
    """``a: 3, b: 1``, largest first, at most MAX_NAMED queues named."""
    ranked = sorted(counts.items(), key=lambda item: -item[1])
    listed = ", ".join(f"{name}: {count}" for name, count in ranked[:MAX_NAMED])
    if len(ranked) > MAX_NAMED:
        listed += f" and {len(ranked) - MAX_NAMED} more queues"
    return listed


async def delete_parts(
    connection: AbstractConnection, prefix: str, parts: Sequence[Part], *, force: bool
) -> dict[str, Any]:
    """Delete the queues and exchanges of ``parts`` that exist, after checking (unless
    ``force``) that none of their queues holds a message or has a consumer; deleted
    command queues leave the registry (``status`` stops listing them).

    Raises:
        Failure: a queue holds messages or has consumers and ``force`` is false (nothing
            was deleted).
    """
    topology = sum((part.topology for part in parts), Topology())
    states = await queue_states(connection, [queue.name for queue in topology.queues])
    reasons = [] if force else [reason for part in parts if (reason := refusal(part, states))]
    if reasons:
        raise Failure("; ".join(reasons), EXIT_REFUSED)
    exchanges = await existing_exchanges(connection, [e.name for e in topology.exchanges])
    present = Topology(
        exchanges=tuple(e for e in topology.exchanges if e.name in exchanges),
        queues=tuple(queue for queue in topology.queues if states[queue.name] is not None),
    )
    deleted = await delete_topology(connection, present)
    await unregister(connection, prefix, [queue.name for queue in present.queues])
    return {
        "deleted": {
            "queues": deleted.queues,
            "exchanges": deleted.exchanges,
            "messages": deleted.messages,
        },
        "missing": {
            "queues": len(topology.queues) - len(present.queues),
            "exchanges": len(topology.exchanges) - len(present.exchanges),
        },
    }

"""The cluster tests' figures, as written to ``bench/results/cluster.json``.

The file::

    {
      "benchmark": "cluster",
      "measured_at": "2026-11-25T23:59:00+00:00",   # UTC, when the session ended
      "command": "make test-cluster",                 # what produced it
      "rabbitmq_version": "3.10.8",
      "host": {"cpus": 2, "memory_bytes": ..., "python": "3.11.2"},
      "setup": "...",                                 # the cluster and the clients, in words
      "scenarios": [Scenario.as_json(), ...]          # one per test, fields below
    }

Each scenario (:class:`Scenario`); "the kill" is the moment just before
``rabbit/cluster.sh kill`` ran (its signal follows within ~0.1 s):

``name``
    ``"ladder-level leader"`` (every ladder level's leader on the killed node, the command
    queue's elsewhere) or ``"command-queue leader"`` (the command queue's leader on the
    killed node, the ladder's elsewhere).
``killed``, ``how``
    The node killed (``rc2``) and how (``"kill -9"`` of its Erlang VM).
``leaders``
    Where the leaders were before the kill: ``{"ladder": node, "command_queue": node}``.
``sent``, ``confirmed``
    Commands sent, and confirmed by the broker (only these are owed).
``send_failures``
    Per steady sender (``"via_killed_node"``, ``"via_surviving_node"``, see
    ``publish_gap_s``): ``count`` of sends that raised a typed postdate error instead of
    returning, ``kinds`` (error class -> count, e.g. ``{"PublishNacked": 130}``), and
    ``first_s`` / ``last_s``, the first and last failure in seconds after the kill (null
    without any). The steady senders stop ``STEADY_AFTER_KILL`` (8 s) after the kill, so
    a ``last_s`` near 8 means failures went on until the end.
``handled``, ``lost``, ``duplicated``, ``early``
    Confirmed commands handled at least once by the end, confirmed commands never handled,
    extra deliveries, and deliveries before the due time.
``missing_while_down``
    Confirmed commands not handled while the killed node was still down, after waiting for
    all of them to come due plus 20 s; 0 unless the dead-lettering stalled.
``ready_while_down``
    Then, the run's queues holding ready messages (name without the run's prefix, e.g.
    ``"delay.2"`` or ``"tick"`` -> count by passive declare on a surviving node); empty
    when nothing was missing. Messages a stalled dead-lettering holds are not ready.
``outcome``
    ``"delivered"`` (every confirmed command handled with the node still down),
    ``"stalled until node returned"`` (some came only once the killed node was back:
    RabbitMQ 3.10's at-least-once dead-lettering stalls when the node that held both the
    expiring level and its target queue's leader dies) or ``"lost"`` (some never came).
``publish_gap_s``
    The pause a publisher saw: the longest time between two consecutive confirmed sends of
    one steady sender (one send after another, each awaiting its confirm) from 1 s before
    the kill on. ``"via_killed_node"``: a publisher connected (through a failover proxy)
    to the node killed, which reconnects to another; ``"via_surviving_node"``: one
    connected to a node that stayed up. ``"normal"``: the same measure over the second
    before the kill, for comparison.
``consume_gap_s``
    The pause the worker saw: the longest time between two consecutive handled commands
    from 1 s before the kill to 15 s after it, while commands came due continuously; the
    worker is connected through the proxy to the killed node. ``"normal"`` as above.
``late_beyond_kill_s``
    ``{"p50", "p99", "max"}`` of how late each command was handled beyond the later of its
    due time and the kill (commands due long after the kill count ~0).
``node_down_s``
    How long the killed node was down before the test started it again.
"""

from __future__ import annotations

import os
import platform
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

Outcome = Literal["delivered", "stalled until node returned", "lost"]
SCENARIOS = ("ladder-level leader", "command-queue leader")
SETUP = (
    "three RabbitMQ nodes (rabbit/cluster.sh) on one machine, rabbit/advanced.config "
    "(dead-letter confirm timeout 5 s); a worker and a steady publisher reach the cluster "
    "through a TCP failover proxy whose first choice is the node to be killed, a second "
    "steady publisher is connected to a surviving node; 2,000 commands with 2-20 s delays "
    "plus the steady publishers' (50 a second each, 0-6 s delays) come due through the "
    "kill; postdate's robust connections reconnect 1 s after a loss"
)


@dataclass
class Scenario:
    """One kill and what it did to the commands and to the clients (fields: module doc)."""

    name: str
    killed: str
    how: str
    leaders: dict[str, str]
    sent: int
    confirmed: int
    send_failures: dict[str, dict[str, object]]
    handled: int
    lost: int
    duplicated: int
    early: int
    missing_while_down: int
    ready_while_down: dict[str, int]
    outcome: Outcome
    publish_gap_s: dict[str, float]
    consume_gap_s: dict[str, float]
    late_beyond_kill_s: dict[str, float]
    node_down_s: float

    def line(self) -> str:
        """The scenario in one line, for the test's output."""
        return (
            f"{self.name} on {self.killed} killed: {self.outcome}; sent={self.sent} "
            f"confirmed={self.confirmed} handled={self.handled} lost={self.lost} "
            f"missing_while_down={self.missing_while_down} duplicated={self.duplicated} "
            f"early={self.early} send_failures={self.send_failures} "
            f"publish_gap={self.publish_gap_s} consume_gap={self.consume_gap_s} "
            f"late_beyond_kill={self.late_beyond_kill_s} node_down={self.node_down_s:.1f}s"
        )


@dataclass
class Results:
    """Every scenario of the session, and the broker's version as a client saw it."""

    scenarios: list[Scenario] = field(default_factory=list)
    rabbitmq_version: str = "unknown"

    def complete(self) -> bool:
        """Whether every scenario ran (only then is the file rewritten)."""
        return {scenario.name for scenario in self.scenarios} >= set(SCENARIOS)

    def as_json(self) -> dict[str, Any]:
        """The file's contents."""
        return {
            "benchmark": "cluster",
            "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "command": "make test-cluster",
            "rabbitmq_version": self.rabbitmq_version,
            "host": {
                "cpus": os.cpu_count(),
                "memory_bytes": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"),
                "python": platform.python_version(),
            },
            "setup": SETUP,
            "scenarios": [asdict(scenario) for scenario in self.scenarios],
        }

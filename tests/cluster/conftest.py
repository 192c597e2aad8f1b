"""Cluster tests run against a three-node RabbitMQ cluster of their own
(``rabbit/cluster.sh``: rc1, rc2, rc3 @localhost on ports 5691-5693), never the shared
broker: they kill its nodes.

``make test-cluster`` runs them; ``make test`` does not. The cluster is started fresh once
per session and stopped (its data deleted, unless ``KEEP_DATA=1``) at the end, also when
a test fails. The figures measured go to ``bench/results/cluster.json`` (see
:mod:`tests.cluster.results`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from bench.common import write_results

from postdate.observe._logs import configure_logging
from tests.cluster.results import Results

ROOT = Path(__file__).resolve().parents[2]
CLUSTER_SCRIPT = ROOT / "rabbit" / "cluster.sh"
NODE_SCRIPT = ROOT / "rabbit" / "node.sh"
RESULTS = Path(os.environ.get("CLUSTER_RESULTS", str(ROOT / "bench" / "results" / "cluster.json")))
NODES = ("rc1", "rc2", "rc3")


def cluster(*args: str, timeout: float = 180) -> str:
    """Run ``rabbit/cluster.sh ARGS``; its output (AssertionError on failure)."""
    return _run(CLUSTER_SCRIPT, *args, timeout=timeout)


def ctl(node: str, *args: str, timeout: float = 60) -> str:
    """``rabbitmqctl -n <node>@localhost ARGS``."""
    return _run(NODE_SCRIPT, "ctl", node, *args, timeout=timeout)


def _run(script: Path, *args: str, timeout: float) -> str:
    done = subprocess.run(
        [str(script), *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if done.returncode != 0:
        raise AssertionError(f"{script.name} {' '.join(args)} failed: {done.stderr or done.stdout}")
    return done.stdout


@dataclass(frozen=True)
class Cluster:
    """The running cluster: each node's AMQP URL and port."""

    ports: dict[str, int]

    def url(self, node: str) -> str:
        """``node``'s AMQP URL."""
        return f"amqp://guest:guest@127.0.0.1:{self.ports[node]}/"

    def leaders(self, prefix: str) -> dict[str, str]:
        """Queue name -> node name (``rc2``) of its leader, for the queues under ``prefix``,
        as a running node sees them (``rabbitmqctl list_queues name leader``)."""
        for node in NODES:
            try:
                listed = ctl(node, "list_queues", "name", "leader", "--no-table-headers")
            except AssertionError:
                continue  # that node is down
            leaders = {}
            for line in listed.splitlines():
                parts = line.split()
                if len(parts) == 2 and parts[0].startswith(prefix + "."):
                    leaders[parts[0]] = parts[1].split("@")[0]
            return leaders
        raise AssertionError("no cluster node answers")


@pytest.fixture(scope="session", autouse=True)
def quiet_workers() -> None:
    """Workers log each message at INFO, and each delivery a kill interrupted at WARNING;
    cluster tests print their counts instead."""
    configure_logging("ERROR")


@pytest.fixture(scope="session")
def rabbit_cluster() -> Iterator[Cluster]:
    """A fresh three-node cluster for this session, stopped and deleted afterwards."""
    if shutil.which("rabbitmq-server") is None or os.geteuid() != 0:
        message = (
            "cluster tests start three RabbitMQ nodes of their own: need rabbitmq-server and root"
        )
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    base = int(os.environ.get("CLUSTER_PORT", "5691"))
    try:
        cluster("start")  # stops and wipes what an interrupted run left first
        yield Cluster({node: base + offset for offset, node in enumerate(NODES)})
    finally:
        cluster("stop")


@pytest.fixture(scope="session")
def cluster_results() -> Iterator[Results]:
    """The figures each test adds; written to bench/results/cluster.json at the end when
    every scenario ran (a partial run leaves the file as it was)."""
    results = Results()
    yield results
    if results.complete():
        write_results(RESULTS, results.as_json())

"""Fault tests run against a RabbitMQ node of their own (``rabbit/node.sh``), never the
shared broker: they stop it, cut its connections and raise its alarms.

``make test-faults`` runs them; ``make test`` does not. The node is started once per
session with the project's ``rabbit/advanced.config`` (``POSTDATE_FAULT_ADVANCED`` names
another, for experiments) and stopped at the end.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from postdate.observe._logs import configure_logging

ROOT = Path(__file__).resolve().parents[2]
NODE_SCRIPT = ROOT / "rabbit" / "node.sh"
NODE_NAME = os.environ.get("POSTDATE_FAULT_NODE", "pdfault")
NODE_PORT = int(os.environ.get("POSTDATE_FAULT_PORT", "5682"))


def node(*args: str, timeout: float = 120) -> str:
    """Run ``rabbit/node.sh ARGS`` for the fault node; its output (AssertionError on failure)."""
    done = subprocess.run(
        [str(NODE_SCRIPT), *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if done.returncode != 0:
        raise AssertionError(f"node.sh {' '.join(args)} failed: {done.stderr or done.stdout}")
    return done.stdout


def ctl(*args: str, timeout: float = 120) -> str:
    """``rabbitmqctl -n <fault node> ARGS``."""
    return node("ctl", NODE_NAME, *args, timeout=timeout)


@pytest.fixture(scope="session", autouse=True)
def quiet_workers() -> None:
    """Workers log each message at INFO; fault tests print their counts instead."""
    configure_logging("WARNING")


@pytest.fixture(scope="session")
def fault_node() -> Iterator[str]:
    """The fault node's AMQP URL, started for this session with rabbit/advanced.config."""
    if shutil.which("rabbitmq-server") is None or os.geteuid() != 0:
        message = "fault tests start a RabbitMQ node of their own: need rabbitmq-server and root"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    node("stop", NODE_NAME)  # a node left over by an interrupted run
    advanced = os.environ.get("POSTDATE_FAULT_ADVANCED", str(ROOT / "rabbit" / "advanced.config"))
    node("start", NODE_NAME, str(NODE_PORT), advanced)
    try:
        yield f"amqp://guest:guest@127.0.0.1:{NODE_PORT}/"
    finally:
        node("stop", NODE_NAME)

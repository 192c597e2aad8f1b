"""Helpers the benchmarks share."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from aio_pika.abc import AbstractConnection


def server_version(connection: AbstractConnection) -> str:
    """The broker's version as it announced itself on ``connection``."""
    transport = connection.transport
    if transport is None:
        return "unknown"
    version = transport.connection.server_properties.get("version", "unknown")
    return version.decode() if isinstance(version, bytes) else str(version)


def write_results(path: Path, results: dict[str, Any]) -> None:
    """Write a benchmark's results as JSON (bench/results/...) and print them."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))

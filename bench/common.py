"""Helpers the benchmarks share."""

from __future__ import annotations

import json
import os
import platform
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


def percentiles(values: list[float], digits: int = 3) -> dict[str, float]:
    """The median, 99th percentile and maximum of ``values`` (nearest rank), rounded."""
    ordered = sorted(values)
    if not ordered:
        return {}

    def at(fraction: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(len(ordered) * fraction))], digits)

    return {"p50": at(0.5), "p99": at(0.99), "max": round(ordered[-1], digits)}


def host_info() -> dict[str, Any]:
    """The machine a benchmark ran on: CPUs, memory, Python, OS, and the load average when
    it started (the machine is shared: a loaded one gives lower, noisier rates)."""
    load = os.getloadavg()
    return {
        "cpus": os.cpu_count(),
        "memory_bytes": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"),
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
        "load_average_at_start": [round(value, 2) for value in load],
    }

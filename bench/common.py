"""Helpers the benchmarks share."""

from __future__ import annotations

from aio_pika.abc import AbstractConnection


def server_version(connection: AbstractConnection) -> str:
    """The broker's version as it announced itself on ``connection``."""
    transport = connection.transport
    if transport is None:
        return "unknown"
    version = transport.connection.server_properties.get("version", "unknown")
    return version.decode() if isinstance(version, bytes) else str(version)

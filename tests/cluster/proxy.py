"""A TCP failover proxy in front of the cluster, as a load balancer (HAProxy) would be:
postdate takes one broker URL, and its robust connections reconnect to that URL."""

from __future__ import annotations

import asyncio

from tests.faults.proxy import CuttingProxy


class FailoverProxy(CuttingProxy):
    """Forwards each new connection to the first of ``ports`` (on 127.0.0.1) that accepts
    one: while the first node is up every client is on it; once it is gone a reconnecting
    client lands on the next."""

    def __init__(self, ports: list[int]) -> None:
        super().__init__("127.0.0.1", ports[0])
        self.ports = ports

    async def _open_upstream(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        error: OSError = ConnectionRefusedError("no cluster node accepts connections")
        for port in self.ports:
            try:
                return await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 2.0)
            except OSError as exc:  # refused, or TimeoutError: a node that hangs
                error = exc
        raise error

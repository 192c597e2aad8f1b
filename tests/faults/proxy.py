"""A TCP proxy in front of the broker whose connections a test can cut, all at once."""

from __future__ import annotations

import asyncio
import contextlib


class CuttingProxy:
    """Forwards ``127.0.0.1:<port>`` to ``target``; :meth:`cut` aborts every connection
    passing through it (both sides), as a network failure would."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self.cuts = 0
        self._server: asyncio.Server | None = None
        self._links: set[asyncio.StreamWriter] = set()

    async def start(self) -> int:
        """Listen on a free port; returns it."""
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def _accept(
        self, client_reader: asyncio.StreamReader, client: asyncio.StreamWriter
    ) -> None:
        try:
            upstream_reader, upstream = await self._open_upstream()
        except OSError:
            client.transport.abort()
            return
        self._links |= {client, upstream}
        await asyncio.gather(
            self._pipe(client_reader, upstream), self._pipe(upstream_reader, client)
        )
        self._links -= {client, upstream}

    async def _open_upstream(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """The connection to the broker for one client (OSError when there is none)."""
        return await asyncio.open_connection(*self.target)

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while chunk := await reader.read(65536):
                writer.write(chunk)
                await writer.drain()
        writer.transport.abort()

    def cut(self) -> int:
        """Abort every connection through the proxy; returns how many sockets closed."""
        links = list(self._links)
        for writer in links:
            writer.transport.abort()
        self.cuts += 1
        return len(links)

    async def close(self) -> None:
        """Stop listening and close what is left (not counted as a cut)."""
        for writer in list(self._links):
            writer.transport.abort()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

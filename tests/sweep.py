"""Delete broker objects that killed test runs left behind: `python -m tests.sweep`
reads queue names, then (after a line ``--``) exchange names, from stdin.

A test deletes what it declared; a run killed mid-test cannot. Every leftover quorum
queue keeps file handles, and a broker out of handles stops accepting connections.
"""

from __future__ import annotations

import asyncio
import os
import sys

import aio_pika

from postdate._settings import DEFAULT_URL


async def sweep(queues: list[str], exchanges: list[str]) -> None:
    connection = await aio_pika.connect(os.environ.get("RABBITMQ_URL", DEFAULT_URL), timeout=10)
    async with connection:
        channel = await connection.channel()
        for queue in queues:
            await channel.queue_delete(queue)
        for exchange in exchanges:
            await channel.exchange_delete(exchange)
    print(f"swept {len(queues)} queues and {len(exchanges)} exchanges left by earlier runs")


def main() -> None:
    lines = [line.strip() for line in sys.stdin if line.strip()]
    split = lines.index("--") if "--" in lines else len(lines)
    asyncio.run(sweep(lines[:split], lines[split + 1 :]))


if __name__ == "__main__":
    main()

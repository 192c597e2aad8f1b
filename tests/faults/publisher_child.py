"""A publisher process for the kill -9 test: ``python -m tests.faults.publisher_child URL
PREFIX``. Sends chunks of commands with ``send_many`` forever, printing
``confirmed <id>`` for each command of a chunk once the broker confirmed the chunk."""

from __future__ import annotations

import asyncio
import sys
from datetime import timedelta

from postdate import Publisher, Settings
from tests.faults.harness import Tick
from tests.helpers import derive

CHUNK = 500


async def main(url: str, prefix: str) -> None:
    """Publish until killed."""
    tick = derive(Tick, f"{prefix}.tick")
    settings = Settings.load(prefix=prefix, rabbitmq_url=url)
    async with Publisher(settings=settings, connection_name=f"faults child {prefix}") as pub:
        n = 0
        print("ready", flush=True)
        while True:
            items = [(tick(n=n + i), timedelta(seconds=1 + i % 3)) for i in range(CHUNK)]
            n += CHUNK
            for message_id in await pub.send_many(items):
                sys.stdout.write(f"confirmed {message_id}\n")
            sys.stdout.flush()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))

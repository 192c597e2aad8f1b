"""`postdate status`: message and consumer counts of postdate's queues."""

from __future__ import annotations

import aiormq
import typer
from aio_pika.abc import AbstractRobustConnection

from postdate.cli.common import AppSpec, load_app, on_broker
from postdate.settings import Settings
from postdate.topology import Names, poison_queue, retry_queue


def status(spec: AppSpec = None) -> None:
    """Message and consumer counts of the ladder and (with MODULE:APP) the app's queues."""
    settings = Settings.load()
    names = Names(settings.prefix)
    queues = [names.delay_queue(level) for level in range(28)] + [names.unroutable]
    if spec is not None:
        consumer = load_app(spec)
        for queue in consumer.queues():
            queues.append(queue)
            queues.extend(retry_queue(queue, tier) for tier in consumer.tiers(queue))
            queues.append(poison_queue(queue))

    async def read(connection: AbstractRobustConnection) -> list[tuple[str, str, str]]:
        rows = []
        for name in queues:
            channel = await connection.channel()
            try:
                declared = await channel.declare_queue(name, passive=True)
                result = declared.declaration_result
                rows.append((name, str(result.message_count), str(result.consumer_count)))
            except aiormq.exceptions.ChannelNotFoundEntity:
                rows.append((name, "missing", "-"))
            finally:
                if not channel.is_closed:
                    await channel.close()
        return rows

    typer.echo(f"{'queue':<60} {'messages':>9} {'consumers':>9}")
    for name, messages, consumers in on_broker(settings, "status", read):
        typer.echo(f"{name:<60} {messages:>9} {consumers:>9}")

"""The demo, shrunk: it sets itself up, settles every reminder, checks its table against
the database, exits 0, and leaves no broker objects behind."""

from __future__ import annotations

import aiormq
import pytest
from aio_pika.abc import AbstractRobustConnection

from orders.demo import EXITED, REFUNDED, RETRIED, Demo, parse


async def test_demo_runs_green_and_cleans_up(
    rabbitmq: str,
    connection: AbstractRobustConnection,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RABBITMQ_URL", rabbitmq)
    demo = Demo(parse(["--orders", "8", "--hold", "2", "--fail-rate", "0.3", "--seed", "4"]))
    try:
        code = await demo.run()
    finally:
        await demo.close()
    out = capsys.readouterr().out
    assert code == 0, out
    assert "table matches the database" in out
    assert EXITED in out
    assert REFUNDED in out or RETRIED in out
    channel = await connection.channel()
    with pytest.raises(aiormq.exceptions.ChannelNotFoundEntity):
        await channel.declare_queue(demo.app.queues()[0], passive=True)

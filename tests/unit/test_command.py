"""Command subclasses: queue names are checked when the class is defined."""

from __future__ import annotations

import pydantic
import pytest

from postdate._command import MAX_QUEUE_LENGTH, Command, validate_queue_name
from postdate._errors import CommandDefinitionError


class Cancel(Command, queue="orders.cancel"):
    order: int


class CancelLater(Cancel):
    """Inherits the queue of its parent."""


def test_queue_and_type_name() -> None:
    assert Cancel.queue == "orders.cancel"
    assert Cancel.command_type == "Cancel"
    assert CancelLater.queue == "orders.cancel"
    assert CancelLater.command_type == "CancelLater"


def test_commands_are_frozen_and_strict() -> None:
    cancel = Cancel(order=1)
    with pytest.raises(pydantic.ValidationError):
        cancel.order = 2  # type: ignore[misc]
    with pytest.raises(pydantic.ValidationError):
        Cancel(order=1, extra=True)  # type: ignore[call-arg]


@pytest.mark.parametrize(
    "queue",
    [
        "",
        "orders..cancel",
        ".orders",
        "orders.",
        "orders.*",
        "orders.#",
        "orders cancel",
        "orders/cancel",
        "ördérs",
        "q" * (MAX_QUEUE_LENGTH + 1),
    ],
)
def test_bad_queue_name(queue: str) -> None:
    with pytest.raises(CommandDefinitionError, match="queue name"):

        class Bad(Command, queue=queue):
            n: int


def test_missing_queue() -> None:
    with pytest.raises(CommandDefinitionError, match="needs a queue"):

        class NoQueue(Command):
            n: int


@pytest.mark.parametrize("queue", ["q", "orders.expire_reservation", "a-b.C_9", "q" * 180])
def test_good_queue_names(queue: str) -> None:
    assert validate_queue_name(queue) == queue

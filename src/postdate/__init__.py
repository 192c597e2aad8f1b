"""postdate: send commands into the future on RabbitMQ."""

from postdate.command import Command
from postdate.consumer import Consumer
from postdate.context import Context
from postdate.errors import (
    BrokerUnavailable,
    ConfigError,
    DelayError,
    PostdateError,
    PublishError,
    TopologyMismatch,
)
from postdate.outcomes import Outcome, Retry, Skip
from postdate.publisher import Publisher
from postdate.retry import RetryPolicy
from postdate.settings import Settings
from postdate.worker import Worker, run

__all__ = [
    "BrokerUnavailable",
    "Command",
    "ConfigError",
    "Consumer",
    "Context",
    "DelayError",
    "Outcome",
    "PostdateError",
    "PublishError",
    "Publisher",
    "Retry",
    "RetryPolicy",
    "Settings",
    "Skip",
    "TopologyMismatch",
    "Worker",
    "run",
]

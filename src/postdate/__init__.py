"""postdate: send commands into the future on RabbitMQ."""

from postdate.command import Command
from postdate.consumer import Consumer
from postdate.context import Context
from postdate.errors import (
    BrokerUnavailable,
    CancelTooLate,
    CommandCancelled,
    CommandDefinitionError,
    ConfigError,
    DelayError,
    InvalidArgument,
    InvalidMessage,
    MetricsPortUnavailable,
    PostdateError,
    PublisherNotStarted,
    PublishError,
    PublishInterrupted,
    PublishNacked,
    PublishReturned,
    PublishTimeout,
    PublishUnencodable,
    QueueNotFound,
    ReadLockBusy,
    TopologyMismatch,
    UnknownCommand,
)
from postdate.outcomes import Outcome, Reason, Retry, Skip
from postdate.publisher import Publisher
from postdate.retry import RetryPolicy
from postdate.scheduling import When
from postdate.settings import Settings
from postdate.worker import Worker, run

__all__ = [
    "BrokerUnavailable",
    "CancelTooLate",
    "Command",
    "CommandCancelled",
    "CommandDefinitionError",
    "ConfigError",
    "Consumer",
    "Context",
    "DelayError",
    "InvalidArgument",
    "InvalidMessage",
    "MetricsPortUnavailable",
    "Outcome",
    "PostdateError",
    "PublishError",
    "PublishInterrupted",
    "PublishNacked",
    "PublishReturned",
    "PublishTimeout",
    "PublishUnencodable",
    "Publisher",
    "PublisherNotStarted",
    "QueueNotFound",
    "ReadLockBusy",
    "Reason",
    "Retry",
    "RetryPolicy",
    "Settings",
    "Skip",
    "TopologyMismatch",
    "UnknownCommand",
    "When",
    "Worker",
    "run",
]

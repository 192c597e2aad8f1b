"""postdate: send commands into the future on RabbitMQ."""

from postdate._command import Command
from postdate._errors import (
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
from postdate._outcomes import Outcome, Reason, Retry, Skip
from postdate._settings import Settings
from postdate._version import __version__ as __version__
from postdate.consume._consumer import Consumer
from postdate.consume._context import Context
from postdate.consume._retry import RetryPolicy
from postdate.consume._worker import Worker, run
from postdate.delay._routing import When
from postdate.publish._publisher import Publisher

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

"""postdate: send commands into the future on RabbitMQ."""

from postdate.command import Command
from postdate.errors import (
    BrokerUnavailable,
    ConfigError,
    DelayError,
    PostdateError,
    PublishError,
    TopologyMismatch,
)
from postdate.publisher import Publisher
from postdate.settings import Settings

__all__ = [
    "BrokerUnavailable",
    "Command",
    "ConfigError",
    "DelayError",
    "PostdateError",
    "PublishError",
    "Publisher",
    "Settings",
    "TopologyMismatch",
]

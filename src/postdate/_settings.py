"""Settings from the environment (pydantic-settings), validated at start-up."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Self

from pydantic import AliasChoices, AmqpDsn, Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from postdate._errors import ConfigError

PREFIX_PATTERN = r"^[A-Za-z][A-Za-z0-9_-]*(\.[A-Za-z][A-Za-z0-9_-]*){0,3}$"
DEFAULT_URL = "amqp://guest:guest@localhost:5672/"


class BackendName(StrEnum):
    """``POSTDATE_BACKEND``: how delayed commands travel (see :mod:`postdate.delay._backend`)."""

    LADDER = "ladder"  # TTL + dead-letter quorum queues: replicated, no plugin
    PLUGIN = "plugin"  # the delayed-message plugin's exchange: one copy on one node
    AUTO = "auto"  # the plugin when the broker has it, else the ladder


class Settings(BaseSettings):
    """Where the broker is and how postdate names and uses it.

    Read from ``RABBITMQ_URL`` and ``POSTDATE_*`` environment variables; build it with
    :meth:`load` to turn validation failures into one readable :class:`ConfigError`.
    """

    model_config = SettingsConfigDict(env_prefix="POSTDATE_", extra="ignore", frozen=True)

    rabbitmq_url: AmqpDsn = Field(
        default=AmqpDsn(DEFAULT_URL),
        validation_alias=AliasChoices("RABBITMQ_URL", "POSTDATE_RABBITMQ_URL", "rabbitmq_url"),
    )
    prefix: Annotated[str, Field(pattern=PREFIX_PATTERN, max_length=40)] = "postdate"
    publish_timeout: Annotated[float, Field(gt=0, le=3600)] = 30.0
    connect_attempts: Annotated[int, Field(ge=1, le=1000)] = 8
    connect_timeout: Annotated[float, Field(gt=0, le=600)] = 10.0
    # Deliveries held until due count against the prefetch like those being handled: a
    # worker sustains about prefetch / (LADDER_LEAD + 0.5 s) due commands per second, and
    # takes up to this many of a burst off the broker before they are due.
    prefetch: Annotated[int, Field(ge=1, le=65535)] = 10_000
    concurrency: Annotated[int, Field(ge=1, le=10000)] = 32
    grace_period: Annotated[float, Field(ge=0, le=3600)] = 20.0
    delivery_limit: Annotated[int, Field(ge=1, le=1000)] = 5
    metrics_port: Annotated[int | None, Field(ge=0, le=65535)] = None
    # The schedule store's database (the outbox's): workers check cancels and record
    # outcomes there. SQLAlchemy async URL, e.g. postgresql+asyncpg://host/db.
    schedule_url: Annotated[str | None, Field(min_length=1)] = None
    # How delayed commands travel; workers, the outbox relay and every publisher follow it.
    backend: BackendName = BackendName.LADDER

    @property
    def url(self) -> str:
        """The broker URL as a string."""
        return str(self.rabbitmq_url)

    @classmethod
    def load(cls, **overrides: object) -> Self:
        """Read the environment (plus ``overrides``) and validate.

        Raises:
            ConfigError: a value is invalid; the message names each bad setting.
        """
        try:
            return cls(**overrides)  # type: ignore[arg-type]
        except ValidationError as exc:
            raise ConfigError(_describe(exc)) from None


def _describe(exc: ValidationError) -> str:
    problems = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error["loc"]) or "settings"
        given = error.get("input")
        if isinstance(given, str) and "://" in given:
            given = _without_password(given)
        problems.append(f"{where}={given!r}: {error['msg']}")
    return "invalid postdate settings: " + "; ".join(problems)


def _without_password(url: str) -> str:
    scheme, _, rest = url.partition("://")
    credentials, at, host = rest.rpartition("@")
    if not at or ":" not in credentials:
        return url
    return f"{scheme}://{credentials.split(':', 1)[0]}:***@{host}"

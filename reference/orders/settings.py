"""The service's settings, from the environment."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Self

from pydantic import AliasChoices, Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from orders.commands import QUEUE
from orders.domain import DEFAULT_HOLD
from postdate import Settings

DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///./orders.db"


class OrdersSettings(BaseSettings):
    """``DATABASE_URL`` (SQLite by default, ``postgresql+asyncpg://...`` for PostgreSQL) and
    ``ORDERS_*``: hold period, expiry queue, and the payment gateway's failure knob."""

    model_config = SettingsConfigDict(env_prefix="ORDERS_", extra="ignore", frozen=True)

    database_url: str = Field(
        default=DEFAULT_DATABASE_URL,
        validation_alias=AliasChoices("DATABASE_URL", "ORDERS_DATABASE_URL", "database_url"),
    )
    hold_seconds: Annotated[float, Field(gt=0)] = DEFAULT_HOLD.total_seconds()
    expire_queue: str = QUEUE
    refund_fail_rate: Annotated[float, Field(ge=0, le=1)] = 0.0
    refund_fail_seed: int | None = None
    create_schema: bool = True

    @property
    def hold(self) -> timedelta:
        """The hold period, ``hold_seconds`` as a timedelta."""
        return timedelta(seconds=self.hold_seconds)

    def worker_settings(self, **overrides: object) -> Settings:
        """The worker's postdate settings: ``RABBITMQ_URL`` and ``POSTDATE_*``
        as usual, except that ``POSTDATE_SCHEDULE_URL`` defaults to ``DATABASE_URL``, so
        the worker honours the cancels pickups write and records every outcome in the
        orders database. Set ``POSTDATE_SCHEDULE_URL`` to use another database.

        Raises:
            ConfigError: a postdate setting is invalid.
        """
        settings = Settings.load(**overrides)
        if settings.schedule_url is None:
            settings = Settings.load(**{"schedule_url": self.database_url, **overrides})
        return settings

    @classmethod
    def load(cls, **overrides: object) -> Self:
        """Read the environment (plus ``overrides``) and validate.

        Raises:
            ValueError: a setting is invalid; the message names it.
        """
        try:
            return cls(**overrides)  # type: ignore[arg-type]
        except ValidationError as exc:
            raise ValueError(f"invalid orders settings: {exc}") from None

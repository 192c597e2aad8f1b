"""Settings: environment, defaults, and one readable ConfigError per bad value."""

from __future__ import annotations

import os

import pytest

from postdate._errors import ConfigError
from postdate._settings import DEFAULT_URL, Settings


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RABBITMQ_URL", raising=False)
    for name in list(os.environ):
        if name.startswith("POSTDATE_"):
            monkeypatch.delenv(name)


def test_defaults() -> None:
    settings = Settings.load()
    assert settings.url == DEFAULT_URL
    assert settings.prefix == "postdate"
    assert settings.publish_timeout > 0
    assert settings.connect_attempts >= 1


def test_rabbitmq_url_is_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RABBITMQ_URL", "amqps://user:secret@broker.example:5671/orders")
    monkeypatch.setenv("POSTDATE_PREFIX", "orders.postdate")
    monkeypatch.setenv("POSTDATE_PUBLISH_TIMEOUT", "2.5")
    settings = Settings.load()
    assert settings.url == "amqps://user:secret@broker.example:5671/orders"
    assert settings.prefix == "orders.postdate"
    assert settings.publish_timeout == 2.5


def test_overrides_win_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POSTDATE_PREFIX", "fromenv")
    assert Settings.load(prefix="given").prefix == "given"


@pytest.mark.parametrize(
    ("overrides", "named", "because"),
    [
        ({"rabbitmq_url": "http://localhost:5672/"}, "rabbitmq_url", "scheme"),
        ({"rabbitmq_url": "not a url"}, "rabbitmq_url", "URL"),
        ({"prefix": "1orders"}, "prefix", "pattern"),
        ({"prefix": "orders..x"}, "prefix", "pattern"),
        ({"prefix": "a.b.c.d.e"}, "prefix", "pattern"),  # at most four words
        ({"prefix": "orders.*"}, "prefix", "pattern"),
        ({"publish_timeout": -1}, "publish_timeout", "greater than 0"),
        ({"connect_timeout": 0}, "connect_timeout", "greater than 0"),
        ({"connect_attempts": 0}, "connect_attempts", "greater than or equal to 1"),
        ({"grace_period": -5}, "grace_period", "greater than or equal to 0"),
    ],
)
def test_invalid_values_raise_config_error_naming_the_setting(
    overrides: dict[str, object], named: str, because: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.load(**overrides)
    message = str(caught.value)
    assert message.startswith("invalid postdate settings: ")
    assert named in message
    assert because in message


def test_bad_environment_value_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RABBITMQ_URL", "http://localhost/")
    with pytest.raises(ConfigError, match="RABBITMQ_URL"):
        Settings.load()
    monkeypatch.setenv("RABBITMQ_URL", DEFAULT_URL)
    monkeypatch.setenv("POSTDATE_PUBLISH_TIMEOUT", "-3")
    with pytest.raises(ConfigError, match="publish_timeout"):
        Settings.load()


def test_every_problem_is_listed() -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.load(prefix="9", publish_timeout=-1)
    assert "prefix" in str(caught.value)
    assert "publish_timeout" in str(caught.value)


def test_config_error_hides_the_password_of_a_bad_url() -> None:
    with pytest.raises(ConfigError, match="rabbitmq_url") as caught:
        Settings.load(rabbitmq_url="http://app:s3cret@broker:5672/")
    assert "s3cret" not in str(caught.value)

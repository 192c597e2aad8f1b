"""The one error path of every `postdate` command: an error is one line on stderr,
``error: <what went wrong>``, and an exit code; never a traceback.

Exit code 2 (:data:`EXIT_ERROR`) is a postdate or usage error: bad settings or options,
the broker or database unreachable or refusing, an unknown queue. Exit code 1
(:data:`EXIT_FOUND_NOTHING`) is a command's own check that failed: no such message,
something waits for an operator, a refusal, a run that stopped early.

Every command is registered on a :class:`CliTyper`, which runs it inside
:func:`one_line_errors`; :func:`postdate.cli.main` uses :func:`describe` for whatever
escapes a command (a setting read by a callback).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NoReturn, TypeVar

import aiormq
import typer

from postdate._errors import PostdateError

F = TypeVar("F", bound=Callable[..., Any])

EXIT_FOUND_NOTHING = 1  # no such message; something waits (status); a run stopped early
EXIT_ERROR = 2  # bad usage or settings, broker unreachable, unknown queue


class Failure(Exception):
    """An error said as one line on stderr with exit code ``code`` (raise it, or call
    :func:`fail`)."""

    def __init__(self, message: str, code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.code = code


def fail(message: str, code: int = EXIT_ERROR) -> NoReturn:
    """End the command: ``error: message`` on one stderr line, exit code ``code``.

    Raises:
        Failure: always; the command's :func:`one_line_errors` says it.
    """
    raise Failure(message, code)


def one_line(text: str) -> str:
    """``text`` with every run of whitespace (newlines too) as one space."""
    return " ".join(text.split())


def describe(exc: BaseException) -> Failure | None:
    """``exc`` as the line and exit code a command ends with, or None when it is not an
    error postdate expects (a bug: it keeps its traceback)."""
    if isinstance(exc, Failure):
        return exc
    if isinstance(exc, typer.BadParameter):
        return Failure(exc.message)
    if isinstance(exc, PostdateError):
        return Failure(str(exc))
    if isinstance(exc, aiormq.exceptions.AMQPError):
        return Failure(f"the broker refused: {exc!r}")
    if isinstance(exc, ConnectionError | TimeoutError | aiormq.exceptions.ChannelInvalidStateError):
        return Failure(f"the connection to the broker was lost: {exc!r}")
    return None


def show(failure: Failure) -> None:
    """Print ``failure`` as ``error: ...`` on one stderr line."""
    typer.secho(f"error: {one_line(str(failure))}", err=True, fg=typer.colors.RED)


def say(failure: Failure) -> NoReturn:
    """Print ``failure`` (:func:`show`) and exit with its code.

    Raises:
        typer.Exit: always, with the failure's code.
    """
    show(failure)
    raise typer.Exit(failure.code)


@contextmanager
def one_line_errors() -> Iterator[None]:
    """Say every error postdate expects as one line and an exit code (:func:`describe`);
    anything else propagates with its traceback."""
    try:
        yield
    except Exception as exc:
        failure = describe(exc)
        if failure is None:
            raise
        say(failure)


def reported(command: F) -> F:
    """``command`` running inside :func:`one_line_errors` (typer sees its signature)."""

    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> Any:
        with one_line_errors():
            return command(*args, **kwargs)

    return run  # type: ignore[return-value]


class CliTyper(typer.Typer):
    """A :class:`typer.Typer` whose every command goes through :func:`one_line_errors`."""

    def command(self, *args: Any, **kwargs: Any) -> Callable[[F], F]:
        """Register a command as :meth:`typer.Typer.command` does, with one-line errors."""
        register = super().command(*args, **kwargs)

        def decorator(function: F) -> F:
            register(reported(function))
            return function

        return decorator

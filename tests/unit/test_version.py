"""The version: one string in postdate._version, in the installed metadata and the CLI."""

from __future__ import annotations

from importlib.metadata import version

from typer.testing import CliRunner

from postdate._version import __version__
from postdate.cli import app


def test_metadata_version_is_the_module_version() -> None:
    assert version("postdate") == __version__


def test_cli_prints_the_version() -> None:
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output == f"postdate {__version__}\n"


def test_cli_without_arguments_shows_help() -> None:
    result = CliRunner().invoke(app, [])
    assert "Usage" in result.output
    assert "--version" in result.output

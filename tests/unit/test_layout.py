"""The layout keeps its promises: small modules, no import circle, the same public
surface, and a layout page generated from the tree."""

from __future__ import annotations

from pathlib import Path

import postdate
from tests.layout import PACKAGE, cycles, import_graph, render

MAX_MODULE_LINES = 330
PUBLIC_NAMES = {
    "BrokerUnavailable", "CancelTooLate", "Command", "CommandCancelled",
    "CommandDefinitionError", "ConfigError", "Consumer", "Context", "DelayError",
    "InvalidArgument", "InvalidMessage", "MetricsPortUnavailable", "Outcome", "PostdateError",
    "PublishError", "PublishInterrupted", "PublishNacked", "PublishReturned", "PublishTimeout",
    "PublishUnencodable", "Publisher", "PublisherNotStarted", "QueueNotFound", "ReadLockBusy",
    "Reason", "Retry", "RetryPolicy", "Settings", "Skip", "TopologyMismatch", "UnknownCommand",
    "When", "Worker", "run",
}  # fmt: skip
LAYOUT_PAGE = Path(__file__).resolve().parents[2] / "docs" / "layout.md"


def test_no_module_is_over_the_line_limit() -> None:
    sizes = {
        str(path.relative_to(PACKAGE)): len(path.read_text().splitlines())
        for path in PACKAGE.rglob("*.py")
    }
    assert {name: n for name, n in sizes.items() if n > MAX_MODULE_LINES} == {}


def test_no_module_imports_itself_through_others() -> None:
    graph = import_graph()
    assert len(graph) > 50  # the walk found the package
    assert cycles(graph) == []


def test_the_public_surface_is_unchanged() -> None:
    assert set(postdate.__all__) == PUBLIC_NAMES
    assert all(hasattr(postdate, name) for name in postdate.__all__)


def test_the_layout_page_matches_the_tree() -> None:
    assert LAYOUT_PAGE.read_text() == render(), "regenerate: python -m tests.layout"

"""Every ```python block of docs/*.md runs, as written, against the broker.

Each block is written to ``example.py`` in a temporary directory (its working directory, so
a block's SQLite file lands there) and run by this Python in a subprocess, with
``RABBITMQ_URL`` from the environment and a ``POSTDATE_PREFIX`` of its own (``t`` + 10 hex
digits, like every test's, so CI's sweep finds what a killed run left). It must exit 0
within ``TIMEOUT`` seconds (``POSTDATE_DOCS_PYTHON`` names another interpreter to run
them). Afterwards the prefix's ladder, its registry and every command
queue registered under it (with its poison queue and retry tiers) are deleted.

An HTML comment on the line before a block changes how it runs:

- ``<!-- no-run -->``: not run (a config file's contents, a fragment of a larger program).
- ``<!-- worker -->``: a worker entrypoint that runs until signalled. It runs until its
  log says ``worker.started``, then gets SIGTERM and must exit 0.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import aio_pika
import pytest

from postdate.broker._declare import queue_exists
from postdate.broker._registry import registered, registry_queue
from postdate.broker._topology import DEFAULT_RETRY_TIERS, retry_queue
from tests.helpers import Cleanup, amqp_url

DOCS = Path(__file__).resolve().parents[2] / "docs"
# The interpreter that runs the blocks: this one, or (.ci/wheel-check) a venv outside the
# checkout with the built wheel installed, as a new user would have it.
PYTHON = os.environ.get("POSTDATE_DOCS_PYTHON") or sys.executable
TIMEOUT = 60.0
# Retry tiers the docs' examples declare besides the default ones (deleted after each block).
EXTRA_TIERS = (timedelta(seconds=1), timedelta(seconds=30), timedelta(minutes=5))
BLOCK = re.compile(
    r"(?:^<!--\s*(?P<marker>[a-z-]+)\s*-->\n)?^```python\n(?P<code>.*?)^```$", re.M | re.S
)
MARKERS = {"no-run", "worker"}


@dataclass(frozen=True)
class Example:
    """One ```python block: where it is, its marker (if any) and its code."""

    page: str
    line: int
    marker: str | None
    code: str

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}"


def examples() -> list[Example]:
    """Every ```python block of docs/*.md, in page and line order."""
    found = []
    for page in sorted(DOCS.glob("*.md")):
        text = page.read_text()
        for match in BLOCK.finditer(text):
            line = text.count("\n", 0, match.start("code"))  # the ```python line, 1-based
            marker = match.group("marker")
            if marker is not None and marker not in MARKERS:
                raise AssertionError(f"{page.name}:{line}: unknown marker <!-- {marker} -->")
            found.append(Example(page.name, line, marker, match.group("code")))
    return found


EXAMPLES = examples()


def test_docs_have_runnable_examples() -> None:
    runnable = [example for example in EXAMPLES if example.marker != "no-run"]
    assert len(runnable) >= 10, [example.id for example in EXAMPLES]


def _environment(url: str, prefix: str) -> dict[str, str]:
    """This process's environment without postdate's settings, plus the block's own."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("POSTDATE_") and name not in ("DATABASE_URL", "PYTHONPATH")
    }
    env.update(
        RABBITMQ_URL=url, POSTDATE_PREFIX=prefix, POSTDATE_CONNECT_ATTEMPTS="3", COLUMNS="100"
    )
    return env


async def _run(example: Example, workdir: Path, env: dict[str, str]) -> tuple[int, str]:
    """Run the block; its exit code and its output (stdout and stderr together)."""
    script = workdir / "example.py"
    script.write_text(example.code)
    process = await asyncio.create_subprocess_exec(
        PYTHON,
        str(script),
        cwd=workdir,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    assert process.stdout is not None
    output: list[str] = []
    deadline = time.monotonic() + TIMEOUT
    signalled = False
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            line = (await asyncio.wait_for(process.stdout.readline(), left)).decode()
            if not line:
                break
            output.append(line)
            if example.marker == "worker" and not signalled and "worker.started" in line:
                process.send_signal(signal.SIGTERM)
                signalled = True
        code = await asyncio.wait_for(process.wait(), max(deadline - time.monotonic(), 1))
    except TimeoutError:
        process.kill()
        await process.wait()
        raise AssertionError(
            f"{example.id} did not finish within {TIMEOUT} s:\n{''.join(output)}"
        ) from None
    if example.marker == "worker" and not signalled:
        raise AssertionError(f"{example.id}: no worker.started line:\n{''.join(output)}")
    return code, "".join(output)


async def _track_retry_tiers(cleanup: Cleanup, url: str, prefix: str) -> None:
    """Add the retry tiers of every command queue registered under ``prefix`` to cleanup
    (it finds the queues and their poison queues itself)."""
    connection = await aio_pika.connect(amqp_url(f"docs {prefix} tiers", url))
    try:
        if not await queue_exists(connection, registry_queue(prefix)):
            return
        for queue in await registered(connection, prefix):
            for tier in (*DEFAULT_RETRY_TIERS, *EXTRA_TIERS):
                cleanup.track_queue(retry_queue(queue, tier))
    finally:
        await connection.close()


@pytest.mark.parametrize(
    "example",
    [
        pytest.param(
            example,
            id=example.id,
            marks=[pytest.mark.skip(reason="marked <!-- no-run -->")]
            if example.marker == "no-run"
            else [],
        )
        for example in EXAMPLES
    ],
)
async def test_doc_example_runs(
    example: Example, rabbitmq: str, prefix: str, cleanup: Cleanup, tmp_path: Path
) -> None:
    try:
        code, output = await _run(example, tmp_path, _environment(rabbitmq, prefix))
    finally:
        await _track_retry_tiers(cleanup, rabbitmq, prefix)
    assert code == 0, f"{example.id} exited {code}:\n{output}"

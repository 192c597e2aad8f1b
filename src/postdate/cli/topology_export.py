"""`postdate topology export --output FILE`: merge the topology into a RabbitMQ definitions
file (or create it), atomically, keeping its users, vhosts and the rest."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from postdate.broker._declare import merge_definitions
from postdate.cli._errors import Failure

KINDS = ("exchanges", "queues", "bindings")


def export_into(path: Path, definitions: Mapping[str, Any]) -> str | None:
    """Merge ``definitions`` into the definitions file at ``path`` (or create it), atomically.

    Returns:
        What was kept of the file besides the topology, e.g. ``1 users, 1 vhosts`` (empty
        when nothing else was in it); None for a new file.

    Raises:
        Failure: the file cannot be read or written, or is no definitions document; it is
            left untouched.
    """
    target = path.resolve()
    if not target.exists():
        _write_atomically(target, definitions)
        return None
    try:
        existing = json.loads(target.read_text())
        merged = merge_definitions(existing, definitions)
    except OSError as exc:
        raise Failure(f"cannot read {path}: {exc.strerror or exc}") from None
    except json.JSONDecodeError as exc:
        raise Failure(f"{path} is not valid JSON ({exc}); left it untouched") from None
    except ValueError as exc:
        raise Failure(f"{path} {exc}; left it untouched") from None
    _write_atomically(target, merged)
    return ", ".join(
        f"{len(value)} {key}"
        for key, value in merged.items()
        if key not in KINDS and isinstance(value, list)
    )


def _write_atomically(target: Path, document: Mapping[str, Any]) -> None:
    """Write ``document`` to a temporary file next to ``target``, then rename it over
    ``target``: a reader (or a crash) never sees half a file. Keeps ``target``'s mode."""
    try:
        descriptor, temporary = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    except OSError as exc:
        raise Failure(f"cannot write {target}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(descriptor, "w") as file:
            file.write(json.dumps(document, indent=2) + "\n")
        os.chmod(temporary, target.stat().st_mode & 0o7777 if target.exists() else 0o644)
        os.replace(temporary, target)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise Failure(f"cannot write {target}: {exc.strerror or exc}") from None

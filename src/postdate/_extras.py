"""Optional dependencies: one line naming the extra to install when one is missing."""

from __future__ import annotations

import importlib.util


def require(module: str, part: str, extra: str) -> None:
    """Make sure ``module`` can be imported for ``part`` of postdate.

    Raises:
        ModuleNotFoundError: it cannot; the message says ``pip install 'postdate[<extra>]'``.
    """
    if importlib.util.find_spec(module) is None:
        raise ModuleNotFoundError(
            f"{part} needs {module}, which is not installed: pip install 'postdate[{extra}]'",
            name=module,
        )

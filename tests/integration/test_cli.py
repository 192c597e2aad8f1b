"""The `postdate` command line, run as a user runs it (a subprocess)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from postdate import Settings
from postdate.topology import poison_queue

ROOT = Path(__file__).resolve().parents[2]
POSTDATE = str(Path(sys.executable).parent / "postdate")


def postdate(settings: Settings | None, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "PYTHONPATH": str(ROOT), **env}
    if settings is not None:
        environment |= {"RABBITMQ_URL": settings.url, "POSTDATE_PREFIX": settings.prefix}
    return subprocess.run(
        [POSTDATE, *args], cwd=ROOT, env=environment, capture_output=True, text=True, timeout=120
    )


def test_topology_show_and_export_need_no_broker(tmp_path: Path) -> None:
    shown = postdate(None, "topology", "show", POSTDATE_PREFIX="shop")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.count("queue    shop.delay.") == 28
    exported = tmp_path / "definitions.json"
    result = postdate(None, "topology", "export", "--output", str(exported), POSTDATE_PREFIX="shop")
    assert result.returncode == 0, result.stderr
    definitions = json.loads(exported.read_text())
    assert {"shop.deliver", "shop.unroutable"} <= {e["name"] for e in definitions["exchanges"]}


def test_bad_setting_is_one_line_naming_it_and_exit_code_2() -> None:
    result = postdate(None, "topology", "show", POSTDATE_PREFIX="1-not-a-prefix")
    assert result.returncode == 2
    assert "prefix" in result.stderr
    assert "Traceback" not in result.stderr


def test_declare_status_and_delete_an_apps_topology(settings: Settings) -> None:
    app = "tests.integration.worker_app:app"
    env = {"TEST_QUEUE": f"{settings.prefix}.jobs"}
    try:
        declared = postdate(settings, "topology", "declare", app, **env)
        assert declared.returncode == 0, declared.stderr
        status = postdate(settings, "status", app, **env)
        assert status.returncode == 0, status.stderr
        rows = {line.split()[0]: line.split()[1:] for line in status.stdout.splitlines()[1:]}
        assert rows[f"{settings.prefix}.delay.27"] == ["0", "0"]
        assert rows[poison_queue(f"{settings.prefix}.jobs")] == ["0", "0"]
        listed = postdate(settings, "poison", "list", f"{settings.prefix}.jobs", **env)
        assert listed.returncode == 0, listed.stderr
        assert "0 parked" in listed.stdout
    finally:
        deleted = postdate(settings, "topology", "delete", app, "--yes", **env)
    assert deleted.returncode == 0, deleted.stderr
    status = postdate(settings, "status", app, **env)
    assert f"{settings.prefix}.delay.0" in status.stdout
    assert "missing" in status.stdout

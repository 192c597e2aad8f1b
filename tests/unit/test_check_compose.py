""".ci/check-compose: the shipped stack passes; a missing or .dockerignore'd COPY source, a
missing build context or mounted file, a non-executable CMD program are reported."""

from __future__ import annotations

import importlib.machinery
import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _load() -> ModuleType:
    path = ROOT / ".ci" / "check-compose"
    loader = importlib.machinery.SourceFileLoader("check_compose", str(path))
    spec = importlib.util.spec_from_loader("check_compose", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


check = _load()


def test_the_shipped_stack_references_only_present_files() -> None:
    problems, urls = check.check_compose(ROOT / "docker-compose.yml")
    assert problems == []
    assert urls == [
        "https://github.com/rabbitmq/rabbitmq-delayed-message-exchange/releases/download/"
        "v3.13.0/rabbitmq_delayed_message_exchange-3.13.0.ez"
    ]


def _stack(tmp_path: Path, dockerfile: str, ignore: str = "", compose: str = "") -> Path:
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "run.sh").write_text("#!/bin/sh\n")
    (tmp_path / "app" / "run.sh").chmod(0o755)
    (tmp_path / "app" / "conf").mkdir()
    (tmp_path / "app" / "conf" / "a.conf").write_text("")
    (tmp_path / "app" / "Dockerfile").write_text(dockerfile)
    (tmp_path / "app" / ".dockerignore").write_text(ignore)
    path = tmp_path / "docker-compose.yml"
    path.write_text(compose or "services:\n  app:\n    build: ./app\n")
    return path


def test_present_sources_pass(tmp_path: Path) -> None:
    compose = _stack(
        tmp_path,
        "FROM x:1\nCOPY --chown=a:b conf/ \\\n  /etc/conf/\nCOPY --from=build /x /y\n"
        'ADD https://example.org/p.ez /p/\nCMD ["./run.sh"]\n',
        ignore="*\n!conf/\n!run.sh\n",
    )
    assert check.check_compose(compose) == ([], ["https://example.org/p.ez"])


@pytest.mark.parametrize(
    ("dockerfile", "ignore", "expected"),
    [
        ("FROM x:1\nCOPY missing.txt /x\n", "", "COPY missing.txt: not found"),
        ('FROM x:1\nCOPY ["conf/*.ini", "/x/"]\n', "", "COPY conf/*.ini: not found"),
        ("FROM x:1\nCOPY conf /x\n", "*\n!run.sh\n", "COPY conf: excluded by .dockerignore"),
        ("FROM x:1\nCOPY conf /x\n", "**/*.conf\n", "COPY conf: excluded by .dockerignore"),
        ('FROM x:1\nCMD ["bin/start"]\n', "", "CMD bin/start: not found"),
    ],
)
def test_missing_sources_are_reported(
    tmp_path: Path, dockerfile: str, ignore: str, expected: str
) -> None:
    problems, _ = check.check_compose(_stack(tmp_path, dockerfile, ignore))
    assert len(problems) == 1
    assert expected in problems[0]


def test_a_cmd_program_must_be_executable(tmp_path: Path) -> None:
    compose = _stack(tmp_path, 'FROM x:1\nCMD ["./run.sh"]\n')
    (tmp_path / "app" / "run.sh").chmod(0o644)
    problems, _ = check.check_compose(compose)
    assert problems == [f"{tmp_path / 'app' / 'Dockerfile'}: CMD ./run.sh: not executable"]


def test_compose_references_are_checked(tmp_path: Path) -> None:
    compose = _stack(
        tmp_path,
        "FROM x:1\n",
        compose=(
            "services:\n"
            "  a:\n    build: {context: ./nowhere}\n"
            "  b:\n    build: {context: ./app, dockerfile: Other.Dockerfile}\n"
            "  c:\n    image: x:1\n    env_file: [.env]\n"
            "    volumes: ['./gone.conf:/etc/x.conf', 'data:/var/lib/x', './app:/app']\n"
            "configs:\n  cfg: {file: ./cfg.yml}\n"
        ),
    )
    problems, _ = check.check_compose(compose)
    assert problems == [
        "a: build context ./nowhere not found",
        f"b: {tmp_path / 'app' / 'Other.Dockerfile'} not found",
        "c: mounted ./gone.conf not found",
        "c: env_file .env not found",
        "configs.cfg: ./cfg.yml not found",
    ]


@pytest.mark.parametrize(
    ("ignore", "path", "excluded"),
    [
        ("*\n!src/\n", "src/postdate/x.py", False),
        ("*\n!src/\n", "tests/unit/x.py", True),
        ("*\n!src/\n**/__pycache__\n", "src/postdate/__pycache__/x.pyc", True),
        ("**/*.pyc\n", "a.pyc", True),
        ("/build\n", "build/lib/x.py", True),
        ("# comment\n\n", "anything", False),
        ("docs/?.md\n", "docs/a.md", True),
        ("docs/?.md\n", "docs/ab.md", False),
    ],
)
def test_dockerignore_semantics(ignore: str, path: str, excluded: bool) -> None:
    assert check.DockerIgnore(ignore.splitlines()).excluded(path) is excluded

"""Plain helpers shared by test modules (fixtures live in conftest.py)."""

from __future__ import annotations

import importlib
import logging
import os
import re
import shutil
import socket
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import NoReturn, TypeVar

import pytest

from anomaly.io import Chunk, TableReader, join_chunks

T = TypeVar("T")

REPO_ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO_ROOT / "deploy" / "container" / "Dockerfile"


def in_ci() -> bool:
    """CI=true: every test must run, none may skip for want of a tool or data."""
    return os.environ.get("CI", "").strip().lower() in {"true", "1", "yes"}


def unavailable(reason: str) -> NoReturn:
    """Skip the test for want of ``reason`` (a broker, a tool, the shared data); under
    CI=true that is a failure, so CI never goes green without having run it."""
    if in_ci():
        pytest.fail(f"{reason} (CI=true, so this is a failure)", pytrace=False)
    pytest.skip(reason)


def required_module(name: str, extra: str) -> ModuleType:
    """Module ``name``, or ``unavailable`` naming the package extra that installs it."""
    try:
        return importlib.import_module(name)
    except ImportError:
        unavailable(f"{name} is not installed (pip install -e '.[{extra}]')")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(condition: Callable[[], T], deadline_s: float, what: str, poll_s: float = 0.1) -> T:
    """Call ``condition`` every ``poll_s`` seconds until it returns something truthy, and
    return that; fail the test after ``deadline_s`` seconds, naming ``what`` it waited for."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(poll_s)
    raise AssertionError(f"timed out after {deadline_s} s waiting for {what}")


class LogLines(logging.Handler):
    """Keeps the message of every record it receives, in ``lines``."""

    def __init__(self, level: int = logging.DEBUG):
        super().__init__(level)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())

    def count(self, event: str) -> int:
        """How many lines are the service's ``event=<event> ...``."""
        return sum(line.startswith(f"event={event} ") for line in self.lines)


def dockerfile_sources() -> list[str]:
    """The paths the image's build stage copies before it installs the package."""
    sources = []
    for line in DOCKERFILE.read_text().splitlines():
        if line.startswith("RUN") and "pip install" in line:
            return sources
        if re.match(r"COPY\s", line) and "--from" not in line:
            sources.extend(line.split()[1:-1])
    raise AssertionError("the Dockerfile has no `pip install` step")


def copy_package_sources(destination: Path) -> Path:
    """A clean copy of what ``pip install .`` builds from (the Dockerfile's sources) in
    ``destination``: no stale build/ of the checkout can leak into it, and building it writes
    nothing into the checkout, where tests running beside it import the package."""
    destination.mkdir()
    skip = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in dockerfile_sources():
        path = REPO_ROOT / name.rstrip("/")
        if path.is_dir():
            shutil.copytree(path, destination / path.name, ignore=skip)
        else:
            shutil.copy2(path, destination / path.name)
    return destination


def read_all(path: str | os.PathLike[str], **options) -> Chunk:
    """The whole file as one chunk; ``options`` are ``TableReader``'s."""
    return join_chunks(TableReader(path, **options))

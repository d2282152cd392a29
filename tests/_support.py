"""Plain helpers shared by test modules (fixtures live in conftest.py)."""

from __future__ import annotations

import importlib
import logging
import os
import socket
import time
from collections.abc import Callable
from types import ModuleType
from typing import NoReturn, TypeVar

import pytest

T = TypeVar("T")


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

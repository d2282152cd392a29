"""What ``pip install .`` and the container image ship: the wheel built from exactly what
``deploy/container/Dockerfile`` copies holds the library and the product's entry points
(``pipelines.cli``, ``pipelines.demo``), and none of the benchmark harness, which stays in the
repository (``pipelines/benchmark.py``, ``pipelines/bench/``, ``bench_*.py``, ``soak.py``)."""

from __future__ import annotations

import ast
import configparser
import re
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests._support import unavailable

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "deploy" / "container" / "Dockerfile"
PRODUCT_MODULES = {"pipelines/__init__.py", "pipelines/cli.py", "pipelines/demo.py"}


def _dockerfile_sources() -> list[str]:
    """The paths the image's build stage copies before ``pip install .``."""
    sources = []
    for line in DOCKERFILE.read_text().splitlines():
        if line.startswith("RUN") and "pip install ." in line:
            return sources
        if re.match(r"COPY\s", line) and "--from" not in line:
            sources.extend(line.split()[1:-1])
    raise AssertionError("the Dockerfile has no `pip install .` step")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Iterator[zipfile.ZipFile]:
    try:
        import setuptools  # noqa: F401  (the build backend, used without build isolation)
    except ImportError:
        unavailable("setuptools is not installed in this environment")
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"  # a clean copy: no stale build/ of the checkout can leak into the wheel
    src.mkdir()
    skip = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in _dockerfile_sources():
        path = ROOT / name.rstrip("/")
        if path.is_dir():
            shutil.copytree(path, src / path.name, ignore=skip)
        else:
            shutil.copy2(path, src / path.name)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "-q",
            "-w",
            str(tmp / "dist"),
            str(src),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    (path,) = (tmp / "dist").glob("anomaly_gan-*.whl")
    with zipfile.ZipFile(path) as archive:
        yield archive


def test_the_wheel_holds_the_library_and_only_the_products_entry_points(wheel):
    names = set(wheel.namelist())
    library = {
        p.relative_to(ROOT).as_posix()
        for p in (ROOT / "anomaly").rglob("*.py")
        if "__pycache__" not in p.parts
    }
    assert "anomaly/__init__.py" in library and library <= names
    assert {n for n in names if n.startswith("pipelines/")} == PRODUCT_MODULES
    harness = [n for n in names if re.search(r"(^|/)(bench|benchmark|bench_\w+|soak)(/|\.py$)", n)]
    assert harness == []


def test_the_console_script_is_the_cli(wheel):
    (entry_points,) = [n for n in wheel.namelist() if n.endswith(".dist-info/entry_points.txt")]
    parser = configparser.ConfigParser()
    parser.read_string(wheel.read(entry_points).decode())
    assert dict(parser["console_scripts"]) == {"anomaly": "pipelines.cli:main"}


def test_the_shipped_entry_points_import_nothing_left_out(wheel):
    names = set(wheel.namelist())
    for module in sorted(PRODUCT_MODULES):
        tree = ast.parse(wheel.read(module).decode())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                imported = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                imported = [node.module]
            else:
                continue
            for name in imported:
                if name.split(".")[0] in {"anomaly", "pipelines"}:
                    path = name.replace(".", "/")
                    assert {f"{path}.py", f"{path}/__init__.py"} & names, (module, name)

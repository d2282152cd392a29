"""What ``pip install .`` and the container image ship: the wheel built from exactly what
``deploy/container/Dockerfile`` copies holds the library and the product's entry points
(``pipelines.cli``, ``pipelines.demo``), and none of the benchmark harness, which stays in the
repository (``pipelines/benchmark.py``, ``pipelines/bench/``, ``bench_*.py``, ``soak.py``)."""

from __future__ import annotations

import ast
import configparser
import re
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests._support import copy_package_sources, unavailable

ROOT = Path(__file__).resolve().parents[1]

PRODUCT_MODULES = {"pipelines/__init__.py", "pipelines/cli.py", "pipelines/demo.py"}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Iterator[zipfile.ZipFile]:
    try:
        import setuptools  # noqa: F401  (the build backend, used without build isolation)
    except ImportError:
        unavailable("setuptools is not installed in this environment")
    tmp = tmp_path_factory.mktemp("wheel")
    src = copy_package_sources(tmp / "src")
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

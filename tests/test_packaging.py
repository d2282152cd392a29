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


def test_the_image_installs_the_tested_versions_with_the_librdkafka_client():
    """The image took whatever was newest of open-ended requirements (the service leans on
    kafka-python's internals), and without confluent-kafka `client = "confluent"` could
    not start in it."""
    import tomllib

    from packaging.requirements import Requirement

    from tests._support import DOCKERFILE

    (install,) = [line for line in DOCKERFILE.read_text().splitlines() if "pip install" in line]
    assert re.search(r"-c constraints\.txt\b", install) and '".[confluent]"' in install
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    needed = project["dependencies"] + project["optional-dependencies"]["confluent"]
    pinned = {
        Requirement(line).name.lower()
        for line in (ROOT / "constraints.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    image = {"platform_system": "Linux", "platform_machine": "x86_64", "sys_platform": "linux"}
    installed = [r for r in map(Requirement, needed) if not r.marker or r.marker.evaluate(image)]
    unpinned = [str(r) for r in installed if r.name.lower() not in pinned]
    assert unpinned == [], f"constraints.txt pins no version of {unpinned}"


def test_the_installed_demo_says_its_kafka_part_needs_a_checkout(wheel, tmp_path):
    """Installed from the wheel, the demo trained and scored, then stopped with a
    FileNotFoundError traceback: the broker script it starts is not in the package."""
    installed = tmp_path / "site"
    wheel.extractall(installed)
    done = subprocess.run(
        [sys.executable, "-m", "pipelines.demo", "--out", str(tmp_path / "demo")],
        cwd=tmp_path,
        env={"PYTHONPATH": str(installed), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=300,
    )

    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    assert "installed package does not have" in done.stderr and "--no-stream" in done.stderr
    assert not (tmp_path / "demo").exists()  # told before anything was trained

"""The README's ``spark-submit`` line, run on a real Spark cluster: a standalone master and
worker on this machine, with the packed environment and the bundle the README ships.

The README's commands are read from its "On a cluster" block and run as they stand, with what
a standalone cluster on one machine needs instead of YARN: the master's URL, client deploy
mode (standalone clusters run Python drivers in client mode only, so the driver runs the
unpacked environment's Python here), executor sizes that fit this machine, the checkout in
place of the published package, and local paths in place of HDFS. The executors' Python
workers must run the packed environment's interpreter, unpacked from the archive, and score
as the local path does.

Slow (about 5 minutes on 2 cores: a fresh virtual environment, a 2.6 GB archive, a cluster);
needs Java 17 and the package index, fails under CI=true without them.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import orjson
import pandas as pd
import pytest

import anomaly
from anomaly.files import score_file
from anomaly.spark import LOAD_LOG_ENV
from tests._support import (
    copy_package_sources,
    free_port,
    required_module,
    unavailable,
    wait_for,
)

pytestmark = [pytest.mark.spark, pytest.mark.slow]

CHECKOUT = Path(__file__).resolve().parents[1]
BUNDLE = CHECKOUT / "tests" / "fixtures" / "bundle-v3"
ROWS = 6000


def _readme_cluster_block() -> str:
    """The bash block under the README's "On a cluster" paragraph."""
    readme = (CHECKOUT / "README.md").read_text(encoding="utf-8")
    found = re.search(r"\*\*On a cluster\*\*.*?```bash\n(.*?)```", readme, re.DOTALL)
    assert found, "README.md has no bash block after **On a cluster**"
    return found.group(1)


def _for_this_machine(block: str, master: str, package: Path, data: Path, out: Path) -> str:
    """The README's commands with what differs on a one-machine standalone cluster; each
    replacement must find its text, so the test follows the README as it changes."""
    replacements = [
        ("'anomaly-gan[spark]'", f"'{package}[spark]'"),
        # The archive crosses no network here: stored, not compressed (still a .tar.gz).
        # gzip's level 4 took 48 s for TensorFlow's 1.3 GB of the 2.6 GB, level 0 9 s.
        ("venv-pack -p env -o", "venv-pack -p env --compress-level 0 -o"),
        (
            "--master yarn --deploy-mode cluster",
            f"--master {master} --deploy-mode client"
            " --conf spark.pyspark.driver.python=env/bin/python",
        ),
        ("spark.executor.cores=4", "spark.executor.cores=2"),
        ("spark.executor.memory=4g", "spark.executor.memory=2g"),
        ("hdfs:///lake/records/", str(data)),
        ("hdfs:///lake/scores/2026-12-03", str(out)),
    ]
    for old, new in replacements:
        assert old in block, f"the README's cluster block no longer has {old!r}"
        block = block.replace(old, new)
    return block


class _Standalone:
    """A Spark standalone master and one worker (2 cores) on 127.0.0.1."""

    def __init__(self, spark_home: Path, folder: Path):
        self.spark_home = spark_home
        self.port, self.ui_port = free_port(), free_port()
        self.url = f"spark://127.0.0.1:{self.port}"
        self.work = folder / "work"
        self.work.mkdir()
        env = {**os.environ, "SPARK_HOME": str(spark_home), "SPARK_LOCAL_IP": "127.0.0.1"}
        spark_class = str(spark_home / "bin" / "spark-class")
        self._processes = []
        self._logs = []
        for name, args in (
            (
                "master",
                ["org.apache.spark.deploy.master.Master", "--host", "127.0.0.1"]
                + ["--port", str(self.port), "--webui-port", str(self.ui_port)],
            ),
            (
                "worker",
                ["org.apache.spark.deploy.worker.Worker", self.url, "--host", "127.0.0.1"]
                + ["--cores", "2", "--memory", "4g", "--work-dir", str(self.work)]
                + ["--webui-port", str(free_port())],
            ),
        ):
            log = open(folder / f"{name}.log", "wb")  # noqa: SIM115 (closed in stop)
            self._logs.append(log)
            self._processes.append(
                subprocess.Popen(
                    [spark_class, *args],
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
            if name == "master":
                wait_for(self._master_state, 120, "the Spark master's status page", poll_s=0.5)
        wait_for(
            lambda: (self._master_state() or {}).get("aliveworkers") == 1,
            120,
            "the worker to register with the master",
            poll_s=0.5,
        )

    def _master_state(self) -> dict | None:
        try:
            url = f"http://127.0.0.1:{self.ui_port}/json/"
            with urllib.request.urlopen(url, timeout=2) as answer:
                return orjson.loads(answer.read())
        except OSError:
            return None

    def stop(self) -> None:
        for process in reversed(self._processes):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
                try:
                    process.wait(30)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()
        for log in self._logs:
            log.close()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_Standalone]:
    pyspark = required_module("pyspark", "spark")
    if shutil.which("java") is None:
        unavailable("java is not installed (Spark needs Java 17)")
    folder = tmp_path_factory.mktemp("standalone")
    standalone = _Standalone(Path(pyspark.__file__).parent, folder)
    try:
        yield standalone
    finally:
        standalone.stop()
        shutil.rmtree(standalone.work, ignore_errors=True)  # the unpacked 2.6 GB environment


def test_the_readme_spark_submit_line_scores_on_a_cluster_with_the_packed_environment(
    cluster: _Standalone, tmp_path: Path
) -> None:
    rng = np.random.default_rng(5)
    detector = anomaly.load(BUNDLE)
    frame = pd.DataFrame(
        rng.normal(size=(ROWS, len(detector.feature_names))), columns=detector.feature_names
    )
    data = tmp_path / "records.parquet"
    frame.to_parquet(data, row_group_size=1000)
    out = tmp_path / "scores"
    shutil.copytree(BUNDLE, tmp_path / "model")  # the README packs ./model
    loads = tmp_path / "loads.log"
    package = copy_package_sources(tmp_path / "package")  # the checkout, built outside it
    script = _for_this_machine(_readme_cluster_block(), cluster.url, package, data, out)
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in {"VIRTUAL_ENV", "PYSPARK_PYTHON", "SPARK_HOME", "PYTHONPATH"}
    }
    env.update(
        {
            "SPARK_LOCAL_IP": "127.0.0.1",
            # The cluster's Spark (the version the tests run, which the master and worker
            # run too) gives `spark-submit`; the README's `python` is the Python the tests
            # run on (the venv's base).
            "SPARK_HOME": str(cluster.spark_home),
            "PATH": os.pathsep.join(
                [
                    str(Path(sys._base_executable).parent),
                    str(cluster.spark_home / "bin"),
                    env.get("PATH", ""),
                ]
            ),
        }
    )
    # The workers log each model load with their interpreter there.
    script = script.replace(
        "spark-submit ", f"spark-submit --conf spark.executorEnv.{LOAD_LOG_ENV}={loads} ", 1
    )
    run = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    shutil.rmtree(tmp_path / "env", ignore_errors=True)  # 2.6 GB, and 1 GB more packed
    (tmp_path / "anomaly-env.tar.gz").unlink(missing_ok=True)
    assert run.returncode == 0, (run.stdout[-3000:], run.stderr[-6000:])
    assert f"scored {ROWS} of {ROWS} rows" in run.stdout + run.stderr

    # The Python workers ran the archive's interpreter, unpacked by the executor (not the
    # driver's environment, which the cluster's worker never sees).
    interpreters = {line.split(maxsplit=3)[3] for line in loads.read_text().splitlines()}
    assert interpreters, "no Python worker loaded the model"
    for interpreter in interpreters:
        assert Path(interpreter).is_relative_to(cluster.work), interpreter
        assert Path(interpreter).parent.parent.name == "env", interpreter

    scored = pd.read_parquet(out).sort_values("row").reset_index(drop=True)
    local = score_file(detector, data, tmp_path / "local.parquet").output
    expected = pd.read_parquet(local)
    assert list(scored.columns) == list(expected.columns)
    assert scored["row"].tolist() == expected["row"].tolist() == list(range(1, ROWS + 1))
    np.testing.assert_allclose(scored["score"], expected["score"], rtol=0, atol=1e-5)
    assert scored["is_anomaly"].tolist() == expected["is_anomaly"].tolist()

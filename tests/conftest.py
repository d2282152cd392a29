"""Shared pytest fixtures.

Kafka: ``kafka_bootstrap`` starts one real single-node broker per test session with the
project's own script (``deploy/kafka/kafka-local``) and stops it at the end;
``kafka_topic_factory`` makes uniquely named topics on it. Tests that use them carry
``@pytest.mark.kafka``.

When the broker cannot start (no Java or Maven, no network for the first install, a start
timeout) the Kafka tests are skipped with the reason, except when ``CI=true``: there a missing
broker is a failure, so CI never goes green without having run them.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NoReturn

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
KAFKA_LOCAL = REPO_ROOT / "deploy" / "kafka" / "kafka-local"

# A cold start includes the one-time Maven install of the broker's jars (seconds on a good
# network) plus the script's own 60 s readiness limit.
KAFKA_START_TIMEOUT_S = 300
KAFKA_STOP_TIMEOUT_S = 60


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"true", "1", "yes"}


def _broker_unavailable(reason: str) -> NoReturn:
    """Fail under CI=true, skip otherwise. Never returns."""
    if _in_ci():
        pytest.fail(
            f"Kafka broker unavailable (CI=true, so this is a failure): {reason}", pytrace=False
        )
    pytest.skip(f"Kafka broker unavailable: {reason}")


def _run_kafka_local(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(KAFKA_LOCAL), *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _script_output(stdout: str | bytes | None, stderr: str | bytes | None) -> str:
    def text(s: str | bytes | None) -> str:
        return s.decode(errors="replace") if isinstance(s, bytes) else (s or "")

    return f"--- stdout ---\n{text(stdout)}\n--- stderr ---\n{text(stderr)}"


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """``"127.0.0.1:PORT"`` of a real Kafka broker that lives for the whole test session."""
    # Not under pytest's basetemp: pytest keeps only the last 3 of those per user, so a second
    # test run on the machine would delete a running broker's data (and kill it).
    run_dir = Path(tempfile.mkdtemp(prefix="anomaly-kafka-pytest-"))
    dir_args = ("--dir", str(run_dir))

    def stop() -> subprocess.CompletedProcess[str]:
        return _run_kafka_local("stop", *dir_args, timeout=KAFKA_STOP_TIMEOUT_S)

    def stop_after_failed_start() -> None:
        # start cleans up after itself unless it was killed; make sure nothing is left. The
        # script's output (with the broker's log tail) goes into the skip/fail message.
        try:
            if stop().returncode == 0:
                shutil.rmtree(run_dir, ignore_errors=True)
        except (OSError, subprocess.SubprocessError):
            pass

    try:
        # --owner-pid: the script's watchdog stops the broker if this process dies without
        # running the teardown below (killed by a timeout, for instance).
        result = _run_kafka_local(
            "start", *dir_args, "--owner-pid", str(os.getpid()), timeout=KAFKA_START_TIMEOUT_S
        )
    except FileNotFoundError as exc:
        _broker_unavailable(f"cannot run {KAFKA_LOCAL}: {exc}")
    except subprocess.TimeoutExpired as exc:
        stop_after_failed_start()
        _broker_unavailable(
            f"'kafka-local start' did not finish within {KAFKA_START_TIMEOUT_S} s\n"
            + _script_output(exc.stdout, exc.stderr)
        )

    lines = result.stdout.strip().splitlines()
    match = re.fullmatch(r"bootstrap=(\S+:\d+)", lines[-1].strip()) if lines else None
    if result.returncode != 0 or match is None:
        stop_after_failed_start()
        _broker_unavailable(
            f"'kafka-local start' exited with status {result.returncode}"
            + ("" if match or result.returncode else " without a bootstrap= line")
            + "\n"
            + _script_output(result.stdout, result.stderr)
        )

    try:
        yield match.group(1)
    finally:
        stopped = stop()
        if stopped.returncode != 0:
            pytest.fail(
                "'kafka-local stop' failed; a broker may be left running from "
                f"{run_dir}\n" + _script_output(stopped.stdout, stopped.stderr),
                pytrace=False,
            )
        shutil.rmtree(run_dir, ignore_errors=True)


@pytest.fixture
def kafka_topic_factory(
    kafka_bootstrap: str, request: pytest.FixtureRequest
) -> Iterator[Callable[..., str]]:
    """Call ``make(partitions=N)`` to create a uniquely named topic; returns its name.

    The topic is ready to use (every partition has a leader) when the call returns, and is
    deleted after the test.
    """
    from kafka.admin import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap, client_id="pytest-admin")
    created: list[str] = []
    test_name = re.sub(r"[^A-Za-z0-9._-]+", "-", request.node.name)[:100]

    def make(partitions: int = 1, prefix: str | None = None) -> str:
        name = f"{prefix or test_name}-{uuid.uuid4().hex[:10]}"
        admin.create_topics(
            {name: {"num_partitions": partitions, "replication_factor": 1}},
            wait_for_metadata=True,
        )
        created.append(name)
        return name

    try:
        yield make
    finally:
        try:
            if created:
                admin.delete_topics(created, raise_errors=False)
        finally:
            admin.close()


# -- model bundles -------------------------------------------------------------------------


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small trained model bundle (8 features ``f0``..``f7``, about 10 s to train).

    Normal rows are ``rng.normal(size=(n, 3)) @ A`` for the ``A`` of ``tiny_bundle_mixing``;
    rows like ``rng.normal(size=(n, 8)) * 4`` score far above the threshold.
    """
    import numpy as np

    import anomaly

    rng = np.random.default_rng(0)
    mixing = rng.normal(size=(3, 8))
    x = rng.normal(size=(3000, 3)) @ mixing + 0.1 * rng.normal(size=(3000, 8))
    config = anomaly.Config().updated(training={"steps": 300})
    detector = anomaly.train(x, config, feature_names=[f"f{i}" for i in range(8)])
    path = tmp_path_factory.mktemp("tiny-bundle") / "model"
    detector.save(path)
    return path


@pytest.fixture(scope="session")
def tiny_bundle_mixing():
    """The mixing matrix of ``tiny_bundle``'s normal data: normal rows are
    ``rng.normal(size=(n, 3)) @ tiny_bundle_mixing``."""
    import numpy as np

    return np.random.default_rng(0).normal(size=(3, 8))


# -- a trained tabular detector, shared by test_model, test_bundle, test_config, test_backends


class CorrelatedTable:
    """Synthetic records: 10 features driven by 3 latent factors (normal), and records pushed
    off that 3-D manifold by independent noise in every feature (anomalous)."""

    n_features = 10
    noise = 0.1
    anomaly_scale = 1.5

    def __init__(self) -> None:
        import numpy as np

        self.mixing = np.random.default_rng(42).normal(size=(3, self.n_features))
        self.feature_names = [f"f{i}" for i in range(self.n_features)]

    def normal(self, n: int, seed: int):
        import numpy as np

        rng = np.random.default_rng(seed)
        rows = rng.normal(size=(n, 3)) @ self.mixing
        return (rows + self.noise * rng.normal(size=rows.shape)).astype(np.float32)

    def anomalous(self, n: int, seed: int):
        import numpy as np

        rng = np.random.default_rng(seed + 10_000)
        rows = self.normal(n, seed) + self.anomaly_scale * rng.normal(size=(n, self.n_features))
        return rows.astype(np.float32)

    def labelled(self, n_normal: int, n_anomalous: int, seed: int):
        """(rows, labels) with the anomalies at random positions among the normal rows."""
        import numpy as np

        rows = np.concatenate([self.normal(n_normal, seed), self.anomalous(n_anomalous, seed)])
        labels = np.r_[np.zeros(n_normal, np.int8), np.ones(n_anomalous, np.int8)]
        order = np.random.default_rng(seed).permutation(len(rows))
        return rows[order], labels[order]


#: Training rows of ``tabular_detector`` are ``CorrelatedTable().normal(3000, TRAIN_SEED)``.
TABULAR_TRAIN_ROWS = 3000
TABULAR_TRAIN_SEED = 0
TABULAR_STEPS = 200


@pytest.fixture(scope="session")
def correlated_table() -> CorrelatedTable:
    return CorrelatedTable()


@pytest.fixture(scope="session")
def tabular_detector(correlated_table: CorrelatedTable):
    """A detector trained for 200 steps on 3000 normal rows of ``correlated_table``."""
    import anomaly

    config = anomaly.Config().updated(training={"steps": TABULAR_STEPS})
    rows = correlated_table.normal(TABULAR_TRAIN_ROWS, TABULAR_TRAIN_SEED)
    return anomaly.train(rows, config, feature_names=correlated_table.feature_names)


@pytest.fixture(scope="session")
def tabular_bundle(tabular_detector, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``tabular_detector`` saved as a bundle; copy it before changing anything in it."""
    return tabular_detector.save(tmp_path_factory.mktemp("tabular") / "model")

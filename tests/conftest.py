"""Shared pytest fixtures.

Kafka: one real single-node broker per test session, started with the project's own script
(``deploy/kafka/kafka-local start --secure``) and stopped at the end.

- ``kafka_bootstrap``: its PLAINTEXT bootstrap, ``"127.0.0.1:PORT"``.
- ``kafka_topic_factory``: makes uniquely named topics on it.
- ``kafka_log_dir``: where it keeps its log segments (to damage a batch on disk).
- ``kafka_secure``: its TLS, mutual-TLS and SASL_SSL listeners, with kafka-python options per
  mode (a ``KafkaSecure``).
- ``restartable_kafka``: a broker of the test's own, to stop and start again on the same port
  with the same data (a ``RestartableKafka``).

Tests that use them carry ``@pytest.mark.kafka``. When a broker cannot start (no Java, Maven
or openssl, no network for the first install, a start timeout) those tests are skipped with the
reason, except when ``CI=true``: there a missing broker is a failure, so CI never goes green
without having run them.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, NoReturn

import pytest

from tests._support import unavailable

REPO_ROOT = Path(__file__).resolve().parent.parent
KAFKA_LOCAL = REPO_ROOT / "deploy" / "kafka" / "kafka-local"

# A cold start includes the one-time Maven install of the broker's jars (seconds on a good
# network) plus the script's own 60 s readiness limit.
KAFKA_START_TIMEOUT_S = 300
KAFKA_STOP_TIMEOUT_S = 60


def _broker_unavailable(reason: str) -> NoReturn:
    """Fail under CI=true, skip otherwise. Never returns."""
    unavailable(f"Kafka broker unavailable: {reason}")


def _broker_failed(reason: str) -> NoReturn:
    """For a broker that started once and then would not start again: always a failure."""
    pytest.fail(f"Kafka broker failed: {reason}", pytrace=False)


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


def _stop_kafka_local(run_dir: Path) -> None:
    """``kafka-local stop --dir RUN_DIR``: returns once the broker is gone; fails the test if
    the script does."""
    stopped = _run_kafka_local("stop", "--dir", str(run_dir), timeout=KAFKA_STOP_TIMEOUT_S)
    if stopped.returncode != 0:
        pytest.fail(
            f"'kafka-local stop' failed; a broker may be left running from {run_dir}\n"
            + _script_output(stopped.stdout, stopped.stderr),
            pytrace=False,
        )


def _start_kafka_local(
    run_dir: Path,
    *options: str,
    on_failure: Callable[[str], NoReturn],
    command: str = "start",
) -> dict[str, str]:
    """``kafka-local start --dir RUN_DIR OPTIONS`` (or ``restart``); returns its stdout's
    key=value lines once the broker accepts clients. On failure, makes sure no broker is
    left running from RUN_DIR and calls ``on_failure`` with the reason and the script's
    output (with the broker's log tail)."""
    dir_args = ("--dir", str(run_dir))

    def stop_after_failed_start() -> None:
        # start cleans up after itself unless it was killed; make sure nothing is left.
        try:
            _run_kafka_local("stop", *dir_args, timeout=KAFKA_STOP_TIMEOUT_S)
        except (OSError, subprocess.SubprocessError):
            pass

    try:
        # --owner-pid: the script's watchdog stops the broker if this process dies without
        # running the teardown (killed by a timeout, for instance).
        result = _run_kafka_local(
            command,
            *dir_args,
            *options,
            "--owner-pid",
            str(os.getpid()),
            timeout=KAFKA_START_TIMEOUT_S,
        )
    except FileNotFoundError as exc:
        on_failure(f"cannot run {KAFKA_LOCAL}: {exc}")
    except subprocess.TimeoutExpired as exc:
        stop_after_failed_start()
        on_failure(
            f"'kafka-local {command}' did not finish within {KAFKA_START_TIMEOUT_S} s\n"
            + _script_output(exc.stdout, exc.stderr)
        )

    lines = result.stdout.strip().splitlines()
    # The last line is always bootstrap=HOST:PORT (the PLAINTEXT listener).
    match = re.fullmatch(r"bootstrap=(\S+:\d+)", lines[-1].strip()) if lines else None
    if result.returncode != 0 or match is None:
        stop_after_failed_start()
        on_failure(
            f"'kafka-local {command}' exited with status {result.returncode}"
            + ("" if match or result.returncode else " without a bootstrap= line")
            + "\n"
            + _script_output(result.stdout, result.stderr)
        )
    values = {}
    for line in lines:
        key, sep, value = line.strip().partition("=")
        if sep:
            values[key] = value
    return values


def _new_run_dir() -> Path:
    # Not under pytest's basetemp: pytest keeps only the last 3 of those per user, so a second
    # test run on the machine would delete a running broker's data (and kill it).
    return Path(tempfile.mkdtemp(prefix="anomaly-kafka-pytest-"))


@pytest.fixture(scope="session")
def _kafka_session_broker() -> Iterator[Mapping[str, str]]:
    """The session's broker, with the secured listeners too: the key=value lines of
    ``kafka-local start --secure``. One JVM serves ``kafka_bootstrap`` and ``kafka_secure``
    (``--secure`` adds a few tenths of a second to the start, about a second under load; a
    second broker would add a whole start, 4-10 s, and 350-600 MB)."""
    run_dir = _new_run_dir()
    lines = _start_kafka_local(run_dir, "--secure", on_failure=_broker_unavailable)
    try:
        yield MappingProxyType(lines)
    finally:
        _stop_kafka_local(run_dir)
        shutil.rmtree(run_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def kafka_bootstrap(_kafka_session_broker: Mapping[str, str]) -> str:
    """``"127.0.0.1:PORT"`` of a real Kafka broker that lives for the whole test session
    (its PLAINTEXT listener)."""
    return _kafka_session_broker["bootstrap"]


@pytest.fixture(scope="session")
def kafka_log_dir(_kafka_session_broker: Mapping[str, str]) -> Path:
    """Where the session broker keeps its partitions' log segments
    (``<log_dir>/<topic>-<partition>/*.log``), for tests that damage a batch on disk."""
    return Path(_kafka_session_broker["dir"]) / "kraft-data"


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


#: The ways into ``kafka_secure``'s broker besides PLAINTEXT.
KAFKA_SECURE_MODES = ("ssl", "mtls", "sasl_plain", "sasl_scram256", "sasl_scram512")


@dataclass(frozen=True)
class KafkaSecureMode:
    """One secured way into the broker: where to connect and the kafka-python options.

    ``options`` use kafka-python's names. For SASL they name the password by file,
    ``sasl_plain_password_file`` (as the service's configuration does; kafka-python itself has
    no ``*_file`` options): ``client_options()`` reads it and inlines ``sasl_plain_password``
    for a client built directly, ``KafkaProducer(bootstrap_servers=m.bootstrap,
    **m.client_options())``.
    """

    name: str
    bootstrap: str
    options: Mapping[str, Any]

    def client_options(self) -> dict[str, Any]:
        options = dict(self.options)
        password_file = options.pop("sasl_plain_password_file", None)
        if password_file is not None:
            options["sasl_plain_password"] = Path(password_file).read_text()
        return options


@dataclass(frozen=True)
class KafkaSecure:
    """The session broker's secured listeners (``kafka-local start --secure``).

    ``modes[name]`` for ``name`` in ``KAFKA_SECURE_MODES``: ``"ssl"`` (TLS, the broker checked
    against the private CA ``ssl_cafile``), ``"mtls"`` (TLS with the client certificate
    ``ssl_certfile``/``ssl_keyfile``, required by that listener), ``"sasl_plain"``,
    ``"sasl_scram256"``, ``"sasl_scram512"`` (SASL_SSL as ``sasl_username`` with the password in
    ``sasl_password_file``). ``bootstrap`` is the PLAINTEXT listener, as ``kafka_bootstrap``;
    ``server_log`` the broker's log (what it refused, and why).
    """

    bootstrap: str
    modes: Mapping[str, KafkaSecureMode]
    ssl_cafile: str
    ssl_certfile: str
    ssl_keyfile: str
    sasl_username: str
    sasl_password_file: str
    server_log: Path

    def __getitem__(self, name: str) -> KafkaSecureMode:
        return self.modes[name]

    def client_options(self, name: str) -> dict[str, Any]:
        """Mode ``name``'s options with the SASL password inlined (see ``KafkaSecureMode``)."""
        return self.modes[name].client_options()


def _kafka_secure_from(lines: Mapping[str, str]) -> KafkaSecure:
    tls = {
        "ssl_cafile": lines["ssl_cafile"],
        # The broker's certificate names IP:127.0.0.1 and DNS:localhost; check it.
        "ssl_check_hostname": True,
    }
    mutual = {**tls, "ssl_certfile": lines["ssl_certfile"], "ssl_keyfile": lines["ssl_keyfile"]}

    def sasl(mechanism: str) -> dict[str, Any]:
        return {
            "security_protocol": "SASL_SSL",
            **tls,
            "sasl_mechanism": mechanism,
            "sasl_plain_username": lines["sasl_username"],
            "sasl_plain_password_file": lines["sasl_password_file"],
        }

    modes = {
        "ssl": (lines["ssl_bootstrap"], {"security_protocol": "SSL", **tls}),
        "mtls": (lines["mtls_bootstrap"], {"security_protocol": "SSL", **mutual}),
        "sasl_plain": (lines["sasl_ssl_bootstrap"], sasl("PLAIN")),
        "sasl_scram256": (lines["sasl_ssl_bootstrap"], sasl("SCRAM-SHA-256")),
        "sasl_scram512": (lines["sasl_ssl_bootstrap"], sasl("SCRAM-SHA-512")),
    }
    return KafkaSecure(
        bootstrap=lines["bootstrap"],
        modes=MappingProxyType(
            {
                name: KafkaSecureMode(name, bootstrap, MappingProxyType(options))
                for name, (bootstrap, options) in modes.items()
            }
        ),
        ssl_cafile=lines["ssl_cafile"],
        ssl_certfile=lines["ssl_certfile"],
        ssl_keyfile=lines["ssl_keyfile"],
        sasl_username=lines["sasl_username"],
        sasl_password_file=lines["sasl_password_file"],
        server_log=Path(lines["dir"]) / "logs" / "server.log",
    )


@pytest.fixture(scope="session")
def kafka_secure(_kafka_session_broker: Mapping[str, str]) -> KafkaSecure:
    """The session broker's TLS, mutual-TLS and SASL_SSL listeners (a ``KafkaSecure``)."""
    try:
        return _kafka_secure_from(_kafka_session_broker)
    except KeyError as exc:
        pytest.fail(f"'kafka-local start --secure' printed no {exc} line", pytrace=False)


class RestartableKafka:
    """A broker of one test's own, in its own directory (not the session broker).

    ``stop()`` returns once the broker process is gone; ``start()`` starts it again on the same
    port with the same data and returns once it accepts clients; ``restart()`` runs
    ``kafka-local restart`` (both). ``bootstrap`` is its PLAINTEXT bootstrap (what the last
    start printed); ``run_dir`` its directory; ``is_running()`` asks ``kafka-local status``.
    """

    def __init__(self, run_dir: Path, bootstrap: str) -> None:
        self.run_dir = run_dir
        self.bootstrap = bootstrap

    def start(self) -> str:
        """Start the stopped broker again (same port, same data); returns its bootstrap."""
        lines = _start_kafka_local(self.run_dir, on_failure=_broker_failed)
        self.bootstrap = lines["bootstrap"]
        return self.bootstrap

    def stop(self) -> None:
        _stop_kafka_local(self.run_dir)

    def kill(self) -> None:
        """Kill the broker at once (SIGKILL, as a crash): no controlled shutdown that lets
        the requests in flight complete first. Returns once the process is gone."""
        pid = int((self.run_dir / "kafka.pid").read_text())
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + KAFKA_STOP_TIMEOUT_S
        while _running(pid) and time.monotonic() < deadline:
            time.sleep(0.05)  # the kernel's, after the signal: no event to wait on
        _stop_kafka_local(self.run_dir)  # tidies the pid file the broker left

    def restart(self) -> str:
        """``kafka-local restart``: stop, then start on the same port with the same data."""
        lines = _start_kafka_local(self.run_dir, command="restart", on_failure=_broker_failed)
        self.bootstrap = lines["bootstrap"]
        return self.bootstrap

    def is_running(self) -> bool:
        status = _run_kafka_local("status", "--dir", str(self.run_dir), timeout=30)
        return status.returncode == 0


def _running(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie awaiting its parent."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


@pytest.fixture
def restartable_kafka() -> Iterator[RestartableKafka]:
    """A running broker of this test's own (a ``RestartableKafka``), stopped and deleted at
    teardown."""
    run_dir = _new_run_dir()
    try:
        lines = _start_kafka_local(run_dir, on_failure=_broker_unavailable)
        yield RestartableKafka(run_dir, lines["bootstrap"])
    finally:
        _stop_kafka_local(run_dir)
        shutil.rmtree(run_dir, ignore_errors=True)


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
def labelled(correlated_table: CorrelatedTable):
    """The end-to-end rows ``tabular_detector`` is judged on (and detectors trained on other
    backends compared with it): 2000 fresh normal rows and 200 injected anomalies, shuffled."""
    return correlated_table.labelled(2000, 200, seed=1)


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

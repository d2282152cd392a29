"""TLS files of ``[serve.kafka]`` on the mutual-TLS listener of ``kafka_secure``: a client key
encrypted with ``ssl_password`` serves on both clients; a key, certificate or CA the client
cannot load stops the start at once in one line naming the setting, never the password.

Before, kafka-python reported these as 'cannot reach Kafka ... check that the broker is up'
after its 10 s bootstrap timeout (OpenSSL asking on the terminal for the pass phrase of an
encrypted key meanwhile), and librdkafka as 'ssl.key.location failed: ... PEM lib'."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import orjson
import pytest

import anomaly
from anomaly.errors import ConfigError
from anomaly.stream import ScoringService
from anomaly.stream.kafka_options import check_tls_files
from anomaly.stream.settings import resolve_serve_config
from tests._support import unavailable

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

PASSPHRASE = "k3y-Pa55phrase"
CLIENTS = ["kafka-python", "confluent"]


def _encrypted(kafka_secure, folder: Path, passphrase: str) -> Path:
    """The mutual-TLS client key, encrypted (AES-256, PKCS#8) with ``passphrase``."""
    if shutil.which("openssl") is None:
        unavailable("openssl is needed to encrypt the client key")
    key = folder / "client-encrypted.key"
    subprocess.run(
        ["openssl", "pkey", "-in", kafka_secure.ssl_keyfile, "-aes256"]
        + ["-passout", f"pass:{passphrase}", "-out", str(key)],
        check=True,
        capture_output=True,
    )
    return key


@pytest.fixture(scope="module")
def encrypted_key(kafka_secure, tmp_path_factory) -> Path:
    return _encrypted(kafka_secure, tmp_path_factory.mktemp("tls"), PASSPHRASE)


def _service(kafka_secure, topic: str, client: str, bundle: Path, **kafka) -> ScoringService:
    mode = kafka_secure["mtls"]
    options = {k: v for k, v in {**mode.options, **kafka}.items() if v is not None}
    config = (
        anomaly.Config()
        .updated(
            serve={
                "bootstrap_servers": mode.bootstrap,
                "input_topic": topic,
                "output_topic": topic + "-out",
                "dlq_topic": "",
                "create_topics": True,
                "client": client,
                "metrics_port": 0,
                "kafka": options,
            }
        )
        .serve
    )
    return ScoringService(anomaly.load(bundle), config)


@pytest.mark.parametrize("client", CLIENTS)
def test_an_encrypted_client_key_with_its_password_file_starts(
    client, kafka_secure, kafka_topic_factory, tiny_bundle, encrypted_key, tmp_path
):
    """The start-up check connects over mutual TLS with the key the password file opens
    (a key it could not open stops the start: the cases below)."""
    password_file = tmp_path / "key-password"
    password_file.write_text(PASSPHRASE + "\n")
    service = _service(
        kafka_secure,
        kafka_topic_factory(1),
        client,
        tiny_bundle,
        ssl_keyfile=str(encrypted_key),
        ssl_password_file=str(password_file),
    )
    service.start()  # raises StreamError where the key cannot be opened or is refused
    service.stop()
    service.run()  # finishes at once: flushes, commits, closes


@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("no password", "is encrypted; give its pass phrase as ssl_password"),
        ("wrong password", "ssl_password does not decrypt ssl_keyfile"),
        ("another key", "ssl_certfile/ssl_keyfile: cannot load the certificate"),
        ("missing CA", "ssl_cafile: no such file"),
    ],
)
def test_tls_files_the_client_cannot_load_stop_the_start_in_one_line_naming_the_setting(
    client, case, expected, kafka_secure, kafka_topic_factory, tiny_bundle, encrypted_key
):
    kafka = {
        "no password": {"ssl_keyfile": str(encrypted_key)},
        "wrong password": {"ssl_keyfile": str(encrypted_key), "ssl_password": "n0t-" + PASSPHRASE},
        "another key": {"ssl_keyfile": str(encrypted_key), "ssl_certfile": kafka_secure.ssl_cafile},
        "missing CA": {"ssl_cafile": str(encrypted_key.with_name("absent-ca.pem"))},
    }[case]
    if case == "another key":  # the CA's certificate with the client's key
        kafka["ssl_password"] = PASSPHRASE
    service = _service(kafka_secure, kafka_topic_factory(1), client, tiny_bundle, **kafka)
    started = time.monotonic()
    with pytest.raises(ConfigError) as caught:
        service.start()
    message = str(caught.value)
    assert expected in message and "\n" not in message, message
    assert PASSPHRASE not in message
    assert time.monotonic() - started < 5  # not after a bootstrap timeout
    assert not service.ready()


@pytest.mark.parametrize("client", CLIENTS)
def test_a_numeric_password_written_unquoted_in_toml_is_given_as_text(
    client, kafka_secure, kafka_topic_factory, tiny_bundle, tmp_path
):
    """``ssl_password = 20261204`` is an integer to TOML (and ``12345`` to a Helm value);
    kafka-python failed on it inside its connection, 'cannot reach Kafka' after 10 s."""
    key = _encrypted(kafka_secure, tmp_path, "20261204")
    mode = kafka_secure["mtls"]
    topic = kafka_topic_factory(1)
    options = {**mode.options, "ssl_keyfile": str(key)}
    toml = tmp_path / "serve.toml"
    toml.write_text(
        "[serve]\n"
        f'client = "{client}"\nbootstrap_servers = "{mode.bootstrap}"\n'
        f'input_topic = "{topic}"\noutput_topic = "{topic}-out"\ndlq_topic = ""\n'
        "create_topics = true\nmetrics_port = 0\n[serve.kafka]\nssl_password = 20261204\n"
        + "".join(f"{name} = {orjson.dumps(value).decode()}\n" for name, value in options.items())
    )
    config = resolve_serve_config(toml, environ={})
    assert config.kafka["ssl_password"] == 20261204  # as TOML read it
    service = ScoringService(anomaly.load(tiny_bundle), config)
    service.start()
    service.stop()
    service.run()


def test_librdkafka_takes_a_folder_of_hashed_ca_files_as_ssl_cafile(
    kafka_secure, kafka_topic_factory, tiny_bundle, tmp_path
):
    """librdkafka's ssl.ca.location may be a folder (``openssl rehash``): the start-up check
    of the TLS files must not refuse it as a missing file."""
    folder = tmp_path / "ca"
    folder.mkdir()
    shutil.copy(kafka_secure.ssl_cafile, folder / "ca.pem")
    subprocess.run(["openssl", "rehash", str(folder)], check=True, capture_output=True)
    service = _service(
        kafka_secure, kafka_topic_factory(1), "confluent", tiny_bundle, ssl_cafile=str(folder)
    )
    service.start()
    service.stop()
    service.run()


def test_kafka_python_refuses_a_folder_as_ssl_cafile_at_once(tmp_path):
    """kafka-python loads ssl_cafile as one file: a folder passed the start-up check and the
    start then failed as 'cannot reach Kafka' after the bootstrap timeout."""
    options = {"security_protocol": "SSL", "ssl_cafile": str(tmp_path)}

    with pytest.raises(ConfigError, match=r"ssl_cafile: .* is a folder; kafka-python takes one"):
        check_tls_files(options, "kafka-python")


def test_a_key_file_the_service_cannot_read_is_named(tmp_path, monkeypatch):
    # A key of mode 0400 owned by another user (the tests run as root, which reads it).
    certfile, keyfile = tmp_path / "client.pem", tmp_path / "client.key"
    certfile.write_text("certificate")
    keyfile.write_text("key")
    real_read_text = Path.read_text

    def read_text(path, *args, **kwargs):
        if path == keyfile:
            raise PermissionError(13, "Permission denied", str(path))
        return real_read_text(path, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", read_text)
    options = {"security_protocol": "SSL", "ssl_certfile": certfile, "ssl_keyfile": keyfile}

    with pytest.raises(ConfigError, match=r"ssl_keyfile: cannot read .*client.key \(Permission"):
        check_tls_files(options, "confluent")

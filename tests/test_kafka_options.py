"""``[serve.kafka]``: Kafka client options from TOML, the environment and secret files, the
options each client gets, and secrets that are never shown or saved."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

import anomaly
from anomaly.config import Config, ServeConfig
from anomaly.errors import ConfigError
from anomaly.stream import clients
from anomaly.stream.kafka_options import client_options
from anomaly.stream.settings import resolve_serve_config
from tests._support import required_module

SECRET = "s3cr3t-Pa55"


def _toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "serve.toml"
    path.write_text(text)
    return path


def _secret_file(tmp_path: Path, content: str = SECRET + "\n") -> Path:
    path = tmp_path / "kafka-password"
    path.write_text(content)
    return path


def test_toml_kafka_table_is_read_with_its_value_types(tmp_path):
    path = _toml(
        tmp_path,
        "[serve.kafka]\n"
        'security_protocol = "SASL_SSL"\n'
        'ssl_cafile = "/etc/kafka/ca.pem"\n'
        "ssl_check_hostname = false\n"
        "max_request_size = 2097152\n",
    )
    options = resolve_serve_config(path, environ={}).kafka
    assert dict(options) == {
        "security_protocol": "SASL_SSL",
        "ssl_cafile": "/etc/kafka/ca.pem",
        "ssl_check_hostname": False,
        "max_request_size": 2_097_152,
    }


def test_environment_option_overrides_the_file_converted_to_kafka_python_types(tmp_path):
    path = _toml(tmp_path, '[serve.kafka]\nsecurity_protocol = "SSL"\nrequest_timeout_ms = 5000\n')
    environ = {
        "ANOMALY_SERVE_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "ANOMALY_SERVE_KAFKA_SSL_CHECK_HOSTNAME": "false",
        "ANOMALY_SERVE_KAFKA_MAX_REQUEST_SIZE": "2097152",
        "ANOMALY_SERVE_KAFKA_RETRIES": "5",
        "ANOMALY_SERVE_KAFKA_REQUEST_TIMEOUT_MS": "",
    }
    options = dict(resolve_serve_config(path, environ=environ).kafka)
    assert options == {
        "security_protocol": "SASL_SSL",
        "ssl_check_hostname": False,
        "max_request_size": 2_097_152,
        "retries": 5.0,  # kafka-python's default is float("inf")
    }
    assert type(options["max_request_size"]) is int and type(options["retries"]) is float


def test_environment_value_of_the_wrong_type_is_named_without_a_secret_value():
    with pytest.raises(ConfigError, match="ANOMALY_SERVE_KAFKA_MAX_REQUEST_SIZE.*'lots'.*integer"):
        resolve_serve_config(environ={"ANOMALY_SERVE_KAFKA_MAX_REQUEST_SIZE": "lots"})
    with pytest.raises(ConfigError, match="ANOMALY_SERVE_KAFKA_CHECK_CRCS.*boolean"):
        resolve_serve_config(environ={"ANOMALY_SERVE_KAFKA_CHECK_CRCS": "maybe"})


def test_a_security_protocol_or_codec_in_another_case_is_spelt_as_kafka_python_takes_it(
    tmp_path,
):
    """kafka-python compares them as spelt: "sasl_ssl" connected in plain text, with no
    TLS and no SASL, and "ZSTD" stopped the service with a traceback."""
    path = _toml(
        tmp_path,
        '[serve.kafka]\nsecurity_protocol = "sasl_ssl"\ncompression_type = "ZSTD"\n'
        'sasl_mechanism = "scram-sha-512"\n',
    )
    serve = resolve_serve_config(path, environ={})
    options = client_options(serve.kafka, "producer")
    assert options["security_protocol"] == "SASL_SSL" and options["compression_type"] == "zstd"
    # kafka-python sent "scram-sha-512" as it was, and read the refusal as a wrong password
    assert options["sasl_mechanism"] == "SCRAM-SHA-512"
    assert "compression_type" not in client_options({"compression_type": "None"}, "producer")


@pytest.mark.parametrize(
    ("toml", "refused"),
    [
        ('security_protocol = "sasl-ssl"', "security_protocol: 'sasl-ssl' is not one of PLAINTEXT"),
        ('security_protocol = "HUNTER2"', "security_protocol: 'HUNTER2' is not one of"),
        ('compression_type = "brotli"', "compression_type: 'brotli' is not one of none, gzip"),
        ('sasl_mechanism = "SCRAM-SHA-1"', "sasl_mechanism: 'SCRAM-SHA-1' is not one of PLAIN"),
        ('request_timeout_ms = "30000"', "request_timeout_ms: '30000' is not an integer"),
        ('ssl_check_hostname = "false"', "ssl_check_hostname: 'false' is not a boolean"),
        ("security_protocol = 1", "security_protocol: 1 is not text"),
        ("sasl_plain_password = true", "sasl_plain_password: the value is not text"),
    ],
)
def test_a_kafka_option_of_the_wrong_type_or_value_stops_the_start_naming_it(
    tmp_path, toml, refused
):
    path = _toml(tmp_path, f"[serve.kafka]\n{toml}\n")

    with pytest.raises(ConfigError, match=re.escape(f"[serve.kafka] {refused}")):
        resolve_serve_config(path, environ={})


def test_a_password_from_the_environment_keeps_its_spaces():
    environ = {
        "ANOMALY_SERVE_KAFKA_SASL_PLAIN_PASSWORD": "  pass word  ",
        "ANOMALY_SERVE_KAFKA_SASL_PLAIN_USERNAME": " user ",
    }
    options = client_options(resolve_serve_config(environ=environ).kafka, "consumer")
    assert options["sasl_plain_password"] == "  pass word  "
    assert options["sasl_plain_username"] == "user"


def test_environment_file_option_replaces_the_files_plain_option(tmp_path):
    path = _toml(tmp_path, '[serve.kafka]\nsasl_plain_password = "from-toml"\n')
    secret = _secret_file(tmp_path)
    environ = {"ANOMALY_SERVE_KAFKA_SASL_PLAIN_PASSWORD_FILE": str(secret)}
    options = resolve_serve_config(path, environ=environ).kafka
    assert dict(options) == {"sasl_plain_password_file": str(secret)}


def test_file_option_is_read_without_one_trailing_newline_and_given_without_suffix(tmp_path):
    secret = _secret_file(tmp_path, SECRET + "\n\n")
    config = ServeConfig(kafka={"sasl_plain_password_file": str(secret)})
    assert client_options(config.kafka, "consumer") == {"sasl_plain_password": SECRET + "\n"}


def test_missing_secret_file_names_option_and_path_at_start(tmp_path):
    missing = tmp_path / "nowhere" / "kafka-password"
    environ = {"ANOMALY_SERVE_KAFKA_SASL_PLAIN_PASSWORD_FILE": str(missing)}
    with pytest.raises(ConfigError) as caught:
        resolve_serve_config(environ=environ)
    message = str(caught.value)
    assert "sasl_plain_password_file" in message and str(missing) in message
    assert "\n" not in message


@pytest.mark.parametrize("content", ["", "\n"])
def test_an_empty_secret_file_is_refused_at_start_naming_it(tmp_path, content):
    """librdkafka said "sasl.username and sasl.password must be set" of a password given
    by a file; kafka-python sent an empty password, refused as a wrong one."""
    secret = _secret_file(tmp_path, content)
    environ = {"ANOMALY_SERVE_KAFKA_SASL_PLAIN_PASSWORD_FILE": str(secret)}

    with pytest.raises(
        ConfigError, match=re.escape(f"sasl_plain_password_file: {secret} is empty")
    ):
        resolve_serve_config(environ=environ)


def test_unreadable_secret_file_never_shows_its_content(tmp_path):
    secret = tmp_path / "kafka-password"
    secret.write_bytes(b"\xff\xfe" + SECRET.encode())
    with pytest.raises(ConfigError, match="ssl_password_file.*cannot read") as caught:
        client_options(ServeConfig(kafka={"ssl_password_file": str(secret)}).kafka, "producer")
    assert SECRET not in str(caught.value)


def test_option_no_kafka_client_accepts_is_an_error_naming_it(tmp_path):
    path = _toml(tmp_path, '[serve.kafka]\nsecurity_protocl = "SSL"\n')
    with pytest.raises(ConfigError, match="'security_protocl' is not an option"):
        resolve_serve_config(path, environ={})
    with pytest.raises(ConfigError, match="'no_such_option' is not an option"):
        resolve_serve_config(environ={"ANOMALY_SERVE_KAFKA_NO_SUCH_OPTION": "1"})


def test_option_that_needs_a_python_object_is_refused():
    with pytest.raises(ConfigError, match="'ssl_context' takes a Python object"):
        resolve_serve_config(environ={"ANOMALY_SERVE_KAFKA_SSL_CONTEXT": "x"})


@pytest.mark.parametrize(
    ("option", "instead"),
    [
        ("group_id", r"\[serve\] group_id"),
        ("bootstrap_servers", r"\[serve\] bootstrap_servers"),
        ("linger_ms", r"\[serve\] linger_ms"),
        ("max_poll_records", r"\[serve\] max_batch_size"),
        ("enable_auto_commit", r"\[serve\] commit_interval_ms"),
        ("value_deserializer", "bytes"),
        ("client_id", r"\[serve\] group_id"),
        ("acks", "acks=all"),
        ("enable_idempotence", "refuses"),
        ("isolation_level", "read_committed"),
    ],
)
def test_option_the_service_sets_is_refused_naming_the_serve_key(option, instead):
    with pytest.raises(ConfigError, match=rf"'{option}' is set by the service.*{instead}"):
        Config.from_dict({"serve": {"kafka": {option: "x"}}})


def test_each_client_gets_only_the_options_it_accepts():
    kafka = ServeConfig(
        kafka={
            "security_protocol": "SSL",  # all three
            "compression_type": "zstd",  # producer only
            "fetch_min_bytes": 1,  # consumer only
            "allow_auto_create_topics": False,  # consumer and producer
        }
    ).kafka
    assert set(client_options(kafka, "consumer")) == {
        "security_protocol",
        "fetch_min_bytes",
        "allow_auto_create_topics",
    }
    assert set(client_options(kafka, "producer")) == {
        "security_protocol",
        "compression_type",
        "allow_auto_create_topics",
    }
    assert set(client_options(kafka, "admin")) == {"security_protocol"}


def test_repr_str_and_logs_of_the_config_mask_secret_values(caplog):
    config = ServeConfig(
        kafka={
            "sasl_plain_username": "scorer",
            "sasl_plain_password": SECRET,
            "ssl_password": SECRET,
            "sasl_oauth_token_provider_secret": SECRET,
        }
    )
    with caplog.at_level(logging.INFO):
        logging.getLogger("anomaly.test").info("config %s %r", config, config.kafka)
    for shown in (repr(config), str(config), str(config.kafka), caplog.text):
        assert SECRET not in shown
        assert "sasl_plain_password': '***'" in shown and "'scorer'" in shown


def test_validation_errors_never_echo_secret_input_values():
    bad = {"kafka": {"sasl_plain_password": [SECRET]}, "max_batch_size": SECRET}
    with pytest.raises(ConfigError) as caught:
        Config.from_dict({"serve": bad})
    assert SECRET not in str(caught.value) and "sasl_plain_password" in str(caught.value)
    with pytest.raises(ValueError) as raw:  # pydantic's own error, e.g. a direct construction
        ServeConfig(**bad)
    assert SECRET not in str(raw.value)
    with pytest.raises(ConfigError) as from_env:
        resolve_serve_config(environ={"ANOMALY_SERVE_MAX_BATCH_SIZE": SECRET})
    assert SECRET not in str(from_env.value)


def test_bundle_config_leaves_out_the_serve_settings_and_kafka_options():
    config = Config.from_dict(
        {"serve": {"group_id": "site-a", "kafka": {"sasl_plain_password": SECRET}}}
    )
    saved = config.for_bundle()
    assert "serve" not in saved and SECRET not in str(saved)
    assert Config.from_bundle(saved).serve == Config().serve
    # a bundle of an earlier release kept its trainer's serve settings: they are not read
    older = {**saved, "serve": {"group_id": "site-a", "alarm_history": 500}}
    assert Config.from_bundle(older).serve.group_id == "anomaly-scorer"


def test_empty_dlq_topic_turns_the_dead_letter_topic_off():
    assert resolve_serve_config(overrides={"dlq_topic": ""}, environ={}).dlq_topic is None
    assert resolve_serve_config(environ={"ANOMALY_SERVE_DLQ_TOPIC": ""}).dlq_topic is None
    assert Config.from_dict({"serve": {"dlq_topic": ""}}).serve.dlq_topic is None


def test_create_topics_comes_from_the_command_line_and_environment():
    assert resolve_serve_config(overrides={"create_topics": True}, environ={}).create_topics
    assert resolve_serve_config(environ={"ANOMALY_SERVE_CREATE_TOPICS": "true"}).create_topics
    assert not resolve_serve_config(environ={}).create_topics


def test_clients_get_kafka_options_under_the_services_own_settings(monkeypatch):
    made = {}

    def fake(kind):
        return lambda **options: made.setdefault(kind, options)

    monkeypatch.setattr(clients, "KafkaConsumer", fake("consumer"))
    monkeypatch.setattr(clients, "KafkaProducer", fake("producer"))
    config = ServeConfig(
        group_id="scorers",
        kafka={"security_protocol": "SSL", "compression_type": "lz4", "batch_size": 65536},
    )
    clients.make_consumer(config, "c1")
    clients.make_producer(config, "p1")
    consumer, producer = made["consumer"], made["producer"]
    assert consumer["security_protocol"] == producer["security_protocol"] == "SSL"
    assert consumer["group_id"] == "scorers" and consumer["enable_auto_commit"] is False
    assert "compression_type" not in consumer
    assert producer["compression_type"] == "lz4" and producer["batch_size"] == 65536


@pytest.mark.slow
def test_secret_is_neither_in_a_saved_bundle_nor_in_anomaly_info(tiny_bundle, tmp_path):
    detector = anomaly.load(tiny_bundle)
    detector.config = detector.config.updated(
        serve={"kafka": {"sasl_plain_username": "scorer", "sasl_plain_password": SECRET}}
    )
    out = detector.save(tmp_path / "model")
    for path in out.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path
    assert anomaly.load(out).config.serve.kafka == {}
    from pipelines.cli import cli

    result = CliRunner().invoke(cli, ["info", str(out)])
    assert result.exit_code == 0 and SECRET not in result.output


# -- client = "confluent": the same options under librdkafka's names ---------------------------


def test_librdkafka_gets_the_kafka_python_options_under_its_own_names_per_client(tmp_path):
    from anomaly.stream.kafka_options import librdkafka_options

    secret = _secret_file(tmp_path)
    kafka = ServeConfig(
        client="confluent",
        kafka={
            "security_protocol": "SASL_SSL",  # every client
            "ssl_cafile": "/etc/kafka/ca.pem",
            "ssl_check_hostname": False,
            "sasl_mechanism": "SCRAM-SHA-512",
            "sasl_plain_username": "scorer",
            "sasl_plain_password_file": str(secret),
            "compression_type": "zstd",  # producer only
            "delivery_timeout_ms": 60_000,
            "fetch_min_bytes": 1,  # consumer only
            "group_instance_id": "scorer-0",
            "allow_auto_create_topics": False,  # consumer and producer (librdkafka: all)
        },
    ).kafka
    common = {
        "security.protocol": "SASL_SSL",
        "ssl.ca.location": "/etc/kafka/ca.pem",
        "ssl.endpoint.identification.algorithm": "none",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "scorer",
        "sasl.password": SECRET,
        "allow.auto.create.topics": "false",
    }
    assert librdkafka_options(kafka, "consumer") == {
        **common,
        "fetch.min.bytes": 1,
        "group.instance.id": "scorer-0",
    }
    assert librdkafka_options(kafka, "producer") == {
        **common,
        "compression.type": "zstd",
        "message.timeout.ms": 60_000,
    }
    assert librdkafka_options(kafka, "admin") == common


def test_every_mapped_name_is_a_kafka_python_option():
    from anomaly.stream.kafka_options import CLIENT_DEFAULTS, LIBRDKAFKA_NAMES

    known = set().union(*CLIENT_DEFAULTS.values())
    assert set(LIBRDKAFKA_NAMES) <= known, set(LIBRDKAFKA_NAMES) - known


def test_a_kafka_python_option_without_a_librdkafka_equivalent_is_refused_naming_it(tmp_path):
    path = _toml(tmp_path, '[serve]\nclient = "confluent"\n[serve.kafka]\nmax_block_ms = 500\n')
    with pytest.raises(ConfigError, match="'max_block_ms' has no librdkafka equivalent"):
        resolve_serve_config(path, environ={})
    # the same option is fine with kafka-python
    assert resolve_serve_config(path, environ={"ANOMALY_SERVE_CLIENT": "kafka-python"}).kafka


def test_librdkafka_names_pass_through_with_client_confluent_only(tmp_path):
    from anomaly.stream.kafka_options import librdkafka_options

    text = '[serve.kafka]\n"ssl.endpoint.identification.algorithm" = "none"\n'
    path = _toml(tmp_path, '[serve]\nclient = "confluent"\n' + text)
    kafka = resolve_serve_config(path, environ={}).kafka
    assert librdkafka_options(kafka, "producer") == {
        "ssl.endpoint.identification.algorithm": "none"
    }
    with pytest.raises(ConfigError, match="is librdkafka's: set client = 'confluent'"):
        resolve_serve_config(_toml(tmp_path, text), environ={})


def test_two_options_for_one_librdkafka_option_are_refused_naming_both(tmp_path):
    """A kafka-python name and librdkafka's dotted name for the same setting: the dotted one
    won without a word (a wrong password then read as 'authentication failed'), where
    kafka-python's two names for one setting were already refused."""
    secret = _secret_file(tmp_path)
    path = _toml(
        tmp_path,
        f'[serve]\nclient = "confluent"\n[serve.kafka]\nsasl_plain_password_file = "{secret}"\n'
        f'"sasl.password" = "{SECRET}x"\n',
    )
    with pytest.raises(ConfigError) as caught:
        resolve_serve_config(path, environ={})
    message = str(caught.value)
    assert (
        "'sasl_plain_password_file' and 'sasl.password' both set librdkafka's 'sasl.password'"
        in message
    )
    assert SECRET not in message


@pytest.mark.parametrize(
    "options",
    [
        {"compression_type": "zstd", "compression.codec": "lz4"},
        {"sasl_mechanism": "PLAIN", "sasl.mechanisms": "SCRAM-SHA-512"},
        {"delivery.timeout.ms": 1000, "message.timeout.ms": 2000},
    ],
)
def test_two_names_for_one_librdkafka_setting_by_its_aliases_are_refused(options):
    from anomaly.stream.kafka_options import check_options

    with pytest.raises(ConfigError, match="give one of them"):
        check_options(options, client="confluent")


def test_a_setting_refused_with_the_environment_applied_does_not_blame_the_environment(tmp_path):
    """The librdkafka option is in the file and the environment chose kafka-python: the
    message said the option came from the environment."""
    path = _toml(tmp_path, '[serve.kafka]\n"ssl.key.password" = "x"\n')
    with pytest.raises(ConfigError) as caught:
        resolve_serve_config(path, environ={"ANOMALY_SERVE_CLIENT": "kafka-python"})
    assert "with the environment (ANOMALY_SERVE_*) applied" in str(caught.value)


@pytest.mark.parametrize(
    ("option", "instead"),
    [
        ("group.id", r"\[serve\] group_id"),
        ("enable.auto.commit", "commits offsets itself"),
        ("acks", "acks=all"),
        ("enable.idempotence", "without idempotence"),
        ("partition.assignment.strategy", "eager"),
        ("isolation.level", "read_committed"),
    ],
)
def test_librdkafka_settings_the_service_makes_are_refused(option, instead):
    with pytest.raises(ConfigError, match=rf"'{option}' is set by the service.*{instead}"):
        Config.from_dict({"serve": {"client": "confluent", "kafka": {option: "x"}}})


def test_librdkafka_secrets_are_masked():
    config = ServeConfig(
        client="confluent", kafka={"sasl.password": SECRET, "sasl.oauthbearer.config": SECRET}
    )
    assert SECRET not in repr(config) and "'sasl.password': '***'" in repr(config)


def test_confluent_clients_get_kafka_options_under_the_services_own_settings():
    required_module("confluent_kafka", "confluent")
    from anomaly.stream.confluent_transport import ConfluentTransport

    config = ServeConfig(
        client="confluent",
        group_id="scorers",
        kafka={"security_protocol": "SSL", "compression_type": "lz4", "batch_size": 65536},
    )
    transport = ConfluentTransport(config, "c1", listener=None)
    consumer, producer = transport._consumer_settings(), transport._producer_settings()
    assert consumer["security.protocol"] == producer["security.protocol"] == "SSL"
    assert consumer["group.id"] == "scorers" and consumer["enable.auto.commit"] is False
    assert consumer["enable.auto.offset.store"] is False
    assert consumer["isolation.level"] == "read_committed" and consumer["check.crcs"] is True
    assert consumer["partition.assignment.strategy"] == "range,roundrobin"
    assert "compression.type" not in consumer
    assert producer["compression.type"] == "lz4" and producer["batch.size"] == 65536
    assert producer["acks"] == "all" and producer["enable.idempotence"] is False
    assert producer["max.in.flight.requests.per.connection"] == 1
    assert producer["partitioner"] == "murmur2_random"


def test_librdkafka_clients_bootstrap_again_within_seconds_once_they_know_no_broker():
    """A broker thawed after a 20 s SIGSTOP answered, while fenced, a metadata request with
    no brokers (1 run in 3): librdkafka dropped the broker it knew, had forgotten the
    bootstrap servers, and the service scored nothing for librdkafka's default of 5 minutes
    ('no usable brokers', broker_lost) while other clients used the broker."""
    required_module("confluent_kafka", "confluent")
    from anomaly.stream.confluent_transport import ConfluentTransport

    transport = ConfluentTransport(ServeConfig(client="confluent"), "c1", listener=None)
    for settings in (transport._consumer_settings(), transport._producer_settings()):
        assert settings.get("metadata.recovery.strategy", "rebootstrap") == "rebootstrap"
        assert settings["metadata.recovery.rebootstrap.trigger.ms"] <= 10_000


def test_librdkafka_before_2_11_is_not_given_the_rebootstrap_trigger(monkeypatch):
    """confluent-kafka >= 2.4 is allowed, but ``metadata.recovery.rebootstrap.trigger.ms``
    came with librdkafka 2.11.0: an older one refuses the unknown property ('No such
    configuration property') and the service did not start."""
    required_module("confluent_kafka", "confluent")
    from anomaly.stream import confluent_transport
    from anomaly.stream.confluent_transport import ConfluentTransport

    monkeypatch.setattr(confluent_transport, "libversion", lambda: ("2.10.1", 0x020A01FF))
    transport = ConfluentTransport(ServeConfig(client="confluent"), "c1", listener=None)
    for settings in (transport._consumer_settings(), transport._producer_settings()):
        assert "metadata.recovery.rebootstrap.trigger.ms" not in settings

"""Start-up of ``anomaly serve`` against the real broker of ``kafka_bootstrap``: a client
that cannot authenticate or shake hands fails in one line that names the bootstrap servers
and no secret; missing topics are created on request, or the error says how to go on."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient

import anomaly
from anomaly.stream import ScoringService, StreamError, kafka_options, listener_probe
from anomaly.stream.clients import answering_servers, check_broker
from tests._support import LogLines

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

REPO_ROOT = Path(__file__).resolve().parents[1]
SECRET = "s3cr3t-Pa55"


def _serve(
    bundle: Path,
    bootstrap: str,
    input_topic: str,
    client: str = "kafka-python",
    broker_wait_s: str = "inf",
    **kafka: str,
):
    """``anomaly serve`` as a process, with Kafka options from ANOMALY_SERVE_KAFKA_*."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANOMALY_SERVE_")}
    env["ANOMALY_SERVE_CLIENT"] = client
    env["ANOMALY_SERVE_BROKER_WAIT_S"] = broker_wait_s
    env.update({f"ANOMALY_SERVE_KAFKA_{k.upper()}": v for k, v in kafka.items()})
    if client == "kafka-python":  # librdkafka has no such option
        env["ANOMALY_SERVE_KAFKA_BOOTSTRAP_TIMEOUT_MS"] = "3000"
    return subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "serve", "--model", str(bundle)]
        + ["--bootstrap-servers", bootstrap, "--input-topic", input_topic]
        + ["--metrics-port", "0", "--create-topics"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _own_lines(stderr: str) -> list[str]:
    """Every line: the CLI holds TensorFlow's start-up lines back (anomaly.backend)."""
    return [line for line in stderr.splitlines() if line]


def _assert_one_line_failure(result, *expected: str) -> None:
    lines = _own_lines(result.stderr)
    errors = [line for line in lines if line.startswith("error: ")]
    assert result.returncode == 2, result.stderr
    assert len(errors) == 1, lines
    for text in expected:
        assert text in errors[0], errors[0]
    assert "Traceback" not in result.stderr
    assert SECRET not in result.stderr + result.stdout
    assert "event=started" not in result.stderr  # never reported ready


def test_tls_handshake_failure_stops_serve_in_one_line_naming_the_servers(
    tiny_bundle, kafka_bootstrap, kafka_topic_factory
):
    result = _serve(
        tiny_bundle,
        kafka_bootstrap,
        kafka_topic_factory(1),
        security_protocol="SSL",  # the test broker's listener is plaintext
        ssl_password=SECRET,
    )
    _assert_one_line_failure(result, "TLS handshake", f"Kafka at {kafka_bootstrap} failed")


@contextlib.contextmanager
def _silent_listener():
    """A port that accepts connections (the system does, for its backlog) and never says a
    word: a port of something else, or a broker frozen as it starts."""
    with socket.create_server(("127.0.0.1", 0), backlog=64) as server:
        yield f"127.0.0.1:{server.getsockname()[1]}"


def test_a_tls_listener_that_never_answers_stops_serve_in_one_line(tiny_bundle):
    """kafka-python puts no deadline on a TLS handshake: the start hung for ever, with no log
    line, /readyz at 503 and anomaly_broker_reachable at 1."""
    with _silent_listener() as silent:
        result = _serve(tiny_bundle, silent, "in", broker_wait_s="0", security_protocol="SSL")
    _assert_one_line_failure(
        result,
        f"Kafka at {silent} accepted the connection but did not answer a TLS handshake within",
    )


def test_a_silent_bootstrap_server_beside_a_good_one_is_passed_over(
    kafka_secure, kafka_topic_factory, caplog
):
    """Named first beside the real broker, a silent server hung the start whenever
    kafka-python chose it to bootstrap from."""
    with _silent_listener() as silent:
        config = _secure_config(kafka_secure, "mtls", kafka_topic_factory(1))
        config = config.model_copy(
            update={"bootstrap_servers": f"{silent},{config.bootstrap_servers}"}
        )
        with caplog.at_level(logging.WARNING, logger="anomaly.stream"):
            servers = answering_servers(config)
        assert servers == kafka_secure["mtls"].bootstrap
        try:
            check_broker(config, servers)
        finally:
            admin = KafkaAdminClient(bootstrap_servers=kafka_secure.bootstrap)
            admin.delete_topics([config.output_topic], raise_errors=False)
            admin.close()
    (line,) = [
        r.getMessage() for r in caplog.records if "bootstrap_server_silent" in r.getMessage()
    ]
    assert line.startswith(f"event=bootstrap_server_silent servers={silent} ")


def test_sasl_refused_by_the_listener_stops_serve_as_an_authentication_failure(
    tiny_bundle, kafka_bootstrap, kafka_topic_factory
):
    result = _serve(
        tiny_bundle,
        kafka_bootstrap,
        kafka_topic_factory(1),
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_plain_username="scorer",
        sasl_plain_password=SECRET,
    )
    _assert_one_line_failure(result, f"authentication failed against Kafka at {kafka_bootstrap}")


def test_librdkafka_refusing_a_password_stops_serve_with_the_error_line_alone(
    kafka_secure, kafka_topic_factory, tiny_bundle, tmp_path
):
    """librdkafka's start-up admin client logged its own 'FAIL ... SASL authentication
    error' line on stderr before the error line, which says the same."""
    wrong = tmp_path / "kafka-password"
    wrong.write_text(SECRET + "\n")
    mode = kafka_secure["sasl_scram512"]
    kafka = {**mode.options, "sasl_plain_password_file": str(wrong)}
    result = _serve(
        tiny_bundle,
        mode.bootstrap,
        kafka_topic_factory(1),
        client="confluent",
        **{name: str(value) for name, value in kafka.items()},
    )
    _assert_one_line_failure(result, f"authentication failed against Kafka at {mode.bootstrap}")
    assert len(_own_lines(result.stderr)) == 1, result.stderr


def _config(bootstrap: str, **serve):
    """Settings for a service on ``bootstrap`` (metrics on a port of the system's choice)."""
    serve = {"bootstrap_servers": bootstrap, "metrics_port": 0, **serve}
    return anomaly.Config().updated(serve=serve).serve


def test_missing_dead_letter_topic_error_names_both_ways_out(kafka_bootstrap, kafka_topic_factory):
    config = _config(
        kafka_bootstrap,
        input_topic=kafka_topic_factory(1),
        output_topic=kafka_topic_factory(1),
        dlq_topic=f"dlq-{uuid.uuid4().hex[:10]}",
    )
    with pytest.raises(StreamError) as caught:
        check_broker(config)
    message = str(caught.value)
    assert "dlq_topic=" in message and "--create-topics" in message
    assert "--dlq-topic ''" in message and 'dlq_topic = ""' in message


@pytest.mark.parametrize("client", ["kafka-python", "confluent"])
@pytest.mark.parametrize("policy", ["compact", "compact,delete"])
def test_a_compacted_dead_letter_topic_is_refused_at_start(
    policy, client, kafka_bootstrap, kafka_topic_factory, tiny_bundle
):
    """Compaction would delete dead letters, and the broker refuses one without a key (the
    service then sent it again and again with its input paused). A topic that only
    deletes is fine."""
    from kafka.admin import NewTopic

    dlq = f"dlq-{uuid.uuid4().hex[:10]}"
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    admin.create_topics([NewTopic(dlq, 1, 1, topic_configs={"cleanup.policy": policy})])
    try:
        config = _config(
            kafka_bootstrap,
            input_topic=kafka_topic_factory(1),
            output_topic=kafka_topic_factory(1),
            dlq_topic=dlq,
            client=client,
            metrics_port=0,
        )
        service = ScoringService(anomaly.load(tiny_bundle), config)
        with pytest.raises(StreamError) as caught:
            service.start()
        message = str(caught.value)
        assert f"{dlq!r} has cleanup.policy={policy}" in message
        assert "cleanup.policy=delete" in message
        admin.alter_configs(  # what the error says to do
            [ConfigResource(ConfigResourceType.TOPIC, dlq, configs={"cleanup.policy": "delete"})]
        )
        service = ScoringService(anomaly.load(tiny_bundle), config)
        service.start()
        service.stop()
        service.run()  # stops at once: closes what start opened
    finally:
        admin.delete_topics([dlq])
        admin.close()


def test_service_starts_without_a_dead_letter_topic_when_it_is_turned_off(
    kafka_bootstrap, kafka_topic_factory
):
    config = _config(
        kafka_bootstrap,
        input_topic=kafka_topic_factory(1),
        output_topic=kafka_topic_factory(1),
        dlq_topic="",
    )
    check_broker(config)  # records-dlq does not exist on the test broker


def test_create_topics_creates_missing_output_dlq_and_alerts_but_not_input(
    kafka_bootstrap, kafka_topic_factory
):
    names = {key: f"{key}-{uuid.uuid4().hex[:10]}" for key in ("output", "dlq", "alerts")}
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    try:
        with pytest.raises(StreamError, match="input topic 'absent-.*' does not exist"):
            absent = f"absent-{uuid.uuid4().hex}"
            check_broker(_config(kafka_bootstrap, input_topic=absent, create_topics=True))
        config = _config(
            kafka_bootstrap,
            input_topic=kafka_topic_factory(1),
            output_topic=names["output"],
            dlq_topic=names["dlq"],
            alerts_topic=names["alerts"],
            create_topics=True,
        )
        check_broker(config)
        assert set(names.values()) <= set(admin.list_topics())
        check_broker(config)  # existing ones are fine the second time
    finally:
        admin.delete_topics(list(names.values()), raise_errors=False)
        admin.close()


def _secure_config(kafka_secure, mode: str, topic: str, **kafka):
    secured = kafka_secure[mode]
    return _config(
        secured.bootstrap,
        input_topic=topic,
        dlq_topic="",
        output_topic=topic + "-out",
        create_topics=True,
        kafka={**secured.options, **kafka},
    )


def test_scram_credentials_from_a_secret_file_pass_the_start_up_check(
    kafka_secure, kafka_topic_factory
):
    config = _secure_config(kafka_secure, "sasl_scram512", kafka_topic_factory(1))
    assert "sasl_plain_password_file" in config.kafka
    try:
        check_broker(config)
    finally:
        admin = KafkaAdminClient(bootstrap_servers=kafka_secure.bootstrap)
        admin.delete_topics([config.output_topic], raise_errors=False)
        admin.close()


@pytest.mark.parametrize("client", ["kafka-python", "confluent"])
def test_wrong_scram_password_refuses_to_start_with_a_one_line_auth_error(
    client, kafka_secure, kafka_topic_factory, tiny_bundle, tmp_path
):
    wrong = tmp_path / "kafka-password"
    wrong.write_text(SECRET + "\n")
    config = _secure_config(
        kafka_secure,
        "sasl_scram512",
        kafka_topic_factory(1),
        sasl_plain_password_file=str(wrong),
    ).model_copy(update={"client": client})
    service = ScoringService(anomaly.load(tiny_bundle), config)
    with pytest.raises(StreamError) as caught:
        service.start()
    message = str(caught.value)
    assert message.startswith(f"authentication failed against Kafka at {config.bootstrap_servers}")
    assert "SCRAM-SHA-512" in message and "\n" not in message and SECRET not in message
    assert not service.ready()


def _listener_mismatch(bundle, config) -> str:
    """The one-line error with which the start stops, within a few seconds although the
    service would wait for ever for a broker that does not answer (``broker_wait_s``)."""
    config = config.model_copy(update={"broker_wait_s": 120.0})
    service = ScoringService(anomaly.load(bundle), config)
    began = time.monotonic()
    with pytest.raises(StreamError) as caught:
        service.start()
    message = str(caught.value)
    assert type(caught.value) is StreamError, message  # not BrokerUnreachable: no outage
    assert time.monotonic() - began < 60, "waited for a broker that was up"
    assert message.startswith(f"cannot talk to Kafka at {config.bootstrap_servers}: ")
    assert "\n" not in message and SECRET not in message and not service.ready()
    return message


@pytest.mark.parametrize("client", ["kafka-python", "confluent"])
def test_tls_alone_against_a_sasl_ssl_listener_names_the_protocol_it_speaks(
    kafka_secure, kafka_topic_factory, tiny_bundle, client
):
    """The TLS handshake succeeds and the broker drops the connection at the first request:
    both clients said 'cannot reach Kafka', and the start waited for a broker that was up."""
    sasl = kafka_secure["sasl_scram512"]
    config = _config(
        sasl.bootstrap,
        input_topic=kafka_topic_factory(1),
        dlq_topic="",
        client=client,
        kafka=kafka_secure["ssl"].options,
    )

    message = _listener_mismatch(tiny_bundle, config)

    assert f"the listener at {sasl.bootstrap} speaks SASL_SSL (SASL mechanisms " in message
    assert message.endswith(
        'but security_protocol is SSL: set security_protocol = "SASL_SSL", sasl_mechanism and '
        "the SASL credentials in [serve.kafka]"
    )


@pytest.mark.parametrize("client", ["kafka-python", "confluent"])
def test_plain_text_against_a_tls_listener_names_the_protocol_it_speaks(
    kafka_secure, kafka_topic_factory, tiny_bundle, client
):
    tls = kafka_secure["ssl"]
    config = _config(tls.bootstrap, input_topic=kafka_topic_factory(1), dlq_topic="", client=client)

    message = _listener_mismatch(tiny_bundle, config)

    assert message.endswith(
        f"the listener at {tls.bootstrap} speaks SSL, but security_protocol is PLAINTEXT: set "
        'security_protocol = "SSL" in [serve.kafka]'
    )


def test_a_sasl_mechanism_the_listener_does_not_offer_is_named_as_the_thing_to_change(
    kafka_secure, kafka_topic_factory, tiny_bundle
):
    """librdkafka's metadata request over OAUTHBEARER failed as a transport error ('cannot
    reach Kafka'), and the start waited for a broker that was up."""
    config = _secure_config(
        kafka_secure, "sasl_scram512", kafka_topic_factory(1), sasl_mechanism="OAUTHBEARER"
    ).model_copy(update={"client": "confluent"})

    message = _listener_mismatch(tiny_bundle, config)

    assert "offers the SASL mechanisms " in message and "SCRAM-SHA-512" in message
    assert message.endswith("not OAUTHBEARER: set sasl_mechanism in [serve.kafka] to one of them")


def test_a_listener_that_agrees_beside_one_that_does_not_is_no_mismatch(kafka_secure):
    """One listener that speaks what the settings say: the clients failed for another
    reason, which is waited for."""
    servers = f"{kafka_secure['sasl_scram512'].bootstrap},{kafka_secure['ssl'].bootstrap}"

    assert listener_probe.mismatch(servers, "SSL", None, 3.0) is None
    assert listener_probe.mismatch(servers, "SASL_SSL", "SCRAM-SHA-512", 3.0) is None


def test_a_mismatch_beside_a_server_that_does_not_answer_is_only_likely(kafka_secure):
    """Brokers restarting beside a leftover server of another kind: the start is not
    stopped on it before broker_wait_s is over."""
    with _silent_listener() as silent:
        servers = f"127.0.0.1:1,{silent},{kafka_secure.bootstrap}"
        found = listener_probe.mismatch(servers, "SASL_SSL", "PLAIN", 1.0)
        alone = listener_probe.mismatch(kafka_secure.bootstrap, "SASL_SSL", "PLAIN", 1.0)

    assert found is not None and not found.certain
    assert found.reason.startswith(f"the listener at {kafka_secure.bootstrap} speaks PLAINTEXT")
    assert alone is not None and alone.certain and alone.reason == found.reason


def test_sasl_without_a_mechanism_on_kafka_python_is_named_as_not_set(kafka_secure):
    """kafka-python has no default mechanism: the listener's are named, not PLAIN."""
    protocol, mechanism = kafka_options.security({"security_protocol": "sasl_ssl"}, "kafka-python")
    sasl = kafka_secure["sasl_scram512"].bootstrap

    found = listener_probe.mismatch(sasl, protocol, mechanism, 3.0)

    assert (protocol, mechanism) == ("SASL_SSL", None)
    assert found is not None and found.certain
    assert "sasl_mechanism is not set: set sasl_mechanism in [serve.kafka]" in found.reason


def test_a_failed_tls_handshake_with_librdkafka_refuses_to_start_in_one_line(
    kafka_secure, kafka_topic_factory, tiny_bundle
):
    """librdkafka (``client = "confluent"``) against the TLS listener without the private CA
    that signed the broker's certificate."""
    options = {k: v for k, v in kafka_secure["ssl"].options.items() if k != "ssl_cafile"}
    config = _config(
        kafka_secure["ssl"].bootstrap,
        input_topic=kafka_topic_factory(1),
        dlq_topic="",
        client="confluent",
        kafka=options,
    )
    message = _tls_handshake_failure(tiny_bundle, config)
    # librdkafka's words are the same for every cause ("certificate verify failed ... verify
    # that ssl.ca.location is correctly configured"); the cause is asked of Python's ssl
    assert "the broker's certificate does not verify: unable to get local issuer" in message


def test_a_wrong_plain_password_is_reported_and_never_reaches_a_log_handler(
    kafka_secure, kafka_topic_factory, tmp_path
):
    """SASL PLAIN sends the password itself. Start-up reads kafka-python's DEBUG records
    of the exchange to tell a refusal from an outage; no handler, however low its level,
    may receive them."""
    wrong = tmp_path / "kafka-password"
    wrong.write_text(SECRET + "\n")
    config = _secure_config(
        kafka_secure, "sasl_plain", kafka_topic_factory(1), sasl_plain_password_file=str(wrong)
    )
    handler = LogLines(logging.DEBUG)
    watched = [logging.getLogger(name) for name in ("kafka.net.connection", "kafka", "")]
    for logger in watched:
        logger.addHandler(handler)
    try:
        with pytest.raises(StreamError, match="^authentication failed against Kafka"):
            check_broker(config)
    finally:
        for logger in watched:
            logger.removeHandler(handler)
    assert not any(SECRET in line for line in handler.lines)
    assert not any("SaslAuthenticateRequest" in line for line in handler.lines)


@pytest.mark.parametrize("client", ["kafka-python", "confluent"])
def test_a_client_certificate_the_broker_refuses_stops_the_start_as_a_tls_failure(
    client, kafka_secure, kafka_topic_factory, tiny_bundle
):
    """Mutual TLS without a client certificate: the broker ends the handshake with an alert
    ("bad certificate"), which the client reads as a dropped connection. It was reported
    after the whole bootstrap timeout as 'cannot reach Kafka ... check that the broker is
    up'."""
    mode = kafka_secure["mtls"]
    options = {k: v for k, v in mode.options.items() if k not in ("ssl_certfile", "ssl_keyfile")}
    config = _config(
        mode.bootstrap,
        input_topic=kafka_topic_factory(1),
        dlq_topic="",
        client=client,
        kafka=options,
    )
    assert "ssl_certfile" in _tls_handshake_failure(tiny_bundle, config)


def _tls_handshake_failure(bundle, config) -> str:
    """The one-line error with which the service's start stops on a failed TLS handshake."""
    service = ScoringService(anomaly.load(bundle), config)
    with pytest.raises(StreamError) as caught:
        service.start()
    message = str(caught.value)
    assert message.startswith(f"TLS handshake with Kafka at {config.bootstrap_servers} failed")
    assert "\n" not in message and not service.ready()
    return message

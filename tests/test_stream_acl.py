"""The service over SASL_SSL as the broker's SASL user when the cluster's ACLs deny that
user something. A topic at start-up: one line saying access was denied, not that the topic
is missing. Its consumer group while running: polled at a bounded rate, nothing lost.

A broker leaves the topics a client may not describe out of its topic list, so an existing
dead-letter topic the user may not write was reported as 'topic(s) missing ...: create them
first, let the service create them with --create-topics', on both clients."""

from __future__ import annotations

import threading
import time

import orjson
import pytest
from kafka.admin import (
    ACL,
    ACLFilter,
    ACLOperation,
    ACLPermissionType,
    ACLResourcePatternType,
    KafkaAdminClient,
    ResourcePattern,
    ResourcePatternFilter,
    ResourceType,
)

import anomaly
from anomaly.stream import ScoringService, StreamError
from tests._support import wait_for

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def _scram_config(kafka_secure, topics: dict[str, str], **serve):
    """The service's settings for the secured broker's SCRAM-SHA-512 listener (metrics on a
    port of the system's choice)."""
    mode = kafka_secure["sasl_scram512"]
    settings = {
        "bootstrap_servers": mode.bootstrap,
        **topics,
        "kafka": dict(mode.options),
        "metrics_port": 0,
    }
    return anomaly.Config().updated(serve={**settings, **serve}).serve


@pytest.mark.parametrize("client", ["kafka-python", "confluent"])
@pytest.mark.parametrize(
    ("denied_key", "operation"),
    [("dlq_topic", ACLOperation.WRITE), ("input_topic", ACLOperation.READ)],
)
def test_a_topic_the_acls_deny_is_named_as_denied_not_missing(
    client, denied_key, operation, kafka_secure, kafka_topic_factory, tiny_bundle
):
    topics = {
        "input_topic": kafka_topic_factory(1, prefix="in"),
        "output_topic": kafka_topic_factory(1, prefix="out"),
        "dlq_topic": kafka_topic_factory(1, prefix="dlq"),
    }
    config = _scram_config(kafka_secure, topics, client=client)
    principal = f"User:{kafka_secure.sasl_username}"
    topic = topics[denied_key]
    admin = KafkaAdminClient(bootstrap_servers=kafka_secure.bootstrap, client_id="pytest-acl")
    try:
        deny = ACL(
            principal=principal,
            host="*",
            operation=operation,
            permission_type=ACLPermissionType.DENY,
            resource_pattern=ResourcePattern(ResourceType.TOPIC, topic),
        )
        assert not admin.create_acls([deny])["failed"]
        service = ScoringService(anomaly.load(tiny_bundle), config)
        with pytest.raises(StreamError) as caught:
            service.start()
    finally:
        pattern = ResourcePatternFilter(ResourceType.TOPIC, topic, ACLResourcePatternType.LITERAL)
        admin.delete_acls([ACLFilter(principal, "*", operation, ACLPermissionType.DENY, pattern)])
        admin.close()
    message = str(caught.value)
    assert message.startswith(
        f"Kafka at {config.bootstrap_servers} denied this client access to topic"
    )
    assert f"{denied_key}={topic!r}" in message and "\n" not in message
    assert "missing" not in message and "does not exist" not in message
    assert not service.ready()


@pytest.mark.parametrize(
    ("client", "event"),
    [("kafka-python", "topic_policy_unknown"), ("confluent", "topic_settings_unknown")],
)
def test_a_dead_letter_topic_whose_settings_the_acls_hide_does_not_stop_the_start(
    client, event, kafka_secure, kafka_topic_factory, tiny_bundle, caplog
):
    """The start-up check reads the dead-letter topic's cleanup policy (a compacted one is
    refused); a principal that may not describe its configuration gets a warning instead."""
    topics = {
        "input_topic": kafka_topic_factory(1, prefix="in"),
        "output_topic": kafka_topic_factory(1, prefix="out"),
        "dlq_topic": kafka_topic_factory(1, prefix="dlq"),
    }
    config = _scram_config(kafka_secure, topics, client=client)
    dlq = topics["dlq_topic"]
    principal = f"User:{kafka_secure.sasl_username}"
    # Any ACL on a topic ends the broker's "everyone, if no ACL is found" for it: all is
    # allowed but reading its configuration.
    acls = [
        ACL(principal, "*", operation, permission, ResourcePattern(ResourceType.TOPIC, dlq))
        for operation, permission in [
            (ACLOperation.ALL, ACLPermissionType.ALLOW),
            (ACLOperation.DESCRIBE_CONFIGS, ACLPermissionType.DENY),
        ]
    ]
    admin = KafkaAdminClient(bootstrap_servers=kafka_secure.bootstrap, client_id="pytest-acl")
    try:
        assert not admin.create_acls(acls)["failed"]
        service = ScoringService(anomaly.load(tiny_bundle), config)
        with caplog.at_level("WARNING", logger="anomaly.stream"):
            service.start()
        service.stop()
        service.run()  # stops at once: closes what start opened
    finally:
        pattern = ResourcePatternFilter(ResourceType.TOPIC, dlq, ACLResourcePatternType.LITERAL)
        admin.delete_acls(
            [ACLFilter(a.principal, "*", a.operation, a.permission_type, pattern) for a in acls]
        )
        admin.close()
    assert any(f"event={event}" in r.getMessage() for r in caplog.records), caplog.text


def test_a_consumer_group_the_acls_deny_is_polled_at_a_bounded_rate_and_loses_nothing(
    kafka_secure, kafka_topic_factory, tiny_bundle
):
    """kafka-python raises GroupAuthorizationFailedError at once on every poll: the loop
    polled again at once, about 400 times a second on one core (8,917 counted in 30 s). It
    now waits a second between such polls; once the ACL is gone every record is scored."""
    from kafka import KafkaConsumer, KafkaProducer

    topics = {
        "input_topic": kafka_topic_factory(1, prefix="in"),
        "output_topic": kafka_topic_factory(1, prefix="out"),
    }
    config = _scram_config(
        kafka_secure, topics, dlq_topic="", group_id=f"denied-{topics['input_topic']}"
    )
    detector = anomaly.load(tiny_bundle)
    producer = KafkaProducer(bootstrap_servers=kafka_secure.bootstrap)
    for i in range(20):
        features = dict.fromkeys(detector.feature_names, 0.0)
        producer.send(topics["input_topic"], orjson.dumps({"id": i, "features": features}))
    producer.flush()
    producer.close()
    principal = f"User:{kafka_secure.sasl_username}"
    pattern = ResourcePattern(ResourceType.GROUP, config.group_id)
    deny = ACL(principal, "*", ACLOperation.READ, ACLPermissionType.DENY, pattern)
    admin = KafkaAdminClient(bootstrap_servers=kafka_secure.bootstrap, client_id="pytest-acl")
    assert not admin.create_acls([deny])["failed"]
    service = ScoringService(detector, config)
    runner = threading.Thread(target=service.run, daemon=True)

    def refused() -> float:
        sample = service.metrics.registry.get_sample_value(
            "anomaly_fetch_errors_total", {"error": "GroupAuthorizationFailedError"}
        )
        return sample or 0.0

    try:
        service.start()
        runner.start()
        first = wait_for(lambda: refused() >= 1 and time.monotonic(), 30, "a refused poll")
        wait_for(lambda: refused() >= 3, 30, "three refused polls")
        assert time.monotonic() - first >= 1.5, "polled again at once"
        admin.delete_acls(
            [
                ACLFilter(
                    principal,
                    "*",
                    ACLOperation.READ,
                    ACLPermissionType.DENY,
                    ResourcePatternFilter(
                        ResourceType.GROUP, config.group_id, ACLResourcePatternType.LITERAL
                    ),
                )
            ]
        )
        wait_for(lambda: service.stats()["scored"] == 20, 60, "every record scored")
    finally:
        service.stop()
        runner.join(30)
        admin.close()
    results = KafkaConsumer(
        topics["output_topic"],
        bootstrap_servers=kafka_secure.bootstrap,
        auto_offset_reset="earliest",
        consumer_timeout_ms=5000,
    )
    assert sorted(orjson.loads(r.value)["id"] for r in results) == list(range(20))
    results.close()

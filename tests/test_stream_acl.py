"""Start-up of the service over SASL_SSL as the broker's SASL user when the cluster's ACLs
deny that user a topic: one line saying access was denied, not that the topic is missing.

A broker leaves the topics a client may not describe out of its topic list, so an existing
dead-letter topic the user may not write was reported as 'topic(s) missing ...: create them
first, let the service create them with --create-topics', on both clients."""

from __future__ import annotations

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

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


@pytest.mark.parametrize("client", ["kafka-python", "confluent"])
@pytest.mark.parametrize(
    ("denied_key", "operation"),
    [("dlq_topic", ACLOperation.WRITE), ("input_topic", ACLOperation.READ)],
)
def test_a_topic_the_acls_deny_is_named_as_denied_not_missing(
    client, denied_key, operation, kafka_secure, kafka_topic_factory, tiny_bundle
):
    mode = kafka_secure["sasl_scram512"]
    topics = {
        "input_topic": kafka_topic_factory(1, prefix="in"),
        "output_topic": kafka_topic_factory(1, prefix="out"),
        "dlq_topic": kafka_topic_factory(1, prefix="dlq"),
    }
    config = (
        anomaly.Config()
        .updated(
            serve={
                "bootstrap_servers": mode.bootstrap,
                **topics,
                "client": client,
                "kafka": dict(mode.options),
            }
        )
        .serve
    )
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
    assert message.startswith(f"Kafka at {mode.bootstrap} denied this client access to topic")
    assert f"{denied_key}={topic!r}" in message and "\n" not in message
    assert "missing" not in message and "does not exist" not in message
    assert not service.ready()

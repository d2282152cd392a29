"""The input topic deleted while the service runs, on the real broker, on both transports:
the service does not create it again by itself (the README: the input topic must exist; the
service never creates it), so whoever deleted it can create it anew with the partitions
they choose, and the service scores what is written there. Meanwhile
``anomaly_assigned_partitions`` says the instance reads nothing (the AnomalyScorerNoPartitions
alert reads it: the per-partition lag series are gone)."""

from __future__ import annotations

import pytest
from kafka import KafkaAdminClient
from kafka.admin import NewTopic

from tests._support import wait_for
from tests.test_stream_service import (
    CLIENTS,
    _config,
    _normal_rows,
    _produce,
    _record,
    _running,
    _scrape,
    detector,
)

pytestmark = [pytest.mark.kafka, pytest.mark.slow]
__all__ = ["detector"]  # the module-scoped fixture, shared with test_stream_service


@pytest.mark.parametrize("client", CLIENTS)
def test_a_deleted_input_topic_is_not_created_again_by_the_service(
    client, kafka_bootstrap, kafka_topic_factory, detector, tiny_bundle_mixing
):
    topics = {
        "input_topic": kafka_topic_factory(2, prefix="in"),
        "output_topic": kafka_topic_factory(1, prefix="out"),
        "dlq_topic": kafka_topic_factory(1, prefix="dlq"),
    }
    name = topics["input_topic"]
    rows = _normal_rows(tiny_bundle_mixing, 30, seed=6)
    messages = [
        (b"k%d" % i, _record(i, r, detector.feature_names, False)) for i, r in enumerate(rows)
    ]
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap, client_id="pytest-deleted")
    try:
        with _running(detector, _config(kafka_bootstrap, topics, client=client)) as service:

            def held() -> float:
                return _scrape(service.metrics_port)[("anomaly_assigned_partitions", ())]

            wait_for(lambda: held() == 2, 60, "the gauge to count the 2 partitions")
            admin.delete_topics([name])
            wait_for(lambda: not service.assignment(), 60, "the deleted topic's partitions to go")
            assert held() == 0
            # The broker may still be deleting it; a service that created it again keeps it.
            wait_for(lambda: name not in admin.list_topics(), 60, "the topic to be deleted")
            admin.create_topics([NewTopic(name, 3, 1)])  # raised TopicAlreadyExistsError
            wait_for(lambda: len(service.assignment()) == 3, 60, "the new topic's 3 partitions")
            assert held() == 3
            sent = _produce(kafka_bootstrap, name, messages)
            assert {p for p, _ in sent} == {0, 1, 2}
            wait_for(
                lambda: service.stats()["scored"] == len(sent), 60, "the new topic's records scored"
            )
    finally:
        admin.close()

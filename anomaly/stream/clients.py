"""The Kafka clients of the service (kafka-python), and the start-up check of the broker.

Settings that matter:

- consumer: auto-commit off (offsets are committed by the service once results are
  acknowledged), ``max_poll_records`` = the micro-batch size, and a short
  ``fetch_max_wait_ms``: kafka-python keeps one fetch in flight per broker, so a long wait on
  caught-up partitions holds back partitions that still have data;
- producer: idempotent with ``acks=all`` (kafka-python's default), a small ``linger_ms`` and
  batches large enough for a micro-batch of results;
- values and keys are bytes in and out (no serializer functions: they are deprecated and
  cost a call per record).
"""

from __future__ import annotations

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.errors import KafkaError

from anomaly.config import ServeConfig
from anomaly.stream.errors import StreamError

#: How long start-up waits for the broker before failing.
STARTUP_TIMEOUT_MS = 10_000
#: Producer request batch size per partition; a micro-batch of 512 results is about 250 kB.
PRODUCER_BATCH_BYTES = 256 * 1024


def check_broker(config: ServeConfig) -> None:
    """Fail fast, naming the problem, when the broker is unreachable or a topic is missing."""
    try:
        admin = KafkaAdminClient(
            bootstrap_servers=config.bootstrap_servers,
            client_id=f"{config.group_id}-startup",
            bootstrap_timeout_ms=STARTUP_TIMEOUT_MS,
            request_timeout_ms=STARTUP_TIMEOUT_MS,
        )
    except KafkaError as exc:
        raise StreamError(
            f"cannot reach Kafka at {config.bootstrap_servers} within "
            f"{STARTUP_TIMEOUT_MS / 1000:.0f} s ({exc}); check bootstrap_servers and that the "
            "broker is up"
        ) from None
    try:
        existing = set(admin.list_topics())
    except KafkaError as exc:
        raise StreamError(
            f"cannot list the topics of Kafka at {config.bootstrap_servers}: {exc}"
        ) from None
    finally:
        admin.close()
    wanted = {
        "input_topic": config.input_topic,
        "output_topic": config.output_topic,
        "dlq_topic": config.dlq_topic,
        "alerts_topic": config.alerts_topic,
    }
    missing = [
        f"{key}={topic!r}" for key, topic in wanted.items() if topic and topic not in existing
    ]
    if missing:
        raise StreamError(
            f"topic(s) missing on Kafka at {config.bootstrap_servers}: {', '.join(missing)}; "
            "create them first (e.g. kafka-topics.sh --create) or point the settings at "
            "existing ones"
        )
    if len({t for t in wanted.values() if t}) < len([t for t in wanted.values() if t]):
        raise StreamError(f"input, output, dead-letter and alerts topics must differ: {wanted}")


def make_consumer(config: ServeConfig, client_id: str) -> KafkaConsumer:
    """A group consumer of the input topic (not yet subscribed)."""
    try:
        return KafkaConsumer(
            bootstrap_servers=config.bootstrap_servers,
            group_id=config.group_id,
            client_id=client_id,
            enable_auto_commit=False,
            auto_offset_reset=config.auto_offset_reset,
            max_poll_records=config.max_batch_size,
            fetch_max_wait_ms=config.fetch_max_wait_ms,
            session_timeout_ms=config.session_timeout_ms,
            heartbeat_interval_ms=min(3_000, config.session_timeout_ms // 3),
            bootstrap_timeout_ms=STARTUP_TIMEOUT_MS,
        )
    except KafkaError as exc:
        raise StreamError(
            f"cannot create the Kafka consumer for {config.bootstrap_servers}: {exc}"
        ) from None


def make_producer(config: ServeConfig, client_id: str) -> KafkaProducer:
    """The producer of results, alerts and dead-letter records."""
    try:
        return KafkaProducer(
            bootstrap_servers=config.bootstrap_servers,
            client_id=client_id,
            linger_ms=config.linger_ms,
            batch_size=PRODUCER_BATCH_BYTES,
            bootstrap_timeout_ms=STARTUP_TIMEOUT_MS,
        )
    except KafkaError as exc:
        raise StreamError(
            f"cannot create the Kafka producer for {config.bootstrap_servers}: {exc}"
        ) from None

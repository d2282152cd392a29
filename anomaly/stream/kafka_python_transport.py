"""The loop's transport on kafka-python (``[serve] client = "kafka-python"``, the default).

Its clients are made by ``anomaly.stream.clients`` (settings and why). What this module adds
to them for the loop:

- **Records** are kafka-python's ``ConsumerRecord``s, used as they are.
- **Acknowledgements** come on the producer's sender thread, as callbacks on each send's
  future, which report to the message (``Outgoing.acknowledged`` / ``refused``).
- **Rebalances** reach the listener from kafka-python's ``AsyncConsumerRebalanceListener``
  while the loop is blocked in ``poll`` (or ``close``); the revoke commit is awaited there
  (a blocking commit would wait on the thread that must read its answer).
- **A batch it cannot read** (a failed checksum, a payload its codec cannot unpack, a bomb
  stopped by ``anomaly.stream.codecs``) makes ``poll`` raise from the partition's record
  iterator, which is dead afterwards: polling again without a seek would spin on it for
  ever. The record at that partition's position becomes an ``Unreadable`` and the consumer
  seeks past it; each offset of such a batch is skipped in turn, so each gets its own dead
  letter. A missing codec library stops the service (``StreamError``).
- **Sends** block up to ``max_block_ms`` when a topic has no metadata (deleted, not
  authorised); the next sends to it then fail at once for ``RETRY_INTERVAL_S``, so one
  batch does not block the loop once per message.
- **Output partitions** are picked once per key from a cache (``partitioning``): kafka-python
  hashes every key in pure Python otherwise.
- **The cluster is reachable** while the consumer's network client has a live connection
  to a broker (no public call for that in kafka-python).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from kafka import TopicPartition as KafkaTopicPartition
from kafka.consumer.subscription_state import AsyncConsumerRebalanceListener
from kafka.errors import (
    CorruptRecordError,
    InvalidRecordError,
    KafkaError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    UnsupportedCodecError,
)
from kafka.structs import OffsetAndMetadata

from anomaly.stream import codecs, header_names
from anomaly.stream.clients import (
    answering_servers,
    check_broker,
    make_consumer,
    make_producer,
    make_reader,
)
from anomaly.stream.delivery import RETRY_INTERVAL_S
from anomaly.stream.errors import StreamError, describe_error
from anomaly.stream.partitioning import KeyPartitions
from anomaly.stream.restore import PartitionRanges
from anomaly.stream.transport import TopicPartition, Transport, Unreadable

log = logging.getLogger("anomaly.stream")
codecs.install()  # a compressed batch may not unpack to more than codecs.MAX_BATCH_BYTES
header_names.install()  # a header name that is not UTF-8 is read, not the batch given up

#: Errors that belong to the message itself: sending it again cannot succeed.
RECORD_ERRORS = (
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    InvalidRecordError,
    CorruptRecordError,
)


def is_record_error(error: Any) -> bool:
    """Whether kafka-python's ``error`` belongs to the message (``RECORD_ERRORS``)."""
    return isinstance(error, RECORD_ERRORS)


def _skip_unreadable(consumer) -> tuple[KafkaTopicPartition, int] | None:
    """After ``consumer.poll`` raised while unpacking a fetched batch: the partition and
    offset of the record it could not read, where its fetcher stopped (only its
    ``_next_partition_records`` knows), with the consumer moved past that record. None when
    no partition being read is at fault."""
    fetcher = getattr(consumer, "_fetcher", None)  # noqa: SLF001 (see docstring)
    part = getattr(fetcher, "_next_partition_records", None)
    if not part or part.topic_partition not in consumer.assignment():
        return None
    tp = part.topic_partition
    offset = consumer.position(tp)
    consumer.seek(tp, offset + 1)
    return tp, offset


def _kafka(tp: TopicPartition) -> KafkaTopicPartition:
    return KafkaTopicPartition(tp.topic, tp.partition)


def _ours(partitions) -> set[TopicPartition]:
    return {TopicPartition(tp.topic, tp.partition) for tp in partitions}


#: Wait after a poll that failed with no record at fault (a consumer group the cluster's
#: ACLs refuse, ...): kafka-python raises the same error at once on every poll, and the loop
#: polled again at once, about 400 times a second on one core.
POLL_ERROR_BACKOFF_S = 1.0


class KafkaPythonTransport(Transport):
    name = "kafka-python"
    stalls = True  # 3.0.12 can leave a rebalance unfinished (ScoringService._rejoin_if_stalled)

    def __init__(self, config, client_id, listener):
        super().__init__(config, client_id, listener)
        self._consumer = None
        self._producer = None
        self._output_partitions: KeyPartitions | None = None
        self._topics_without_metadata: dict[str, float] = {}  # topic -> until when
        self.max_message_bytes = 0
        self._servers: str | None = None  # bootstrap servers that answer (``check``)

    # -- start-up and shutdown ---------------------------------------------------------------

    def check(self) -> None:
        self._servers = answering_servers(self.config)
        check_broker(self.config, self._servers)

    def open(self) -> None:
        config = self.config
        self._producer = make_producer(config, self.client_id, self._servers)
        _honour_auto_create(self._producer._metadata, self._producer.config)  # noqa: SLF001
        self.max_message_bytes = self._producer.config["max_request_size"]
        for topic in (config.output_topic, config.dlq_topic, config.alerts_topic):
            if topic:  # fetch metadata now, not while the first batch waits
                self._producer.partitions_for(topic)
        self._output_partitions = KeyPartitions(self._producer, config.output_topic)
        self._consumer = make_consumer(config, self.client_id, self._servers)
        _honour_auto_create(self._consumer._client.cluster, self._consumer.config)  # noqa: SLF001
        # Known partitions before joining, or the first assignment can come back empty.
        if not self._consumer.partitions_for_topic(config.input_topic):
            raise StreamError(f"no partitions found for input topic {config.input_topic!r}")
        self._subscribe()
        # A blocking metadata refresh after subscribing: kafka-python's group coordinator
        # snapshots the topic's partitions from it. Without it the first assignment is made
        # from an empty snapshot and a second rebalance follows at once, which kafka-python
        # 3.0.12 can leave unfinished (see ScoringService._rejoin_if_stalled).
        self._consumer.topics()

    def _subscribe(self) -> None:
        self._consumer.subscribe([self.config.input_topic], listener=_RebalanceListener(self))

    def close(self, deadline: float) -> None:
        remaining_ms = max(100, int((deadline - time.monotonic()) * 1000))
        if self._consumer is not None:
            try:
                self._consumer.close(autocommit=False, timeout_ms=remaining_ms)
            except Exception as exc:  # noqa: BLE001 (closing must go on)
                log.warning("event=close_error client=consumer error=%r", exc)
            self._consumer = None
        if self._producer is not None:
            producer, self._producer = self._producer, None
            try:
                producer.close(timeout=max(0.1, deadline - time.monotonic()))
            except Exception as exc:  # noqa: BLE001
                log.warning("event=close_error client=producer error=%r", exc)

    # -- consuming -----------------------------------------------------------------------------

    def resubscribe(self) -> None:
        self._consumer.unsubscribe()
        self._subscribe()

    def poll(self, timeout_ms: int, max_records: int) -> list:
        try:
            polled = self._consumer.poll(timeout_ms=timeout_ms, max_records=max_records)
        except UnsupportedCodecError as exc:
            # A deployment problem, not a record's: skipping would dead-letter the stream.
            raise StreamError(
                f"cannot read the input: {exc}; install the codec packages this release "
                "depends on (python-snappy, lz4, zstandard); nothing past it was committed"
            ) from None
        except Exception as exc:  # noqa: BLE001 (a corrupt batch raises the codec's own errors)
            unreadable = self._unreadable(exc) if codecs.is_unpacking_error(exc) else None
            self.listener.fetch_failed(type(exc).__name__, describe_error(exc), unreadable)
            if unreadable is None:
                time.sleep(POLL_ERROR_BACKOFF_S)
            return [unreadable] if unreadable is not None else []
        if len(polled) == 1:
            return next(iter(polled.values()))
        return [r for part in polled.values() for r in part]

    def _unreadable(self, error: BaseException) -> Unreadable | None:
        """After ``poll`` raised while unpacking a fetched batch: the record it could not
        read (``_skip_unreadable``), to be dead-lettered, or None. The dead letter goes with
        the micro-batch, after the records of the same partition polled before it, so no
        offset is committed before theirs."""
        at_fault = _skip_unreadable(self._consumer)
        if at_fault is None:
            return None
        tp, offset = at_fault
        return Unreadable(
            tp.topic,
            tp.partition,
            offset,
            f"the consumer could not read its batch: {describe_error(error)}",
        )

    def seek(self, partition: TopicPartition, offset: int) -> None:
        self._consumer.seek(_kafka(partition), offset)

    def pause(self) -> None:
        self._consumer.pause(*self._consumer.assignment())

    def resume(self) -> None:
        self._consumer.resume(*self._consumer.paused())

    def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self._consumer.commit_async(_commit_offsets(offsets), callback=self._on_commit)

    def _on_commit(self, offsets, response) -> None:
        error = response if isinstance(response, BaseException) else None
        self.listener.committed({TopicPartition(*tp): m.offset for tp, m in offsets.items()}, error)

    def commit_sync(self, offsets: dict[TopicPartition, int], timeout_s: float) -> None:
        self._consumer.commit(_commit_offsets(offsets), timeout_ms=max(1, int(timeout_s * 1000)))

    def high_watermark(self, partition: TopicPartition) -> int | None:
        try:
            return self._consumer.highwater(_kafka(partition))
        except KafkaError:
            return None

    def end_offsets(
        self, partitions: list[TopicPartition], timeout_s: float
    ) -> dict[TopicPartition, int]:
        try:
            ends = self._consumer.end_offsets(
                [_kafka(p) for p in partitions], timeout_ms=max(1, int(timeout_s * 1000))
            )
        except Exception:  # noqa: BLE001 (3.0.12 raises KeyError for a partition without a
            return {}  # leader, mid-election; the lag keeps the high watermark it saw then)
        return {TopicPartition(tp.topic, tp.partition): end for tp, end in ends.items()}

    def position(self, partition: TopicPartition) -> int | None:
        try:
            return self._consumer.position(_kafka(partition), timeout_ms=50)
        except KafkaError:
            return None

    def read_before(
        self,
        starts: dict[TopicPartition, int],
        count: int,
        timeout_s: float,
        cancelled: Callable[[], bool],
    ) -> tuple[list, set[TopicPartition]]:
        deadline = time.monotonic() + timeout_s

        def left_ms() -> int:
            return max(1, int((deadline - time.monotonic()) * 1000))

        reader = make_reader(self.config, f"{self.client_id}-restore", self._servers, left_ms())
        try:
            firsts = reader.beginning_offsets([_kafka(tp) for tp in starts], timeout_ms=left_ms())
            ranges = PartitionRanges(starts, count, {tp: firsts[_kafka(tp)] for tp in starts})
            reader.assign([_kafka(tp) for tp in ranges.starts])
            for tp, start in ranges.starts.items():
                reader.seek(_kafka(tp), start)
            while ranges.reading(deadline, cancelled):
                try:
                    polled = reader.poll(timeout_ms=200)
                except Exception as exc:  # noqa: BLE001 (a batch it cannot read: see poll)
                    at_fault = _skip_unreadable(reader) if codecs.is_unpacking_error(exc) else None
                    failed = None if at_fault is None else TopicPartition(*at_fault[0])
                    if failed is None or failed in ranges.open:  # else read whole already
                        log.warning(
                            "event=restore_read_failed partition=%s error=%s action=start_afresh",
                            "all" if failed is None else failed.partition,
                            describe_error(exc),
                        )
                    if failed is None:
                        break
                    ranges.fail(failed)
                    reader.pause(at_fault[0])  # the others are read on
                    continue
                for tp, records in polled.items():
                    ranges.take(TopicPartition(tp.topic, tp.partition), records)
                for tp in list(ranges.open):
                    ranges.reached(tp, reader.position(_kafka(tp), timeout_ms=left_ms()))
            return ranges.complete()
        finally:
            reader.close(autocommit=False, timeout_ms=1_000)

    def connected(self) -> bool:
        """kafka-python has no public call for this; its network client answers
        ``connected`` per node. A consumer that is fetching keeps a connection to each
        partition leader, so none connected for a few seconds means the cluster is out of
        reach."""
        if self._consumer is None:
            return False
        client = self._consumer._client  # noqa: SLF001 (no public equivalent in kafka-python)
        return any(client.connected(broker.node_id) for broker in client.cluster.brokers())

    def tick(self) -> None:
        if self._output_partitions is not None:
            self._output_partitions.refresh()  # the output topic may have grown

    # -- producing -----------------------------------------------------------------------------

    def send(self, message) -> None:
        until = self._topics_without_metadata.get(message.topic)
        if until is not None and time.monotonic() < until:
            raise KafkaTimeoutError(f"no metadata for topic {message.topic!r} a moment ago")
        try:
            future = self._producer.send(
                message.topic, value=message.value, key=message.key, partition=message.partition
            )
        except KafkaTimeoutError:
            self._topics_without_metadata[message.topic] = time.monotonic() + RETRY_INTERVAL_S
            raise
        future.add_callback(message.acknowledged)
        future.add_errback(message.refused)

    def partitioner(self, topic: str):
        if topic == self.config.output_topic and self._output_partitions is not None:
            return self._output_partitions
        return super().partitioner(topic)

    def flush(self, timeout_s: float) -> bool:
        if self._producer is None:
            return True
        try:
            self._producer.flush(timeout=timeout_s)
        except KafkaTimeoutError:
            return False
        return True

    def is_record_error(self, error: Any) -> bool:
        return is_record_error(error)

    def describe(self, error: Any) -> str:
        return type(error).__name__


def _honour_auto_create(cluster: Any, client_config: dict[str, Any]) -> None:
    """kafka-python 3.0.12 makes a client's cluster metadata without its
    ``allow_auto_create_topics`` (no public way to set it there), so each client asked the
    broker to create every topic it looked up, whatever it was given."""
    cluster.config["allow_auto_create_topics"] = client_config["allow_auto_create_topics"]


def _commit_offsets(offsets: dict[TopicPartition, int]) -> dict:
    return {_kafka(tp): OffsetAndMetadata(o, "", -1) for tp, o in offsets.items()}


class _RebalanceListener(AsyncConsumerRebalanceListener):
    """Runs while the loop is blocked in ``poll`` (or ``close``); async so the revoke
    commit can be awaited."""

    def __init__(self, transport: KafkaPythonTransport):
        self._transport = transport

    async def on_partitions_revoked(self, revoked):
        transport = self._transport
        revoked = _ours(revoked)
        offsets = transport.listener.partitions_revoking(revoked) if revoked else {}
        committed = 0
        if offsets:
            consumer = transport._consumer  # noqa: SLF001 (its own transport's)
            try:
                await consumer.commit_async(_commit_offsets(offsets), callback=transport._on_commit)
                committed = len(offsets)
            except Exception as exc:  # noqa: BLE001 (any failure: the next owner re-scores)
                log.warning("event=commit_failed on=revoke error=%s", type(exc).__name__)
        transport.listener.partitions_revoked(revoked, committed)

    async def on_partitions_assigned(self, assigned):
        transport = self._transport
        seeks = transport.listener.partitions_assigned(_ours(assigned))
        for tp, offset in seeks.items():
            transport.seek(tp, offset)

    async def on_partitions_lost(self, lost):
        self._transport.listener.partitions_lost(_ours(lost))

"""The output partition of each result, picked once per key instead of once per record.

Results keep their input record's key and go to the partition Kafka's default partitioner
would choose for it (murmur2 of the key modulo the partition count, as in the Java client),
so consumers of the output topic see each entity on one partition. kafka-python computes
that hash in pure Python on every ``send``; passing the partition explicitly, from a cache,
takes about a third off the cost of a ``send`` (the loop's largest per-record cost).
Records without a key are left to the producer (sticky partitioning). A long key is
remembered by its digest (``entities.entity_of``): hashing it again would cost about half a
millisecond per kilobyte on every record.
"""

from __future__ import annotations

from collections.abc import Hashable

from kafka import KafkaProducer
from kafka.errors import KafkaError
from kafka.partitioner.default import murmur2

from anomaly.stream.entities import entity_of

#: Keys remembered; the cache is emptied when it grows past this.
MAX_KEYS = 100_000


class KeyPartitions:
    """``partitions(key)``: the partition of ``key`` on ``topic`` (``None`` for no key)."""

    def __init__(self, producer: KafkaProducer, topic: str):
        self._producer = producer
        self.topic = topic
        self._cache: dict[Hashable, int] = {}  # by entity: bounded whatever keys come
        self._partitions: list[int] = []
        self.refresh()

    def refresh(self) -> None:
        """Re-read the topic's partitions (cached metadata); forget keys if they changed.
        Without metadata for the topic (deleted, not authorised) the partitions stay as
        they were; sending to it says what is wrong."""
        try:
            partitions = sorted(self._producer.partitions_for(self.topic) or ())
        except KafkaError:
            return
        if partitions != self._partitions:
            self._partitions = partitions
            self._cache.clear()

    def __call__(self, key: bytes | None) -> int | None:
        if key is None:
            return None
        entity = entity_of(key)
        partition = self._cache.get(entity)
        if partition is None:
            if not self._partitions:
                return None
            partition = self._partitions[(murmur2(key) & 0x7FFFFFFF) % len(self._partitions)]
            if len(self._cache) >= MAX_KEYS:
                self._cache.clear()
            self._cache[entity] = partition
        return partition

"""What the scoring loop needs from a Kafka client library, behind one interface.

The service (``anomaly.stream.service``) runs one loop whatever the client; a ``Transport``
is the part that knows the library: how its consumer and producer are made and configured,
what a record looks like, how a message is handed over and its acknowledgement reported,
how offsets are committed, partitions paused and sought, rebalances reported, a batch it
cannot read turned into ``Unreadable`` records, and whether the cluster is reachable.

Two implementations, chosen by ``[serve] client``:

- ``"kafka-python"`` (the default): ``anomaly.stream.kafka_python_transport``;
- ``"confluent"``: confluent-kafka, on librdkafka (the ``confluent`` extra):
  ``anomaly.stream.confluent_transport``.

Both give the loop the same guarantees (at least once, dead letters, rebalances, back-pressure,
every codec; see the README's "Streaming service") and the same ``[serve.kafka]`` options by
kafka-python's names (``anomaly.stream.kafka_options`` maps them to librdkafka's).

Threads. kafka-python reports acknowledgements on its sender thread and rebalances on the
thread that polls; librdkafka reports both only while the loop serves it (``poll`` for the
consumer's rebalances, errors and statistics; ``serve`` and ``flush`` for the producer's
delivery reports), on the loop's own thread. The ``Listener`` methods and ``Outgoing.report``
are written to be safe either way.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple, Protocol

from anomaly.stream import client_logs

if TYPE_CHECKING:
    from anomaly.config import ServeConfig
    from anomaly.stream.delivery import Outgoing

#: ``[serve] client`` values.
CLIENTS = ("kafka-python", "confluent")


class TopicPartition(NamedTuple):
    """One partition of a topic. Equal to kafka-python's ``TopicPartition`` of the same
    values (both are plain named tuples), so either can key the same dict."""

    topic: str
    partition: int


class Record(NamedTuple):
    """A consumed record as the loop reads it (kafka-python's ``ConsumerRecord`` has these
    fields too, and is used as it is)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: int | None
    """Kafka timestamp in milliseconds, or None when the record has none."""


@dataclass(frozen=True)
class Unreadable:
    """A record the consumer could not read, in its place among the records polled: where
    it was and why (its key, value and timestamp are unknown). The loop dead-letters it
    (reason ``unreadable``) and commits past it with its neighbours."""

    topic: str
    partition: int
    offset: int
    detail: str
    key: None = None
    value: None = None
    timestamp: None = None


class Listener(Protocol):
    """What a transport tells the loop (``ScoringService`` implements it)."""

    def partitions_revoking(self, partitions: set[TopicPartition]) -> dict[TopicPartition, int]:
        """Partitions are about to go: wait (bounded) for results in flight and return the
        settled offsets of ``partitions`` to commit before they go."""

    def partitions_revoked(self, partitions: set[TopicPartition], committed: int) -> None:
        """They went (``committed``: partitions whose offsets were committed on the way)."""

    def partitions_assigned(self, partitions: set[TopicPartition]) -> dict[TopicPartition, int]:
        """They are ours now; returns where to start reading some of them (offsets)."""

    def partitions_lost(self, partitions: set[TopicPartition]) -> None:
        """They were taken away without a chance to commit (session expired)."""

    def committed(self, offsets: dict[TopicPartition, int], error: Any) -> None:
        """The outcome of a commit of ``offsets``: ``error`` None when it succeeded."""

    def fetch_failed(self, kind: str, detail: str, unreadable: Unreadable | None) -> None:
        """A poll met an error: ``kind`` names it (the metric's label), ``detail`` describes
        it; ``unreadable`` is the record dead-lettered in its place, if any."""


class Transport(ABC):
    """One Kafka client library under the loop: a group consumer of the input topic and a
    producer of results, alerts and dead letters (see the module docstring).

    ``open`` makes the clients and subscribes; ``close`` closes them within a deadline.
    """

    name: ClassVar[str]
    stalls: ClassVar[bool] = False
    """The client can leave a rebalance unfinished, so the loop subscribes afresh when it
    has been without partitions for a session timeout (``resubscribe``)."""
    max_message_bytes: int
    """The largest message the producer sends (its request limit); results and dead
    letters are cut to fit below it."""

    def __init__(self, config: ServeConfig, client_id: str, listener: Listener):
        self.config = config
        self.client_id = client_id
        self.listener = listener

    # -- start-up and shutdown ---------------------------------------------------------------

    @abstractmethod
    def check(self) -> None:
        """Fail fast with a one-line ``StreamError``: the broker unreachable, credentials or
        the TLS handshake refused, a topic missing (created with ``create_topics``)."""

    @abstractmethod
    def open(self) -> None:
        """Make the producer and the consumer and subscribe to the input topic."""

    @abstractmethod
    def close(self, deadline: float) -> None:
        """Close the consumer (leaving the group; its revoke commits what is settled), then
        the producer, by ``deadline`` (``time.monotonic()``)."""

    # -- consuming -----------------------------------------------------------------------------

    def resubscribe(self) -> None:  # noqa: B027 (only for a client that ``stalls``)
        """Leave the group and join it afresh (a rebalance that never finished)."""

    @abstractmethod
    def poll(self, timeout_ms: int, max_records: int) -> list:
        """Up to ``max_records`` records, waiting at most ``timeout_ms`` for the first one:
        ``Record``-like objects, with an ``Unreadable`` in place of a record the client could
        not read. Rebalances are reported to the listener during the call. Raises
        ``StreamError`` only when the service cannot go on (a codec library missing)."""

    @abstractmethod
    def seek(self, partition: TopicPartition, offset: int) -> None:
        """Read ``partition`` from ``offset`` next."""

    @abstractmethod
    def pause(self) -> None:
        """Stop fetching every assigned partition (back-pressure)."""

    @abstractmethod
    def resume(self) -> None:
        """Fetch the paused partitions again."""

    @abstractmethod
    def commit(self, offsets: dict[TopicPartition, int]) -> None:
        """Commit ``offsets`` (next offset to read, per partition) asynchronously; the
        outcome goes to ``listener.committed``."""

    @abstractmethod
    def commit_sync(self, offsets: dict[TopicPartition, int], timeout_s: float) -> None:
        """Commit ``offsets`` and wait; raises the client's error when it failed."""

    @abstractmethod
    def high_watermark(self, partition: TopicPartition) -> int | None:
        """The partition's high watermark as last seen (no request), or None."""

    @abstractmethod
    def end_offsets(
        self, partitions: list[TopicPartition], timeout_s: float
    ) -> dict[TopicPartition, int]:
        """The partitions' end offsets, asked of the broker: the cached high watermark is
        only refreshed by fetching, which a paused partition does not do, nor one whose
        records the consumer still holds. Within ``timeout_s`` in all; a partition not
        answered in time is left out."""

    @abstractmethod
    def position(self, partition: TopicPartition) -> int | None:
        """The next offset the consumer will read from ``partition``, or None."""

    @abstractmethod
    def read_before(
        self,
        starts: dict[TopicPartition, int],
        count: int,
        timeout_s: float,
        cancelled: Callable[[], bool],
    ) -> tuple[list, set[TopicPartition]]:
        """The records of each partition in ``starts`` just before its offset there (the
        last ``count`` offsets, fewer where the partition's log begins later), in order per
        partition, read by a consumer of their own outside the group that commits nothing:
        the loop's consumer, its positions and its group are untouched
        (``anomaly.stream.restore``). Returns the records of the partitions read whole
        within ``timeout_s``, or before ``cancelled()`` (a stop) is true, and the partitions
        that were not (their records are left out). Raises if the reader cannot be made or
        the partitions' first offsets cannot be asked (the client's error, or
        ``StreamError``)."""

    @abstractmethod
    def connected(self) -> bool:
        """Whether the consumer has a live connection to a broker of the cluster."""

    def tick(self) -> None:  # noqa: B027 (a hook: nothing to do by default)
        """Called about once a second: refresh what the transport caches."""

    # -- producing -----------------------------------------------------------------------------

    @abstractmethod
    def send(self, message: Outgoing) -> None:
        """Hand ``message`` to the producer. Its outcome is reported once, later, through
        ``message.report`` (or ``acknowledged`` / ``refused``); an exception here means
        the attempt failed at once and no report follows."""

    def partitioner(self, topic: str) -> Callable[[bytes | None], int | None]:
        """A function giving the partition of ``topic`` for a key, or None to let the
        producer place it (by murmur2 of the key, as the Java client does)."""
        return _unplaced

    def serve(self) -> None:  # noqa: B027 (kafka-python reports on its own thread)
        """Let the producer report what it has to (librdkafka's delivery reports)."""

    @abstractmethod
    def flush(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for every message handed over to be acknowledged or
        refused (and reported); True when none is left."""

    @abstractmethod
    def is_record_error(self, error: Any) -> bool:
        """Whether the producer refused a message for what it is (too large for the topic,
        an invalid record): sending it again cannot succeed."""

    @abstractmethod
    def describe(self, error: Any) -> str:
        """A short name of the client's error, for logs and dead letters."""


def _unplaced(_key: bytes | None) -> None:
    return None


def make_transport(config: ServeConfig, client_id: str, listener: Listener) -> Transport:
    """The transport of ``config.client``; its library's log lines hold back repeats."""
    if config.client == "confluent":
        from anomaly.stream.confluent_transport import ConfluentTransport as chosen
    else:
        from anomaly.stream.kafka_python_transport import KafkaPythonTransport as chosen
    client_logs.hold_back_repeats()
    return chosen(config, client_id, listener)

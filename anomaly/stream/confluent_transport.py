"""The loop's transport on confluent-kafka, librdkafka's Python client
(``[serve] client = "confluent"``, the ``confluent`` extra).

librdkafka does its network work in C threads of its own, so the loop's Python thread spends
about a fifth of kafka-python's time per record on Kafka (``pipelines.bench_stream``). The
settings mirror kafka-python's (``clients``), for the same reasons:

- consumer: auto-commit and the offset store off (the loop commits the offsets whose results
  are acknowledged), ``isolation.level=read_committed``, ``check.crcs`` on (librdkafka's
  default is off; kafka-python always checks), the micro-batch's fetch wait
  (``[serve] fetch_max_wait_ms``), the session of ``[serve] session_timeout_ms``, and eager
  assignment (``range,roundrobin``, kafka-python's assignors): instances on either client
  can share a group, so a deployment can move from one to the other a pod at a time;
- producer: ``acks=all``, not idempotent, one request in flight per connection (a key's
  results stay in order across retries), ``[serve] linger_ms``, batches of 256 KB,
  ``message.max.bytes`` and ``message.timeout.ms`` at kafka-python's defaults (1 MiB,
  120 s), and keys placed by murmur2 as the Java client does (librdkafka's default
  partitioner hashes with CRC32);
- both: reconnect backoff capped at 1 s (librdkafka's default is 10 s), Nagle off (as
  kafka-python), and the ``[serve.kafka]`` options mapped to librdkafka's names
  (``kafka_options.librdkafka_options``). Secrets go to librdkafka only; it never logs them.

How librdkafka differs, and what this module does about it:

- **Callbacks run on the loop's thread**, inside its calls: rebalances, errors, statistics
  and commit results inside the consumer's ``poll``/``consume``; delivery reports inside
  the producer's ``poll``/``flush`` (``serve`` and ``flush``, each loop iteration).
- **Records**: a ``poll`` waits for the first message, then takes what is already fetched
  (``consume`` without waiting), as kafka-python's ``poll`` returns at once what it has.
- **A batch it cannot read** is reported as a consumer error in the stream of messages,
  per partition: ``_BAD_MSG`` when its CRC fails (with ``check.crcs``), ``_BAD_COMPRESSION``
  when its codec cannot unpack it (or, for zstd, it would unpack past
  ``receive.message.max.bytes``, set to ``codecs.MAX_BATCH_BYTES``; gzip and lz4 batches
  librdkafka unpacks whole). librdkafka does not move past it: it fetches it again and
  again, and after a CRC failure its reader loses its place in the fetch (error reports
  with nonsense offsets, then a fetch out of range). So, as on kafka-python, the record at
  the partition's position is dead-lettered (``Unreadable``) and the consumer seeks past
  it; what the same poll returned after it for that partition is dropped (it is fetched
  again), and so is anything older than where a partition was sought to. Each offset of
  the batch gets its own dead letter. librdkafka's own offset reset is off
  (``auto.offset.reset=error``): after such a fetch it would start the partition again from
  its start (or skip to its end); ``_reset`` puts it back where the loop was instead, and
  applies ``[serve] auto_offset_reset`` only where there is no position (no committed
  offset yet, or one whose records the broker says were deleted); a position past the
  partition's end starts at its end.
- **The cluster is reachable** while librdkafka's statistics (every second) show a broker
  connection up; its error callback's ``_ALL_BROKERS_DOWN`` counts as lost at once.
- **Rebalances**: ``on_revoke`` flushes the producer and commits synchronously (allowed in
  the callback, unlike kafka-python's); ``on_assign`` starts reading where the listener says
  (by assigning with offsets); ``on_lost`` drops what was in hand. librdkafka rejoins by
  itself after its session expired (a broker outage), and never leaves a rebalance
  unfinished as kafka-python 3.0.12 can: the loop does not subscribe afresh for it (that
  only made the group wait for the old member).
- **A consumer that knows no broker is replaced.** A broker shutting down can answer a
  metadata request with no brokers; librdkafka (its issue #5301) then drops every broker
  it knew, and a consumer never bootstraps again. One that has known no broker for
  ``CONSUMER_FORGOT_BROKERS_S`` and holds no partition (its session has expired) is
  replaced by a new one, subscribed afresh (``event=consumer_replaced``).
- **A producer that stops delivering is replaced.** When a partition's leader is briefly
  unknown (a broker's controlled shutdown, a fenced broker), a produce response can name
  leader -1; librdkafka (2.16 and earlier, its issue #5430) then leaves that partition
  without a leader for good, and its messages wait until they time out, are sent again and
  wait again: the service paused its input, never to resume. So while messages are owed and
  the cluster is reachable, ``PRODUCER_STALL_S`` (plus ``[serve] linger_ms``) without a
  delivery report (other than a timeout's) replaces the producer: the old one's messages
  are purged, each reported as not sent, and ``delivery`` sends them again on the new one
  (a message in flight may arrive twice; at least once). A producer that stalls again
  waits twice as long before the next replacement, up to ``PRODUCER_STALL_MAX_S``.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import orjson
from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_END,
    Consumer,
    IsolationLevel,
    KafkaError,
    KafkaException,
    Producer,
    TopicCollection,
    libversion,
)
from confluent_kafka import TopicPartition as KafkaTopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic, OffsetSpec, ResourceType

from anomaly.stream import codecs
from anomaly.stream.broker_watch import certificate_problem
from anomaly.stream.client_logs import Throttle
from anomaly.stream.clients import (
    INPUT_METADATA_MAX_AGE_MS,
    PRODUCER_BATCH_BYTES,
    RECONNECT_BACKOFF_MAX_MS,
    STARTUP_TIMEOUT_MS,
    check_dead_letter_policy,
    check_topic_names,
    check_topics,
)
from anomaly.stream.errors import BrokerUnreachable, StreamError
from anomaly.stream.kafka_options import librdkafka_options
from anomaly.stream.restore import PartitionRanges
from anomaly.stream.transport import Record, TopicPartition, Transport, Unreadable

log = logging.getLogger("anomaly.stream")
#: librdkafka's own log lines (its WARNING and above by default, see ``process``; each
#: thing said at most once a while, see ``client_logs``).
librdkafka_log = logging.getLogger("librdkafka")
#: The admin clients log here, to no handler: what the start-up check's has to say about a
#: failed bootstrap is in the one-line error (its ``error_cb``), as kafka-python's bootstrap
#: records are held back (``clients._BootstrapFailures``); the end-offset queries' would
#: repeat what the consumer says of the same brokers.
admin_log = logging.getLogger("librdkafka.admin")
admin_log.addHandler(logging.NullHandler())
admin_log.propagate = False

#: kafka-python's defaults, kept so that switching clients changes nothing else.
MAX_REQUEST_BYTES = 1_048_576
DELIVERY_TIMEOUT_MS = 120_000
#: How long the loop waits for a partition's range when librdkafka reports its position out
#: of range (``_reset``, at most once a poll for each partition); the loop's thread waits.
WATERMARK_TIMEOUT_MS = 5_000
#: How long an end-offset query may take (``end_offsets``); the loop never waits for it.
END_OFFSETS_REQUEST_S = 10.0
#: How often an assignment asks again for committed offsets the coordinator could not give,
#: and for how long at most (a coordinator that moved is found again within seconds; the
#: loop's thread waits, in the rebalance callback).
COMMITTED_RETRY_S = 0.5
COMMITTED_WAIT_S = 15.0
#: Errors of a committed-offset query that asking again can mend.
COORDINATOR_CODES = frozenset(
    {
        KafkaError.NOT_COORDINATOR,
        KafkaError.COORDINATOR_NOT_AVAILABLE,
        KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
        KafkaError.REQUEST_TIMED_OUT,
        KafkaError._WAIT_COORD,
        KafkaError._TIMED_OUT,
        KafkaError._TRANSPORT,
    }
)
#: librdkafka's statistics interval: the broker watch's probe.
STATISTICS_INTERVAL_MS = 1_000
#: Seconds without a delivery report, with messages owed and the cluster reachable, after
#: which the producer is replaced, and the most that wait grows to for a producer that
#: stalls again. Acknowledgements take milliseconds, but with acks=all a leader may wait
#: for a slow follower up to the broker's replica.lag.time.max.ms (30 s), and a produce
#: request times out after 30 s (librdkafka's request.timeout.ms) and is retried silently.
PRODUCER_STALL_S = 40.0
#: Seconds the consumer may know no broker at all, holding no partition, before it is
#: replaced. A broker shutting down can answer a metadata request with no brokers;
#: librdkafka (2.16 and earlier, its issue #5301) then drops every broker it knew and, a
#: consumer, never bootstraps again: it stayed without a connection after the broker was
#: back, and the input was never read again (seen in about 1 of 10 broker restarts here).
CONSUMER_FORGOT_BROKERS_S = 15.0
PRODUCER_STALL_MAX_S = 240.0
#: The most a replacement waits for the purged producer's reports (they take milliseconds).
REPLACE_REPORTS_S = 30.0
#: Reports that say nothing of the producer's health: a message that waited out its
#: timeout (and is sent again, to the same stalled producer), or one purged at a replacement.
STALL_REPORT_CODES = frozenset(
    {KafkaError._MSG_TIMED_OUT, KafkaError._PURGE_QUEUE, KafkaError._PURGE_INFLIGHT}
)
#: How long a client may know no usable broker before it bootstraps again. A broker back
#: from a freeze (a long GC pause, a suspended VM) can answer a metadata request with no
#: brokers while it is fenced; librdkafka then drops the one it knew, has forgotten the
#: bootstrap servers, and stayed without a connection for librdkafka's default of 5 minutes.
REBOOTSTRAP_AFTER_MS = 5_000
#: The first librdkafka with ``metadata.recovery.rebootstrap.trigger.ms`` (2.11.0, KIP-1102):
#: an older one (confluent-kafka >= 2.4 is allowed) refuses an unknown property, so the
#: service would not start; there the setting is left out.
REBOOTSTRAP_SINCE = 0x020B0000


def _rebootstrap_setting() -> dict[str, int]:
    return (
        {"metadata.recovery.rebootstrap.trigger.ms": REBOOTSTRAP_AFTER_MS}
        if libversion()[1] >= REBOOTSTRAP_SINCE
        else {}
    )


#: Errors that belong to the message itself: sending it again cannot succeed.
RECORD_ERROR_CODES = frozenset(
    {
        KafkaError.MSG_SIZE_TOO_LARGE,
        KafkaError.RECORD_LIST_TOO_LARGE,
        KafkaError.INVALID_RECORD,
        KafkaError.INVALID_MSG,
    }
)
#: Consumer errors for a batch that cannot be read.
UNREADABLE_CODES = frozenset({KafkaError._BAD_MSG, KafkaError._BAD_COMPRESSION})
#: Start-up failures that waiting longer cannot mend.
REFUSED_CODES = frozenset({KafkaError._AUTHENTICATION, KafkaError._SSL})
#: A TLS alert from the broker (not close_notify, 0): in TLS 1.3 a client certificate it
#: refuses (or none, on a mutual-TLS listener) ends the handshake after the client thinks
#: it is done, so librdkafka reports a dropped connection (``_TRANSPORT``) saying this.
TLS_ALERT = re.compile(r"SSL alert number [1-9]")


def _error_of(error: Any) -> KafkaError | None:
    if isinstance(error, KafkaException) and error.args and isinstance(error.args[0], KafkaError):
        return error.args[0]
    return error if isinstance(error, KafkaError) else None


def _tls_alert(error: KafkaError) -> bool:
    return error.code() == KafkaError._TRANSPORT and TLS_ALERT.search(error.str()) is not None


def _certificate_problem(servers: str, options: dict[str, Any], error: KafkaError) -> str | None:
    """Why the broker's certificate did not verify, asked again of Python's ``ssl`` with
    the same CA file and host-name check, when librdkafka says only that it did not (the
    same words for an unknown issuer, a name that does not match and an expired one)."""
    if error.code() != KafkaError._SSL or "certificate verify failed" not in error.str():
        return None
    if options.keys() & {"ssl.ca.pem", "ssl.ca.certificate.stores"}:
        return None  # CAs Python's ssl cannot be given the same way: its answer could differ
    location = str(options.get("ssl.ca.location", ""))
    if location not in ("", "probe") and not os.path.exists(location):
        return None
    # None given, or "probe": the system's CAs, which Python's ssl reads too
    algorithm = str(options.get("ssl.endpoint.identification.algorithm", "https"))
    return certificate_problem(
        servers,
        cafile=location if os.path.isfile(location) else None,
        capath=location if os.path.isdir(location) else None,
        check_hostname=algorithm.lower() != "none",
        timeout_s=3.0,
    )


def describe(error: Any) -> str:
    """librdkafka's name of the error (``MSG_SIZE_TOO_LARGE``), or the exception's type."""
    kafka_error = _error_of(error)
    return kafka_error.name() if kafka_error is not None else type(error).__name__


def _text(error: KafkaError) -> str:
    return f"{error.name()}: {' '.join(error.str().split())}"


def _described(exc: KafkaException) -> str:
    error = _error_of(exc)
    return _text(error) if error is not None else str(exc)


def _authentication_remedy(error: KafkaError, protocol: str) -> str:
    """What to check after a failed SASL handshake: the mechanism where the broker does not
    offer it, the protocol where the listener speaks no SASL, else the credentials."""
    text = error.str()
    if "Unsupported SASL mechanism" in text:
        return "set sasl_mechanism in [serve.kafka] to one the broker offers (named above)"
    if "Request not valid in current SASL state" in text or "Invalid SASL state" in text:
        return (
            f"check security_protocol ({protocol}) against the listener: it does not expect "
            "a SASL handshake"
        )
    return "check sasl_plain_username and the password in [serve.kafka]"


def _denied_topics(admin: AdminClient, topics: list[str]) -> set[str]:
    """Those of ``topics`` the broker says this client is not authorised to describe."""
    futures = admin.describe_topics(
        TopicCollection(topics), request_timeout=STARTUP_TIMEOUT_MS / 1000
    )
    denied = set()
    for topic, future in futures.items():
        try:
            future.result()
        except KafkaException as exc:
            error = _error_of(exc)
            if error is not None and error.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED:
                denied.add(topic)
    return denied


class ConfluentTransport(Transport):
    name = "confluent"

    def __init__(self, config, client_id, listener):
        super().__init__(config, client_id, listener)
        self._consumer: Consumer | None = None
        self._producer: Producer | None = None
        self._topic = config.input_topic
        self._assigned: set[int] = set()  # partitions of the input topic
        self._rebalances = 0
        self._seeked: dict[int, int] = {}  # partition -> offset sought since its last record
        self._committed_starts: dict[int, int] = {}  # partition -> committed offset at assignment
        self._paused = False
        self._reset_offset = (
            OFFSET_BEGINNING if config.auto_offset_reset == "earliest" else OFFSET_END
        )
        self._up = True  # a broker connection up, as the last statistics said
        self._brokers_forgotten_at: float | None = None  # since the consumer knew no broker
        self._reported_at = time.monotonic()  # the last delivery report, or since nothing owed
        # Results wait up to linger_ms in the producer by design before they are sent.
        self._first_stall_s = PRODUCER_STALL_S + config.linger_ms / 1000
        self._stall_limit_s = self._first_stall_s
        self._abandoned = False  # a close past its deadline: callbacks do nothing more
        self._error_logs = Throttle()  # librdkafka retries its errors: logged once a while
        self.max_message_bytes = MAX_REQUEST_BYTES
        self._topic_limit: int | None = None  # smallest max.message.bytes of what it writes
        self._offsets_admin: AdminClient | None = None  # asks the end offsets (end_offsets)
        self._asked: dict[KafkaTopicPartition, Any] = {}  # partition -> future, in flight
        self._ends: dict[TopicPartition, int] = {}  # the latest end offsets answered

    # -- configuration -------------------------------------------------------------------------

    def _common(self, client: str) -> dict[str, Any]:
        return {
            "reconnect.backoff.max.ms": RECONNECT_BACKOFF_MAX_MS,
            **_rebootstrap_setting(),
            "socket.nagle.disable": True,
            "error_cb": self._on_error,
            "logger": librdkafka_log,
            **librdkafka_options(self.config.kafka, client),
            "bootstrap.servers": self.config.bootstrap_servers,
            "client.id": self.client_id,
        }

    def _consumer_settings(self) -> dict[str, Any]:
        config = self.config
        ceiling = codecs.MAX_BATCH_BYTES
        return {
            "check.crcs": True,
            # A zstd batch may not unpack to more than the codecs' ceiling (librdkafka unpacks
            # gzip and lz4 whole); a fetch response is kept under it too, as it requires.
            "receive.message.max.bytes": ceiling,
            "fetch.max.bytes": min(52_428_800, ceiling - 512),
            "max.partition.fetch.bytes": min(1_048_576, ceiling - 512),
            # Partitions added to the input topic are assigned once the group's leader sees
            # them in its metadata (librdkafka's default refresh: 5 minutes).
            "topic.metadata.refresh.interval.ms": INPUT_METADATA_MAX_AGE_MS,
            **self._common("consumer"),
            "group.id": config.group_id,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            # librdkafka resets a position by itself when a fetch is out of range, and
            # reads a batch with a failed CRC so that it fetches from a nonsense offset
            # next (its reader loses its place): it would then start again from the
            # partition's start, or skip to its end. With "error" it reports the reset
            # instead, and the poll seeks (``_reset``).
            "auto.offset.reset": "error",
            "isolation.level": "read_committed",
            "session.timeout.ms": config.session_timeout_ms,
            "heartbeat.interval.ms": min(3_000, config.session_timeout_ms // 3),
            "fetch.wait.max.ms": config.fetch_max_wait_ms,
            "partition.assignment.strategy": "range,roundrobin",
            "enable.partition.eof": False,
            "statistics.interval.ms": STATISTICS_INTERVAL_MS,
            "stats_cb": self._on_stats,
            "on_commit": self._on_commit,
        }

    def _producer_settings(self) -> dict[str, Any]:
        config = self.config
        settings = {
            "batch.size": PRODUCER_BATCH_BYTES,
            "message.max.bytes": MAX_REQUEST_BYTES,
            "message.timeout.ms": DELIVERY_TIMEOUT_MS,
            # Far above what back-pressure lets wait (max_pending_results and a batch).
            "queue.buffering.max.messages": max(
                100_000, 2 * config.max_pending_results + 4 * config.max_batch_size
            ),
            "allow.auto.create.topics": False,  # as kafka-python's (``make_producer``)
            **self._common("producer"),
            "acks": "all",
            "enable.idempotence": False,
            "max.in.flight.requests.per.connection": 1,
            "linger.ms": config.linger_ms,
            "partitioner": "murmur2_random",
        }
        if self._topic_limit is not None:
            # The broker refuses a whole batch over a topic's max.message.bytes, and
            # librdkafka fails each message of it (MSG_SIZE_TOO_LARGE) where the Java client
            # and kafka-python split it: every result would go to the dead-letter topic.
            settings["batch.size"] = min(settings["batch.size"], self._topic_limit)
        return settings

    # -- start-up and shutdown ---------------------------------------------------------------

    def check(self) -> None:
        config = self.config
        check_topic_names(config)
        errors: list[KafkaError] = []
        try:
            admin = AdminClient(
                {
                    **self._common("admin"),
                    "client.id": f"{config.group_id}-startup",
                    "error_cb": errors.append,
                    "logger": admin_log,
                }
            )
        except KafkaException as exc:
            raise StreamError(f"cannot configure the Kafka client: {_described(exc)}") from None
        deadline = time.monotonic() + STARTUP_TIMEOUT_MS / 1000
        while True:
            try:
                metadata = admin.list_topics(timeout=1.0)
                break
            except KafkaException as exc:
                admin.poll(0)  # serves error_cb
                refused = [e for e in errors if e.code() in REFUSED_CODES or _tls_alert(e)]
                if refused or time.monotonic() >= deadline:
                    raise self._bootstrap_failure(refused, errors, exc) from None
        existing = {name for name, topic in metadata.topics.items() if topic.error is None}
        check_topics(
            config,
            existing,
            lambda topics: self._create_topics(admin, topics),
            lambda topics: _denied_topics(admin, topics),
        )
        written = [t for t in (config.output_topic, config.dlq_topic, config.alerts_topic) if t]
        settings = _topic_settings(admin, written)
        limits = [
            int(s["max.message.bytes"]) for s in settings.values() if "max.message.bytes" in s
        ]
        self._topic_limit = min(limits, default=None)
        if config.dlq_topic:
            check_dead_letter_policy(
                config, settings.get(config.dlq_topic, {}).get("cleanup.policy")
            )

    def _bootstrap_failure(self, refused, errors, exc) -> StreamError:
        """The error, in one line, saying why bootstrapping failed; librdkafka's messages
        hold no secrets."""
        servers = self.config.bootstrap_servers
        options = librdkafka_options(self.config.kafka, "admin")
        protocol = str(options.get("security.protocol", "PLAINTEXT")).upper()
        mechanism = options.get("sasl.mechanism", "GSSAPI")
        for error in refused:
            if error.code() == KafkaError._AUTHENTICATION:
                return StreamError(
                    f"authentication failed against Kafka at {servers} (SASL {mechanism}): "
                    f"{_text(error)}; {_authentication_remedy(error, protocol)}"
                )
            problem = _certificate_problem(servers, options, error)
            if problem is not None:
                return StreamError(
                    f"TLS handshake with Kafka at {servers} failed ({protocol}): the broker's "
                    f"certificate does not verify: {problem}; check ssl_cafile and "
                    "ssl_check_hostname in [serve.kafka]"
                )
            return StreamError(
                f"TLS handshake with Kafka at {servers} failed ({protocol}): {_text(error)}; "
                "check security_protocol, ssl_cafile, ssl_certfile/ssl_keyfile and "
                "ssl_check_hostname in [serve.kafka]"
            )
        last = errors[-1] if errors else _error_of(exc)
        detail = f" (last error: {_text(last)})" if last is not None else ""
        return BrokerUnreachable(
            f"cannot reach Kafka at {servers} within {STARTUP_TIMEOUT_MS / 1000:g} s{detail}; "
            "check bootstrap_servers, security_protocol and that the broker is up"
        )

    def _create_topics(self, admin: AdminClient, topics: list[str]) -> None:
        """With the broker's default partitions and replication; one created meanwhile by
        another instance is fine."""
        servers = self.config.bootstrap_servers
        futures = admin.create_topics(
            [NewTopic(t, num_partitions=-1, replication_factor=-1) for t in topics],
            request_timeout=STARTUP_TIMEOUT_MS / 1000,
        )
        failed = []
        for topic, future in futures.items():
            try:
                future.result()
            except KafkaException as exc:
                error = _error_of(exc)
                if error is None or error.code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    failed.append(f"{topic!r} ({_text(error) if error else exc})")
        if failed:
            raise StreamError(f"cannot create topic(s) on Kafka at {servers}: {', '.join(failed)}")
        deadline = time.monotonic() + STARTUP_TIMEOUT_MS / 1000
        while set(topics) - set(admin.list_topics(timeout=5).topics):
            if time.monotonic() >= deadline:
                raise StreamError(f"topic(s) {topics} created on {servers} but not yet seen")
            time.sleep(0.1)
        log.info("event=topics_created topics=%s", ",".join(topics))

    def open(self) -> None:
        config = self.config
        producing = self._producer_settings()
        # ``[serve.kafka] max_request_size`` (``message.max.bytes``) may differ from the
        # default: results and dead letters are cut to the limit the producer enforces.
        self.max_message_bytes = int(producing["message.max.bytes"])
        try:
            self._producer = Producer(producing)
            for topic in (config.output_topic, config.dlq_topic, config.alerts_topic):
                if topic:  # fetch metadata now, not while the first batch waits
                    self._producer.list_topics(topic, timeout=STARTUP_TIMEOUT_MS / 1000)
            self._consumer = Consumer(self._consumer_settings())
            metadata = self._consumer.list_topics(self._topic, timeout=STARTUP_TIMEOUT_MS / 1000)
        except KafkaException as exc:
            raise StreamError(
                f"cannot create the Kafka clients for {config.bootstrap_servers}: {_described(exc)}"
            ) from None
        topic = metadata.topics.get(self._topic)
        if topic is None or topic.error is not None or not topic.partitions:
            raise StreamError(f"no partitions found for input topic {self._topic!r}")
        self._subscribe()

    def _subscribe(self) -> None:
        self._consumer.subscribe(
            [self._topic],
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )

    def close(self, deadline: float) -> None:
        self._offsets_admin, self._asked, self._ends = None, {}, {}  # a query in flight too
        if self._consumer is not None:
            self._close_consumer(self._consumer, deadline)
            self._consumer = None
        if self._producer is not None:
            producer, self._producer = self._producer, None
            try:
                left = producer.flush(max(0.1, deadline - time.monotonic()))
                if left:  # not committed: the next owner scores those records again
                    producer.purge()
                    producer.flush(0)
            except Exception as exc:  # noqa: BLE001
                log.warning("event=close_error client=producer error=%r", exc)

    def _close_consumer(self, consumer: Consumer, deadline: float) -> None:
        """Close the consumer (it revokes: flush, commit; then it leaves the group), waiting
        for it until ``deadline`` at most. With the broker down, librdkafka's close waits
        for a group it cannot leave (over 5 s after losing the partitions, seen here) and
        the stop ran past the exit watchdog. The broker drops the member after its session
        timeout anyway; a close still under way at the deadline is left to the process's
        exit, and its callbacks do nothing more."""

        closing = threading.Thread(
            target=_close_quietly, args=(consumer,), name="kafka-consumer-close", daemon=True
        )
        closing.start()
        closing.join(max(0.1, deadline - time.monotonic()))
        if closing.is_alive():
            self._abandoned = True
            log.warning("event=close_slow client=consumer (left unfinished; the broker drops it)")

    # -- consuming -----------------------------------------------------------------------------

    def poll(self, timeout_ms: int, max_records: int) -> list:
        if self._offsets_admin is not None:  # its errors and log lines queue until served
            self._offsets_admin.poll(0)
        forgotten = self._brokers_forgotten_at
        if forgotten is not None and not self._assigned:
            if time.monotonic() - forgotten >= CONSUMER_FORGOT_BROKERS_S:
                self._replace_consumer(time.monotonic() - forgotten)
        consumer = self._consumer
        rebalances = self._rebalances
        first = consumer.poll(timeout_ms / 1000)
        if first is None:
            return []
        messages = consumer.consume(max_records - 1, 0) if max_records > 1 else []
        messages.insert(0, first)
        topic = self._topic
        records = [
            Record(topic, m.partition(), m.offset(), m.key(), m.value(), _timestamp(m))
            for m in messages
            if m.error() is None
        ]
        if len(records) < len(messages):
            records = self._with_errors(messages)
        elif self._seeked:
            records = self._past_seeks(records)
        if self._rebalances != rebalances:  # drop what a revoked partition had fetched
            assigned = self._assigned
            records = [r for r in records if r.partition in assigned]
        return records

    def _past_seeks(self, records: list) -> list:
        """``records`` without those of a partition from before where it was sought to (a
        fetch that was under way); a partition's first record at or past it ends that."""
        seeked = self._seeked
        kept = []
        for record in records:
            floor = seeked.get(record.partition)
            if floor is not None:
                if record.offset < floor:
                    continue
                del seeked[record.partition]
            kept.append(record)
        return kept

    def _reset(self, partition: int, error: KafkaError) -> None:
        """librdkafka found no position to read ``partition`` from (out of range, or no
        committed offset) and stopped fetching it: start it again where the loop sought it
        to, or else where ``[serve] auto_offset_reset`` says, as librdkafka would have.

        After a failed CRC the offset librdkafka found out of range is its reader's nonsense
        one, not the loop's, and such reports keep coming for a while, even after the loop
        started the partition again (one per fetch of the damaged batch). Counting reports
        cannot tell these from a position that really is gone (giving it up for ``earliest``
        scored the partition again from its start), so the broker is asked (``_start_in``)."""
        sought = self._seeked.pop(partition, None)
        start = self._start_in(partition, sought)
        if start != sought:
            log.warning(
                "event=offset_reset topic=%s partition=%d from=%s to=%s (%s) reason=%r",
                self._topic,
                partition,
                "none" if sought is None else sought,
                start,
                self.config.auto_offset_reset,
                _text(error),
            )
        self._restart(partition, start)

    def _start_in(self, partition: int, sought: int | None) -> int:
        """Where to read ``partition`` again for the loop's offset ``sought``: there if the
        broker can serve it; its end if ``sought`` is past it (a fetch there is always in
        range, and nothing is skipped; the end is the last stable offset, under
        read_committed, which can move back a little); where ``auto_offset_reset`` says if
        the records there were deleted or the loop has no offset, as an offset of the range
        (kept as where it was sought to, for a batch it cannot read next). When the broker
        cannot say, ``sought`` again: a wrong guess costs another report, where a wrong
        reset scores records twice or skips them."""
        try:
            low, high = self._consumer.get_watermark_offsets(
                KafkaTopicPartition(self._topic, partition),
                timeout=WATERMARK_TIMEOUT_MS / 1000,
                cached=False,
            )
        except KafkaException as exc:
            if self._error_logs.admit("partition_range_unknown") is not None:
                log.warning(
                    "event=partition_range_unknown partition=%d error=%s",
                    partition,
                    describe(exc),
                )
            return self._reset_offset if sought is None else sought
        if sought is None or sought < low:
            return low if self._reset_offset == OFFSET_BEGINNING else high
        return min(sought, high)

    def _restart(self, partition: int, start: int) -> None:
        """Fetch ``partition`` again from ``start``. A stopped partition cannot be sought;
        in eager assignment the way to start one is to assign them all again, each from
        where the loop is in it (its next offset, or its committed offset if nothing was
        read from it since it was assigned)."""
        consumer = self._consumer
        restarted = []
        for tp in consumer.assignment():
            if tp.partition == partition:
                offset = start
            else:
                offset = self._seeked.get(tp.partition)
                if offset is None:
                    (current,) = consumer.position([tp])
                    offset = current.offset  # OFFSET_INVALID: its committed offset
            restarted.append(KafkaTopicPartition(tp.topic, tp.partition, offset))
        consumer.assign(restarted)
        if self._paused:
            consumer.pause(consumer.assignment())
        for tp in restarted:  # each is read from its offset again: until its first record
            if tp.offset >= 0:
                self._seeked[tp.partition] = tp.offset

    def _with_errors(self, messages: list) -> list:
        """The records of a poll that returned errors: a batch that cannot be read becomes an
        ``Unreadable`` at its partition's position, the consumer seeks past that offset,
        and what follows it in this poll for that partition is dropped; other errors are
        reported and skipped."""
        topic, records, sought, reset = self._topic, [], set(), set()
        for m in messages:
            error = m.error()
            partition = m.partition()
            if error is not None and error.code() == KafkaError._AUTO_OFFSET_RESET:
                if partition in self._assigned and partition not in reset:
                    self._reset(partition, error)  # once a poll: the others are older
                    reset.add(partition)
                    sought.add(partition)
                continue
            if partition in sought:
                continue
            if error is None:
                offset = m.offset()
                floor = self._seeked.get(partition)
                if floor is not None:
                    if offset < floor:
                        continue  # fetched before the seek
                    del self._seeked[partition]
                records.append(Record(topic, partition, offset, m.key(), m.value(), _timestamp(m)))
                continue
            if error.code() == KafkaError._PARTITION_EOF:
                continue
            if error.code() not in UNREADABLE_CODES or partition not in self._assigned:
                self.listener.fetch_failed(error.name(), _text(error), None)
                continue
            offset = self._position_of(partition, m.offset(), error, records)
            self.seek(TopicPartition(topic, partition), offset + 1)
            sought.add(partition)
            unreadable = Unreadable(
                topic, partition, offset, f"the consumer could not read its batch: {_text(error)}"
            )
            self.listener.fetch_failed(error.name(), _text(error), unreadable)
            records.append(unreadable)
        return records

    def _position_of(self, partition: int, reported: int, error: KafkaError, records) -> int:
        """The offset the consumer was to read next from ``partition`` when its batch could
        not be read: after the last record of it returned in this poll; else the further of
        where it was sought to and the consumer's position (which also moves past
        transaction markers and aborted records, which no record returned marks); else,
        nothing read since the assignment, its committed offset then (which can be inside
        the batch after a restart). The offset librdkafka reports is the batch's first: only
        trusted after a codec failure (its CRC passed) and where nothing else is known."""
        position = None
        for record in reversed(records):
            if record.partition == partition:
                position = record.offset + 1
                break
        if position is None:
            (current,) = self._consumer.position([KafkaTopicPartition(self._topic, partition)])
            position = self._known_position(partition, current.offset)
        if position is None:
            return max(reported, 0)
        if error.code() == KafkaError._BAD_COMPRESSION and reported > position:
            return reported
        return position

    def seek(self, partition: TopicPartition, offset: int) -> None:
        if offset >= 0:  # also where to start it again if it is stopped (``_reset``)
            self._seeked[partition.partition] = offset
        try:
            self._consumer.seek(KafkaTopicPartition(partition.topic, partition.partition, offset))
        except KafkaException as exc:
            error = _error_of(exc)
            if error is not None and error.code() == KafkaError._STATE:
                # Not fetching: stopped by a reset just before (see ``_reset``).
                self._restart(partition.partition, offset)
                return
            log.warning(
                "event=seek_failed partition=%d offset=%d error=%s",
                partition.partition,
                offset,
                describe(exc),
            )

    def pause(self) -> None:
        self._paused = True
        self._consumer.pause(self._consumer.assignment())

    def resume(self) -> None:
        self._paused = False
        self._consumer.resume(self._consumer.assignment())

    def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self._consumer.commit(offsets=_commit_offsets(offsets), asynchronous=True)

    def _on_commit(self, error, partitions) -> None:
        """librdkafka's result of an asynchronous commit (served in ``poll``)."""
        if self._abandoned:
            return
        offsets = {TopicPartition(tp.topic, tp.partition): tp.offset for tp in partitions}
        if error is None:
            error = next((tp.error for tp in partitions if tp.error is not None), None)
        self.listener.committed(offsets, error)

    def commit_sync(self, offsets: dict[TopicPartition, int], timeout_s: float) -> None:
        # librdkafka's synchronous commit has no timeout of its own: the shutdown's
        # watchdog (``process``) bounds it.
        results = self._consumer.commit(offsets=_commit_offsets(offsets), asynchronous=False)
        failed = next((tp.error for tp in results or () if tp.error is not None), None)
        if failed is not None:
            raise KafkaException(failed)

    def high_watermark(self, partition: TopicPartition) -> int | None:
        try:
            _, high = self._consumer.get_watermark_offsets(
                KafkaTopicPartition(partition.topic, partition.partition), cached=True
            )
        except KafkaException:
            return None
        return high if high is not None and high >= 0 else None

    def end_offsets(
        self, partitions: list[TopicPartition], timeout_s: float
    ) -> dict[TopicPartition, int]:
        """Asked by an admin client of its own, without waiting: a call returns the latest
        answers and sends the next query once the last is answered. The consumer cannot ask:
        librdkafka drops a broker's connection when a request on it times out, so a query
        with a short timeout cut the consumer off a broker that was only slow (a GC pause),
        and one with a long timeout would hold the loop. ``timeout_s`` is not needed: the
        query runs on the admin client's thread, for up to ``END_OFFSETS_REQUEST_S``."""
        for asked, future in list(self._asked.items()):
            if not future.done():
                continue
            del self._asked[asked]
            tp = TopicPartition(asked.topic, asked.partition)
            try:  # a partition without a leader (mid-election) answers an error: not known
                end = future.result().offset
            except Exception:  # noqa: BLE001 (the lag is best-effort)
                end = -1
            if end >= 0:
                self._ends[tp] = end
            else:  # its earlier answer may be of a topic since deleted
                self._ends.pop(tp, None)
        # A partition no longer asked (revoked; its topic may come back anew) is forgotten.
        wanted = set(partitions)
        self._ends = {tp: end for tp, end in self._ends.items() if tp in wanted}
        if not self._asked and partitions:
            self._asked = self._ask_end_offsets(partitions)
        return dict(self._ends)

    def _ask_end_offsets(self, partitions: list[TopicPartition]) -> dict:
        try:
            if self._offsets_admin is None:
                self._offsets_admin = AdminClient(
                    {
                        **self._common("admin"),
                        "client.id": f"{self.client_id}-offsets",
                        "error_cb": lambda error: None,  # the consumer's say the same
                        "logger": admin_log,
                    }
                )
            return self._offsets_admin.list_offsets(
                {
                    KafkaTopicPartition(tp.topic, tp.partition): OffsetSpec.latest()
                    for tp in partitions
                },
                isolation_level=IsolationLevel.READ_COMMITTED,  # as the consumer reads
                request_timeout=END_OFFSETS_REQUEST_S,
            )
        except Exception as exc:  # noqa: BLE001 (the lag is best-effort)
            log.debug("event=end_offsets_unasked error=%r", exc)
            self._ends.clear()  # answers that cannot be renewed are not kept
            return {}

    def position(self, partition: TopicPartition) -> int | None:
        try:
            (current,) = self._consumer.position(
                [KafkaTopicPartition(partition.topic, partition.partition)]
            )
        except KafkaException:
            return None
        return self._known_position(partition.partition, current.offset)

    def read_before(
        self,
        starts: dict[TopicPartition, int],
        count: int,
        timeout_s: float,
        cancelled: Callable[[], bool],
    ) -> tuple[list, set[TopicPartition]]:
        deadline = time.monotonic() + timeout_s
        settings = {
            **self._consumer_settings(),
            "client.id": f"{self.client_id}-restore",
            "auto.offset.reset": "earliest",  # a range whose start was deleted: what is left
            "enable.partition.eof": True,  # a range that ends the partition is complete
            "statistics.interval.ms": 0,
            # Not the loop's broker watch: a partition this reader cannot read in time is
            # logged by the loop as not restored.
            "error_cb": lambda _error: None,
        }
        for name in ("stats_cb", "on_commit", "group.instance.id"):
            settings.pop(name, None)
        reader = Consumer(settings)
        try:
            firsts = {
                tp: reader.get_watermark_offsets(
                    KafkaTopicPartition(tp.topic, tp.partition),
                    timeout=max(0.1, min(WATERMARK_TIMEOUT_MS / 1000, deadline - time.monotonic())),
                    cached=False,
                )[0]
                for tp in starts
            }
            ranges = PartitionRanges(starts, count, firsts)
            reader.assign(
                [KafkaTopicPartition(tp.topic, tp.partition, o) for tp, o in ranges.starts.items()]
            )
            while ranges.reading(deadline, cancelled):
                wait_s = max(0.0, min(0.2, deadline - time.monotonic()))
                for m in reader.consume(self.config.max_batch_size, wait_s):
                    tp = TopicPartition(m.topic(), m.partition())
                    error = m.error()
                    if error is None:
                        record = Record(*tp, m.offset(), m.key(), m.value(), _timestamp(m))
                        ranges.take(tp, [record])
                    elif error.code() == KafkaError._PARTITION_EOF:
                        ranges.reached(tp, m.offset())
                    elif tp in ranges.open:
                        log.warning(
                            "event=restore_read_failed partition=%d error=%s action=start_afresh",
                            tp.partition,
                            _text(error),
                        )
                        ranges.fail(tp)
            return ranges.complete()
        finally:
            reader.close()

    def _known_position(self, partition: int, reported: int) -> int | None:
        """Where ``partition`` is: librdkafka's position (``reported``; invalid, below 0,
        before the partition's first record since its assignment) or where it was sought,
        whichever is further, else the committed offset it started from (so that the lag
        of a partition that fetches nothing shows: it had no series, and a partition that
        never fetched again raised no alert); None where none is known."""
        position = max(self._seeked.get(partition, -1), reported)
        return position if position >= 0 else self._committed_starts.get(partition)

    def connected(self) -> bool:
        return self._consumer is not None and self._up

    # -- callbacks (on the loop's thread, inside poll, flush or close) -------------------------

    def _on_assign(self, consumer: Consumer, partitions: list) -> None:
        """Eager assignment: all of the consumer's partitions. Each starts where the listener
        says, else at its committed offset (with its leader epoch), else (none yet) at
        ``auto_offset_reset``'s end: librdkafka's own reset is off (``auto.offset.reset=
        error``). The loop keeps the committed offset for a batch it cannot read before the
        partition's first record (``_position_of``)."""
        if self._abandoned or consumer is not self._consumer:
            return
        self._rebalances += 1
        self._paused = False
        ours = {TopicPartition(tp.topic, tp.partition) for tp in partitions}
        self._assigned = {tp.partition for tp in ours}
        self._seeked = {}
        self._committed_starts = {}
        starts = {tp.partition: o for tp, o in self.listener.partitions_assigned(ours).items()}
        rest = [tp for tp in partitions if tp.partition not in starts]
        committed = self._committed(consumer, rest) if rest else {}
        self._committed_starts = {p: tp.offset for p, tp in committed.items() if tp.offset >= 0}
        for i, tp in enumerate(partitions):
            start = starts.get(tp.partition)
            if start is not None:
                tp.offset = start
                self._seeked[tp.partition] = start
            elif tp.partition in self._committed_starts:
                partitions[i] = committed[tp.partition]  # with its leader epoch
            elif tp.partition in committed:  # none committed yet
                tp.offset = self._reset_offset
        consumer.assign(partitions)
        # A new assignment starts unpaused (``_paused`` above, and the loop's back-pressure
        # starts over), but librdkafka keeps a pause on the partition itself across unassign
        # and assign: paused at a rebalance (a broker restart, an instance joining), it was
        # never fetched again, every probe still healthy.
        consumer.resume(partitions)

    def _committed(self, consumer: Consumer, partitions: list) -> dict[int, KafkaTopicPartition]:
        """Partition -> its committed offset (below 0: none yet), for those of ``partitions``
        the group coordinator answered for. While it cannot answer (a coordinator that moved,
        a broker back from a pause), it is asked again every ``COMMITTED_RETRY_S`` for up to
        ``COMMITTED_WAIT_S``; those it never answers for are left to librdkafka to ask, as
        any other error leaves them. Left to librdkafka, a partition whose request met
        NOT_COORDINATOR was never fetched again (librdkafka issue #5586; seen after a broker
        pause), so each partition answered for is assigned with its offset."""
        deadline = time.monotonic() + min(COMMITTED_WAIT_S, self.config.session_timeout_ms / 1000)
        answered: dict[int, KafkaTopicPartition] = {}
        asked = list(partitions)
        while True:
            timeout_s = min(STARTUP_TIMEOUT_MS / 1000, max(0.5, deadline - time.monotonic()))
            try:
                results = consumer.committed(asked, timeout=timeout_s)
                error = next((tp.error for tp in results if tp.error is not None), None)
                answered.update({tp.partition: tp for tp in results if tp.error is None})
            except KafkaException as exc:
                error = _error_of(exc)
            asked = [tp for tp in asked if tp.partition not in answered]
            if not asked:
                return answered
            name = error.name() if error is not None else "no answer"
            mendable = error is not None and (
                error.retriable() or error.code() in COORDINATOR_CODES
            )
            if not mendable or time.monotonic() + COMMITTED_RETRY_S >= deadline or self._abandoned:
                log.warning(
                    "event=committed_offsets_unknown partitions=%s error=%s "
                    "action=librdkafka_fetches",
                    ",".join(str(tp.partition) for tp in asked),
                    name,
                )
                return answered  # librdkafka asks itself, or reports a reset: ``_reset``
            if self._error_logs.admit(("committed", name)) is not None:
                log.warning("event=committed_offsets_unknown error=%s action=ask_again", name)
            time.sleep(COMMITTED_RETRY_S)

    def _on_revoke(self, consumer: Consumer, partitions: list) -> None:
        if self._abandoned or consumer is not self._consumer:
            return
        self._rebalances += 1
        revoked = {TopicPartition(tp.topic, tp.partition) for tp in partitions}
        offsets = self.listener.partitions_revoking(revoked) if revoked else {}
        committed = 0
        if offsets:
            try:
                self.commit_sync(offsets, 0)
                self.listener.committed(offsets, None)
                committed = len(offsets)
            except KafkaException as exc:  # the next owner re-scores
                log.warning("event=commit_failed on=revoke error=%s", describe(exc))
        self._assigned -= {tp.partition for tp in revoked}
        for tp in revoked:
            self._seeked.pop(tp.partition, None)
            self._committed_starts.pop(tp.partition, None)
        self.listener.partitions_revoked(revoked, committed)
        consumer.unassign()

    def _on_lost(self, consumer: Consumer, partitions: list) -> None:
        if self._abandoned or consumer is not self._consumer:
            return
        self._rebalances += 1
        lost = {TopicPartition(tp.topic, tp.partition) for tp in partitions}
        self._assigned -= {tp.partition for tp in lost}
        self.listener.partitions_lost(lost)
        consumer.unassign()

    def _on_stats(self, stats: str) -> None:
        brokers = orjson.loads(stats).get("brokers", {}).values()
        known = [b for b in brokers if b.get("source") in ("learned", "configured")]
        self._up = any(b.get("state") == "UP" for b in known)
        if known:
            self._brokers_forgotten_at = None
        elif self._brokers_forgotten_at is None:
            self._brokers_forgotten_at = time.monotonic()

    def _replace_consumer(self, forgotten_s: float) -> None:
        """A new consumer, bootstrapped afresh, in place of one that knows no broker and
        holds no partition (``CONSUMER_FORGOT_BROKERS_S``). The old one is closed in the
        background (it has no broker to leave its group through); its callbacks do
        nothing, being another consumer's."""
        old, self._consumer = self._consumer, Consumer(self._consumer_settings())
        self._brokers_forgotten_at = None
        self._subscribe()
        threading.Thread(
            target=_close_quietly, args=(old,), name="kafka-consumer-close", daemon=True
        ).start()
        log.warning(
            "event=consumer_replaced knew_no_broker_s=%.1f (librdkafka issue #5301)",
            forgotten_s,
        )

    def _on_error(self, error: KafkaError) -> None:
        """librdkafka's client-level errors (it retries them itself)."""
        if error.code() == KafkaError._ALL_BROKERS_DOWN:
            self._up = False
        if error.fatal():
            log.error("event=kafka_client_error fatal=true error=%s", _text(error))
            return
        if self._error_logs.admit(error.name()) is not None:
            log.warning("event=kafka_client_error error=%s", _text(error))

    # -- producing -----------------------------------------------------------------------------

    def send(self, message) -> None:
        partition = -1 if message.partition is None else message.partition
        report = partial(self._reported, message)
        produced = (message.topic, message.value, message.key, partition, report)
        if len(self._producer) == 0:  # owed from now on: the stall clock starts here
            self._reported_at = time.monotonic()
        try:
            self._producer.produce(*produced)
        except BufferError:  # the queue is full: let it drain a little, once
            self._producer.poll(0.05)
            self._producer.produce(*produced)

    def _reported(self, message, error, record) -> None:
        """A delivery report (served on the loop's thread): the producer is alive, unless
        the report is a timeout or a purge."""
        kafka_error = None if error is None else _error_of(error)
        if kafka_error is None or kafka_error.code() not in STALL_REPORT_CODES:
            self._reported_at = time.monotonic()
        if error is None:
            self._stall_limit_s = self._first_stall_s
        message.report(error, record)

    def serve(self) -> None:
        self._producer.poll(0)
        now = time.monotonic()
        if not self._up or len(self._producer) == 0:
            self._reported_at = now  # nothing owed, or nowhere to deliver it: no stall
        elif now - self._reported_at > self._stall_limit_s:
            self._replace_producer(now - self._reported_at)

    def _replace_producer(self, stalled_s: float) -> None:
        """A new producer in place of one that delivers nothing (see the module's notes)."""
        next_limit_s = min(2 * self._stall_limit_s, PRODUCER_STALL_MAX_S)
        stalled, self._producer = self._producer, Producer(self._producer_settings())
        owed = len(stalled)
        stalled.purge()  # queued and in flight: each message is reported as not sent
        # Serve every one of those reports (``delivery`` sends each again, on the new
        # producer): a message whose report is left behind would never settle.
        deadline = time.monotonic() + REPLACE_REPORTS_S
        while stalled.flush(1.0) and time.monotonic() < deadline:
            pass
        if len(stalled):
            log.error("event=producer_reports_lost messages=%d", len(stalled))
        log.warning(
            "event=producer_replaced stalled_s=%.1f messages=%d next_after_s=%.0f",
            stalled_s,
            owed,
            next_limit_s,
        )
        self._reported_at = time.monotonic()
        self._stall_limit_s = next_limit_s

    def flush(self, timeout_s: float) -> bool:
        if self._producer is None:
            return True
        return self._producer.flush(timeout_s) == 0

    def is_record_error(self, error: Any) -> bool:
        kafka_error = _error_of(error)
        return kafka_error is not None and kafka_error.code() in RECORD_ERROR_CODES

    def describe(self, error: Any) -> str:
        return describe(error)


def _topic_settings(admin: AdminClient, topics: list[str]) -> dict[str, dict[str, str]]:
    """Each of ``topics``' settings the service reads (its message limit, the dead-letter
    topic's cleanup policy); {} where the cluster does not say (the principal may not
    describe their configuration: the limit is then the client's, the policy unchecked)."""
    resources = [ConfigResource(ResourceType.TOPIC, topic) for topic in topics]
    try:
        futures = admin.describe_configs(resources, request_timeout=STARTUP_TIMEOUT_MS / 1000)
        described = {resource.name: future.result() for resource, future in futures.items()}
    except KafkaException as exc:
        log.warning("event=topic_settings_unknown error=%s", describe(exc))
        return {}
    return {
        topic: {
            name: entries[name].value
            for name in ("max.message.bytes", "cleanup.policy")
            if name in entries and entries[name].value
        }
        for topic, entries in described.items()
    }


def _timestamp(message) -> int | None:
    kind, value = message.timestamp()
    return value if kind else None


def _commit_offsets(offsets: dict[TopicPartition, int]) -> list:
    return [KafkaTopicPartition(tp.topic, tp.partition, o) for tp, o in offsets.items()]


def _close_quietly(consumer: Consumer) -> None:
    """Close ``consumer``; a failure is logged, and closing goes on."""
    try:
        consumer.close()
    except Exception as exc:  # noqa: BLE001 (closing must go on)
        log.warning("event=close_error client=consumer error=%r", exc)

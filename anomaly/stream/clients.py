"""The Kafka clients of the service (kafka-python), and the start-up check of the broker.

Settings that matter:

- consumer: ``isolation_level="read_committed"``: records of a transaction its producer
  aborted are never scored (kafka-python's default reads them);
- consumer: auto-commit off (offsets are committed by the service once results are
  acknowledged), ``max_poll_records`` = the micro-batch size, and a short
  ``fetch_max_wait_ms``: kafka-python keeps one fetch in flight per broker, so a long wait on
  caught-up partitions holds back partitions that still have data;
- producer: ``acks=all``, one request in flight per broker (results of a key stay in order
  when a request is retried), a small ``linger_ms`` and batches large enough for a
  micro-batch of results. Not idempotent: kafka-python 3.0.12's idempotent producer treats
  any non-retriable refusal (one result over the topic's ``max.message.bytes``) as fatal
  and fails every message it holds from then on, where the service needs that one
  message refused and the others delivered (``delivery``). Without idempotence a retried
  request can write a result twice, which at-least-once delivery allows anyway;
- values and keys are bytes in and out (no serializer functions: they are deprecated and
  cost a call per record);
- every client also gets the ``[serve.kafka]`` options it accepts (TLS, SASL, the producer's
  ``compression_type``, ...; ``anomaly.stream.kafka_options``). They may replace the
  service's choices of ``batch_size``, ``bootstrap_timeout_ms`` and the admin client's
  ``request_timeout_ms``; the settings the service depends on are refused in the
  configuration.

Start-up (``check_broker``) turns a failed bootstrap into one line that says why: the
broker unreachable, authentication failed, or the TLS handshake failed; kafka-python only
logs the reason and raises a timeout, so its log records are read while the admin client
bootstraps (and not passed on: the retries would be a screenful).
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.admin import ConfigResource, ConfigResourceType
from kafka.errors import (
    AuthorizationError,
    IllegalSaslStateError,
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
    SaslAuthenticationFailedError,
    TopicAlreadyExistsError,
    TopicAuthorizationFailedError,
    UnsupportedSaslMechanismError,
    for_code,
)

from anomaly.config import ServeConfig
from anomaly.stream import tls_probe
from anomaly.stream.broker_watch import server_list
from anomaly.stream.errors import BrokerUnreachable, StreamError
from anomaly.stream.kafka_options import client_options

log = logging.getLogger("anomaly.stream")

#: How long start-up waits for the broker before failing.
STARTUP_TIMEOUT_MS = 10_000
#: Longest wait between reconnection attempts to a broker that went away. kafka-python's
#: default (30 s, reached by doubling from 50 ms) made the service resume 36-50 s after a
#: broker came back; at 1 s it resumes within seconds, at a few connection attempts per
#: second while the broker is down. ``[serve.kafka] reconnect_backoff_max_ms`` overrides it.
RECONNECT_BACKOFF_MAX_MS = 1_000
#: Longest a send may block the loop waiting for a topic's metadata or for buffer space
#: (kafka-python's default is 60 s). A topic without metadata (deleted, not authorised)
#: then fails a send after 1 s, and the service sends it again later with its input paused.
MAX_BLOCK_MS = 1_000
#: Longest the consumer goes without refreshing the input topic's metadata. Partitions added to
#: the input topic are consumed only once the group's leader sees them there; at the
#: client's default (5 min) their records waited that long, unscored and outside the lag
#: metric. ``[serve.kafka] metadata_max_age_ms`` overrides it.
INPUT_METADATA_MAX_AGE_MS = 15_000
#: Producer request batch size per partition; a micro-batch of 512 results is about 250 kB.
PRODUCER_BATCH_BYTES = 256 * 1024


def answering_servers(config: ServeConfig) -> str:
    """``bootstrap_servers`` less those that accept a connection but never answer a TLS
    handshake (``tls_probe``), which kafka-python would wait on for ever; a
    ``BrokerUnreachable`` when all of them are such. Over PLAINTEXT or a proxy, all of
    them."""
    options = client_options(config.kafka, "admin")
    protocol = str(options.get("security_protocol", "PLAINTEXT"))
    if protocol.upper() not in ("SSL", "SASL_SSL") or options.get("proxy_url"):
        return config.bootstrap_servers  # through a proxy, the probe's route is not theirs
    servers = server_list(config.bootstrap_servers)
    silent = tls_probe.silent_servers(servers, STARTUP_TIMEOUT_MS / 1000)
    if not silent:
        return config.bootstrap_servers
    said = (
        f"accepted the connection but did not answer a TLS handshake within "
        f"{STARTUP_TIMEOUT_MS / 1000:g} s"
    )
    if len(silent) == len(servers):
        raise BrokerUnreachable(
            f"Kafka at {config.bootstrap_servers} {said} ({protocol}); check "
            "bootstrap_servers (a port of something else?), security_protocol and that the "
            "broker is up"
        )
    log.warning(
        "event=bootstrap_server_silent servers=%s (%s; bootstrapping from the others)",
        ",".join(silent),
        said,
    )
    return ",".join(server for server in servers if server not in silent)


def check_broker(config: ServeConfig, servers: str | None = None) -> None:
    """Fail fast, naming the problem, when the broker is unreachable, refuses the
    credentials or the TLS handshake, or a topic is missing (created instead, for all but
    the input topic, with ``create_topics``). ``servers`` bootstrap the check's client
    (``answering_servers``; by default ``bootstrap_servers``)."""
    check_topic_names(config)
    admin = make_admin(config, f"{config.group_id}-startup", servers)
    try:
        try:
            existing = set(admin.list_topics())
        except KafkaError as exc:
            raise StreamError(
                f"cannot list the topics of Kafka at {config.bootstrap_servers}: {exc}"
            ) from None
        check_topics(
            config,
            existing,
            lambda topics: _create_topics(admin, config, topics),
            lambda topics: _denied_topics(admin, topics),
        )
        if config.dlq_topic:
            check_dead_letter_policy(config, _cleanup_policy(admin, config.dlq_topic))
    finally:
        admin.close()


def check_dead_letter_policy(config: ServeConfig, cleanup_policy: str | None) -> None:
    """Refuse a compacted dead-letter topic (``cleanup_policy`` is its ``cleanup.policy``;
    None where the cluster does not say). Compaction deletes all but the last dead letter of
    each key, and the broker refuses one without a key: the service would send it again
    and again with its input paused, for ever."""
    policies = {p.strip() for p in (cleanup_policy or "").split(",")}
    if "compact" in policies:
        raise StreamError(
            f"the dead-letter topic {config.dlq_topic!r} has cleanup.policy={cleanup_policy}: "
            "compaction would delete dead letters (all but the last of each key) and the "
            "broker refuses those without a key; give it cleanup.policy=delete "
            "(kafka-configs.sh --alter --add-config cleanup.policy=delete) or name another"
        )


def _cleanup_policy(admin: KafkaAdminClient, topic: str) -> str | None:
    """``topic``'s ``cleanup.policy``, or None where the cluster does not say (the principal
    may not describe its configuration: the check is then skipped, with a warning)."""
    resource = ConfigResource(ConfigResourceType.TOPIC, topic, configs=["cleanup.policy"])
    try:
        described = admin.describe_configs([resource], config_filter="all")
    except KafkaError as exc:
        reason = type(exc).__name__
    else:
        try:
            return described["topic"][topic]["cleanup.policy"]["value"]
        except (KeyError, TypeError):  # kafka-python leaves out a topic the broker refused
            reason = "not described (DESCRIBE_CONFIGS denied on it?)"
    log.warning("event=topic_policy_unknown topic=%s error=%s", topic, reason)
    return None


def check_topic_names(config: ServeConfig) -> None:
    """The input, output, dead-letter and alerts topics must differ."""
    wanted = _wanted_topics(config)
    named = [t for t in wanted.values() if t]
    if len(set(named)) < len(named):
        raise StreamError(f"input, output, dead-letter and alerts topics must differ: {wanted}")


def _wanted_topics(config: ServeConfig) -> dict[str, str | None]:
    return {
        "input_topic": config.input_topic,
        "output_topic": config.output_topic,
        "dlq_topic": config.dlq_topic,
        "alerts_topic": config.alerts_topic,
    }


def check_topics(
    config: ServeConfig,
    existing: set[str],
    create: Callable[[list[str]], None],
    denied: Callable[[list[str]], set[str]],
) -> None:
    """Given ``existing``, the topics on the cluster (from any client): the input topic must
    be one of them; the missing others are made with ``create`` (sorted names) with
    ``create_topics``, or named in a ``StreamError`` that says the ways out.

    The cluster's topic list leaves out the topics this client may not see, so those
    ``denied`` says the cluster's ACLs hide (of the names it is given) are named as such,
    not as missing topics to create."""
    wanted = _wanted_topics(config)
    absent = sorted({t for t in wanted.values() if t and t not in existing})
    hidden = denied(absent) if absent else set()
    if hidden:
        listed = ", ".join(f"{key}={topic!r}" for key, topic in wanted.items() if topic in hidden)
        raise StreamError(
            f"Kafka at {config.bootstrap_servers} denied this client access to topic(s) "
            f"{listed} (topic authorization failed): grant the service's principal DESCRIBE "
            "and READ on the input topic and DESCRIBE and WRITE on the others, and READ on "
            "its group_id (kafka-acls.sh --add)"
        )
    if config.input_topic not in existing:
        raise StreamError(
            f"input topic {config.input_topic!r} does not exist on Kafka at "
            f"{config.bootstrap_servers}; create it first (e.g. kafka-topics.sh --create) "
            "or set input_topic to an existing one"
        )
    missing = {key: t for key, t in wanted.items() if t and t not in existing}
    if missing and config.create_topics:
        create(sorted(missing.values()))
    elif missing:
        listed = ", ".join(f"{key}={topic!r}" for key, topic in missing.items())
        way_out = (
            "; or turn the dead-letter topic off with --dlq-topic '' (dlq_topic = \"\" in "
            "[serve], ANOMALY_SERVE_DLQ_TOPIC=)"
            if "dlq_topic" in missing
            else ""
        )
        raise StreamError(
            f"topic(s) missing on Kafka at {config.bootstrap_servers}: {listed}; create "
            "them first, let the service create them with --create-topics "
            f"(create_topics = true in [serve]){way_out}"
        )


def make_admin(config: ServeConfig, client_id: str, servers: str | None = None) -> KafkaAdminClient:
    """An admin client, bootstrapped (from ``servers``, by default ``bootstrap_servers``): a
    failure is a one-line ``StreamError`` that says whether the broker was unreachable,
    refused the credentials or the TLS handshake."""
    options = {
        "bootstrap_timeout_ms": STARTUP_TIMEOUT_MS,
        "request_timeout_ms": STARTUP_TIMEOUT_MS,
        **client_options(config.kafka, "admin"),
        "bootstrap_servers": servers or config.bootstrap_servers,
        "client_id": client_id,
    }
    with _BootstrapFailures() as failures:
        # Made in two steps so that a client whose bootstrap fails can be closed: its
        # constructor starts a network thread first, which it leaves running when the
        # bootstrap fails (a thread and 4 open files for each try while start-up waits).
        admin = KafkaAdminClient.__new__(KafkaAdminClient)
        try:
            admin.__init__(**options)
        except BaseException as exc:
            _close_half_made(admin)
            if not isinstance(exc, KafkaError):
                raise
            raise _bootstrap_failure(config, options, exc, failures) from None
        return admin


def _close_half_made(admin: KafkaAdminClient) -> None:
    """What ``KafkaAdminClient.close`` does, for one whose constructor failed after its
    network thread started (kafka-python 3.0.12); a failure here is logged, not raised in
    place of the constructor's."""
    try:
        for part in ("_metrics", "_client"):
            if hasattr(admin, part):
                getattr(admin, part).close()
        if hasattr(admin, "_net"):
            admin._net.stop()  # noqa: SLF001
    except Exception as exc:  # noqa: BLE001
        log.debug("event=close_error client=admin error=%r", exc)


def _denied_topics(admin: KafkaAdminClient, topics: list[str]) -> set[str]:
    """Those of ``topics`` the broker says this client is not authorised to describe."""
    try:
        described = admin.describe_topics(topics)
    except KafkaError:
        return set()  # then reported as missing, as before
    return {
        t["name"] for t in described if for_code(t["error_code"]) is TopicAuthorizationFailedError
    }


def _create_topics(admin: KafkaAdminClient, config: ServeConfig, topics: list[str]) -> None:
    """Create ``topics`` with the broker's default partitions and replication; one created
    meanwhile by another instance is fine."""
    try:
        response = admin.create_topics(topics, raise_errors=False, wait_for_metadata=False)
        failed = []
        for topic in response["topics"]:
            error = for_code(topic["error_code"])
            if topic["error_code"] and error is not TopicAlreadyExistsError:
                failed.append(f"{topic['name']!r} ({error.__name__}: {topic['error_message']})")
        if failed:
            raise StreamError(
                f"cannot create topic(s) on Kafka at {config.bootstrap_servers}: "
                + ", ".join(failed)
            )
        admin.wait_for_topics(topics)
    except KafkaError as exc:
        raise StreamError(
            f"cannot create topic(s) {topics} on Kafka at {config.bootstrap_servers}: {exc}"
        ) from None
    logging.getLogger("anomaly.stream").info("event=topics_created topics=%s", ",".join(topics))


class _BootstrapFailures(logging.Handler):
    """Holds the exceptions kafka-python logged while a client bootstrapped; its ``kafka``
    loggers go to this handler only for that time.

    It also notes whether the broker answered a SASL handshake: a failed authentication
    often reaches kafka-python 3.0.12 as a bare disconnect (it drops an error reply that
    arrives together with the broker closing the connection). That answer is logged at
    DEBUG, with the SASL exchange's bytes beside it; the connection logger is opened to
    DEBUG through a filter that reads the records' types and passes on no record below its
    former level, so no handler anywhere sees them.
    """

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.last: BaseException | None = None
        self.refused: BaseException | None = None
        """A SASL refusal, whenever it came (later attempts may end otherwise)."""
        self.authenticating = False
        """The broker answered a SASL handshake: TCP and TLS worked, credentials were sent."""
        self._logger = logging.getLogger("kafka")
        self._connection = logging.getLogger("kafka.net.connection")

    def emit(self, record: logging.LogRecord) -> None:
        for arg in _args(record):
            # The final "Bootstrap failed: KafkaTimeoutError" says less than the cause.
            if isinstance(arg, BaseException) and not isinstance(arg, KafkaTimeoutError):
                self.last = arg
                if isinstance(arg, SaslAuthenticationFailedError):
                    self.refused = arg

    def filter(self, record: logging.LogRecord) -> bool:  # on the connection logger
        if any(type(arg).__name__ == "SaslHandshakeResponse" for arg in _args(record)):
            self.authenticating = True
        return record.levelno >= self._threshold

    def __enter__(self) -> _BootstrapFailures:
        self._saved = self._logger.level, self._logger.propagate, self._connection.level
        self._threshold = self._connection.getEffectiveLevel()
        if self._logger.getEffectiveLevel() > logging.WARNING:
            self._logger.setLevel(logging.WARNING)
        self._logger.propagate = False
        self._logger.addHandler(self)
        self._connection.setLevel(logging.DEBUG)
        self._connection.addFilter(self.filter)
        return self

    def __exit__(self, *_exc: object) -> None:
        self._connection.removeFilter(self.filter)
        self._connection.setLevel(self._saved[2])
        self._logger.removeHandler(self)
        self._logger.setLevel(self._saved[0])
        self._logger.propagate = self._saved[1]


def _args(record: logging.LogRecord) -> tuple:
    return record.args if isinstance(record.args, tuple) else ()


def _bootstrap_failure(
    config: ServeConfig, options: dict[str, Any], exc: KafkaError, failures: _BootstrapFailures
) -> StreamError:
    """The error, in one line, saying why bootstrapping failed; kafka-python's messages
    hold no secrets."""
    servers = config.bootstrap_servers
    protocol = str(options.get("security_protocol", "PLAINTEXT")).upper()
    mechanism = options.get("sasl_mechanism")
    logged = failures.last
    if (
        failures.refused is None
        and failures.authenticating
        and isinstance(logged, KafkaConnectionError)
    ):
        return StreamError(
            f"authentication failed against Kafka at {servers} (SASL {mechanism}): the broker "
            "closed the connection during authentication; check sasl_plain_username and the "
            "password, and that the listener offers sasl_mechanism, in [serve.kafka]"
        )
    for cause in (exc, failures.refused, logged):
        if isinstance(cause, SaslAuthenticationFailedError):
            return StreamError(
                f"authentication failed against Kafka at {servers} (SASL {mechanism}): "
                f"{_reason(cause)}; check sasl_plain_username and the password in [serve.kafka]"
            )
        if isinstance(cause, UnsupportedSaslMechanismError | IllegalSaslStateError):
            return StreamError(
                f"authentication failed against Kafka at {servers}: the broker refused SASL "
                f"{mechanism} ({type(cause).__name__}); check security_protocol "
                f"({protocol}) and sasl_mechanism against the listener"
            )
        if isinstance(cause, AuthorizationError):
            return StreamError(f"Kafka at {servers} denied access: {_reason(cause)}")
        # "[SSL: ...]": an alert from the broker after the handshake (TLS 1.3), such as a
        # client certificate it refuses, reaches kafka-python as a dropped connection.
        if isinstance(cause, ssl.SSLError) or (
            isinstance(cause, KafkaConnectionError)
            and ("Handshake failed" in str(cause) or "[SSL: " in str(cause))
        ):
            return StreamError(
                f"TLS handshake with Kafka at {servers} failed ({protocol}): {_reason(cause)}; "
                "check security_protocol, ssl_cafile, ssl_certfile/ssl_keyfile and "
                "ssl_check_hostname in [serve.kafka]"
            )
    timeout_s = options["bootstrap_timeout_ms"] / 1000
    detail = f" (last error: {_reason(logged)})" if logged else f" ({exc})"
    return BrokerUnreachable(
        f"cannot reach Kafka at {servers} within {timeout_s:g} s{detail}; check "
        "bootstrap_servers, security_protocol and that the broker is up"
    )


def _reason(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def make_consumer(config: ServeConfig, client_id: str, servers: str | None = None) -> KafkaConsumer:
    """A group consumer of the input topic (not yet subscribed), bootstrapped from
    ``servers`` (by default ``bootstrap_servers``)."""
    return _consumer(
        config,
        servers,
        client_id=client_id,
        group_id=config.group_id,
        auto_offset_reset=config.auto_offset_reset,
        session_timeout_ms=config.session_timeout_ms,
        heartbeat_interval_ms=min(3_000, config.session_timeout_ms // 3),
    )


def make_reader(
    config: ServeConfig, client_id: str, servers: str | None, bootstrap_timeout_ms: int
) -> KafkaConsumer:
    """A consumer of the input topic outside the group (no group id, no commits, no static
    membership), for partitions the loop assigns it itself: it reads records before the
    group's offsets again (``Transport.read_before``). Where a range's first records were
    deleted, it starts at the partition's first record left."""
    options = client_options(config.kafka, "consumer")
    options.pop("group_instance_id", None)
    return _consumer(
        config,
        servers,
        options,
        client_id=client_id,
        group_id=None,
        auto_offset_reset="earliest",
        bootstrap_timeout_ms=bootstrap_timeout_ms,
    )


def _consumer(
    config: ServeConfig, servers: str | None, options: dict | None = None, **settings
) -> KafkaConsumer:
    """A consumer of the input topic with the settings both kinds share, ``options`` (by
    default ``[serve.kafka]``'s for a consumer) and ``settings``."""
    try:
        return KafkaConsumer(
            **{
                "bootstrap_timeout_ms": STARTUP_TIMEOUT_MS,
                "reconnect_backoff_max_ms": RECONNECT_BACKOFF_MAX_MS,
                "metadata_max_age_ms": INPUT_METADATA_MAX_AGE_MS,
                "isolation_level": "read_committed",
                # The input topic deleted while subscribed: not made again with the broker's
                # default partitions before whoever deleted it can (librdkafka's default).
                "allow_auto_create_topics": False,
                **(client_options(config.kafka, "consumer") if options is None else options),
                "bootstrap_servers": servers or config.bootstrap_servers,
                "enable_auto_commit": False,
                "max_poll_records": config.max_batch_size,
                "fetch_max_wait_ms": config.fetch_max_wait_ms,
                **settings,
            }
        )
    except KafkaError as exc:
        raise StreamError(
            f"cannot create the Kafka consumer for {config.bootstrap_servers}: {exc}"
        ) from None


def make_producer(config: ServeConfig, client_id: str, servers: str | None = None) -> KafkaProducer:
    """The producer of results, alerts and dead-letter records, bootstrapped from
    ``servers`` (by default ``bootstrap_servers``)."""
    try:
        return KafkaProducer(
            **{
                "batch_size": PRODUCER_BATCH_BYTES,
                "bootstrap_timeout_ms": STARTUP_TIMEOUT_MS,
                "reconnect_backoff_max_ms": RECONNECT_BACKOFF_MAX_MS,
                "max_block_ms": MAX_BLOCK_MS,
                "enable_idempotence": False,
                "acks": "all",
                "max_in_flight_requests_per_connection": 1,
                # An output topic deleted while the service runs: not made again with the
                # broker's defaults (partitions, max.message.bytes) before whoever deleted it
                # can; the results wait meanwhile (output_unavailable).
                "allow_auto_create_topics": False,
                **client_options(config.kafka, "producer"),
                "bootstrap_servers": servers or config.bootstrap_servers,
                "client_id": client_id,
                "linger_ms": config.linger_ms,
            }
        )
    except KafkaError as exc:
        raise StreamError(
            f"cannot create the Kafka producer for {config.bootstrap_servers}: {exc}"
        ) from None

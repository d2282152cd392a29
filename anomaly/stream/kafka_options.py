"""``[serve.kafka]``: Kafka client options by kafka-python's names, given to each client.

``ServeConfig.kafka`` holds the options as configured (``anomaly.config.KafkaOptions``: the
names are checked against what the service sets itself, and secret values are masked when
shown). This module knows kafka-python: which client accepts which option
(``KafkaConsumer.DEFAULT_CONFIG`` and the producer's and admin client's), the type an
option's value has (to convert ``ANOMALY_SERVE_KAFKA_<OPTION>`` strings), and it reads
``NAME_file`` options when a client is made, so a secret mounted as a file is never held
in the configuration, shown or saved.

With ``[serve] client = "confluent"`` the same options are given to librdkafka under its
own names (``LIBRDKAFKA_NAMES``: ``ssl_cafile`` -> ``ssl.ca.location``, ...; one table, in
the README too), each to the clients librdkafka says take it; librdkafka's own dotted names
(``ssl.endpoint.identification.algorithm``) pass through as they are, and a kafka-python
name without a librdkafka equivalent is an error that says so.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer

from anomaly.config import FILE_SUFFIX, is_librdkafka_name, is_secret_option
from anomaly.errors import ConfigError

Client = Literal["consumer", "producer", "admin"]

#: Every option each client accepts, with kafka-python's default.
CLIENT_DEFAULTS: dict[Client, Mapping[str, Any]] = {
    "consumer": KafkaConsumer.DEFAULT_CONFIG,
    "producer": KafkaProducer.DEFAULT_CONFIG,
    "admin": KafkaAdminClient.DEFAULT_CONFIG,
}

#: Options whose value is a Python object (a class, callable, context or list), which a
#: TOML file or an environment variable cannot hold.
OBJECT_OPTIONS = frozenset(
    {
        "default_offset_commit_callback",
        "kafka_client",
        "metric_reporters",
        "partition_assignment_strategy",
        "partitioner",
        "sasl_oauth_token_provider",
        "selector",
        "socket_options",
        "ssl_context",
    }
)

#: kafka-python's option -> librdkafka's (``client = "confluent"``). Values are kept, except
#: ``ssl_check_hostname`` (true -> ``https``, false -> ``none``) and booleans (``true`` /
#: ``false``).
LIBRDKAFKA_NAMES = {
    # every client
    "security_protocol": "security.protocol",
    "ssl_cafile": "ssl.ca.location",
    "ssl_certfile": "ssl.certificate.location",
    "ssl_keyfile": "ssl.key.location",
    "ssl_password": "ssl.key.password",
    "ssl_crlfile": "ssl.crl.location",
    "ssl_ciphers": "ssl.cipher.suites",
    "ssl_check_hostname": "ssl.endpoint.identification.algorithm",
    "sasl_mechanism": "sasl.mechanism",
    "sasl_plain_username": "sasl.username",
    "sasl_plain_password": "sasl.password",
    "sasl_kerberos_service_name": "sasl.kerberos.service.name",
    "client_dns_lookup": "client.dns.lookup",
    "connections_max_idle_ms": "connections.max.idle.ms",
    "metadata_max_age_ms": "metadata.max.age.ms",
    "receive_buffer_bytes": "socket.receive.buffer.bytes",
    "send_buffer_bytes": "socket.send.buffer.bytes",
    "receive_message_max_bytes": "receive.message.max.bytes",
    "reconnect_backoff_ms": "reconnect.backoff.ms",
    "reconnect_backoff_max_ms": "reconnect.backoff.max.ms",
    "retry_backoff_ms": "retry.backoff.ms",
    "allow_auto_create_topics": "allow.auto.create.topics",
    # the consumer
    "check_crcs": "check.crcs",
    "client_rack": "client.rack",
    "fetch_min_bytes": "fetch.min.bytes",
    "fetch_max_bytes": "fetch.max.bytes",
    "max_partition_fetch_bytes": "max.partition.fetch.bytes",
    "max_poll_interval_ms": "max.poll.interval.ms",
    "group_instance_id": "group.instance.id",
    # the producer
    "compression_type": "compression.type",
    "batch_size": "batch.size",
    "max_request_size": "message.max.bytes",
    "delivery_timeout_ms": "message.timeout.ms",
    "request_timeout_ms": "request.timeout.ms",
    "retries": "message.send.max.retries",
}

#: librdkafka's options that only its consumer, or only its producer, takes (librdkafka's
#: CONFIGURATION.md, "C/P"); the others are given to every client.
LIBRDKAFKA_CONSUMER_ONLY = frozenset(
    """group.id group.instance.id partition.assignment.strategy session.timeout.ms
    heartbeat.interval.ms group.protocol.type group.protocol group.remote.assignor
    coordinator.query.interval.ms max.poll.interval.ms enable.auto.commit
    auto.commit.interval.ms enable.auto.offset.store queued.min.messages
    queued.max.messages.kbytes fetch.wait.max.ms fetch.queue.backoff.ms fetch.message.max.bytes
    max.partition.fetch.bytes fetch.max.bytes fetch.min.bytes fetch.error.backoff.ms
    offset.store.method isolation.level enable.partition.eof check.crcs auto.commit.enable
    auto.offset.reset offset.store.path offset.store.sync.interval.ms
    consume.callback.max.messages""".split()
)
LIBRDKAFKA_PRODUCER_ONLY = frozenset(
    """transactional.id transaction.timeout.ms enable.idempotence enable.gapless.guarantee
    queue.buffering.max.messages queue.buffering.max.kbytes queue.buffering.max.ms linger.ms
    message.send.max.retries retries queue.buffering.backpressure.threshold
    compression.codec compression.type compression.level batch.num.messages batch.size
    delivery.report.only.error sticky.partitioning.linger.ms request.required.acks acks
    request.timeout.ms message.timeout.ms delivery.timeout.ms queuing.strategy
    produce.offset.report partitioner""".split()
)

_LIBRDKAFKA_NOT_FOR: dict[Client, frozenset[str]] = {
    "consumer": LIBRDKAFKA_PRODUCER_ONLY,
    "producer": LIBRDKAFKA_CONSUMER_ONLY,
    "admin": LIBRDKAFKA_CONSUMER_ONLY | LIBRDKAFKA_PRODUCER_ONLY,
}

#: Options kafka-python takes as text only. A number TOML reads from an unquoted value
#: (``ssl_password = 20261204``; a Helm value ``12345``) is given as its digits: kafka-python
#: failed on it deep in a connection ('int' object has no attribute 'encode'), reported as
#: 'cannot reach Kafka' after its bootstrap timeout.
TEXT_OPTIONS = frozenset(
    {
        "sasl_plain_username",
        "sasl_plain_password",
        "ssl_password",
        "sasl_kerberos_service_name",
        "group_instance_id",
        "client_rack",
    }
)

#: Options with a few values, each client's spelling: kafka-python compares them as spelt
#: here, and takes any other ``security_protocol`` (``"sasl_ssl"``, a typo) for PLAINTEXT
#: without a word, with neither TLS nor SASL; a ``sasl_mechanism`` in lower case it sent as
#: it was, and the broker's refusal read as a wrong password. Given in any case and spelt
#: here as the clients take them; anything else is refused. ``compression_type = "none"`` is the
#: clients' default, and is left out.
CHOICES = {
    "security_protocol": ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"),
    "sasl_mechanism": (
        "PLAIN",
        "SCRAM-SHA-256",
        "SCRAM-SHA-512",
        "GSSAPI",
        "OAUTHBEARER",
        "AWS_MSK_IAM",
    ),
    "compression_type": ("none", "gzip", "snappy", "lz4", "zstd"),
}

#: Options kafka-python takes as an integer that have no default to say so.
_INTEGER_OPTIONS = frozenset({"receive_buffer_bytes", "send_buffer_bytes"})

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def option_default(name: str) -> Any:
    """kafka-python's default for option ``name`` (the first client that has it)."""
    for defaults in CLIENT_DEFAULTS.values():
        if name in defaults:
            return defaults[name]
    return None


def check_options(
    options: Mapping[str, Any],
    *,
    source: str = "[serve.kafka]",
    client: str = "kafka-python",
) -> None:
    """A ``ConfigError`` naming the first option no client accepts, or one that needs a
    Python object; ``NAME_file`` options are checked as ``NAME``. With ``client``
    ``"confluent"``, also one without a librdkafka equivalent (librdkafka's own dotted names
    are checked by librdkafka when the clients are made), and two options for one of
    librdkafka's (``sasl_plain_password_file`` and ``sasl.password``): the dotted one used
    to win without a word."""
    by_librdkafka: dict[str, str] = {}
    for name in options:
        option = name.removesuffix(FILE_SUFFIX)
        if client == "confluent" and is_librdkafka_name(option):
            _one_name_each(by_librdkafka, name, option, source)
            continue
        if not any(option in defaults for defaults in CLIENT_DEFAULTS.values()):
            raise ConfigError(
                f"{source}: {name!r} is not an option of kafka-python's consumer, producer or "
                "admin client (see their DEFAULT_CONFIG)"
            )
        if option in OBJECT_OPTIONS:
            raise ConfigError(
                f"{source}: Kafka option {name!r} takes a Python object, which a configuration "
                "cannot hold; use the equivalent plain options (e.g. ssl_cafile, "
                "ssl_certfile, ssl_keyfile)"
            )
        if client == "confluent" and option not in LIBRDKAFKA_NAMES:
            raise ConfigError(
                f"{source}: kafka-python's option {name!r} has no librdkafka equivalent the "
                "service passes on (client = 'confluent'); remove it, or give librdkafka's "
                "own option by its dotted name in the [serve.kafka] table"
            )
        if client == "confluent":
            _one_name_each(by_librdkafka, name, LIBRDKAFKA_NAMES[option], source)


#: librdkafka's aliases (its CONFIGURATION.md), by the name each stands for.
_LIBRDKAFKA_ALIASES = {
    "compression.type": "compression.codec",
    "delivery.timeout.ms": "message.timeout.ms",
    "linger.ms": "queue.buffering.max.ms",
    "max.in.flight": "max.in.flight.requests.per.connection",
    "retries": "message.send.max.retries",
    "acks": "request.required.acks",
    "sasl.mechanism": "sasl.mechanisms",
    "metadata.broker.list": "bootstrap.servers",
}


def _one_name_each(seen: dict[str, str], name: str, librdkafka: str, source: str) -> None:
    """A ``ConfigError`` when option ``name`` sets librdkafka's ``librdkafka`` (or the
    setting it is an alias of), which an option in ``seen`` (librdkafka's name -> the option
    that set it) set already."""
    librdkafka = _LIBRDKAFKA_ALIASES.get(librdkafka, librdkafka)
    other = seen.setdefault(librdkafka, name)
    if other != name:
        raise ConfigError(
            f"{source}: Kafka options {other!r} and {name!r} both set librdkafka's "
            f"{librdkafka!r}: give one of them"
        )


def check_files(options: Mapping[str, Any]) -> None:
    """Read every ``NAME_file`` option now, so a missing secret fails at start-up."""
    _read_files(options)


def check_tls_files(options: Mapping[str, Any], kafka_client: str) -> None:
    """A ``ConfigError`` naming the setting when a TLS client cannot load ``ssl_cafile``,
    ``ssl_certfile`` or ``ssl_keyfile`` with ``ssl_password``. The clients would say it late
    and in their own words: kafka-python as 'cannot reach Kafka ... check that the broker is
    up' after its bootstrap timeout (OpenSSL asking on the terminal for an encrypted key's
    pass phrase meanwhile), librdkafka as 'ssl.key.location failed: PEM lib'.
    ``kafka_client`` is ``[serve] client``: only librdkafka takes a folder of CA files."""
    values = _read_files(options)
    if str(values.get("security_protocol", "PLAINTEXT")).upper() not in ("SSL", "SASL_SSL"):
        return
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    paths = {name: values.get(name) for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile")}
    ca_folder = bool(paths["ssl_cafile"]) and Path(paths["ssl_cafile"]).is_dir()
    if ca_folder and kafka_client != "confluent":
        raise ConfigError(
            f"[serve.kafka] ssl_cafile: {paths['ssl_cafile']} is a folder; kafka-python takes "
            "one PEM file of CA certificates (a folder of hashed CA files works with client = "
            '"confluent")'
        )
    for name, path in paths.items():
        if path and not (Path(path).is_file() or (name == "ssl_cafile" and ca_folder)):
            raise ConfigError(f"[serve.kafka] {name}: no such file: {path}")
    if paths["ssl_cafile"] and not ca_folder:
        try:
            context.load_verify_locations(paths["ssl_cafile"])
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"[serve.kafka] ssl_cafile: no PEM certificate in {paths['ssl_cafile']} ({exc})"
            ) from None
    certfile = paths["ssl_certfile"]
    if not certfile:
        return
    keyfile = paths["ssl_keyfile"] or certfile
    password = values.get("ssl_password")
    try:
        encrypted = "ENCRYPTED" in Path(keyfile).read_text(errors="replace")
    except OSError as exc:
        message = f"[serve.kafka] ssl_keyfile: cannot read {keyfile} ({exc.strerror})"
        raise ConfigError(message) from None
    if encrypted and not password:
        raise ConfigError(
            f"[serve.kafka] ssl_keyfile: {keyfile} is encrypted; give its pass phrase as "
            "ssl_password (or ssl_password_file)"
        )
    try:
        context.load_cert_chain(certfile, keyfile, password=password or "")
    except (OSError, ssl.SSLError) as exc:
        if encrypted and "PEM lib" in str(exc):
            raise ConfigError(
                f"[serve.kafka] ssl_password does not decrypt ssl_keyfile {keyfile}"
            ) from None
        raise ConfigError(
            f"[serve.kafka] ssl_certfile/ssl_keyfile: cannot load the certificate "
            f"{certfile} with the key {keyfile} ({exc})"
        ) from None


def client_options(options: Mapping[str, Any], client: Client) -> dict[str, Any]:
    """The options ``client`` accepts, ``NAME_file`` options read from their files."""
    accepted = CLIENT_DEFAULTS[client]
    return {name: value for name, value in _read_files(options).items() if name in accepted}


def librdkafka_options(options: Mapping[str, Any], client: Client) -> dict[str, Any]:
    """The options ``client`` of librdkafka takes, by librdkafka's names and in its types,
    ``NAME_file`` options read from their files (``ConfigError`` for a kafka-python name
    without a librdkafka equivalent)."""
    check_options(options, client="confluent")
    values = {}
    for name, value in _read_files(options).items():
        librdkafka = name if is_librdkafka_name(name) else LIBRDKAFKA_NAMES[name]
        if librdkafka in _LIBRDKAFKA_NOT_FOR[client]:
            continue
        if name == "ssl_check_hostname":
            value = "https" if value else "none"
        if isinstance(value, bool):
            value = "true" if value else "false"
        values[librdkafka] = value
    return values


def security(options: Mapping[str, Any], kafka_client: str) -> tuple[str, str | None]:
    """The security protocol and, with SASL, the mechanism the clients use: kafka-python's
    names or librdkafka's, else librdkafka's default (GSSAPI); None where kafka-python gets
    none (it has no default). ``kafka_client`` is ``[serve] client``."""
    values = _read_files(options)
    protocol = str(values.get("security_protocol", values.get("security.protocol", "PLAINTEXT")))
    if not protocol.upper().startswith("SASL_"):
        return protocol.upper(), None
    given = values.get(
        "sasl_mechanism", values.get("sasl.mechanisms", values.get("sasl.mechanism"))
    )
    if given is None and kafka_client == "confluent":
        given = "GSSAPI"
    return protocol.upper(), None if given is None else str(given).upper()


def from_environment(option: str, raw: str, variable: str) -> Any:
    """An ``ANOMALY_SERVE_KAFKA_<OPTION>`` string as the type of kafka-python's default for
    ``option`` (bool, int or float; otherwise the string)."""
    check_options({option: raw}, source=variable)
    if option.endswith(FILE_SUFFIX):
        return raw
    default = option_default(option)
    shown = "the value" if is_secret_option(option) else repr(raw)
    if isinstance(default, bool):
        if raw.lower() in _TRUE | _FALSE:
            return raw.lower() in _TRUE
        raise ConfigError(f"{variable}: {shown} is not a boolean (true/false, 1/0, yes/no)")
    try:
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            return float(raw)
    except ValueError:
        kind = "an integer" if isinstance(default, int) else "a number"
        raise ConfigError(f"{variable}: {shown} is not {kind}") from None
    return raw


def _read_files(options: Mapping[str, Any]) -> dict[str, Any]:
    """The options as the clients take them: ``NAME_file`` read, each value checked against
    the type kafka-python takes (``ConfigError`` naming it), a choice in its spelling."""
    values = {}
    for name, value in options.items():
        option = name.removesuffix(FILE_SUFFIX)
        if option != name:
            value = _read_secret(name, Path(value))
        if is_librdkafka_name(option):
            values[option] = value
            continue
        if option == "api_version" and isinstance(value, str):
            value = _version_tuple(value)
        if option in TEXT_OPTIONS and isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        _check_type(name, option, value)
        if option in CHOICES:
            value = _choice(name, option, value)
            if value == "none":
                continue
        values[option] = value
    return values


def _check_type(name: str, option: str, value: Any) -> None:
    """A ``ConfigError`` when ``value`` is not of the type kafka-python takes for ``option``
    (as its default's, or text): kafka-python would fail on it late and in its own words
    (``request_timeout_ms = "30000"``: 'cannot reach Kafka'), or take ``"false"`` for true."""
    default = option_default(option)
    if isinstance(default, bool):
        wanted, ok = "a boolean (true or false)", isinstance(value, bool)
    elif isinstance(default, int) or option in _INTEGER_OPTIONS:
        wanted = "an integer"
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        wanted = "a number"
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    elif isinstance(default, str) or option in TEXT_OPTIONS or option in CHOICES:
        wanted, ok = "text", isinstance(value, str)
    else:
        return
    if not ok:
        shown = "the value" if is_secret_option(option) else repr(value)
        raise ConfigError(f"[serve.kafka] {name}: {shown} is not {wanted}")


def _choice(name: str, option: str, value: str) -> str:
    """``value`` spelt as the clients take it, or a ``ConfigError`` listing the choices."""
    for choice in CHOICES[option]:
        if value.strip().lower() == choice.lower():
            return choice
    raise ConfigError(
        f"[serve.kafka] {name}: {value!r} is not one of {', '.join(CHOICES[option])} (in any case)"
    )


def _read_secret(name: str, path: Path) -> str:
    # The message names the option and the path, never the content.
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"[serve.kafka] {name}: file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not UTF-8 text"
        raise ConfigError(f"[serve.kafka] {name}: cannot read {path}: {reason}") from None
    text = text[:-1] if text.endswith("\n") else text
    if not text:  # the clients said "sasl.username and sasl.password must be set", or
        # sent an empty password and read the refusal as a wrong one
        raise ConfigError(f"[serve.kafka] {name}: {path} is empty")
    return text


def _version_tuple(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split("."))
    except ValueError:
        raise ConfigError(
            f"[serve.kafka] api_version: {text!r} is not a version like '3.9.0'"
        ) from None

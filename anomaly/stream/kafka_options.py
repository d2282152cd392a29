"""``[serve.kafka]``: Kafka client options by kafka-python's names, given to each client.

``ServeConfig.kafka`` holds the options as configured (``anomaly.config.KafkaOptions``: the
names are checked against what the service sets itself, and secret values are masked when
shown). This module knows kafka-python: which client accepts which option
(``KafkaConsumer.DEFAULT_CONFIG`` and the producer's and admin client's), the type an
option's value has (to convert ``ANOMALY_SERVE_KAFKA_<OPTION>`` strings), and it reads
``NAME_file`` options when a client is made, so a secret mounted as a file is never held
in the configuration, shown or saved.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer

from anomaly.config import FILE_SUFFIX, is_secret_option
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

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def option_default(name: str) -> Any:
    """kafka-python's default for option ``name`` (the first client that has it)."""
    for defaults in CLIENT_DEFAULTS.values():
        if name in defaults:
            return defaults[name]
    return None


def check_options(options: Mapping[str, Any], *, source: str = "[serve.kafka]") -> None:
    """A ``ConfigError`` naming the first option no client accepts, or one that needs a
    Python object; ``NAME_file`` options are checked as ``NAME``."""
    for name in options:
        option = name.removesuffix(FILE_SUFFIX)
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


def check_files(options: Mapping[str, Any]) -> None:
    """Read every ``NAME_file`` option now, so a missing secret fails at start-up."""
    _read_files(options)


def client_options(options: Mapping[str, Any], client: Client) -> dict[str, Any]:
    """The options ``client`` accepts, ``NAME_file`` options read from their files."""
    accepted = CLIENT_DEFAULTS[client]
    return {name: value for name, value in _read_files(options).items() if name in accepted}


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
    values = {}
    for name, value in options.items():
        option = name.removesuffix(FILE_SUFFIX)
        if option != name:
            value = _read_secret(name, Path(value))
        if option == "api_version" and isinstance(value, str):
            value = _version_tuple(value)
        values[option] = value
    return values


def _read_secret(name: str, path: Path) -> str:
    # The message names the option and the path, never the content.
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"[serve.kafka] {name}: file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not UTF-8 text"
        raise ConfigError(f"[serve.kafka] {name}: cannot read {path}: {reason}") from None
    return text[:-1] if text.endswith("\n") else text


def _version_tuple(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split("."))
    except ValueError:
        raise ConfigError(
            f"[serve.kafka] api_version: {text!r} is not a version like '3.9.0'"
        ) from None

"""The service's settings from four places: command line > environment > TOML > defaults.

Every key of ``ServeConfig`` can be set in the ``[serve]`` section of a TOML file, as an
environment variable ``ANOMALY_SERVE_<KEY>`` (``ANOMALY_SERVE_MAX_BATCH_SIZE=64``) and, for
the keys the CLI exposes, as an option. Each layer is validated as it is applied, so an
error says which one held the bad value. An unknown ``ANOMALY_SERVE_*`` variable is an
error, like an unknown TOML key; an empty value sets an optional key (e.g. the dead-letter
topic) to none.

The adaptive alarm stage's settings (``[alarms]``) start from the model's, then the keys the
file's ``[alarms]`` section sets, then ``ANOMALY_ALARMS_<KEY>`` (``ANOMALY_ALARMS_SEMANTICS=state``)
(``resolve_alarm_config``, once the model is loaded).

Kafka client options (``[serve.kafka]``) come one at a time from
``ANOMALY_SERVE_KAFKA_<OPTION>`` (``ANOMALY_SERVE_KAFKA_SECURITY_PROTOCOL=SASL_SSL``), as the
type of kafka-python's default for the option; they replace the same option of the file (its
``NAME_file`` form too), and an empty value removes it. The resolved options are checked
against kafka-python's clients (and, with ``client = "confluent"``, against the names
librdkafka gets) and their ``_file`` secrets read once, so a typo or a missing secret fails
before the model is loaded.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from anomaly.config import (
    FILE_SUFFIX,
    MOVED_TO_ALARMS,
    AlarmConfig,
    Config,
    ServeConfig,
    is_secret_option,
)
from anomaly.errors import ConfigError
from anomaly.stream import kafka_options

ENV_PREFIX = "ANOMALY_SERVE_"
KAFKA_ENV_PREFIX = ENV_PREFIX + "KAFKA_"
ALARMS_ENV_PREFIX = "ANOMALY_ALARMS_"


def resolve_serve_config(
    config_path: str | os.PathLike[str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> ServeConfig:
    """The ``ServeConfig`` from defaults, then the TOML file, then ``environ`` (default
    ``os.environ``), then ``overrides`` (the CLI's options; ``None`` values are unset)."""
    values = (Config.from_toml(config_path) if config_path else Config()).serve.model_dump()
    environ = os.environ if environ is None else environ
    env = _from_environment(environ)
    kafka_env = _kafka_from_environment(environ)
    if kafka_env:
        env["kafka"] = _merged_options(values["kafka"], kafka_env)
    if env:
        values = _validated(values, env, "environment (ANOMALY_SERVE_*)", from_text=True)
    given = {key: value for key, value in (overrides or {}).items() if value is not None}
    unknown = sorted(set(given) - set(ServeConfig.model_fields))
    if unknown:
        raise ConfigError(f"unknown serve setting(s) {unknown}")
    if given:
        values = _validated(values, given, "command line")
    serve = Config.from_dict({"serve": values}).serve
    kafka_options.check_options(serve.kafka, client=serve.client)
    kafka_options.check_files(serve.kafka)
    if serve.client == "confluent":
        check_confluent_installed()
    return serve


def check_confluent_installed() -> None:
    """A ``ConfigError`` saying what to install when ``client = "confluent"`` and
    confluent-kafka is missing."""
    try:
        import confluent_kafka  # noqa: F401
    except ImportError:
        raise ConfigError(
            "[serve] client = 'confluent' needs confluent-kafka (librdkafka): install the "
            "package's 'confluent' extra, pip install 'anomaly-gan[confluent]', or set "
            "client = 'kafka-python'"
        ) from None


def resolve_alarm_config(
    base: AlarmConfig,
    config_path: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> AlarmConfig:
    """``base`` (the model's ``[alarms]``) with the keys the TOML file's ``[alarms]`` section
    sets, then those of ``ANOMALY_ALARMS_<KEY>`` in ``environ`` (default ``os.environ``)."""
    alarms = base.updated_from_toml(config_path) if config_path else base
    env = _from_environment(os.environ if environ is None else environ, ALARMS_ENV_PREFIX)
    if not env:
        return alarms
    try:
        return alarms.updated(env, from_text=True)
    except ConfigError as exc:
        raise ConfigError(f"{exc} (with the environment ({ALARMS_ENV_PREFIX}*) applied)") from None


def _from_environment(environ: Mapping[str, str], prefix: str = ENV_PREFIX) -> dict[str, Any]:
    """The keys of ``[serve]`` (``prefix`` ``ANOMALY_SERVE_``) or ``[alarms]``
    (``ANOMALY_ALARMS_``) that ``environ`` sets, as strings (None: an optional key cleared)."""
    fields = (ServeConfig if prefix == ENV_PREFIX else AlarmConfig).model_fields
    values = {}
    for name, raw in environ.items():
        if not name.startswith(prefix):
            continue
        if name.startswith(KAFKA_ENV_PREFIX):
            continue  # one Kafka client option each: _kafka_from_environment
        key = name[len(prefix) :].lower()
        if key == "kafka" and prefix == ENV_PREFIX:
            raise ConfigError(
                f"{name}: set Kafka client options one at a time, as "
                f"{KAFKA_ENV_PREFIX}<OPTION> (e.g. {KAFKA_ENV_PREFIX}SECURITY_PROTOCOL)"
            )
        if key in MOVED_TO_ALARMS and prefix == ENV_PREFIX:
            raise ConfigError(f"{name} moved to {ALARMS_ENV_PREFIX}{MOVED_TO_ALARMS[key].upper()}")
        if key not in fields:
            known = ", ".join(prefix + k.upper() for k in fields)
            raise ConfigError(f"unknown environment variable {name}; known: {known}")
        optional = fields[key].default is None or type(None) in getattr(
            fields[key].annotation, "__args__", ()
        )
        values[key] = None if optional and raw.strip() == "" else raw.strip()
    return values


def _kafka_from_environment(environ: Mapping[str, str]) -> dict[str, Any]:
    """``{option: value}`` from ``ANOMALY_SERVE_KAFKA_<OPTION>``; ``None`` removes one."""
    options = {}
    for name, raw in environ.items():
        if name.startswith(KAFKA_ENV_PREFIX):
            option = name[len(KAFKA_ENV_PREFIX) :].lower()
            if not is_secret_option(option):  # a pass phrase may begin or end with a space
                raw = raw.strip()
            options[option] = kafka_options.from_environment(option, raw, name) if raw else None
    return options


def _merged_options(base: Mapping[str, Any], layer: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``layer``'s options replacing the same option in either form (``NAME``
    or ``NAME_file``); a ``None`` in ``layer`` removes the option."""
    merged = dict(base)
    for name, value in layer.items():
        option = name.removesuffix(FILE_SUFFIX)
        merged.pop(option, None)
        merged.pop(option + FILE_SUFFIX, None)
        if value is not None:
            merged[name] = value
    return merged


def _validated(
    base: dict[str, Any], layer: dict[str, Any], source: str, from_text: bool = False
) -> dict[str, Any]:
    try:
        return Config.from_dict({"serve": {**base, **layer}}, from_text).serve.model_dump()
    except ConfigError as exc:
        # The layer may be at fault, or the settings below it with the layer's on top (a
        # librdkafka option in the file, the client chosen by the environment).
        raise ConfigError(f"{exc} (with the {source} applied)") from None

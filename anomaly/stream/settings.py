"""The service's settings from four places: command line > environment > TOML > defaults.

Every key of ``ServeConfig`` can be set in the ``[serve]`` section of a TOML file, as an
environment variable ``ANOMALY_SERVE_<KEY>`` (``ANOMALY_SERVE_MAX_BATCH_SIZE=64``) and, for
the keys the CLI exposes, as an option. Each layer is validated as it is applied, so an
error says which one held the bad value. An unknown ``ANOMALY_SERVE_*`` variable is an
error, like an unknown TOML key; an empty value sets an optional key (e.g. the dead-letter
topic) to none.

Kafka client options (``[serve.kafka]``) come one at a time from
``ANOMALY_SERVE_KAFKA_<OPTION>`` (``ANOMALY_SERVE_KAFKA_SECURITY_PROTOCOL=SASL_SSL``), as the
type of kafka-python's default for the option; they replace the same option of the file (its
``NAME_file`` form too), and an empty value removes it. The resolved options are checked
against kafka-python's clients and their ``_file`` secrets read once, so a typo or a missing
secret fails before the model is loaded.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from anomaly.config import FILE_SUFFIX, Config, ServeConfig
from anomaly.errors import ConfigError
from anomaly.stream import kafka_options

ENV_PREFIX = "ANOMALY_SERVE_"
KAFKA_ENV_PREFIX = ENV_PREFIX + "KAFKA_"


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
        values = _validated(values, env, "environment (ANOMALY_SERVE_*)")
    given = {key: value for key, value in (overrides or {}).items() if value is not None}
    unknown = sorted(set(given) - set(ServeConfig.model_fields))
    if unknown:
        raise ConfigError(f"unknown serve setting(s) {unknown}")
    if given:
        values = _validated(values, given, "command line")
    kafka_options.check_options(values["kafka"])
    kafka_options.check_files(values["kafka"])
    return Config.from_dict({"serve": values}).serve


def _from_environment(environ: Mapping[str, str]) -> dict[str, Any]:
    fields = ServeConfig.model_fields
    values = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        if name.startswith(KAFKA_ENV_PREFIX):
            continue  # one Kafka client option each: _kafka_from_environment
        key = name[len(ENV_PREFIX) :].lower()
        if key == "kafka":
            raise ConfigError(
                f"{name}: set Kafka client options one at a time, as "
                f"{KAFKA_ENV_PREFIX}<OPTION> (e.g. {KAFKA_ENV_PREFIX}SECURITY_PROTOCOL)"
            )
        if key not in fields:
            known = ", ".join(ENV_PREFIX + k.upper() for k in fields)
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


def _validated(base: dict[str, Any], layer: dict[str, Any], source: str) -> dict[str, Any]:
    try:
        return Config.from_dict({"serve": {**base, **layer}}).serve.model_dump()
    except ConfigError as exc:
        raise ConfigError(f"{exc} (from the {source})") from None

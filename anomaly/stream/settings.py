"""The service's settings from four places: command line > environment > TOML > defaults.

Every key of ``ServeConfig`` can be set in the ``[serve]`` section of a TOML file, as an
environment variable ``ANOMALY_SERVE_<KEY>`` (``ANOMALY_SERVE_MAX_BATCH_SIZE=64``) and, for
the keys the CLI exposes, as an option. Each layer is validated as it is applied, so an
error says which one held the bad value. An unknown ``ANOMALY_SERVE_*`` variable is an
error, like an unknown TOML key; an empty value sets an optional key (e.g. the dead-letter
topic) to none.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from anomaly.config import Config, ServeConfig
from anomaly.errors import ConfigError

ENV_PREFIX = "ANOMALY_SERVE_"


def resolve_serve_config(
    config_path: str | os.PathLike[str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> ServeConfig:
    """The ``ServeConfig`` from defaults, then the TOML file, then ``environ`` (default
    ``os.environ``), then ``overrides`` (the CLI's options; ``None`` values are unset)."""
    values = (Config.from_toml(config_path) if config_path else Config()).serve.model_dump()
    env = _from_environment(os.environ if environ is None else environ)
    if env:
        values = _validated(values, env, "environment (ANOMALY_SERVE_*)")
    given = {key: value for key, value in (overrides or {}).items() if value is not None}
    unknown = sorted(set(given) - set(ServeConfig.model_fields))
    if unknown:
        raise ConfigError(f"unknown serve setting(s) {unknown}")
    if given:
        values = _validated(values, given, "command line")
    return ServeConfig.model_validate(values)


def _from_environment(environ: Mapping[str, str]) -> dict[str, Any]:
    fields = ServeConfig.model_fields
    values = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        key = name[len(ENV_PREFIX) :].lower()
        if key not in fields:
            known = ", ".join(ENV_PREFIX + k.upper() for k in fields)
            raise ConfigError(f"unknown environment variable {name}; known: {known}")
        optional = fields[key].default is None or type(None) in getattr(
            fields[key].annotation, "__args__", ()
        )
        values[key] = None if optional and raw.strip() == "" else raw.strip()
    return values


def _validated(base: dict[str, Any], layer: dict[str, Any], source: str) -> dict[str, Any]:
    try:
        return Config.from_dict({"serve": {**base, **layer}}).serve.model_dump()
    except ConfigError as exc:
        raise ConfigError(f"{exc} (from the {source})") from None

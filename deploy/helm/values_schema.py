"""The chart's ``serve`` and ``alarms`` value types, from the service's own configuration.

    python deploy/helm/values_schema.py           rewrite values.schema.json's two sections
    python deploy/helm/values_schema.py --check   exit 1 where the file differs from them

The values under ``serve`` and ``alarms`` become the ``[serve]`` and ``[alarms]`` tables of
the pods' ``config.toml``, which the service validates at start (``anomaly.config``). Helm
checks values against ``values.schema.json`` before it renders anything, so a value of the
wrong type (``--set-string serve.max_batch_size=64`` renders ``"64"``, which the service
refuses) or a misspelt key fails at ``helm install``, naming the value, instead of in a
crash-looping pod. The types, bounds and choices here are the pydantic models' own
(``ServeConfig``, ``AlarmConfig``), so the two cannot drift apart: a test runs ``--check``.
``serve.kafka`` holds the Kafka client's options, which the service checks itself
(``anomaly.stream.kafka_options``), so it only needs to be a table of plain values.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from pydantic import BaseModel

from anomaly.config import AlarmConfig, ServeConfig

SCHEMA = Path(__file__).parent / "anomaly-scorer" / "values.schema.json"

#: The JSON-schema keywords that say what a value may be (not its title or default).
VALIDATION_KEYWORDS = (
    "type",
    "enum",
    "anyOf",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "minLength",
)

KAFKA_OPTIONS = {
    "type": "object",
    "description": "kafka-python's or librdkafka's client options (checked by the service)",
    "additionalProperties": {"type": ["string", "number", "boolean", "array"]},
}


def section(model: type[BaseModel], table: str) -> dict:
    """The schema of the values that become ``config.toml``'s ``table``: each key of
    ``model`` with its types, bounds and choices, and no other key."""
    properties = {
        name: _validation(field)
        for name, field in model.model_json_schema()["properties"].items()
        if name != "kafka"
    }
    if "kafka" in model.model_fields:
        properties["kafka"] = KAFKA_OPTIONS
    return {
        "type": "object",
        "description": f"[{table}] of config.toml: {model.__name__}'s keys, by "
        "deploy/helm/values_schema.py (the service validates them again at start)",
        "properties": properties,
        "additionalProperties": False,
    }


def _validation(field: dict) -> dict:
    """``field``'s validation keywords; null only where the service's default is none. A
    key set to null is not rendered (and Helm drops it where values.yaml has it), so the
    service's default applies: null for ``alarms.quorum`` would give quorum 2, not the
    combined score. ``""`` and ``0`` say none where the service takes them (README of the
    chart)."""
    kept = {key: field[key] for key in VALIDATION_KEYWORDS if key in field}
    null_is_the_default = "default" in field and field["default"] is None
    choices = [
        _validation(choice)
        for choice in kept.pop("anyOf", [])
        if choice.get("type") != "null" or null_is_the_default
    ]
    if len(choices) == 1:
        kept.update(choices[0])
    elif choices:
        kept["anyOf"] = choices
    return kept


def expected(schema: dict) -> dict:
    """``schema`` (values.schema.json's content) with its ``serve`` and ``alarms`` sections
    made from the configuration."""
    properties = {
        **schema["properties"],
        "serve": section(ServeConfig, "serve"),
        "alarms": section(AlarmConfig, "alarms"),
    }
    return {**schema, "properties": properties}


def render(schema: dict) -> str:
    return json.dumps(schema, indent=2) + "\n"


def main(argv: list[str]) -> int:
    current = SCHEMA.read_text()
    wanted = render(expected(json.loads(current)))
    if argv == ["--check"]:
        if current != wanted:
            print(f"{SCHEMA} is out of date: run python deploy/helm/values_schema.py")
            return 1
        return 0
    if argv:
        print(__doc__)
        return 2
    SCHEMA.write_text(wanted)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

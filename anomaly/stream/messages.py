"""Kafka message formats: input records in, results and dead-letter records out.

Input: one JSON object per message, ``{"features": ..., "id": ..., "timestamp": ...}``, where
``features`` is an object keyed by feature name or an array in the model's feature order;
``id`` and ``timestamp`` are optional and copied to the result as they are. The Kafka key is
the entity (time-series mode windows each key's records separately).

A message that cannot be scored is rejected with one of the reason codes of ``REASONS`` and a
human-readable explanation; the service writes it to the dead-letter topic with
``encode_rejection`` (the original bytes in base64, the reason and where it came from).

Validation happens here, at the edge, so the batch handed to the model is all finite
numbers. The checks are per record in plain Python (a JSON parse, a key-set comparison and a
type scan), and the matrix is built and checked for finiteness once per batch with NumPy.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import operator
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

#: Reason codes of rejected records (the ``reason`` label of anomaly_records_rejected_total).
REASONS = ("not_json", "bad_schema", "wrong_features", "bad_type", "non_finite", "too_large")

#: Largest part of an original message copied into a dead-letter record (base64 makes it a
#: third larger), so the record stays under Kafka's default 1 MiB message limit. Longer
#: values are cut, marked ``value_truncated`` and identified by size, SHA-256 and their
#: topic/partition/offset.
DLQ_VALUE_LIMIT = 256 * 1024

_NUMBER_TYPES = frozenset((int, float))
_FLOAT32_MAX = float(np.finfo(np.float32).max)


@dataclass
class DecodedBatch:
    """The usable records of a batch as a matrix, and the rejected ones with reasons."""

    rows: np.ndarray
    """(k, d) float32 features of the accepted records, all finite."""
    accepted: list[int]
    """Index in the input batch of each accepted record (row of ``rows``)."""
    ids: list[Any]
    timestamps: list[Any]
    rejected: list[tuple[int, str, str]] = field(default_factory=list)
    """(index in the input batch, reason code, explanation) of each rejected record."""


class RecordDecoder:
    """Parses and validates input messages against the model's feature names."""

    def __init__(self, feature_names: list[str], max_message_bytes: int):
        self.names = tuple(feature_names)
        self.n_features = len(self.names)
        self._name_set = frozenset(self.names)
        self._max_bytes = max_message_bytes
        if self.n_features == 1:
            name = self.names[0]
            self._pick = lambda features: (features[name],)
        else:
            self._pick = operator.itemgetter(*self.names)

    def decode(self, values: list[bytes | None]) -> DecodedBatch:
        """Validate each message value; return the accepted rows and the rejections."""
        rows: list = []
        accepted: list[int] = []
        ids: list = []
        stamps: list = []
        rejected: list[tuple[int, str, str]] = []
        slow: list[int] = []  # rows parsed by the fallback parser: may hold huge integers
        loads = orjson.loads
        n = self.n_features
        numbers = _NUMBER_TYPES
        for index, raw in enumerate(values):
            if raw is None:
                rejected.append((index, "not_json", "message has no value (tombstone)"))
                continue
            if len(raw) > self._max_bytes:
                rejected.append(
                    (
                        index,
                        "too_large",
                        f"message of {len(raw)} bytes is over max_message_bytes={self._max_bytes}",
                    )
                )
                continue
            try:
                message = loads(raw)
                fallback = False
            except orjson.JSONDecodeError as exc:
                message, problem = _parse_leniently(raw, exc)
                if problem is not None:
                    rejected.append((index, *problem))
                    continue
                fallback = True
            if type(message) is not dict:
                rejected.append(
                    (index, "bad_schema", f"message is a JSON {_json_type(message)}, not an object")
                )
                continue
            features = message.get("features")
            kind = type(features)
            if kind is list:
                if len(features) != n:
                    rejected.append(
                        (
                            index,
                            "wrong_features",
                            f"'features' has {len(features)} values; the model expects {n}",
                        )
                    )
                    continue
                row = features
            elif kind is dict:
                if features.keys() != self._name_set:
                    rejected.append((index, "wrong_features", self._describe_names(features)))
                    continue
                row = self._pick(features)
            else:
                what = (
                    "no 'features' key"
                    if "features" not in message
                    else f"'features' is a JSON {_json_type(features)}"
                )
                rejected.append(
                    (
                        index,
                        "bad_schema",
                        f"{what}; expected an object keyed by feature name or an array of "
                        f"{n} numbers",
                    )
                )
                continue
            if not numbers.issuperset(map(type, row)):
                rejected.append((index, "bad_type", self._describe_types(row)))
                continue
            if fallback:
                slow.append(len(rows))
            rows.append(row)
            accepted.append(index)
            ids.append(message.get("id"))
            stamps.append(message.get("timestamp"))

        if slow:  # integers beyond float range only get through the lenient parser
            for position in reversed(slow):
                if not all(_fits_float(v) for v in rows[position]):
                    rejected.append(
                        (accepted[position], "non_finite", "a feature value is beyond float range")
                    )
                    for column in (rows, accepted, ids, stamps):
                        del column[position]
        matrix = np.array(rows, dtype=np.float64).reshape(len(rows), n)
        finite = np.isfinite(matrix) & (np.abs(matrix) <= _FLOAT32_MAX)
        good = finite.all(axis=1)
        if not good.all():
            keep = np.flatnonzero(good).tolist()
            for position in np.flatnonzero(~good).tolist():
                bad = [self.names[c] for c in np.flatnonzero(~finite[position]).tolist()]
                rejected.append(
                    (
                        accepted[position],
                        "non_finite",
                        f"non-finite or out-of-range value in feature(s) {bad[:5]}",
                    )
                )
            matrix = matrix[good]
            accepted = [accepted[i] for i in keep]
            ids = [ids[i] for i in keep]
            stamps = [stamps[i] for i in keep]
        rejected.sort()
        return DecodedBatch(matrix.astype(np.float32), accepted, ids, stamps, rejected)

    def _describe_names(self, features: dict) -> str:
        missing = [name for name in self.names if name not in features]
        extra = sorted(str(k) for k in features.keys() - self._name_set)
        parts = []
        if missing:
            parts.append(f"missing feature(s) {missing[:10]}{' ...' if len(missing) > 10 else ''}")
        if extra:
            parts.append(f"unknown feature(s) {extra[:10]}{' ...' if len(extra) > 10 else ''}")
        return "; ".join(parts)

    def _describe_types(self, row) -> str:
        for name, value in zip(self.names, row, strict=True):
            if type(value) not in _NUMBER_TYPES:
                return f"feature {name!r} is a JSON {_json_type(value)}, not a number"
        return "a feature value is not a number"


def _parse_leniently(raw: bytes, error: Exception) -> tuple[Any, tuple[str, str] | None]:
    """Messages orjson refuses: NaN/Infinity literals and numbers beyond float range are
    ``non_finite``; anything the standard library cannot parse either is ``not_json``."""
    constants = []

    def constant(name):
        constants.append(name)
        return float("nan")

    try:
        message = json.loads(raw, parse_constant=constant)
    except (ValueError, RecursionError):
        return None, ("not_json", f"not valid JSON: {error}")
    if constants:
        return None, ("non_finite", f"JSON holds the non-standard literal {constants[0]}")
    return message, None


def _fits_float(value) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def _json_type(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, str):
        return "string"
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list):
        return "array"
    return "number"


class ResultEncoder:
    """Builds the JSON result of each record (see ``encode``) with orjson."""

    def __init__(self, model_version: str, threshold: float, time_series: bool):
        self.model_version = model_version
        self.threshold = float(threshold)
        self.time_series = time_series

    def encode(
        self,
        partitions: list[int],
        offsets: list[int],
        ids: list,
        timestamps: list,
        result,
        scored: list[int] | None,
        processing_ms: float,
        alarms: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> tuple[list[bytes], list[bool]]:
        """One result per record (in order) and whether it goes to the alerts topic.

        ``result`` is the ``ScoreResult`` of the records at positions ``scored`` (all of
        them when ``None``); in time-series mode the others get ``window_complete: false``
        and null scores. ``alarms``, the (p-values, alarms) of the scored records when
        conformal alarms are on, adds ``p_value`` and ``alarm`` to each result, and the
        alarm, not ``is_anomaly``, sends a result to the alerts topic.
        """
        dumps = orjson.dumps
        version = self.model_version
        threshold = self.threshold
        names = list(result.components)
        scores = result.scores.tolist()
        flags = result.is_anomaly.tolist()
        percentiles = result.percentiles.tolist()
        tops = result.top_features
        if alarms is not None:
            p_values, raised = (a.tolist() for a in alarms)
            extras = [{"p_value": p, "alarm": a} for p, a in zip(p_values, raised, strict=True)]
        else:
            raised, extras = flags, [None] * len(scores)
        columns = zip(*(result.components[name].tolist() for name in names), strict=True)
        ms = round(processing_ms, 3)

        def build(i, p, o, complete, s, c, f, q, t, ts, extra) -> bytes:
            """One result; ``complete`` is None in tabular mode, which has no
            ``window_complete`` key (deleting it keeps the other keys' order, and is
            cheaper than merging it in); ``extra`` holds the conformal alarm's fields."""
            record = {
                "id": i,
                "partition": p,
                "offset": o,
                "window_complete": complete,
                "score": s,
                "components": c,
                "threshold": threshold,
                "is_anomaly": f,
                "percentile": q,
                "top_features": t,
                "model_version": version,
                "processing_time_ms": ms,
                "timestamp": ts,
            }
            if complete is None:
                del record["window_complete"]
            if extra is not None:
                record.update(extra)
            return dumps(record)

        if scored is None and not self.time_series:
            out = [
                build(i, p, o, None, s, dict(zip(names, c, strict=True)), f, q, t, ts, e)
                for i, p, o, s, c, f, q, t, ts, e in zip(
                    ids,
                    partitions,
                    offsets,
                    scores,
                    columns,
                    flags,
                    percentiles,
                    tops,
                    timestamps,
                    extras,
                    strict=True,
                )
            ]
            return out, raised
        scored = range(len(offsets)) if scored is None else scored
        out: list[bytes] = [b""] * len(offsets)
        flagged = [False] * len(offsets)
        for position, s, c, f, q, t, e, a in zip(
            scored, scores, columns, flags, percentiles, tops, extras, raised, strict=True
        ):
            out[position] = build(
                ids[position],
                partitions[position],
                offsets[position],
                True,
                s,
                dict(zip(names, c, strict=True)),
                f,
                q,
                t,
                timestamps[position],
                e,
            )
            flagged[position] = a
        for position, value in enumerate(out):
            if not value:
                out[position] = build(
                    ids[position],
                    partitions[position],
                    offsets[position],
                    False,
                    None,
                    None,
                    None,
                    None,
                    None,
                    timestamps[position],
                    None if alarms is None else {"p_value": None, "alarm": False},
                )
        return out, flagged


def encode_rejection(record, reason: str, detail: str, model_version: str) -> bytes:
    """The dead-letter record of a rejected Kafka ``record``: where it came from, why it
    was rejected, and its key and value in base64 (cut at ``DLQ_VALUE_LIMIT``)."""
    value = record.value if record.value is not None else b""
    truncated = len(value) > DLQ_VALUE_LIMIT
    return orjson.dumps(
        {
            "reason": reason,
            "error": detail,
            "topic": record.topic,
            "partition": record.partition,
            "offset": record.offset,
            "kafka_timestamp_ms": record.timestamp,
            "key_base64": base64.b64encode(record.key).decode() if record.key is not None else None,
            "value_base64": base64.b64encode(value[:DLQ_VALUE_LIMIT]).decode(),
            "value_truncated": truncated,
            "value_bytes": len(value),
            "value_sha256": hashlib.sha256(value).hexdigest(),
            "model_version": model_version,
            "rejected_at": time.time(),
        }
    )

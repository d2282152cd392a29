"""Kafka message formats: input records in, results and dead-letter records out.

Input: one JSON object per message, ``{"features": ..., "id": ..., "timestamp": ...}``, where
``features`` is an object keyed by feature name or an array in the model's feature order;
``id`` and ``timestamp`` are optional and copied to the result as they are. The Kafka key is
the entity (time-series mode windows each key's records separately).

A message that cannot be scored is rejected with one of the reason codes of ``REASONS`` and a
human-readable explanation; the service writes it to the dead-letter topic with
``encode_rejection`` (the original bytes in base64, the reason and where it came from).
Explanations never quote the message's content (it may hold secrets): only the model's own
feature names, types, counts and positions.

``id`` is copied to the result exactly or the record is refused: it must be null, a boolean,
a string that is valid Unicode (no unpaired surrogate), or an integer of magnitude at most
2^53. Anything else would be changed or lost on the way out, or would stop the encoder: an
object or array, an integer beyond 2^53 (JSON readers that use doubles change it), and any
number with a fraction or exponent (``1e400``, ``1e-400``, or more digits than a double
keeps). ``timestamp`` obeys the same rules, except that it may also be a finite number of
magnitude at most 2^53, read as a double (epoch seconds keep about a microsecond).

Every message the service produces fits the producer's limit: ``fit_result`` cuts a result's
``id`` and ``timestamp`` when they would make it too large, and ``encode_rejection`` cuts the
original key and value it carries; each cut is marked, with the SHA-256 of the whole.

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
import sys
import time
from dataclasses import dataclass, field
from itertools import chain, repeat
from typing import Any

import numpy as np
import orjson

from anomaly.stream.errors import describe_error

#: Reason codes of rejected records (the ``reason`` label of anomaly_records_rejected_total).
REASONS = (
    "not_json",
    "bad_schema",
    "wrong_features",
    "bad_type",
    "non_finite",
    "too_large",
    "bad_id",
    "bad_timestamp",
    "score_failed",
    "encode_failed",
    "send_failed",
    "unreadable",
)

#: Largest part of an original message copied into a dead-letter record (base64 makes it a
#: third larger). Longer values (or less, when the producer's limit leaves less room) are
#: cut, marked ``value_truncated`` and identified by size, SHA-256 and their
#: topic/partition/offset.
DLQ_VALUE_LIMIT = 256 * 1024
#: Bytes of a Kafka record beyond its key and value (batch and record headers), kept free
#: under the producer's ``max_request_size``.
RECORD_OVERHEAD_BYTES = 1024
#: Longest original key a dead-letter record keeps as its own Kafka key; a longer one is
#: carried (cut if need be) in ``key_base64`` only.
DLQ_KEY_LIMIT = 4096
#: Largest magnitude of a number copied to a result: beyond it a double is no longer exact.
_EXACT_LIMIT = 2**53

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
        limit = _EXACT_LIMIT
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
            # An integer id and a float timestamp within 2^53 are the usual case, and exact:
            # only other values need _inexact (a call per record is a good part of the cost).
            record_id = message.get("id")
            if not (type(record_id) is int and -limit <= record_id <= limit):
                problem = _inexact(record_id, fractions=False)
                if problem is not None:
                    rejected.append((index, "bad_id", f"'id' {problem}"))
                    continue
            stamp = message.get("timestamp")
            if not (type(stamp) is float and -limit <= stamp <= limit):
                problem = _inexact(stamp, fractions=True)
                if problem is not None:
                    rejected.append((index, "bad_timestamp", f"'timestamp' {problem}"))
                    continue
            if fallback:
                slow.append(len(rows))
            rows.append(row)
            accepted.append(index)
            ids.append(record_id)
            stamps.append(stamp)

        if slow:  # integers beyond float range only get through the lenient parser
            for position in reversed(slow):
                if not all(_fits_float(v) for v in rows[position]):
                    rejected.append(
                        (accepted[position], "non_finite", "a feature value is beyond float range")
                    )
                    for column in (rows, accepted, ids, stamps):
                        del column[position]
        # One pass over all values, without NumPy's discovery of the nested lists' shape.
        matrix = np.fromiter(chain.from_iterable(rows), np.float64, len(rows) * n)
        matrix = matrix.reshape(len(rows), n)
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
        extra = features.keys() - self._name_set
        parts = []
        if missing:
            parts.append(f"missing feature(s) {missing[:10]}{' ...' if len(missing) > 10 else ''}")
        if extra:  # names from the message are not quoted: they may hold anything
            parts.append(f"{len(extra)} unknown feature name(s) (not quoted)")
        return "; ".join(parts)

    def _describe_types(self, row) -> str:
        for name, value in zip(self.names, row, strict=True):
            if type(value) not in _NUMBER_TYPES:
                return f"feature {name!r} is a JSON {_json_type(value)}, not a number"
        return "a feature value is not a number"


def _parse_leniently(raw: bytes, error: Exception) -> tuple[Any, tuple[str, str] | None]:
    """Messages orjson refuses: NaN/Infinity literals and numbers beyond float range are
    ``non_finite``; anything the standard library cannot parse either is ``not_json``, as
    is anything not UTF-8 (the standard library would also read UTF-16, UTF-32 and a
    byte-order mark from bytes, so it is given the strictly decoded text)."""
    constants = []

    def constant(name):
        constants.append(name)
        return float("nan")

    def integer(digits: str) -> int:
        # The standard library refuses integers of more than 4300 digits (a guard against
        # slow conversions). Any such number is far beyond float range and 2^53, so its
        # sign and size say all that judging it needs: a feature is non_finite, an id bad.
        limit = sys.get_int_max_str_digits()
        if not limit or len(digits.lstrip("-")) <= limit:
            return int(digits)
        return (-1 if digits[0] == "-" else 1) * 10**limit

    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:  # orjson's own words name surrogates, whatever the byte
        return None, (
            "not_json",
            f"not UTF-8 text: byte 0x{raw[exc.start]:02x} at byte offset {exc.start} "
            f"({exc.reason}); JSON messages are UTF-8",
        )
    try:
        message = json.loads(text, parse_constant=constant, parse_int=integer)
    except (ValueError, RecursionError):
        return None, ("not_json", f"not valid JSON: {error}")
    if constants:
        return None, ("non_finite", f"JSON holds the non-standard literal {constants[0]}")
    return message, None


def _inexact(value, fractions: bool) -> str | None:
    """Why ``value`` (an ``id``, or a ``timestamp`` with ``fractions``) cannot be copied to
    a result exactly, or ``None`` when it can."""
    kind = type(value)
    if value is None or kind is bool:
        return None
    if kind is str:
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return "is a string with an unpaired surrogate (not valid Unicode)"
        return None
    if kind is int:
        if -_EXACT_LIMIT <= value <= _EXACT_LIMIT:
            return None
        return "is an integer beyond 2^53, which JSON readers that use doubles change"
    if kind is float:
        if not fractions and math.isfinite(value) and value.is_integer() and abs(value) > 2**63:
            # orjson reads an integer beyond 64 bits as a double, as it reads 1e30.
            return (
                "is an integer beyond 2^53 (or a number with an exponent), which JSON readers "
                "that use doubles change; send it as a string"
            )
        if not fractions:
            return (
                "is a number with a fraction or exponent, which a double may change; send it "
                "as a string or an integer"
            )
        if math.isfinite(value) and abs(value) <= _EXACT_LIMIT:
            return None
        return "is a number beyond 2^53 or beyond float range, which cannot be kept exactly"
    return f"is a JSON {_json_type(value)}; expected a string, a number or null"


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
    """Builds the JSON result of each record (see ``encode``) with orjson, each within
    ``max_bytes`` together with its Kafka key."""

    def __init__(self, model_version: str, threshold: float, time_series: bool, max_bytes: int):
        self.model_version = model_version
        self.threshold = float(threshold)
        self.time_series = time_series
        self.max_bytes = max_bytes

    def encode(
        self,
        keys: list[bytes | None],
        partitions: list[int],
        offsets: list[int],
        ids: list,
        timestamps: list,
        result,
        scored: list[int] | None,
        processing_ms: float,
        alarms: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> tuple[list[bytes | None], list[bool], list[tuple[int, str]]]:
        """One result per record (in order), whether it goes to the alerts topic, and the
        (position, explanation) of each record whose result could not be encoded (its
        payload is ``None``; the service dead-letters it).

        ``result`` is the ``ScoreResult`` of the records at positions ``scored`` (all of
        them when ``None``); in time-series mode the others get ``window_complete: false``
        and null scores. ``alarms``, the (levels, alarms) of the scored records when
        the adaptive alarm stage is on (``anomaly.alarms``), adds ``p_value`` and ``alarm`` to
        each result, and the alarm, not ``is_anomaly``, sends a result to the alerts topic.
        """
        n = len(offsets)
        names = list(result.components)
        with_alarms = alarms is not None
        if with_alarms:
            p_values, raised = (a.tolist() for a in alarms)
        else:
            p_values, raised = [None] * len(result), result.is_anomaly.tolist()
        # dict and zip through map: zip's keyword (strict=) per record would cost a third more.
        values = zip(*(result.components[name].tolist() for name in names), strict=True)
        components = list(map(dict, map(zip, repeat(names), values)))
        # The fields of each scored record in order; an unscored one gets ``unscored``.
        fields = zip(
            [True if self.time_series else None] * len(result),  # window_complete
            result.scores.tolist(),
            components,
            result.is_anomaly.tolist(),
            result.percentiles.tolist(),
            result.top_features,
            p_values,
            raised,  # alarm
            strict=True,
        )
        if scored is None:
            flagged = list(raised)
        else:
            unscored = (False, None, None, None, None, None, None, False)
            fields = _spread(fields, scored, n, unscored)
            flagged = _spread(raised, scored, n, False)
        threshold = self.threshold
        version = self.model_version
        milliseconds = round(processing_ms, 3)
        max_bytes = self.max_bytes
        dumps = orjson.dumps
        out: list[bytes | None] = []
        failures: list[tuple[int, str]] = []
        for key, record_id, partition, offset, stamp, (
            complete,
            score,
            parts,
            flag,
            percentile,
            top,
            p_value,
            alarm,
        ) in zip(keys, ids, partitions, offsets, timestamps, fields, strict=True):
            record = {
                "id": record_id,
                "partition": partition,
                "offset": offset,
                "window_complete": complete,
                "score": score,
                "components": parts,
                "threshold": threshold,
                "is_anomaly": flag,
                "percentile": percentile,
                "top_features": top,
                "model_version": version,
                "processing_time_ms": milliseconds,
                "timestamp": stamp,
            }
            if complete is None:  # tabular mode has no window_complete key
                del record["window_complete"]
            if with_alarms:
                record["p_value"] = p_value
                record["alarm"] = alarm
            room = max_bytes - len(key) if key else max_bytes
            try:  # fit_result only for the rare result that is too large as it is
                payload = dumps(record)
                if len(payload) > room:
                    if room <= 0:  # the result is keyed by the record's key, as its input
                        raise ValueError(
                            f"the record's Kafka key of {len(key)} bytes is over the "
                            f"producer's limit of {max_bytes} bytes for a result"
                        )
                    payload = fit_result(record, room)
            except (TypeError, ValueError) as exc:  # orjson.JSONEncodeError is a TypeError
                position = len(out)
                payload = None
                flagged[position] = False
                failures.append(
                    (position, f"the result could not be encoded: {describe_error(exc)}")
                )
            out.append(payload)
        return out, flagged, failures


def _spread(column, positions, n: int, fill) -> list:
    """``n`` values: those of ``column`` at ``positions`` and ``fill`` everywhere else."""
    spread = [fill] * n
    for position, value in zip(positions, column, strict=True):
        spread[position] = value
    return spread


def fit_result(record: dict, room: int) -> bytes:
    """``record`` as JSON in at most ``room`` bytes: a string ``id`` or ``timestamp`` that
    makes it longer is cut, the longer one first, and marked with ``<name>_truncated`` and
    ``<name>_sha256`` (of its UTF-8). Raises ``ValueError`` when even that does not fit."""
    payload = orjson.dumps(record)
    if len(payload) <= room:
        return payload
    cut = dict(record)
    strings = [n for n in ("id", "timestamp") if isinstance(record.get(n), str) and record[n]]
    for name in sorted(strings, key=lambda n: -len(record[n])):
        value = record[name]
        marks = {
            f"{name}_truncated": True,
            f"{name}_sha256": hashlib.sha256(value.encode()).hexdigest(),
        }
        cut.update({name: "", **marks})
        share = room - len(orjson.dumps(cut)) + 2  # the room "" took
        cut[name] = _cut_to_json_size(value, share)
        payload = orjson.dumps(cut)
        if len(payload) <= room:
            return payload
    raise ValueError(f"the result needs {len(payload)} bytes; the producer allows {room}")


def _cut_to_json_size(text: str, size: int) -> str:
    """The longest prefix of ``text`` found whose JSON string takes at most ``size`` bytes."""
    if size <= 2:
        return ""
    length = len(orjson.dumps(text))
    keep = len(text) * (size - 2) // max(1, length)
    while keep > 0 and len(orjson.dumps(text[:keep])) > size:
        keep = keep * 9 // 10
    return text[:keep]


def encode_rejection(
    record, reason: str, detail: str, model_version: str, max_bytes: int
) -> tuple[bytes | None, bytes]:
    """The Kafka key and value of the dead-letter record of a rejected Kafka ``record``:
    where it came from, why it was rejected, and its original key and value in base64.

    Key and value are cut to fit ``max_bytes`` in all (the value also at
    ``DLQ_VALUE_LIMIT``), each marked ``*_truncated`` with its size and SHA-256. The original
    key is also the dead-letter record's own key, unless it is longer than
    ``DLQ_KEY_LIMIT``.
    """
    key = record.key if record.key is not None else b""
    value = record.value if record.value is not None else b""
    no_value = record.value is None  # a tombstone, or a record that could not be read
    kafka_key = record.key if record.key is not None and len(key) <= DLQ_KEY_LIMIT else None
    letter = {
        "reason": reason,
        "error": detail[:2000],
        "topic": record.topic,
        "partition": record.partition,
        "offset": record.offset,
        "kafka_timestamp_ms": record.timestamp,
        "key_base64": None if record.key is None else "",
        "key_truncated": False,
        "key_bytes": len(key),
        "key_sha256": hashlib.sha256(key).hexdigest(),
        "value_base64": "",
        "value_truncated": False,
        "value_bytes": len(value),
        "value_sha256": hashlib.sha256(value).hexdigest(),
        "model_version": model_version,
        "rejected_at": time.time(),
    }
    fixed = len(orjson.dumps(letter)) + 16 + (len(kafka_key) if kafka_key else 0)
    raw_room = max(0, (max_bytes - fixed) * 3 // 4 - 8)  # base64: 4 bytes per 3
    value_keep = min(len(value), DLQ_VALUE_LIMIT, raw_room - min(len(key), raw_room // 2))
    key_keep = min(len(key), raw_room - value_keep)
    if record.key is not None:
        letter["key_base64"] = base64.b64encode(key[:key_keep]).decode()
        letter["key_truncated"] = key_keep < len(key)
    letter["value_base64"] = base64.b64encode(value[:value_keep]).decode()
    letter["value_truncated"] = value_keep < len(value)
    if no_value:
        letter.update(value_base64=None, value_bytes=None, value_sha256=None)
    return kafka_key, orjson.dumps(letter)

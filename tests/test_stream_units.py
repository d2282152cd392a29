"""Pure logic of the streaming service, without Kafka: message validation, settings
precedence, per-key window state."""

from __future__ import annotations

import hashlib
import math

import numpy as np
import orjson
import pytest

from anomaly.config import AlarmConfig, ServeConfig
from anomaly.errors import ConfigError
from anomaly.stream.errors import describe_error
from anomaly.stream.messages import REASONS, RecordDecoder, ResultEncoder
from anomaly.stream.settings import resolve_alarm_config, resolve_serve_config
from anomaly.stream.windowing import KeyedWindows

NAMES = ["a", "b", "c"]


def _decode(values, max_bytes=10_000):
    return RecordDecoder(NAMES, max_bytes).decode(values)


def test_array_and_object_features_give_the_same_row_in_model_order():
    batch = _decode(
        [
            b'{"features": [1, 2.5, -3], "id": "x", "timestamp": 17}',
            b'{"features": {"c": -3, "a": 1, "b": 2.5}}',
        ]
    )
    assert batch.rejected == []
    assert batch.accepted == [0, 1]
    np.testing.assert_array_equal(batch.rows, [[1, 2.5, -3], [1, 2.5, -3]])
    assert batch.rows.dtype == np.float32
    assert batch.ids == ["x", None]
    assert batch.timestamps == [17, None]


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"{not json", "not_json"),
        (b"\xff\xfe", "not_json"),
        ('{"features": [1, 2, 3]}'.encode("utf-16"), "not_json"),  # JSON, but not UTF-8
        (b'\xef\xbb\xbf{"features": [1, 2, 3]}', "not_json"),  # a UTF-8 byte-order mark
        (b'{"features": [1, 2, 3], "id": "\xed\xa0\x80"}', "not_json"),  # a raw surrogate
        (None, "not_json"),
        (b"[1, 2, 3]", "bad_schema"),
        (b'{"id": 1}', "bad_schema"),
        (b'{"features": "1,2,3"}', "bad_schema"),
        (b'{"features": [1, 2]}', "wrong_features"),
        (b'{"features": {"a": 1, "b": 2}}', "wrong_features"),
        (b'{"features": {"a": 1, "b": 2, "c": 3, "d": 4}}', "wrong_features"),
        (b'{"features": [1, 2, "3"]}', "bad_type"),
        (b'{"features": [1, true, 3]}', "bad_type"),
        (b'{"features": {"a": 1, "b": null, "c": 3}}', "bad_type"),
        (b'{"features": [1, 2, [3]]}', "bad_type"),
        (b'{"features": [1, NaN, 3]}', "non_finite"),
        (b'{"features": [1, Infinity, 3]}', "non_finite"),
        (b'{"features": [1, -Infinity, 3]}', "non_finite"),
        (b'{"features": [1, 1e999, 3]}', "non_finite"),
        (b'{"features": [1, 1e300, 3]}', "non_finite"),
        (b'{"features": [1, 2, ' + b"9" * 400 + b"]}", "non_finite"),
        (b'{"features": [1, 2, 3], "pad": "' + b"x" * 2000 + b'"}', "too_large"),
    ],
)
def test_bad_message_is_rejected_with_its_reason_and_its_neighbours_are_kept(value, reason):
    good = b'{"features": [1, 2, 3]}'
    batch = _decode([good, value, good], max_bytes=1000)
    assert [r[:2] for r in batch.rejected] == [(1, reason)]
    assert batch.rejected[0][2]  # a human-readable explanation
    assert batch.accepted == [0, 2]
    assert len(batch.rows) == 2


@pytest.mark.parametrize(
    ("value", "byte"),
    [
        ('{"features": [1, 2, 3], "id": "café"}'.encode("latin-1"), "0xe9 at byte offset 34"),
        (b"\xff\xfe", "0xff at byte offset 0"),
        (b'{"features": [1, 2, 3], "id": "\xed\xa0\x80"}', "0xed at byte offset 31"),
    ],
)
def test_a_message_that_is_not_utf8_is_explained_by_its_first_bad_byte(value, byte):
    """orjson's words were "str is not valid UTF-8: surrogates not allowed", whatever the
    byte (Latin-1, UTF-16, a lone 0xff)."""
    ((_, reason, explanation),) = _decode([value]).rejected

    assert reason == "not_json"
    assert explanation.startswith(f"not UTF-8 text: byte {byte} (")


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b'{"features": [1, 2, ' + b"9" * 5000 + b"]}", "non_finite"),
        (b'{"features": [1, 2, -' + b"9" * 5000 + b"]}", "non_finite"),
        (b'{"features": [1, 2, 3], "id": ' + b"9" * 5000 + b"}", "bad_id"),
    ],
)
def test_integers_beyond_the_standard_librarys_4300_digits_get_their_own_reason(value, reason):
    """Python refuses to convert such integers; they used to be dead-lettered as not_json
    ("number is infinity when parsed as double"), a misleading reason."""
    batch = _decode([value], max_bytes=10_000)
    assert [r[:2] for r in batch.rejected] == [(0, reason)]


def test_reason_codes_are_the_documented_set():
    assert REASONS == (
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


def test_missing_feature_names_are_named_and_unknown_ones_only_counted():
    batch = _decode([b'{"features": {"a": 1, "b": 2, "password=hunter2": 3}}'])
    ((_, reason, detail),) = batch.rejected
    assert reason == "wrong_features"
    assert "'c'" in detail and "1 unknown feature name" in detail
    assert "hunter2" not in detail  # a message's content is never quoted


@pytest.mark.parametrize(
    ("field", "raw", "reason"),
    [
        ("id", b'"\\ud800"', "bad_id"),  # an unpaired surrogate, escaped in the JSON
        ("timestamp", b'"a\\udfffb"', "bad_timestamp"),
        ("id", b"[" * 300 + b"]" * 300, "bad_id"),  # nested deeper than any encoder goes
        ("id", b'{"a": 1}', "bad_id"),
        ("id", b"9007199254740993", "bad_id"),  # 2^53 + 1: a double would change it
        ("id", b"123456789012345678901234567890", "bad_id"),
        ("id", b"1e400", "bad_id"),
        ("timestamp", b"-1e400", "bad_timestamp"),
    ],
)
def test_ids_and_timestamps_that_cannot_be_kept_exactly_are_refused(field, raw, reason):
    message = b'{"features": [1, 2, 3], "' + field.encode() + b'": ' + raw + b"}"
    batch = _decode([message, b'{"features": [1, 2, 3], "id": 9007199254740992}'])
    assert [r[:2] for r in batch.rejected] == [(0, reason)]
    assert batch.accepted == [1] and batch.ids == [9007199254740992]


def test_an_integer_id_too_long_for_64_bits_is_named_as_one():
    """orjson reads it as a double: it was refused as 'a number with a fraction'."""
    raw = b"123456789012345678901234567890"
    ((_, reason, detail),) = _decode([b'{"features": [1, 2, 3], "id": ' + raw + b"}"]).rejected
    assert reason == "bad_id" and detail.startswith("'id' is an integer beyond 2^53")


@pytest.mark.parametrize("value", ["x", "", 17, -(2**53), True, None])
def test_ids_and_timestamps_that_a_double_holds_exactly_are_kept(value):
    batch = _decode([orjson.dumps({"features": [1, 2, 3], "id": value, "timestamp": value})])
    assert batch.ids == [value] and batch.timestamps == [value] and not batch.rejected


@pytest.mark.parametrize("raw", [b"1.5", b"1e2", b"1e-400", b"1712345678.123456789"])
def test_ids_with_a_fraction_or_exponent_are_refused_and_timestamps_read_as_doubles(raw):
    refused = _decode([b'{"features": [1, 2, 3], "id": ' + raw + b"}"])
    assert [r[1] for r in refused.rejected] == ["bad_id"] and "string" in refused.rejected[0][2]
    kept = _decode([b'{"features": [1, 2, 3], "timestamp": ' + raw + b"}"])
    assert kept.timestamps == [float(raw)] and not kept.rejected


def test_time_series_results_without_a_full_window_have_null_scores():
    class Result:  # one scored record (the second), as a ScoreResult would hold it
        scores = np.array([2.0])
        is_anomaly = np.array([True])
        percentiles = np.array([99.5])
        components = {"reconstruction": np.array([1.5])}
        top_features = [["b"]]

        def __len__(self):
            return 1

    encoder = ResultEncoder("v1", 1.0, time_series=True, max_bytes=10_000)
    out, flags, failures = encoder.encode(
        [b"k", None], [0, 0], [5, 6], ["x", "y"], [None, 3], Result(), [1], 4.2
    )
    assert failures == []
    first, second = (orjson.loads(v) for v in out)
    assert first["window_complete"] is False and first["score"] is None and first["offset"] == 5
    assert second["window_complete"] is True and second["score"] == 2.0 and second["timestamp"] == 3
    assert second["components"] == {"reconstruction": 1.5} and second["top_features"] == ["b"]
    assert flags == [False, True]


def test_with_alarms_on_results_carry_the_p_value_and_the_alarm_is_the_flag():
    class Result:  # two scored records: the first above the threshold, the second alarming
        scores = np.array([2.0, 3.0])
        is_anomaly = np.array([True, True])
        percentiles = np.array([99.5, 99.9])
        components = {"latent": np.array([1.5, 2.5])}
        top_features = [["a"], ["b"]]

        def __len__(self):
            return 2

    alarms = (np.array([0.5, 1.0]), np.array([False, True]))
    encoder = ResultEncoder("v1", 1.0, time_series=True, max_bytes=10_000)
    out, flags, _ = encoder.encode(
        [None] * 3, [0, 0, 0], [5, 6, 7], ["x", "y", "z"], [1, 2, 3], Result(), [1, 2], 4.2, alarms
    )
    first, second, third = (orjson.loads(v) for v in out)
    assert first["p_value"] is None and first["alarm"] is False  # no full window yet
    assert second["p_value"] == 0.5 and second["alarm"] is False and second["is_anomaly"]
    assert third["p_value"] == 1.0 and third["alarm"] is True
    assert flags == [False, False, True]


def test_a_mixed_batch_keeps_the_first_reason_of_each_record_and_aligns_the_rest():
    values = [
        b'{"features": [1, 2, 3], "id": 9007199254740992, "timestamp": 9007199254740992.0}',
        b'{"features": [1, "2", 3], "id": 1.5}',  # the type is checked before the id
        b'{"features": [1, 2, 3], "id": -9007199254740993}',
        b'{"features": [1, 2, 3], "id": 7, "timestamp": -9007199254740994.0}',
        b'{"features": {"c": 3, "b": 2.5, "a": 100000000000000000000000000000}, "id": "k"}',
        b'{"features": [1e39, 2, 3], "timestamp": 1.5}',
        b'{"features": [NaN, 2, 3], "id": 1}',
        b'{"features": [1, 2, 3], "id": true, "timestamp": -1712345678.25}',
        None,
    ]
    batch = _decode(values)
    assert [r[:2] for r in batch.rejected] == [
        (1, "bad_type"),
        (2, "bad_id"),
        (3, "bad_timestamp"),
        (5, "non_finite"),
        (6, "non_finite"),
        (8, "not_json"),
    ]
    assert batch.rejected[0][2] == "feature 'b' is a JSON string, not a number"
    assert batch.rejected[3][2] == "non-finite or out-of-range value in feature(s) ['a']"
    assert batch.accepted == [0, 4, 7]
    assert batch.ids == [2**53, "k", True]
    assert batch.timestamps == [2.0**53, None, -1712345678.25]
    expected = np.array([[1, 2, 3], [10**29, 2.5, 3], [1, 2, 3]], dtype=np.float32)
    assert batch.rows.tobytes() == expected.tobytes()


def test_results_are_these_bytes_and_one_that_cannot_be_encoded_is_reported_alone():
    class Result:  # the records at positions 0 and 3 are scored, with alarms on
        scores = np.array([2.0, 0.5], np.float32)
        is_anomaly = np.array([True, False])
        percentiles = np.array([99.5, 10.0], np.float32)
        components = {
            "reconstruction": np.array([1.1, -0.2], np.float32),
            "latent": np.array([0.3, 0.4], np.float32),
        }
        top_features = [["b", "a"], ["c", "a"]]

        def __len__(self):
            return 2

    long_id = "x" * 300
    encoder = ResultEncoder("v1", 1.0, time_series=False, max_bytes=420)
    out, flags, failures = encoder.encode(
        [b"k", None, b"kk", None],
        [0, 1, 2, 3],
        [5, 6, 7, 8],
        [long_id, 2, "\ud800", 4],
        [1.5, None, 3, "t"],
        Result(),
        [0, 3],
        4.2,
        (np.array([0.01, 0.5]), np.array([True, False])),
    )
    sha = hashlib.sha256(long_id.encode()).hexdigest().encode()
    assert out == [
        b'{"id":"xxxxxxxxxxxxxxxxxxxxxxxxxxx","partition":0,"offset":5,"score":2.0,'
        b'"components":{"reconstruction":1.100000023841858,"latent":0.30000001192092896},'
        b'"threshold":1.0,"is_anomaly":true,"percentile":99.5,"top_features":["b","a"],'
        b'"model_version":"v1","processing_time_ms":4.2,"timestamp":1.5,"p_value":0.01,'
        b'"alarm":true,"id_truncated":true,"id_sha256":"' + sha + b'"}',
        b'{"id":2,"partition":1,"offset":6,"window_complete":false,"score":null,'
        b'"components":null,"threshold":1.0,"is_anomaly":null,"percentile":null,'
        b'"top_features":null,"model_version":"v1","processing_time_ms":4.2,"timestamp":null,'
        b'"p_value":null,"alarm":false}',
        None,
        b'{"id":4,"partition":3,"offset":8,"score":0.5,'
        b'"components":{"reconstruction":-0.20000000298023224,"latent":0.4000000059604645},'
        b'"threshold":1.0,"is_anomaly":false,"percentile":10.0,"top_features":["c","a"],'
        b'"model_version":"v1","processing_time_ms":4.2,"timestamp":"t","p_value":0.5,'
        b'"alarm":false}',
    ]
    assert flags == [True, False, False, False]
    problem = "TypeError: str is not valid UTF-8: surrogates not allowed"
    assert failures == [(2, f"the result could not be encoded: {problem}")]


def test_settings_precedence_is_cli_then_environment_then_toml_then_defaults(tmp_path):
    toml = tmp_path / "serve.toml"
    toml.write_text(
        '[serve]\ninput_topic = "from-toml"\noutput_topic = "from-toml"\nmax_batch_size = 7\n'
    )
    env = {
        "ANOMALY_SERVE_OUTPUT_TOPIC": "from-env",
        "ANOMALY_SERVE_MAX_WAIT_MS": "5",
        "ANOMALY_SERVE_DLQ_TOPIC": "",
    }
    config = resolve_serve_config(toml, {"max_wait_ms": 9, "group_id": None}, env)
    assert config.input_topic == "from-toml"
    assert config.output_topic == "from-env"
    assert config.max_batch_size == 7
    assert config.max_wait_ms == 9  # command line beats environment
    assert config.dlq_topic is None  # empty value clears an optional key
    assert config.group_id == ServeConfig().group_id  # None means "not given"


def test_alarm_settings_are_the_models_then_the_files_then_the_environments(tmp_path):
    toml = tmp_path / "serve.toml"
    toml.write_text('[serve]\ninput_topic = "x"\n[alarms]\nsemantics = "state"\nhistory = 600\n')
    model = AlarmConfig(method="dspot", history=800, level=0.999)
    env = {"ANOMALY_ALARMS_LEVEL": "0.99", "ANOMALY_ALARMS_QUORUM": ""}
    alarms = resolve_alarm_config(model, toml, env)
    assert (alarms.method, alarms.semantics, alarms.history) == ("dspot", "state", 600)
    assert alarms.level == 0.99 and alarms.quorum is None  # an empty value clears a key
    assert resolve_alarm_config(model, None, {}) == model
    with pytest.raises(ConfigError, match=r"alarms.quorum.*environment \(ANOMALY_ALARMS_\*\)"):
        resolve_alarm_config(model, None, {"ANOMALY_ALARMS_QUORUM": "5"})
    with pytest.raises(ConfigError, match="unknown environment variable ANOMALY_ALARMS_LEVLE"):
        resolve_alarm_config(model, None, {"ANOMALY_ALARMS_LEVLE": "0.9"})


def test_the_old_alarm_settings_say_where_they_moved(tmp_path):
    with pytest.raises(
        ConfigError, match="ANOMALY_SERVE_ALARM_LEVEL moved to ANOMALY_ALARMS_LEVEL"
    ):
        resolve_serve_config(None, None, {"ANOMALY_SERVE_ALARM_LEVEL": "0.99"})
    with pytest.raises(ConfigError, match=r"serve.alarm_history moved to \[alarms\] history"):
        toml = tmp_path / "old.toml"
        toml.write_text("[serve]\nalarm_history = 500\n")
        resolve_serve_config(toml, None, {})


def test_unknown_or_bad_environment_settings_are_errors_that_name_them():
    with pytest.raises(ConfigError, match="ANOMALY_SERVE_MAX_BATCH"):
        resolve_serve_config(None, None, {"ANOMALY_SERVE_MAX_BATCH": "5"})
    with pytest.raises(ConfigError, match=r"max_batch_size.*environment"):
        resolve_serve_config(None, None, {"ANOMALY_SERVE_MAX_BATCH_SIZE": "many"})


def test_revoked_partitions_lose_the_window_state_of_their_keys():
    windows = KeyedWindows(length=3, n_features=1, max_entities=100)
    rows = np.arange(4, dtype=np.float32)[:, None]
    made, positions = windows.push(rows, [b"k1", b"k2", b"k1", b"k2"], [0, 1, 0, 1])
    assert positions == [] and len(made) == 0
    assert windows.forget_partitions([0]) == 1  # k1 lived on partition 0
    made, positions = windows.push(rows[:2], [b"k1", b"k2"], [0, 1])
    assert positions == [1]  # k2 completes its window of 3; k1 starts again
    np.testing.assert_array_equal(made[0, :, 0], [1, 3, 1])


def test_a_dead_letter_cuts_its_keys_window_as_a_skipped_row_cuts_a_files_series():
    """k1's rows 0, 2 | a dead letter | 4, 5: no window joins 2 and 4; k2 goes on."""
    windows = KeyedWindows(length=3, n_features=1, max_entities=100)
    rows = np.arange(6, dtype=np.float32)[:, None]
    keys = [b"k1", b"k2", b"k1", b"k2", b"k1", b"k1"]
    _, positions = windows.push(rows, keys, [0] * 6, cuts=[(4, b"k1")])
    assert positions == []  # uncut, k1 would complete (0, 2, 4) and (2, 4, 5)
    made, positions = windows.push(rows[:3] + 6, [b"k1", b"k2", b"k1"], [0] * 3)
    by_position = dict(zip(positions, made[:, :, 0].tolist(), strict=True))
    assert by_position == {0: [4, 5, 6], 1: [1, 3, 7], 2: [5, 6, 8]}
    # A batch of dead letters alone cuts too: k2's (3, 7) are not joined to what follows.
    windows.push(np.zeros((0, 1), np.float32), [], [], cuts=[(0, b"k2")])
    _, positions = windows.push(rows[:1], [b"k2"], [0])
    assert positions == []


def test_records_without_a_key_and_records_with_an_empty_key_are_two_series():
    """Kafka tells a null key from an empty one; a producer that sends both means two
    entities, and neither may complete the other's window."""
    from anomaly.stream.entities import entity_of

    windows = KeyedWindows(length=2, n_features=1, max_entities=100)
    keys = [None, b"", None, b"", b""]
    made, positions = windows.push(
        np.arange(5, dtype=np.float32)[:, None], [entity_of(k) for k in keys], [0] * 5
    )
    assert positions == [2, 3, 4]
    np.testing.assert_array_equal(made[:, :, 0], [[0, 2], [1, 3], [3, 4]])
    assert len(windows) == 2
    assert entity_of(None) == entity_of(None) != entity_of(b"")
    assert entity_of(None) not in {entity_of(k) for k in (b"no key", b"")}


def test_window_state_drops_the_key_seen_least_recently():
    """A busy key among one-off keys: dropping the key seen first cost it its window at
    every new key, and it was never scored again."""
    windows = KeyedWindows(length=3, n_features=1, max_entities=2)
    scored = []
    for step, key in enumerate([b"A", b"A", b"A", b"X0", b"A", b"X1", b"A", b"X2", b"A"]):
        _, positions = windows.push(np.full((1, 1), step, np.float32), [key], [0])
        scored += [key] if positions else []
    assert scored == [b"A"] * 4
    made, _ = windows.push(np.zeros((2, 1), np.float32), [b"A", b"X3"], [0, 1])
    np.testing.assert_array_equal(made[:, :, 0], [[6, 8, 0]])
    assert windows.forget_partitions([1]) == 1 and windows.forget_partitions([0]) == 1


def test_window_state_is_bounded_by_max_entities():
    windows = KeyedWindows(length=2, n_features=1, max_entities=2)
    rows = np.zeros((3, 1), np.float32)
    windows.push(rows, [b"a", b"b", b"c"], [0, 0, 0])
    assert len(windows) == 2
    assert not math.isnan(float(windows.forget_partitions([0])))


def test_results_go_to_the_partition_kafkas_default_partitioner_picks_for_their_key(
    monkeypatch,
):
    from kafka.partitioner.default import DefaultPartitioner

    from anomaly.stream import partitioning
    from anomaly.stream.partitioning import KeyPartitions

    class Cluster:  # what DefaultPartitioner and KeyPartitions read of the metadata
        def topics(self):
            return {"out"}

        def partitions_for_topic(self, topic):
            return {0, 1, 2, 3, 4}

        available_partitions_for_topic = partitions_for_topic

    cluster = Cluster()

    class Producer:
        def partitions_for(self, topic):
            return cluster.partitions_for_topic(topic)

    mine = KeyPartitions(Producer(), "out")
    kafkas = DefaultPartitioner()
    long_keys = [bytes([i]) * n for i, n in enumerate((257, 4096, 100_000))]
    for key in [f"entity-{i}".encode() for i in range(500)] + [b"", b"\x00\xff", *long_keys]:
        assert mine(key) == kafkas.partition("out", key, key, None, None, cluster)
    assert mine(None) is None
    # A long key is hashed once (about half a millisecond per kilobyte in pure Python),
    # then found by its digest.
    hashed = []
    monkeypatch.setattr(partitioning, "murmur2", lambda key: hashed.append(key) or 0)
    assert [mine(key) for key in long_keys] == [
        kafkas.partition("out", key, key, None, None, cluster) for key in long_keys
    ]
    assert hashed == []


def test_per_key_state_holds_a_digest_of_a_long_key_not_its_bytes():
    """Producers choose keys up to a message's size; the service keeps state for up to
    ``max_entities`` of them. 40 keys of a MiB each must not cost 40 MiB of windows."""
    import tracemalloc

    from anomaly.stream.entities import MAX_KEY_BYTES, entity_of

    windows = KeyedWindows(length=2, n_features=1, max_entities=100)
    tracemalloc.start()
    try:
        for step in range(2):  # the keys of each poll are new bytes, dropped after it
            keys = [bytes([i]) * 2**20 for i in range(40)]
            made, positions = windows.push(
                np.full((40, 1), step, np.float32), [entity_of(k) for k in keys], [0] * 40
            )
            del keys
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert positions == list(range(40)) and len(windows) == 40  # each key its own window
    assert held < 2**20, f"{held} bytes held for 40 keys"
    first, second = b"a" * 2**20, b"b" * 2**20
    assert entity_of(first) == entity_of(bytes(first)) != entity_of(second)
    short = b"k" * MAX_KEY_BYTES
    assert entity_of(short) is short
    assert entity_of(first) not in {entity_of(k) for k in (b"sha256", entity_of(first)[1])}


def test_a_client_log_line_repeated_is_let_through_once_per_period_with_the_count_held_back(
    monkeypatch,
):
    import logging

    from anomaly.stream import client_logs

    now = [100.0]
    monkeypatch.setattr(client_logs.time, "monotonic", lambda: now[0])
    repeats = client_logs.Repeats(every_s=30)

    def passes(message, *args, name="librdkafka", level=logging.ERROR):
        record = logging.LogRecord(name, level, __file__, 1, message, args, None)
        return record.getMessage() if repeats.filter(record) else None

    refused = "Connect to ipv4#127.0.0.1:9092 failed: Connection refused (after %dms in state %s)"
    assert passes(refused, 0, "CONNECT") is not None
    for step in range(1, 60):  # a reconnect every 0.5 s, the timing differing each time
        now[0] += 0.5
        assert passes(refused, step, "CONNECT") is None
    assert passes("Connect to ipv4#127.0.0.1:9093 failed: refused") is not None  # another broker
    assert passes(refused, 0, "CONNECT", name="kafka.conn") is not None  # another logger
    now[0] += 0.5
    again = passes(refused, 7, "CONNECT")
    assert again.endswith("(after 7ms in state CONNECT) (59 like it held back in 30 s)")
    now[0] += 0.5
    assert passes(refused, 7, "CONNECT") is None


def test_json_nested_beyond_the_parsers_depth_is_not_json_and_below_it_is_judged_by_schema():
    deep = _decode([b'{"features": ' + b"[" * 5000 + b"]" * 5000 + b"}"], max_bytes=100_000)
    shallow = _decode([b'{"features": ' + b"[" * 500 + b"]" * 500 + b"}"])
    assert [reason for _, reason, _ in deep.rejected] == ["not_json"]
    assert [reason for _, reason, _ in shallow.rejected] == ["wrong_features"]


def test_an_error_quoting_a_records_bytes_is_described_without_them():
    # kafka-python reads a header name that is not UTF-8 with a bare decode, and its error
    # shows the name's bytes: they go to the log line and the dead letter's explanation.
    from kafka.errors import CorruptRecordError

    try:
        b"\xff\xfesecret-header".decode("utf-8")
    except UnicodeDecodeError as exc:
        error = CorruptRecordError(repr(exc))

    described = describe_error(error)

    assert "secret" not in described and "\\xff" not in described
    assert described.startswith("CorruptRecordError: ")
    assert "UnicodeDecodeError('utf-8', b'...', 0, 1, 'invalid start byte')" in described
    assert describe_error(ValueError("can't read partition 3 at offset 7")) == (
        "ValueError: can't read partition 3 at offset 7"
    )

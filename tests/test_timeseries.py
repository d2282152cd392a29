"""Time-series mode: sliding windows per entity that do not depend on how the rows arrive,
and a windowed model that scores a file in small chunks and finds an injected spike."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import anomaly
from anomaly.alarms import AlarmStage
from anomaly.config import COMPONENTS
from anomaly.errors import SchemaError
from anomaly.evaluation import evaluate_file
from anomaly.files import score_file
from anomaly.windows import SeriesCuts, WindowBuffer, records_of, sliding_windows

WINDOW = 16
ENTITIES = ("pump-a", "pump-b")
ROWS_PER_ENTITY = 1200
SPIKE_ENTITY, SPIKE_STEP = "pump-a", 700
NAMES = ["level", "flow"]


def interleaved_series(rng: np.random.Generator, lengths: dict[str, int], n_features: int = 3):
    """Rows of several entities in one stream, in a random interleaving that keeps each
    entity's own order; returns (rows, entities)."""
    labels = np.concatenate([[name] * n for name, n in lengths.items()])
    rng.shuffle(labels)
    rows = rng.normal(size=(len(labels), n_features)).astype(np.float32)
    return rows, labels


def expected_windows(rows, entities, length):
    """Windows over each entity's whole series, keyed by the stream position of their last row."""
    expected = {}
    for entity in dict.fromkeys(entities):
        positions = np.flatnonzero(entities == entity)
        for window, last in zip(
            sliding_windows(rows[positions], length), positions[length - 1 :], strict=True
        ):
            expected[int(last)] = window
    return expected


@pytest.mark.parametrize("chunk", [1, 5, 16, 37, 1000])
def test_window_buffer_across_chunks_equals_windows_over_the_whole_series(chunk):
    rng = np.random.default_rng(chunk)
    rows, entities = interleaved_series(rng, {"a": 90, "b": 60})
    buffer = WindowBuffer(WINDOW, rows.shape[1])

    got_positions, got_windows = [], []
    for start in range(0, len(rows), chunk):
        windows, positions = buffer.push(
            rows[start : start + chunk], entities[start : start + chunk]
        )
        assert (np.diff(positions) > 0).all()
        got_positions.extend(positions + start)
        got_windows.extend(windows)

    expected = expected_windows(rows, entities, WINDOW)
    assert got_positions == sorted(expected)
    for position, window in zip(got_positions, got_windows, strict=True):
        np.testing.assert_array_equal(window, expected[position])
    assert len(got_positions) == (90 - WINDOW + 1) + (60 - WINDOW + 1)


def test_window_buffer_gives_no_window_until_an_entity_has_enough_rows():
    buffer = WindowBuffer(4, 1)
    rows = np.arange(6, dtype=np.float32)[:, None]

    windows, positions = buffer.push(rows[:3], np.array(["x", "y", "x"]))
    assert len(windows) == 0 and len(positions) == 0

    windows, positions = buffer.push(rows[3:], np.array(["x", "x", "y"]))
    assert positions.tolist() == [1]
    np.testing.assert_array_equal(windows[0, :, 0], [0, 2, 3, 4])


def test_window_buffer_keeps_entities_of_mixed_types_apart():
    # A JSON lines entity column of numbers and text: values that cannot be sorted.
    buffer = WindowBuffer(2, 1)
    rows = np.arange(6, dtype=np.float32)[:, None]
    entities = np.array([7, "x", 7, "x", 7.5, 7.5], dtype=object)

    windows, positions = buffer.push(rows, entities)

    assert positions.tolist() == [2, 3, 5]
    np.testing.assert_array_equal(windows[:, :, 0], [[0, 2], [1, 3], [4, 5]])


@pytest.mark.parametrize("missing", [None, np.nan])
def test_window_buffer_refuses_rows_without_an_entity_naming_them(missing):
    buffer = WindowBuffer(2, 1)
    entities = np.array(["a", missing, "a"], dtype=object)

    with pytest.raises(anomaly.DataError, match=r"1 row\(s\) have no entity .*index 1;"):
        buffer.push(np.zeros((3, 1), np.float32), entities)


def test_window_buffer_windows_thousands_of_entities_in_one_chunk():
    # 30,000 entities in a chunk of 60,000 rows, grouped by hashing (comparing every row
    # with every entity took about half a minute). Its speed is not asserted: a time bound
    # failed on a loaded machine, and speed is measured, not tested.
    entities = np.tile(np.array([f"host-{i}" for i in range(30_000)], dtype=object), 2)
    rows = np.arange(len(entities), dtype=np.float32)[:, None]
    buffer = WindowBuffer(2, 1)

    windows, positions = buffer.push(rows, entities)

    assert positions.tolist() == list(range(30_000, 60_000))
    np.testing.assert_array_equal(windows[:2, :, 0], [[0, 30_000], [1, 30_001]])


def sine_frame(seed: int, spike: bool) -> pd.DataFrame:
    """Two pumps whose level and flow follow phase-shifted sine waves, rows interleaved."""
    rng = np.random.default_rng(seed)
    parts = []
    for k, entity in enumerate(ENTITIES):
        t = np.arange(ROWS_PER_ENTITY)
        phase = 2 * np.pi * t / 40 + k
        values = np.stack([np.sin(phase), 0.5 * np.cos(phase)], axis=1)
        values += 0.03 * rng.normal(size=values.shape)
        if spike and entity == SPIKE_ENTITY:
            values[SPIKE_STEP, 0] += 4.0
        part = pd.DataFrame(values, columns=NAMES)
        part.insert(0, "entity", entity)
        part.insert(0, "step", t)
        parts.append(part)
    frame = pd.concat(parts).sort_values(["step", "entity"], kind="stable").reset_index(drop=True)
    frame.insert(0, "id", [f"r{i}" for i in range(len(frame))])
    return frame


@pytest.mark.parametrize("chunk", [1, 7, 1000])
def test_no_window_spans_rows_taken_out_of_a_series_however_it_is_read(chunk):
    """Invalid rows skipped, or anomalies labelled in training data, leave a gap in their
    series: a window joining the rows on either side would show a jump that never was."""
    rng = np.random.default_rng(chunk)
    _, entities = interleaved_series(rng, {"a": 90, "b": 60, "c": 3})
    stamps = np.zeros(len(entities), np.float32)  # each row's time step in its own series
    for entity in ("a", "b", "c"):
        stamps[entities == entity] = np.arange(np.count_nonzero(entities == entity))
    kept = rng.random(len(entities)) > 0.05
    kept[np.flatnonzero(entities == "b")[40:45]] = False  # a run taken out
    cuts, buffer, windows = SeriesCuts(), WindowBuffer(4, 1), []
    for start in range(0, len(entities), chunk):
        part = slice(start, start + chunk)
        pieces, ended = cuts.pieces(entities[part], kept[part])
        windows.append(buffer.push(stamps[part][kept[part], None], pieces)[0][:, :, 0])
        buffer.forget(ended)
    windows = np.concatenate(windows)

    assert (np.diff(windows, axis=1) == 1).all()  # consecutive steps only
    whole, _ = SeriesCuts().pieces(entities, kept)
    assert len(windows) == len(records_of(stamps[kept, None], 4, whole))
    expected = 0  # every stretch of kept rows of an entity gives len - 3 windows
    for entity in ("a", "b", "c"):
        runs = np.diff(np.flatnonzero(np.diff(np.r_[0, kept[entities == entity], 0])))[::2]
        expected += sum(max(0, n - 3) for n in runs)
    assert len(windows) == expected
    assert len(buffer._tails) <= 3  # a piece that ended keeps no state


def test_nothing_taken_out_leaves_the_entities_as_they_are():
    entities = np.array(["a", "b", "a"], dtype=object)
    pieces, ended = SeriesCuts().pieces(entities, np.ones(3, bool))
    assert pieces.tolist() == ["a", "b", "a"] and ended == []
    assert SeriesCuts().pieces(None, np.ones(3, bool)) == (None, [])


@pytest.fixture(scope="module")
def windowed_detector():
    frame = sine_frame(seed=0, spike=False)
    config = anomaly.Config().updated(
        data={"entity_column": "entity", "id_column": "id", "chunk_rows": 100},
        model={"window": WINDOW},
        training={"steps": 200},
    )
    return anomaly.train(
        frame[NAMES].to_numpy(np.float32),
        config,
        feature_names=NAMES,
        entities=frame["entity"].to_numpy(),
    )


def test_a_time_series_model_saturates_values_beyond_the_clip_by_default(windowed_detector):
    """``model.extremes = "auto"`` clips in time-series mode, where clipping scored higher
    on NAB than compressing (docs/benchmarks.md); independent rows compress."""
    assert windowed_detector.config.model.extremes == "auto"
    assert windowed_detector.engine.standardizer.extremes == "clip"


@pytest.fixture(scope="module")
def scored(windowed_detector, tmp_path_factory):
    root = tmp_path_factory.mktemp("series")
    frame = sine_frame(seed=1, spike=True)
    frame.to_csv(root / "series.csv", index=False)
    summary = score_file(windowed_detector, root / "series.csv", root / "scores.csv")
    return frame, pd.read_csv(root / "scores.csv"), summary


@pytest.mark.slow
def test_scored_file_has_one_output_row_per_input_row_in_order(scored):
    frame, out, summary = scored

    assert len(out) == len(frame) == summary.rows_read
    assert out["row"].tolist() == list(range(1, len(frame) + 1))
    assert out["id"].tolist() == frame["id"].tolist()
    assert summary.rows_scored == len(ENTITIES) * (ROWS_PER_ENTITY - WINDOW + 1)
    assert summary.rows_unscored == len(ENTITIES) * (WINDOW - 1)


@pytest.mark.slow
def test_first_window_minus_one_rows_of_each_entity_have_no_score(scored):
    frame, out, _ = scored

    for entity in ENTITIES:
        rows = out[(frame["entity"] == entity).to_numpy()]
        head, rest = rows.iloc[: WINDOW - 1], rows.iloc[WINDOW - 1 :]
        assert head["score"].isna().all()
        assert not head["window_complete"].any()
        assert not head["is_anomaly"].any()
        assert rest["window_complete"].all()
        assert np.isfinite(rest["score"]).all()


@pytest.mark.slow
def test_score_command_says_why_rows_of_entities_too_short_for_a_window_have_no_score(
    windowed_detector, tmp_path
):
    from click.testing import CliRunner

    from pipelines.cli import cli

    windowed_detector.save(tmp_path / "model")
    frame = sine_frame(seed=2, spike=False)
    frame["entity"] = [f"pump-{i}" for i in range(len(frame))]  # one row per entity
    frame.head(40).to_csv(tmp_path / "short.csv", index=False)

    result = CliRunner().invoke(
        cli,
        [
            "score",
            "--model",
            str(tmp_path / "model"),
            "--data",
            str(tmp_path / "short.csv"),
            "--out",
            str(tmp_path / "scores.csv"),
        ],
    )

    assert result.exit_code == 0, result.output
    assert "scored 0 of 40 rows" in result.output
    assert (
        f"40 rows without a score (null): a row is scored once it ends a window of {WINDOW} rows "
        "of one entity"
    ) in result.output


@pytest.mark.slow
def test_score_command_says_once_that_alarm_streams_were_dropped_past_the_bound(
    windowed_detector, tmp_path
):
    """More entities than alarms.max_streams: streams restarted without a word."""
    from click.testing import CliRunner

    from pipelines.cli import cli

    windowed_detector.save(tmp_path / "model")
    sine_frame(seed=2, spike=False).to_csv(tmp_path / "series.csv", index=False)
    (tmp_path / "alarms.toml").write_text("[alarms]\nmax_streams = 1\n")

    result = CliRunner().invoke(
        cli,
        ["score", "--model", str(tmp_path / "model"), "--data", str(tmp_path / "series.csv")]
        + ["--out", str(tmp_path / "scores.csv"), "--config", str(tmp_path / "alarms.toml")],
    )

    assert result.exit_code == 0, result.output
    warned = [line for line in result.stderr.splitlines() if line.startswith("warning: ")]
    assert warned == [
        "warning: more than 1 keys (entities) have alarm streams: the one seen least recently "
        "is dropped each time, and starts afresh from the model's reference if its key comes "
        "back; raise alarms.max_streams to keep them all"
    ]


@pytest.mark.slow
def test_injected_spike_scores_high_at_its_rows(scored, windowed_detector):
    frame, out, _ = scored
    spike_entity = (frame["entity"] == SPIKE_ENTITY).to_numpy()
    steps = frame["step"].to_numpy()
    covers_spike = spike_entity & (steps >= SPIKE_STEP) & (steps < SPIKE_STEP + WINDOW)
    spike_row = spike_entity & (steps == SPIKE_STEP)
    normal_scores = out["score"][~covers_spike].dropna()

    assert out["is_anomaly"][spike_row].all()
    assert out["score"][spike_row].min() > windowed_detector.threshold
    assert out["score"][covers_spike].min() > np.quantile(normal_scores, 0.99)
    assert out["is_anomaly"][~covers_spike].mean() < 0.05


@pytest.mark.slow
def test_scores_read_in_chunks_of_100_rows_equal_scores_of_whole_series(scored, windowed_detector):
    frame, out, _ = scored
    assert windowed_detector.config.data.chunk_rows == 100
    rows = frame[NAMES].to_numpy(np.float32)
    entities = frame["entity"].to_numpy()

    expected = expected_windows(rows, entities, WINDOW)
    positions = np.array(sorted(expected))
    whole = windowed_detector.score(np.stack([expected[p] for p in positions]))

    # float32 passes over batches of another size round differently (up to about 4e-5 on
    # this machine's BLAS); a window misassembled across chunks would differ by far more
    np.testing.assert_allclose(
        out["score"].to_numpy()[positions], whole.scores, rtol=1e-4, atol=1e-4
    )


@pytest.mark.slow
def test_each_entity_is_one_alarm_stream_in_file_order_across_chunks(scored, windowed_detector):
    """In time-series mode the default stage adds p_value and alarm, per entity, exactly
    as the stage computes them on each entity's scores at once (the service's per-key code)."""
    frame, out, summary = scored
    complete = out["window_complete"].to_numpy()
    assert out["p_value"][~complete].isna().all() and not out["alarm"][~complete].any()
    assert summary.alarms == int(out["alarm"].sum())
    components = out[[f"score_{c}" for c in COMPONENTS]].to_numpy()
    for entity in ENTITIES:
        rows = np.flatnonzero((frame["entity"] == entity).to_numpy() & complete)
        stage = AlarmStage.for_model(windowed_detector, windowed_detector.config.alarms)
        expected = stage.update(components[rows])
        np.testing.assert_array_equal(out["p_value"].to_numpy()[rows], expected.levels)
        np.testing.assert_array_equal(out["alarm"].to_numpy()[rows], expected.alarms)
    steps = frame["step"].to_numpy()
    spiked = (frame["entity"] == SPIKE_ENTITY).to_numpy()
    covers_spike = spiked & (steps >= SPIKE_STEP) & (steps < SPIKE_STEP + WINDOW)
    assert out["p_value"][covers_spike].max() >= windowed_detector.config.alarms.level


@pytest.mark.slow
def test_evaluate_reports_the_alarms_metrics_in_time_series_mode(windowed_detector, tmp_path):
    frame = sine_frame(seed=1, spike=True)
    steps = frame["step"].to_numpy()
    spiked = (frame["entity"] == SPIKE_ENTITY).to_numpy()
    frame["label"] = (spiked & (steps >= SPIKE_STEP) & (steps < SPIKE_STEP + WINDOW)).astype(int)
    frame.to_csv(tmp_path / "labelled.csv", index=False)
    result = evaluate_file(windowed_detector, tmp_path / "labelled.csv", "label")
    # Each pump's first WINDOW - 1 rows have no score: counted, not silently left out.
    assert result.rows_without_score == len(ENTITIES) * (WINDOW - 1)
    assert result.records == len(frame) - result.rows_without_score
    assert result.rows_rejected == 0 and result.to_json()["rows_without_score"] > 0
    assert result.alarm_recall > 0 and result.alarm_precision > 0
    assert result.alarm_false_positive_rate < 0.05
    threshold_only = windowed_detector.config.alarms.updated({"method": "threshold"})
    result = evaluate_file(
        windowed_detector, tmp_path / "labelled.csv", "label", alarms=threshold_only
    )
    assert result.alarm_recall is None and "alarm_f1" not in result.to_json()


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_a_row_without_an_entity_stops_the_file_naming_its_row(windowed_detector, tmp_path, suffix):
    frame = sine_frame(seed=1, spike=False).head(300)
    frame["entity"] = frame["entity"].astype(object)
    frame.loc[41, "entity"] = None
    path = tmp_path / f"series{suffix}"
    frame.to_csv(path, index=False) if suffix == ".csv" else frame.to_parquet(path)

    with pytest.raises(
        anomaly.DataError, match=r"entity column 'entity' must name each row's series: row 42 "
    ):
        score_file(windowed_detector, path, tmp_path / "out.csv")
    assert not (tmp_path / "out.csv").exists()


@pytest.mark.parametrize(
    ("suffix", "nested", "first"),
    [(".jsonl", {"k": 1}, 42), (".jsonl", [1, 2], 42), (".parquet", [1, 2], 1)],
)
def test_an_entity_that_is_an_object_or_a_list_stops_the_file_naming_its_row(
    windowed_detector, tmp_path, suffix, nested, first
):
    """A JSON object or array (a Parquet struct or list) as an entity gave a TypeError
    traceback from grouping the rows by entity. (A Parquet column is lists throughout.)"""
    frame = sine_frame(seed=1, spike=False).head(300)
    nested_rows = range(first - 1, first) if suffix == ".jsonl" else range(len(frame))
    frame["entity"] = [nested if i in nested_rows else e for i, e in enumerate(frame["entity"])]
    path = tmp_path / f"series{suffix}"
    if suffix == ".jsonl":
        frame.to_json(path, orient="records", lines=True)
    else:
        frame.to_parquet(path)

    with pytest.raises(
        anomaly.DataError,
        match=rf"must name each row's series with text or a number.*: row {first} has",
    ):
        score_file(windowed_detector, path, tmp_path / "out.csv")


@pytest.mark.parametrize(
    "entities",
    [
        pd.Series(["a", {"k": 1}, "a"], dtype=object),
        pd.Series(["a", [1, 2], "a"], dtype=object),
        [[1, 2], [1, 2], [3, 4]],  # lists of one length: numpy makes a table of them
    ],
)
def test_a_table_whose_entity_is_an_object_or_a_list_is_refused_in_python(entities):
    buffer = WindowBuffer(2, 1)

    with pytest.raises(anomaly.DataError, match="cannot name a series"):
        buffer.push(np.zeros((3, 1), np.float32), entities)


def test_entity_and_id_values_pandas_reads_as_missing_are_kept_in_a_csv(
    windowed_detector, tmp_path
):
    """Names pandas reads as missing ("NA" for Namibia, "null") are values in the entity
    and id columns: each is an entity, and the ids and entities come back as written (the
    output keeps the entity column, to group the results by); only an empty field is
    missing there. A feature keeps pandas' missing values ("NA" is NaN there)."""
    frame = sine_frame(seed=1, spike=False).head(200)
    frame["entity"] = frame["entity"].map(dict(zip(ENTITIES, ["NA", "null"], strict=True)))
    frame["id"] = ["None", "N/A", *frame["id"][2:]]
    frame.to_csv(tmp_path / "series.csv", index=False)
    score_file(windowed_detector, tmp_path / "series.csv", tmp_path / "scores.csv")
    scores = pd.read_csv(tmp_path / "scores.csv", keep_default_na=False)
    assert scores["id"].tolist() == frame["id"].tolist()
    assert scores["entity"].tolist() == frame["entity"].tolist()
    assert list(scores.columns[:3]) == ["row", "id", "entity"]
    assert (scores["score"] != "").sum() == len(frame) - len(ENTITIES) * (WINDOW - 1)

    text = (tmp_path / "series.csv").read_text().splitlines()
    fields = text[5].split(",")
    fields[-1] = "NA"
    text[5] = ",".join(fields)
    (tmp_path / "bad.csv").write_text("\n".join(text) + "\n")
    with pytest.raises(anomaly.DataError, match=r"row 5 \(column 'flow' is NaN\)"):
        score_file(windowed_detector, tmp_path / "bad.csv", tmp_path / "bad-scores.csv")


def _evaluation_error(detector, frame: pd.DataFrame, path) -> str:
    """The ``DataError`` that evaluating ``frame`` (written to ``path``) raises."""
    frame.to_csv(path, index=False)
    with pytest.raises(anomaly.DataError) as caught:
        evaluate_file(detector, path, "label")
    return str(caught.value)


def test_evaluate_on_series_shorter_than_the_window_says_so(windowed_detector, tmp_path):
    frame = sine_frame(seed=1, spike=False).head(2 * WINDOW - 2)  # WINDOW - 1 rows per pump
    frame["label"] = 0
    frame.loc[3, "label"] = 1

    assert (
        f"none of its {2 * WINDOW - 2} rows completes a window of {WINDOW} consecutive rows of "
        "the same 'entity' value, so none has a score: give each series at least"
    ) in _evaluation_error(windowed_detector, frame, tmp_path / "short.csv")


def test_too_few_windows_to_train_says_how_the_rows_fell_into_series():
    """A feature given as the entity column makes a series per row: the message said only
    that no window was made."""
    rows = np.random.default_rng(0).normal(size=(200, 2)).astype(np.float32)
    config = anomaly.Config().updated(model={"window": 8})

    with pytest.raises(
        anomaly.TrainingError,
        match=r"0 windows of 8 rows from 200 normal rows in 200 series \(the entity column\), "
        r"the longest of 1 rows",
    ):
        anomaly.train(rows, config, entities=np.arange(200) * 0.5)


def test_evaluate_says_a_class_left_without_scores_is_left_out_not_absent(
    windowed_detector, tmp_path
):
    """Anomalies only in the first rows of each series, which end no window: the error said
    the data held only normal records."""
    frame = sine_frame(seed=1, spike=False)
    frame["label"] = (frame["step"] < 3).astype(int)

    assert (
        f"every anomalous row ({3 * len(ENTITIES)}) is without a score (a row is scored once "
        f"it ends a window of {WINDOW} rows of its series), so only normal rows"
    ) in _evaluation_error(windowed_detector, frame, tmp_path / "early.csv")


def test_a_row_skipped_as_invalid_starts_its_series_window_afresh(windowed_detector, tmp_path):
    frame = sine_frame(seed=2, spike=False)
    gap = int(np.flatnonzero(frame["entity"] == "pump-b")[100])
    frame.loc[gap, "flow"] = np.nan
    frame.to_csv(tmp_path / "series.csv", index=False)

    summary = score_file(
        windowed_detector, tmp_path / "series.csv", tmp_path / "out.csv", on_invalid="skip"
    )

    out = pd.read_csv(tmp_path / "out.csv").set_index("row")
    after = [i + 1 for i in np.flatnonzero(frame["entity"] == "pump-b") if i > gap]
    assert not out.loc[after[: WINDOW - 1], "window_complete"].any()
    assert out.loc[after[WINDOW - 1 :], "window_complete"].all()
    assert summary.rows_rejected == 1
    assert summary.rows_scored == len(ENTITIES) * (ROWS_PER_ENTITY - WINDOW + 1) - WINDOW


def test_training_windows_do_not_span_the_rows_labelled_anomalous(tmp_path):
    from anomaly.files import train_file

    frame = sine_frame(seed=3, spike=False).assign(label=0)
    frame.loc[np.flatnonzero(frame["entity"] == "pump-a")[200:210], "label"] = 1
    frame.to_csv(tmp_path / "series.csv", index=False)
    config = anomaly.Config().updated(
        data={"entity_column": "entity", "label_column": "label", "id_column": "id"},
        model={"window": WINDOW},
        training={"steps": 2},
    )

    detector, _ = train_file(tmp_path / "series.csv", tmp_path / "model", config)

    metadata = detector.metadata
    windows = (ROWS_PER_ENTITY - WINDOW + 1) + (200 - WINDOW + 1) + (990 - WINDOW + 1)
    assert metadata["fit_records"] + metadata["held_out_records"] == windows


def test_a_table_is_recalibrated_per_entity_as_train_takes_it(windowed_detector):
    """A table holding the model's entity column: its rows were windowed as one series, the
    pumps' rows interleaved in every window, without a word."""
    from anomaly.calibration import recalibrate

    frame = sine_frame(seed=4, spike=False)
    from_table = recalibrate(windowed_detector, frame)
    by_entity = recalibrate(
        windowed_detector, frame[NAMES].to_numpy(np.float32), frame["entity"].to_numpy()
    )
    windows = len(ENTITIES) * (ROWS_PER_ENTITY - WINDOW + 1)
    assert from_table.metadata["calibration_records"] == windows
    assert from_table.engine.params.threshold == by_entity.engine.params.threshold


def test_a_table_given_to_a_time_series_model_is_refused_with_the_way_to_window_it(
    windowed_detector,
):
    """A table of exactly one window's rows was scored as one window, the two pumps' rows
    mixed in it; a longer one failed as 'wrong feature count'. The way the README shows
    gives each pump's windows and the row completing each."""
    frame = sine_frame(seed=5, spike=False)
    for rows in (frame.head(WINDOW), frame):
        with pytest.raises(SchemaError, match=r"windows of \d+ consecutive rows.*WindowBuffer"):
            windowed_detector.score(rows)

    buffer = WindowBuffer(windowed_detector.schema.window, len(windowed_detector.feature_names))
    windows, positions = buffer.push(
        frame[windowed_detector.feature_names].to_numpy(), frame["entity"].to_numpy()
    )
    result = windowed_detector.score(windows)
    assert len(result.scores) == len(positions) == len(ENTITIES) * (ROWS_PER_ENTITY - WINDOW + 1)


def test_an_entity_column_named_as_a_result_column_is_not_written_over_the_results(
    windowed_detector, tmp_path
):
    """An entity column called ``alarm`` is read as the entities, and the output's ``alarm``
    is the alarm stage's, in its place: the entities were written in, then overwritten."""
    from dataclasses import replace

    from anomaly.detector import Detector

    d = windowed_detector
    renamed = Detector(
        d.engine,
        replace(d.schema, entity_column="alarm"),
        d.config.updated(data={"entity_column": "alarm"}),
        d.metadata,
        d.health,
        d.drift_summary,
    )
    frame = sine_frame(seed=1, spike=False).head(200).rename(columns={"entity": "alarm"})
    frame.to_csv(tmp_path / "series.csv", index=False)

    summary = score_file(renamed, tmp_path / "series.csv", tmp_path / "scores.csv")

    scores = pd.read_csv(tmp_path / "scores.csv")
    assert list(scores.columns[-2:]) == ["p_value", "alarm"]
    assert scores["alarm"].dtype == bool and summary.alarms == scores["alarm"].sum()

"""The sensor suite: its generator, its metrics (worked by hand) and its PCA peer."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipelines.bench.sensor_peers import PCAMonitor
from pipelines.bench.sensor_suite import (
    STAGES,
    check_causal,
    flag_runs,
    pca_detector,
    pooled,
    run_counts,
    run_sensor_suite,
    stage_configs,
)
from pipelines.bench.sensors import GAP, KINDS, SensorRun, make_run, make_suite, write_run_csv


def test_generator_is_deterministic_and_seeds_differ():
    a, b, c = make_run(3, 1), make_run(3, 1), make_run(4, 1)
    assert np.array_equal(a.values, b.values) and np.array_equal(a.labels, b.labels)
    assert a.segments == b.segments and a.train_rows == b.train_rows
    assert a.values.dtype == np.float64 and a.values.shape[1] == 8
    assert not np.array_equal(a.values[:100], c.values[:100])
    assert not np.array_equal(make_run(3, 0).values[:100], a.values[:100])


def test_labels_segments_training_part_and_setpoint_changes():
    runs = make_suite([0, 1], 2)
    assert [r.name for r in runs] == ["s0-r0", "s0-r1", "s1-r0", "s1-r1"]
    seen = set()
    for run in runs:
        expected = np.zeros(len(run), np.int8)
        for start, stop, kind in run.segments:
            assert run.train_rows <= start < stop <= len(run)
            expected[start:stop] = 1
            seen.add(kind)
        assert np.array_equal(run.labels, expected)
        assert run.labels[: run.train_rows].sum() == 0
        assert 0.03 < run.labels[run.train_rows :].mean() < 0.25
        assert 1 <= len(run.regime_changes) <= 2
        for start, stop in run.regime_changes:
            assert start >= run.train_rows and run.labels[start:stop].sum() == 0
        assert np.isfinite(run.values).all()
    assert seen == set(KINDS)


@pytest.mark.parametrize("seed", [0, 1])
def test_setpoint_change_moves_the_normal_state(seed):
    """The same run with and without a setpoint change: identical up to the ramp, then the
    normal rows sit at a new level, on several channels together, and stay there."""
    base = make_run(seed, 0, kinds=(), regime_changes=0)
    moved = make_run(seed, 0, kinds=(), regime_changes=1)
    ((start, stop),) = moved.regime_changes
    assert start >= moved.train_rows + GAP and moved.labels.sum() == 0
    assert np.array_equal(base.values[:start], moved.values[:start])
    std = base.values[: base.train_rows].std(axis=0)
    # the temperatures follow the load with a lag of 30 rows: compare from 200 rows on
    shift = (moved.values[stop + 200 :] - base.values[stop + 200 :]) / std
    level = shift.mean(axis=0)
    assert np.linalg.norm(level) > 1.0 and np.sum(np.abs(level) > 0.5) >= 3
    assert shift.std(axis=0).max() < 0.05  # a new level that stays, not a transient


def test_stuck_sensor_holds_its_last_value():
    run = make_run(2, 0, kinds=("stuck",))
    ((start, stop, _),) = run.segments
    held = np.all(run.values[start:stop] == run.values[start - 1], axis=0)
    assert held.sum() == 1


def test_csv_export(tmp_path):
    run = make_run(0, 0, train_rows=200, test_rows=2000)
    path = write_run_csv(run, tmp_path / "run.csv")
    lines = path.read_text().splitlines()
    assert lines[0] == "t,ch0,ch1,ch2,ch3,ch4,ch5,ch6,ch7,label"
    assert len(lines) == len(run) + 1
    assert sum(int(line.rsplit(",", 1)[1]) for line in lines[1:]) == run.labels.sum()
    first = write_run_csv(run, tmp_path / "train.csv", run.train_rows).read_text().splitlines()
    assert first == lines[: run.train_rows + 1]


def _hand_run() -> SensorRun:
    labels = np.array([0, 0, 0, 1, 1, 1, 0, 0, 1, 1, 0, 0], np.int8)
    segments = [(3, 6, "level_shift"), (8, 10, "stuck")]
    return SensorRun(np.zeros((12, 8)), labels, segments, train_rows=2, name="hand")


def test_metrics_worked_by_hand():
    run = _hand_run()
    # rows:    0  1 | 2  3  4  5  6  7  8  9 10 11   (rows 0-1: training, not scored)
    # labels:  0  0 | 0  1  1  1  0  0  1  1  0  0
    flags = np.array([1, 0, 1, 0, 1, 1, 1, 0, 0, 0, 0, 1])
    c = run_counts(run, flags)
    # TP rows 4, 5; FP rows 2, 6, 11; FN rows 3, 8, 9; TN rows 7, 10
    assert (c["tp"], c["fp"], c["fn"], c["tn"]) == (2, 3, 3, 2)
    # flag runs [2], [4-6], [11]: only [4-6] overlaps a segment (row 2 only touches its edge)
    assert (c["flag_runs"], c["true_runs"], c["false_runs"]) == (3, 1, 2)
    assert (c["segments"], c["detected"]) == (2, 1)
    assert c["delays"] == [1]
    p = pooled([c])
    assert p["precision"] == pytest.approx(0.4) and p["recall"] == pytest.approx(0.4)
    assert p["f1"] == pytest.approx(0.4)
    assert p["false_alarm_rate"] == pytest.approx(0.6)
    assert p["missed_alarm_rate"] == pytest.approx(0.6)
    assert p["false_alarms_per_1k_normal"] == pytest.approx(400.0)
    assert p["event_precision"] == pytest.approx(1 / 3)
    assert p["event_recall"] == pytest.approx(0.5)
    assert p["event_f1"] == pytest.approx(0.4)
    assert p["per_kind"]["level_shift"] == {
        "segments": 1,
        "detected": 1,
        "detected_share": 1.0,
        "row_recall": pytest.approx(2 / 3),
    }
    assert p["per_kind"]["stuck"]["detected_share"] == 0.0
    assert p["per_kind"]["noise_burst"]["segments"] == 0

    # pooling adds counts: the same run twice gives the same rates, twice the counts
    twice = pooled([c, c])
    assert twice["tp"] == 4 and twice["f1"] == pytest.approx(0.4)

    # no flags at all: zero precision and recall, no false alarms
    none = pooled([run_counts(run, np.zeros(12))])
    assert none["f1"] == 0.0 and none["false_alarms_per_1k_normal"] == 0.0
    assert none["missed_alarm_rate"] == 1.0


def test_flag_runs():
    assert flag_runs(np.array([1, 1, 0, 1, 0, 0, 1])) == [(0, 2), (3, 4), (6, 7)]
    assert flag_runs(np.zeros(4)) == []


def test_pca_peer_flags_a_gross_level_shift_and_few_normal_rows():
    run = make_run(1, 0, kinds=(), regime_changes=0, drift=False)
    monitor = PCAMonitor.fit(run.values[: run.train_rows])
    assert 1 <= monitor.n_components < 8
    later = run.values[run.train_rows :]
    # two 99 % limits: about 2 %; the load's slow wander, seen over a short training part,
    # gives 0.5-4 % on seeds 0-9 (a 95 % limit, or a wrong one, gives far more)
    assert monitor.flags(later).mean() < 0.06
    shifted = later.copy()
    std = run.values[: run.train_rows].std(axis=0)
    shifted[1000:1100, 3] += 3.0 * std[3]  # one channel 3 std off: breaks the correlations
    assert monitor.flags(shifted[1000:1100]).mean() > 0.9
    # the continuous score is above 1 exactly where a row is flagged
    assert np.array_equal(monitor.score(shifted) > 1.0, monitor.flags(shifted))


def test_pca_detector_is_causal_and_finds_anomalies():
    run = make_run(0, 1)
    detector = pca_detector(stage_configs(STAGES))  # the product's stages are causal too
    check_causal(detector, run, cut=run.segments[2][0] + 10)
    c = run_counts(run, detector(run).flags[""])
    assert c["detected"] >= 2


def test_run_sensor_suite_writes_results(tmp_path):
    summary = run_sensor_suite(
        tmp_path,
        [0],
        2,
        {"pca": pca_detector(stage_configs(["conformal:state"]))},
        log=lambda _: None,
    )
    assert set(summary) == {"pca", "pca+conformal:state"}
    rows = [
        json.loads(line) for line in (tmp_path / "sensor_results.jsonl").read_text().splitlines()
    ]
    assert len(rows) == 4 and {r["run"] for r in rows} == {"s0-r0", "s0-r1"}
    assert summary["pca"]["segments"] == 10
    table = (tmp_path / "sensors.md").read_text()
    assert (
        "| pca |" in table and "| pca+conformal:state |" in table and "broken_correlation" in table
    )

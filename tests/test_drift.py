"""Drift (``anomaly.drift``): the training distribution a model keeps, the PSI against it,
offline and over a stream's sliding window; and that making a model (train, calibrate)
records the rows it was made on."""

import math
import warnings

import numpy as np
import pytest

import anomaly
from anomaly.calibration import recalibrate
from anomaly.drift import (
    MAX_EDGES,
    SHARE_FLOOR,
    DriftMonitor,
    DriftSummary,
    DriftWarning,
    FeatureBins,
    feature_drift,
    psi,
    reading,
)

NAMES = ["a", "b", "c"]


def summary_of(rows: np.ndarray, reference_scores=None) -> DriftSummary:
    reference = np.linspace(-2, 2, 2001) if reference_scores is None else reference_scores
    return DriftSummary.fit(NAMES[: rows.shape[1]], list(reference), rows)


def gaussian(n: int, seed: int, d: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)


def test_a_continuous_feature_gets_ten_bins_of_a_tenth_each():
    summary = summary_of(gaussian(10_000, 0))
    for edges, shares in zip(summary.feature_edges, summary.feature_shares, strict=True):
        assert len(edges) == 9 and np.all(np.diff(edges) > 0)
        np.testing.assert_allclose(shares, 0.1, atol=1e-3)
    assert summary.problems(NAMES) == []


def test_each_level_of_a_constant_or_discrete_feature_gets_a_bin_of_its_own():
    rows = np.stack([np.full(1000, 3.0), np.repeat([0.0, 1.0, 2.0, 2.0], 250)], axis=1)
    summary = summary_of(rows)
    above_3, above_2 = np.nextafter(3.0, np.inf), np.nextafter(2.0, np.inf)
    assert summary.feature_edges[0] == [3.0, above_3]  # below, equal, above
    assert summary.feature_shares[0] == [0.0, 1.0, 0.0]
    assert summary.feature_edges[1] == [0.0, 1.0, 2.0, above_2]
    assert summary.feature_shares[1] == [0.0, 0.25, 0.25, 0.5, 0.0]
    assert summary.problems(NAMES[:2]) == []


def rare_flag_constant_and_zero_inflated(n: int, seed: int, ones=0.05, constant=3.0, zeros=0.9):
    """A 0/1 flag with a rare 1, a constant, and a feature of mostly zeros, else continuous."""
    rng = np.random.default_rng(seed)
    flag = rng.random(n) < ones
    many = np.where(rng.random(n) < zeros, 0.0, rng.exponential(size=n))
    return np.stack([flag, np.full(n, constant), many], axis=1).astype(np.float32)


def test_a_rare_level_a_constant_that_moves_up_and_a_point_mass_are_seen():
    summary = summary_of(rare_flag_constant_and_zero_inflated(5000, 0))
    flag_edges, constant_edges, many_edges = summary.feature_edges
    assert flag_edges == [0.0, 1.0, np.nextafter(1.0, np.inf)]
    np.testing.assert_allclose(summary.feature_shares[0], [0.0, 0.95, 0.05, 0.0], atol=0.01)
    assert many_edges == [0.0, np.nextafter(0.0, np.inf)]  # the zeros are a bin of their own

    def drift(**moved) -> dict[str, float]:
        rows = rare_flag_constant_and_zero_inflated(2000, 1, **moved)
        return {f.name: f.drift for f in feature_drift(summary, rows)}

    assert all(value < 0.1 for value in drift().values())
    assert drift(ones=1.0)["a"] > 0.25 and drift(ones=0.0)["a"] > 0.25
    assert drift(constant=1e6)["b"] > 0.25 and drift(constant=-1.0)["b"] > 0.25
    assert drift(zeros=0.5)["c"] > 0.25


def test_the_most_edges_a_summary_is_fitted_with_is_max_edges():
    """Nine point masses of 10.5 % each and a continuous rest: each mass is a decile and gets
    an edge above it too, the most a fit makes, which a bundle's summary may not exceed."""
    rng = np.random.default_rng(0)
    values = np.concatenate([np.repeat(np.arange(9.0), 1050), rng.normal(20, 1, size=550)])
    summary = summary_of(values[:, None])
    assert len(summary.feature_edges[0]) == MAX_EDGES
    assert summary.problems(NAMES[:1]) == []


def test_psi_is_zero_on_the_reference_shares_and_finite_when_bins_are_empty():
    expected = np.array([0.25, 0.25, 0.5])
    assert psi(expected, [25, 25, 50]) == 0.0
    floor = SHARE_FLOOR  # the share that stands in for an empty bin
    assert psi(expected, [100, 0, 0]) == pytest.approx(
        (1 - 0.25) * math.log(1 / 0.25)
        + (floor - 0.25) * math.log(floor / 0.25)
        + (floor - 0.5) * math.log(floor / 0.5)
    )
    assert math.isnan(psi(expected, [0, 0, 0]))


def test_values_beyond_the_training_range_fall_in_the_outer_bins():
    binned = FeatureBins(summary_of(gaussian(1000, 0)))  # 10 bins per feature
    counts = binned.counts(np.array([[-1e6, 0.0, 1e6], [-50.0, 0.0, 50.0]]))
    assert counts[0, 0] == 2  # a: below the training range, the first bin
    assert counts[2, 9] == 2  # c: above it, the last bin
    assert counts[1, 1:9].sum() == 2  # b: inside


def test_the_reading_follows_the_usual_thresholds():
    assert [reading(v) for v in (0.02, 0.1, 0.25, 0.3)] == [
        "stable",
        "moderate shift",
        "moderate shift",
        "significant shift",
    ]


def test_a_shifted_feature_ranks_first_and_same_distribution_data_is_stable():
    summary = summary_of(gaussian(5000, 0))
    shifted = gaussian(5000, 1)
    shifted[:, 1] += 3.0
    ranked = feature_drift(summary, shifted)
    assert ranked[0].name == "b" and ranked[0].drift > 0.25
    assert all(f.drift < 0.1 for f in ranked[1:])
    assert all(f.drift < 0.1 for f in feature_drift(summary, gaussian(5000, 2)))


def test_a_table_gives_its_features_by_column_name_in_any_order():
    """A DataFrame was read by position: with its columns reordered, the drift of 'b' was
    reported on another feature."""
    import pandas as pd

    summary = summary_of(gaussian(5000, 0))
    shifted = pd.DataFrame(gaussian(5000, 1), columns=["a", "b", "c"])
    shifted["b"] += 3.0

    ranked = feature_drift(summary, shifted[["c", "b", "a"]].assign(extra=1.0))

    assert ranked[0].name == "b" and ranked[0].drift > 0.25
    assert all(f.drift < 0.1 for f in ranked[1:])


def test_too_few_rows_for_the_psi_to_tell_a_shift_is_a_warning():
    """On n unshifted rows the PSI is about (bins - 1) / n: on 12 rows, 0.75, a 'significant
    shift' for every feature. Ten bins need 225 rows (25 per degree of freedom)."""
    summary = summary_of(gaussian(5000, 0))
    with pytest.warns(DriftWarning, match=r"^12 rows measured, under the 225 its PSI needs"):
        ranked = feature_drift(summary, gaussian(12, 1))
    assert all(f.drift > 0.25 for f in ranked)  # what the warning is about
    with warnings.catch_warnings():
        warnings.simplefilter("error", DriftWarning)
        assert all(f.drift < 0.1 for f in feature_drift(summary, gaussian(225, 1)))
        constant = summary_of(np.full((1000, 1), 3.0))  # one bin of data: any row tells
        assert feature_drift(constant, np.full((1, 1), 4.0))[0].drift > 0.25


def test_rows_of_another_feature_count_are_a_schema_error():
    summary = summary_of(gaussian(100, 0))
    with pytest.raises(anomaly.SchemaError, match="records of 3 features"):
        feature_drift(summary, gaussian(10, 1, d=4))
    with pytest.raises(anomaly.SchemaError, match="records of 3 features"):
        DriftMonitor(summary, window=10).observe(gaussian(10, 1, d=2), [], [])


def test_the_monitor_measures_the_latest_window_of_records_as_a_batch_would():
    summary = summary_of(gaussian(5000, 0))
    monitor = DriftMonitor(summary, window=1000)
    batches = [gaussian(250, seed) for seed in range(1, 9)]
    for batch in batches:
        monitor.observe(batch, np.zeros(len(batch)), np.zeros(len(batch), bool))
    assert monitor.records == 1000
    latest = {f.name: f.drift for f in feature_drift(summary, np.concatenate(batches[-4:]))}
    assert monitor.feature_psi() == pytest.approx(latest, rel=1e-12)


def test_the_monitor_follows_a_shift_in_and_out_of_its_window():
    monitor = DriftMonitor(summary_of(gaussian(5000, 0)), window=2000)
    for seed in range(10):
        batch = gaussian(512, seed + 1)
        batch[:, 2] += 3.0 if seed < 5 else 0.0
        monitor.observe(batch, np.zeros(512), np.zeros(512, bool))
        if seed == 4:
            assert monitor.feature_psi()["c"] > 0.25
    assert max(monitor.feature_psi().values()) < 0.1
    assert 2000 <= monitor.records < 2000 + 512


def test_the_monitor_measures_scores_and_the_flagged_share_of_scored_records():
    reference = np.quantile(np.random.default_rng(0).normal(size=20_000), np.linspace(0, 1, 2001))
    monitor = DriftMonitor(summary_of(gaussian(1000, 0), reference), window=10_000)
    assert math.isnan(monitor.score_psi()) and math.isnan(monitor.flagged_share())
    rng = np.random.default_rng(1)
    for _ in range(4):  # time-series mode: fewer scores (complete windows) than records
        scores = rng.normal(size=400)
        monitor.observe(gaussian(500, 2), scores, scores > 2.0)
    assert monitor.score_psi() < 0.1
    assert monitor.flagged_share() == pytest.approx(0.023, abs=0.01)
    scores = rng.normal(size=4000) + 2.0
    monitor.observe(gaussian(4000, 3), scores, scores > 2.0)
    assert monitor.score_psi() > 0.25 and monitor.flagged_share() > 0.3


def test_training_keeps_the_training_rows_distribution(tiny_bundle, tiny_bundle_mixing):
    rng = np.random.default_rng(0)
    rng.normal(size=(3, 8))  # tiny_bundle's mixing, drawn first
    rows = rng.normal(size=(3000, 3)) @ tiny_bundle_mixing + 0.1 * rng.normal(size=(3000, 8))
    detector = anomaly.load(tiny_bundle)
    made_on = DriftSummary.fit(
        detector.feature_names, detector.engine.params.reference_scores, rows.astype(np.float32)
    )
    assert detector.drift_summary == made_on


def test_recalibrating_makes_the_fresh_rows_the_new_normal(tiny_bundle, tiny_bundle_mixing):
    rng = np.random.default_rng(4)
    moved = (rng.normal(size=(4000, 3)) @ tiny_bundle_mixing + 2.0).astype(np.float32)
    parent = anomaly.load(tiny_bundle)
    child = recalibrate(parent, moved[:2000])
    assert feature_drift(parent.drift_summary, moved[2000:])[0].drift > 0.25
    assert all(f.drift < 0.1 for f in feature_drift(child.drift_summary, moved[2000:]))
    assert child.drift_summary == DriftSummary.fit(
        child.feature_names, child.engine.params.reference_scores, moved[:2000]
    )


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::anomaly.health.TrainingWarning")  # a throwaway 20-step model
def test_in_time_series_mode_features_are_per_record_and_the_score_per_window():
    rows = gaussian(400, 0, d=2)
    config = anomaly.Config().updated(model={"window": 8}, training={"steps": 20})
    detector = anomaly.train(rows, config, feature_names=["a", "b"])
    reference_scores = detector.engine.params.reference_scores  # of held-out windows
    assert detector.drift_summary == DriftSummary.fit(["a", "b"], reference_scores, rows)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::anomaly.health.TrainingWarning")  # a throwaway 10-step model
def test_retraining_summarises_the_fresh_rows(tiny_bundle, tiny_bundle_mixing):
    rng = np.random.default_rng(5)
    moved = (rng.normal(size=(1000, 3)) @ tiny_bundle_mixing + 2.0).astype(np.float32)
    child = anomaly.retrain(anomaly.load(tiny_bundle), moved, steps=10)
    assert child.drift_summary == DriftSummary.fit(
        child.feature_names, child.engine.params.reference_scores, moved
    )

"""End to end through the API: train on normal records, find injected anomalies, explain them,
and train the same model twice from the same seed."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

import anomaly
from anomaly import DataError, Detector, TrainingError
from anomaly.config import COMPONENTS
from anomaly.health import COLLAPSE_RATIO
from tests.conftest import TABULAR_TRAIN_ROWS, TABULAR_TRAIN_SEED

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def result(tabular_detector, labelled):
    rows, _ = labelled
    return tabular_detector.score(rows)


def test_training_a_small_model_takes_under_a_minute_on_cpu(tabular_detector):
    assert tabular_detector.metadata["training_seconds"] < 60


def test_injected_anomalies_are_found_with_auroc_above_0_95(result, labelled):
    _, labels = labelled

    assert roc_auc_score(labels, result.scores) >= 0.95


def test_fresh_normal_data_is_flagged_near_the_target_false_positive_rate(
    tabular_detector, correlated_table
):
    fresh = tabular_detector.score(correlated_table.normal(5000, seed=2))

    assert tabular_detector.config.scoring.target_fpr == 0.01
    assert fresh.is_anomaly.mean() < 0.05


def test_same_seed_trains_a_model_with_identical_scores(tabular_detector, correlated_table):
    rows = correlated_table.normal(TABULAR_TRAIN_ROWS, TABULAR_TRAIN_SEED)
    again = anomaly.train(
        rows, tabular_detector.config, feature_names=correlated_table.feature_names
    )
    probe = correlated_table.labelled(300, 30, seed=3)[0]

    np.testing.assert_array_equal(again.score(probe).scores, tabular_detector.score(probe).scores)
    assert again.threshold == tabular_detector.threshold


def test_score_result_has_one_entry_per_record_in_every_field(result, labelled, tabular_detector):
    n, d = labelled[0].shape

    assert len(result) == n
    assert result.scores.shape == (n,)
    assert result.is_anomaly.shape == (n,) and result.is_anomaly.dtype == bool
    assert result.percentiles.shape == (n,)
    assert (
        set(result.components)
        == set(COMPONENTS)
        == {
            "reconstruction",
            "feature",
            "critic",
            "latent",
        }
    )
    for values in result.components.values():
        assert values.shape == (n,)
        assert np.isfinite(values).all()
    assert result.feature_residuals.shape == (n, d)
    assert result.feature_names == tabular_detector.feature_names
    assert np.isfinite(result.scores).all()


def test_percentiles_are_between_0_and_100_and_rise_with_the_score(result):
    assert (result.percentiles >= 0).all() and (result.percentiles <= 100).all()
    order = np.argsort(result.scores)
    assert (np.diff(result.percentiles[order]) >= 0).all()
    assert result.percentiles.max() == 100


def test_a_record_is_flagged_exactly_when_its_score_exceeds_the_threshold(result, tabular_detector):
    assert result.threshold == tabular_detector.threshold
    np.testing.assert_array_equal(result.is_anomaly, result.scores > tabular_detector.threshold)
    assert result.is_anomaly.any() and not result.is_anomaly.all()


def test_top_features_are_names_from_the_feature_list(result, tabular_detector):
    k = tabular_detector.config.scoring.top_features

    assert k == 3
    assert len(result.top_features) == len(result)
    for names in result.top_features[:50]:
        assert len(names) == k
        assert len(set(names)) == k
        assert set(names) <= set(tabular_detector.feature_names)


def test_top_feature_is_the_one_pushed_off_its_normal_range(tabular_detector, correlated_table):
    rows = correlated_table.normal(20, seed=4)
    rows[:, 4] += 10.0  # about 5 standard deviations of f4, off the 3-factor manifold

    result = tabular_detector.score(rows)

    assert result.is_anomaly.all()
    assert [names[0] for names in result.top_features] == ["f4"] * 20


def test_a_value_far_beyond_the_clip_scores_above_one_just_past_it(tabular_detector):
    """Values past +-clip_value standard deviations keep their order: a sensor stuck at a
    thousand times its range is more anomalous than one just past the clip, and says so
    in its score, percentile and explanation (saturating them made all three tie)."""
    standardizer = tabular_detector.engine.standardizer
    off_by = np.array([11.0, 100.0, 10_000.0, 1e30])  # standard deviations of f4
    rows = np.repeat(standardizer.mean[None, :], len(off_by), axis=0)
    rows[:, 4] += off_by * standardizer.scale[4]

    result = tabular_detector.score(rows)

    assert standardizer.extremes == "log"
    assert np.isfinite(result.scores).all()
    assert np.all(np.diff(result.scores) > 0), result.scores
    assert np.all(np.diff(result.feature_residuals[:, 4]) > 0)
    assert [names[0] for names in result.top_features] == ["f4"] * len(off_by)


def test_health_report_has_losses_per_epoch_and_no_mode_collapse(tabular_detector):
    health = tabular_detector.health

    assert health["epochs"] >= 2
    for name in ("critic_loss", "generator_loss", "encoder_loss", "val_reconstruction"):
        assert len(health["losses"][name]) == health["epochs"]
        assert np.isfinite(health["losses"][name]).all()
    assert health["diversity_ratio"] > COLLAPSE_RATIO
    assert health["mode_collapse"] is False
    assert not any("mode collapse" in warning for warning in health["warnings"])


def test_latent_component_is_the_mean_distance_to_the_nearest_prototypes(
    tabular_detector, labelled
):
    engine = tabular_detector.engine
    rows, _ = labelled
    raw = engine.raw_components(rows[:500])
    prototypes = engine.latent_prototypes.astype(np.float64)
    distances = np.linalg.norm(raw["latent_code"][:, None, :] - prototypes[None], axis=-1)
    k = engine.params.latent_neighbours

    expected = np.sort(distances, axis=1)[:, :k].mean(axis=1)

    assert len(prototypes) == anomaly.Config().scoring.latent_prototypes
    np.testing.assert_allclose(raw["latent"], expected, rtol=1e-5, atol=1e-5)


def test_latent_refinement_changes_scores_and_keeps_auroc_high(tabular_detector, result, labelled):
    rows, labels = labelled
    params = dataclasses.replace(tabular_detector.engine.params, refine_steps=5)
    refined = Detector(
        tabular_detector.engine.with_params(params),
        tabular_detector.schema,
        tabular_detector.config,
        tabular_detector.metadata,
        tabular_detector.health,
        tabular_detector.drift_summary,
    ).score(rows)

    assert np.isfinite(refined.scores).all()
    assert np.abs(refined.scores - result.scores).max() > 1e-3
    assert roc_auc_score(labels, refined.scores) >= 0.95


def test_bigan_formulation_trains_and_finds_anomalies(correlated_table, labelled):
    config = anomaly.Config().updated(model={"formulation": "bigan"}, training={"steps": 200})
    detector = anomaly.train(correlated_table.normal(TABULAR_TRAIN_ROWS, seed=5), config)
    rows, labels = labelled

    result = detector.score(rows)

    assert detector.engine.params.formulation == "bigan"
    assert set(result.components) == set(COMPONENTS)
    assert np.isfinite(result.scores).all()
    assert roc_auc_score(labels, result.scores) >= 0.95


def test_scoring_a_record_with_nan_is_refused_naming_its_index(tabular_detector, labelled):
    rows = labelled[0][:5].copy()
    rows[2, 1] = np.nan

    with pytest.raises(DataError, match=r"1 record\(s\) hold NaN or infinite values: index 2"):
        tabular_detector.score(rows)


def test_training_on_too_few_records_is_refused(correlated_table):
    with pytest.raises(TrainingError, match="31 normal records; at least 32 are needed"):
        anomaly.train(correlated_table.normal(31, seed=6), anomaly.Config())

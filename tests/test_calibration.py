"""The threshold keeps its false-positive rate on new normal data (``anomaly.tail``,
``anomaly.calibration``)."""

import math
import warnings
from dataclasses import replace

import numpy as np
import pytest
from scipy import stats

import anomaly
from anomaly import training
from anomaly.calibration import (
    _other_records,
    _statistics_records,
    calibrate,
    resolution_warning,
)
from anomaly.config import COMPONENTS
from anomaly.errors import TrainingError
from anomaly.health import TrainingWarning
from anomaly.tail import MIN_ORDER_POINTS, MISFIT_LEVEL, SHAPE_BOUNDS, Tail
from anomaly.training import (
    _best_epoch,
    _fewer_folds_for,
    _folds,
    _initial_params,
    _remedy,
    _with_calibration_folds,
)
from pipelines.bench.tail_study import RareFarTail

TARGETS = (0.01, 0.001)


def test_the_order_statistic_is_the_conformal_one():
    # 199 scores 1..199; at 5 %, 200 * 0.05 = 10 scores are expected above the threshold,
    # enough for the order statistic: k = ceil(200 * 0.95) = 190, the 190th smallest.
    tail = Tail.fit(np.arange(1.0, 200.0))
    assert (200 * 0.05) >= MIN_ORDER_POINTS
    assert tail.threshold(0.05) == 190.0


def test_the_threshold_rises_as_the_rate_falls_across_both_estimates():
    rng = np.random.default_rng(3)
    for n in (50, 146, 999, 20_000):
        tail = Tail.fit(rng.standard_normal(n), up_to_rate=0.2)
        rates = np.geomspace(0.2, 1e-5, 400)
        thresholds = [tail.threshold(rate) for rate in rates]
        assert np.all(np.diff(thresholds) >= 0), n


def test_the_order_statistic_is_exact_for_large_samples_at_the_calibrated_rate():
    scores = np.random.default_rng(4).standard_normal(200_000)
    tail = Tail.fit(scores, up_to_rate=0.1)
    k = int(np.ceil(200_001 * 0.9))
    assert tail.threshold(0.1) == np.sort(scores)[k - 1]
    with pytest.raises(ValueError, match="calibrate at that rate"):
        Tail.fit(scores).threshold(0.1)  # 20,000 largest needed, 1,000 kept


def test_a_damaged_tail_is_named():
    tail = Tail.fit(np.arange(100.0))
    assert tail.problems() == []
    for damage in (
        {"n": 0},
        {"peaks": 0},
        {"shape": float("nan")},
        {"scale": -1.0},
        {"largest": []},
        {"largest": [1.0, 2.0]},
        {"misfit": "yes"},
    ):
        assert Tail(**{**tail.to_json(), **damage}).problems(), damage


def test_a_plain_quantile_fires_more_often_than_the_conformal_threshold():
    # 999 scores at 1 %: 10 are expected above the threshold, so it is the order statistic
    rng = np.random.default_rng(0)
    distribution = stats.lognorm(0.6)
    plain, conformal = [], []
    for _ in range(600):
        scores = distribution.rvs(999, random_state=rng)
        plain.append(distribution.sf(np.quantile(scores, 0.99)))
        conformal.append(distribution.sf(Tail.fit(scores).threshold(0.01)))
    assert np.mean(plain) > 0.0105  # about 1.09 %
    assert 0.0095 < np.mean(conformal) < 0.0103  # exactly 10 / 1000 in expectation


@pytest.mark.parametrize("distribution", [stats.chi2(4), stats.lognorm(0.6), stats.t(5)])
def test_the_pareto_tail_resolves_rates_below_one_over_n(distribution):
    rng = np.random.default_rng(1)
    n, alpha = 500, 0.0005  # 0.25 calibration scores expected above the threshold
    realised = [
        distribution.sf(Tail.fit(distribution.rvs(n, random_state=rng)).threshold(alpha))
        for _ in range(100)
    ]
    assert alpha / 2 <= np.median(realised) <= 2 * alpha


def test_a_tail_heavier_than_the_fit_is_rejected_and_the_order_statistic_keeps_the_rate():
    """Normal records of a rare kind that the model scores very high (the shuttle set's
    held-out scores: 6 at their 98th percentile, 700 at the top) put a tail beyond any shape
    the fit may take above its peaks; its 0.1 % threshold of 3,419 scores fired on 0.27 % of
    new normal records. The scores reject the fit, and the order statistic (3.4 scores
    expected above it) realises the target."""
    distribution, rng = RareFarTail(), np.random.default_rng(2)
    n, alpha = 3419, 0.001
    checked, unchecked, rejected = [], [], 0
    for _ in range(40):
        tail = Tail.fit(distribution.rvs(n, random_state=rng), up_to_rate=0.01)
        rejected += tail.misfit
        checked.append(distribution.sf(tail.threshold(alpha)))
        unchecked.append(distribution.sf(replace(tail, misfit=False).threshold(alpha)))
    assert rejected >= 30
    assert np.mean(unchecked) > 2 * alpha  # the failure the check prevents
    assert alpha / 2 <= np.mean(checked) <= 2 * alpha


@pytest.mark.parametrize("distribution", [stats.chi2(4), stats.lognorm(0.6), stats.t(5)])
def test_a_tail_that_fits_is_seldom_rejected(distribution):
    rng = np.random.default_rng(5)
    rejected = [
        Tail.fit(distribution.rvs(n, random_state=rng)).misfit
        for n in (124, 3419)
        for _ in range(100)
    ]
    assert np.mean(rejected) <= 3 * MISFIT_LEVEL


def test_past_the_largest_score_a_fit_at_its_heaviest_shape_is_not_trusted_below_it():
    """828 calibration scores (cardio cross-fitted) at 0.1 %, past the largest score: a rare
    far tail drives most fits to the upper bound of their shape, and those fitted
    thresholds, below the largest score, fired on 0.33 % of new normal records. Held at
    the largest score there, the rate keeps the goal."""
    distribution, rng = RareFarTail(), np.random.default_rng(3)
    n, alpha = 828, 0.001
    realised, at_bound = [], 0
    for _ in range(100):
        tail = Tail.fit(distribution.rvs(n, random_state=rng), up_to_rate=0.01)
        at_bound += tail.shape >= SHAPE_BOUNDS[1]
        threshold = tail.threshold(alpha)
        assert threshold >= tail.largest[0] or tail.shape < SHAPE_BOUNDS[1]
        realised.append(distribution.sf(threshold))
    assert at_bound >= 50
    assert alpha / 2 <= np.mean(realised) <= 2 * alpha, np.mean(realised)
    # and the threshold still rises as the rate falls
    tail = Tail.fit(distribution.rvs(n, random_state=rng), up_to_rate=0.01)
    thresholds = [tail.threshold(rate) for rate in np.geomspace(0.05, 1e-6, 400)]
    assert np.all(np.diff(thresholds) >= 0)


def test_a_rejected_tail_keeps_the_threshold_rising_as_the_rate_falls():
    tail = Tail.fit(RareFarTail().rvs(3419, random_state=np.random.default_rng(7)))
    assert tail.misfit
    thresholds = [tail.threshold(rate) for rate in np.geomspace(0.05, 1e-6, 400)]
    assert np.all(np.diff(thresholds) >= 0)
    assert tail.threshold(1 / 3420) == max(tail.largest)  # the order statistic to the largest
    assert tail.threshold(1e-6) >= max(tail.largest)


def test_too_few_held_out_rows_are_named():
    assert resolution_warning(1000, 0.01, "train on more") is None
    message = resolution_warning(33, 0.01, "train on more")
    assert "33 normal records" in message and "needs 100" in message
    assert message.endswith("; train on more")


def folds_of(n: int, **training) -> anomaly.Config:
    return anomaly.Config().updated(training={"calibration_folds": n, **training})


def test_folds_split_the_records_once_each():
    records = np.arange(83, dtype=np.float32).reshape(-1, 1)
    folds = _folds(records, folds_of(5).training)  # the held-out share and 4 folds of these
    assert [len(fold) for _, fold in folds] == [21, 21, 21, 20]
    assert sorted(np.concatenate([fold for _, fold in folds]).ravel()) == list(range(83))
    for rest, fold in folds:
        assert sorted(np.concatenate([rest, fold]).ravel()) == list(range(83))
    assert _folds(records, folds_of(1).training) == []


def test_folds_too_small_for_their_own_statistics_are_refused_before_training():
    records = np.zeros((60, 2), np.float32)
    with pytest.raises(TrainingError, match="= 5 splits the 60 records .* folds of 15.*at most 4"):
        _folds(records, folds_of(5).training)
    with pytest.raises(TrainingError, match=r"folds of 10\b.*set it to 1 \(no cross-fitting\)"):
        _folds(records[:30], folds_of(4).training)
    # with half the records held out, 2 folds are accepted, and suggested where they fit
    with pytest.raises(TrainingError, match="folds of 10.*set it to at most 2"):
        _folds(records[:30], folds_of(4, validation_fraction=0.5).training)


def test_the_small_data_warning_suggests_only_folds_training_would_accept():
    assert "calibration_folds = 5 " in _remedy(folds_of(1), 85)
    assert "calibration_folds = 3 " in _remedy(folds_of(1), 59)
    for config, n_fit in ((folds_of(1), 39), (folds_of(3), 300)):
        assert _remedy(config, n_fit) == (
            "train on more normal rows, or raise training.validation_fraction"
        )
    windowed = folds_of(1).updated(model={"window": 8})
    assert "calibration_folds" not in _remedy(windowed, 300)


def folds_for(n_records: int, config: anomaly.Config | None = None) -> int:
    return _with_calibration_folds(n_records, config or anomaly.Config()).training.calibration_folds


def test_auto_folds_cross_fit_only_where_the_held_out_share_cannot_resolve_the_target():
    assert anomaly.Config().training.calibration_folds == "auto"
    assert folds_for(600) == 5  # 90 held out: fewer than the 100 that 1 % needs
    assert folds_for(700) == 1  # 105 held out
    assert folds_for(3000, anomaly.Config().updated(scoring={"target_fpr": 0.001})) == 5
    assert folds_for(80) == 4  # 68 outside the 12 held out: 4 folds of 20 or more
    assert folds_for(40) == 1  # too few for folds of 20
    assert folds_for(300, anomaly.Config().updated(model={"window": 8})) == 1
    assert folds_for(300, folds_of(1)) == 1 and folds_for(5000, folds_of(3)) == 3


def test_retraining_on_a_small_batch_lowers_the_parents_folds_and_says_so():
    config, note = _fewer_folds_for(80, folds_of(5))  # 68 outside the held-out 12: 4 folds
    assert config.training.calibration_folds == 4
    assert note == (
        "the parent model cross-fitted with training.calibration_folds = 5; 80 fresh rows "
        "allow 4, so this model used 4"
    )
    assert _fewer_folds_for(1000, folds_of(5)) == (folds_of(5), None)
    assert _fewer_folds_for(40, folds_of(5))[0].training.calibration_folds == 1
    assert _fewer_folds_for(40, anomaly.Config()) == (anomaly.Config(), None)


@pytest.mark.slow
def test_cross_fitting_calibrates_on_every_training_record():
    """300 normal rows hold out 45, too few for 1 %: with ``training.calibration_folds = 1``
    training warns and names the remedy. By default (``"auto"``) every one of the 300
    records calibrates (45 scored by the deployed model, 255 by four more models trained
    without them), so the warning goes; the model says how many folds it used, and keeps
    "auto" for a retrain to decide again on its own rows."""
    rows = np.random.default_rng(0).normal(size=(300, 4)).astype(np.float32)
    config = anomaly.Config().updated(training={"steps": 30})
    with pytest.warns(TrainingWarning, match="45 normal records.*calibration_folds = 5"):
        held_out_only = anomaly.train(rows, config.updated(training={"calibration_folds": 1}))
    assert held_out_only.engine.params.tail["n"] == 45

    with warnings.catch_warnings():
        warnings.simplefilter("error", TrainingWarning)
        detector = anomaly.train(rows, config)
    assert detector.engine.params.tail["n"] == detector.metadata["calibration_records"] == 300
    assert detector.metadata["held_out_records"] == 45
    assert detector.metadata["calibration_folds"] == 5
    assert detector.config.training.calibration_folds == "auto"
    # the deployed model is the same as without cross-fitting; only its threshold differs
    assert detector.engine.params.location == held_out_only.engine.params.location
    assert detector.threshold != held_out_only.threshold


def test_fold_models_train_to_the_epoch_early_stopping_restored():
    # as Keras 3's EarlyStopping picks it: the first epoch, then each strictly lower error
    assert _best_epoch({"val_reconstruction": [3.0, 2.0, 2.0, 5.0]}) == 2
    assert _best_epoch({"val_reconstruction": [4.0, math.nan, 1.0, math.inf]}) == 3
    assert _best_epoch({"val_reconstruction": [math.nan, 1.0, 0.5]}) == 1


@pytest.mark.slow
def test_fold_models_train_as_long_as_the_deployed_model_without_choosing_on_their_fold(
    monkeypatch,
):
    """A fold model early-stopped on the fold it calibrates on would keep the epoch at which
    that fold scores lowest, so the fold would score lower than new records do and the
    threshold would fire more often than its target. Fold models train for the epochs early
    stopping chose for the deployed model, with no validation data."""
    fits = []
    real_fit_gan = training._fit_gan

    def recorded(x_fit, x_held, config, callbacks, initial=None, schedule=None):
        model, history = real_fit_gan(x_fit, x_held, config, callbacks, initial, schedule)
        fits.append((x_held, schedule, history))
        return model, history

    monkeypatch.setattr(training, "_fit_gan", recorded)
    rows = np.random.default_rng(2).normal(size=(300, 4)).astype(np.float32)
    config = anomaly.Config().updated(
        training={"steps": 320, "batch_size": 4, "calibration_folds": 3}
    )
    anomaly.train(rows, config)

    (held_out, _, deployed), *folds = fits
    assert len(held_out) == 45 and len(folds) == 2
    chosen = int(np.argmin(deployed["val_reconstruction"])) + 1
    for validation, schedule, history in folds:
        assert validation is None and "val_reconstruction" not in history
        # the deployed model's epochs of its steps: 255 rows in batches of 4, 64 steps an
        # epoch, where a fold model's 172 rows alone would make 50
        assert schedule == (chosen, 64) and len(history["reconstruction"]) == chosen


@pytest.mark.slow
def test_cross_fitting_still_warns_when_the_deployed_models_statistics_are_loose():
    """120 records with 5 folds: every record calibrates the threshold (enough for 1 %), but
    the deployed model's component statistics come from its 18 held-out records alone."""
    rows = np.random.default_rng(1).normal(size=(120, 3)).astype(np.float32)
    config = anomaly.Config().updated(training={"steps": 5, "calibration_folds": 5})
    with pytest.warns(TrainingWarning) as caught:
        detector = anomaly.train(rows, config)
    messages = [str(warning.message) for warning in caught]
    assert any("statistics were fitted on its 18 held-out records" in m for m in messages)
    assert not any("too few to resolve" in m for m in messages)
    assert detector.engine.params.tail["n"] == 120


@pytest.mark.slow
def test_a_trained_detector_keeps_its_rate_on_new_normal_data():
    """The goal of the issue, on synthetic normal data: at 1 % and 0.1 %, the realised rate
    on 200,000 new normal records is within half and twice the target, for each of three
    training seeds (3,000 held-out records: 30 expected above the 1 % threshold, 3 above
    the 0.1 % one, which the tail fit resolves)."""
    rng = np.random.default_rng(0)
    d = 4
    covariance = np.full((d, d), 0.5) + 0.5 * np.eye(d)
    for seed in range(3):
        rows = rng.multivariate_normal(np.zeros(d), covariance, 20_000).astype(np.float32)
        config = anomaly.Config().updated(training={"steps": 100, "seed": seed})
        detector = anomaly.train(rows, config)
        assert detector.engine.params.tail["n"] == 3000
        new = rng.multivariate_normal(np.zeros(d), covariance, 200_000).astype(np.float32)
        scores = detector.score(new).scores
        assert np.mean(scores > detector.threshold) == pytest.approx(0.01, rel=0.5)
        for target in TARGETS:
            realised = np.mean(scores > detector.threshold_at(target))
            assert target / 2 <= realised <= 2 * target, (seed, target, realised)


class _ComponentsAsColumns:
    """The calibration's view of a trained model, without the networks: a record's four
    columns are its raw components (chi-squared, |t|, lognormal: skewed, as a GAN's are)."""

    params = _initial_params(anomaly.Config())

    def raw_components(self, records: np.ndarray) -> dict[str, np.ndarray]:
        return {name: records[:, i] for i, name in enumerate(COMPONENTS)}


def _normal_components(rng: np.random.Generator, n: int) -> np.ndarray:
    return np.stack(
        [
            rng.chisquare(8, n),
            rng.chisquare(3, n),
            np.abs(rng.standard_t(5, n)),
            rng.lognormal(0.0, 0.5, n),
        ],
        axis=1,
    )


def test_few_held_out_records_keep_the_rate_on_average_over_trainings():
    """Breastw's shape: 33 held-out records fix the deployed model's location and scale,
    four folds of 47 more calibrate with it. New records are standardised by statistics
    they played no part in, and those statistics are loose with 33 records, so new scores
    vary more than records standardised by their own statistics would: calibrated that
    way, the threshold fired on 1.35 % of new normal records at 1 % (0.18 % at 0.1 %),
    averaged over 100 trainings. Each calibration record is standardised by other records'
    statistics instead: 0.99 % (0.13 %)."""
    rng = np.random.default_rng(0)
    engine = _ComponentsAsColumns()
    realised = {target: [] for target in TARGETS}
    for _ in range(100):
        held_out = _normal_components(rng, 33)
        folds = [(engine, _normal_components(rng, 47)) for _ in range(4)]
        params = calibrate(engine, held_out, folds)
        new = _normal_components(rng, 20_000)
        standard = {
            name: (new[:, i] - params.location[name]) / params.scale[name]
            for i, name in enumerate(COMPONENTS)
        }
        standard["critic"] = np.abs(standard["critic"])  # fanogan's two-sided critic
        scores = sum(params.weights[name] * standard[name] for name in COMPONENTS)
        tail = Tail(**params.tail)
        for target in TARGETS:
            realised[target].append(np.mean(scores > tail.threshold(target)))
    assert 0.008 <= np.mean(realised[0.01]) <= 0.0125, np.mean(realised[0.01])
    assert 0.0005 <= np.mean(realised[0.001]) <= 0.0016, np.mean(realised[0.001])


def test_each_calibration_group_is_standardised_by_other_records():
    for n, like in ((3, 2), (5, 4), (33, 31), (47, 31), (1_000, 950)):
        pairs = _other_records(n, like)
        groups = np.concatenate([group for group, _ in pairs])
        assert sorted(groups) == list(range(n))  # every record once, in order
        for group, others in pairs:
            assert len(others) == min(like, n - len(group))
            assert not set(group) & set(others)
    # one or two records: one other record has no scale, so their own statistics
    for n in (1, 2):
        assert [(list(g), list(o)) for g, o in _other_records(n, 2)] == [(list(range(n)),) * 2]
    assert _statistics_records(2) == 2 and _statistics_records(33) == 31


def test_a_bundle_keeps_its_calibration_tail(tabular_detector, tmp_path):
    loaded = anomaly.load(tabular_detector.save(tmp_path / "model"))
    assert loaded.threshold_at(0.001) == tabular_detector.threshold_at(0.001)
    assert loaded.threshold_at(0.001) >= loaded.threshold_at(0.01) == loaded.threshold

"""The adaptive alarm stage (anomaly/alarms.py, decision.py, spot.py): causal levels and
decisions per stream, both semantics, and the keyed container the service and files share."""

import re
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from anomaly.alarms import AlarmStage, StreamsDroppedWarning, UnusedAlarmSettingsWarning
from anomaly.config import COMPONENTS, MAX_ALARM_HISTORY, AlarmConfig, Config
from anomaly.decision import StateSemantics
from anomaly.errors import ConfigError

METHODS = ("conformal", "dspot")
SEMANTICS = ("event", "state")


def _stream(n: int = 3000, seed: int = 0) -> np.ndarray:
    """Four score components of a normal stream with a drift, two events and a new level."""
    rng = np.random.default_rng(seed)
    scores = rng.normal(size=(n, 4)) + np.linspace(0.0, 3.0, n)[:, None]
    scores[1200:1210, :3] += 8.0  # an event lifting three components for ten rows
    scores[1800, :2] += 12.0  # a spike in two
    scores[2400:, :] += 5.0  # a lasting new level
    return scores


# -- both semantics, worked by hand ----------------------------------------------------------

# Conformal levels by hand: each row's p-value is the share of the 4 values before it (the
# reference [1, 2, 3, 4], then the stream) that lie strictly below it:
#   row:      0    1  2  3  4     5  6  7     8     9     10  11
#   value:    2.5  5  6  1  5.5   .5 .2 3     .4    .3    9   2
#   p-value:  .5   1  1  0  .75   0  0  .75   .25   .25   1   .5
# e.g. row 4 (5.5) against [2.5, 5, 6, 1]: three below, 0.75.
HAND_SERIES = [2.5, 5.0, 6.0, 1.0, 5.5, 0.5, 0.2, 3.0, 0.4, 0.3, 9.0, 2.0]
HAND_LEVELS = [0.5, 1.0, 1.0, 0.0, 0.75, 0.0, 0.0, 0.75, 0.25, 0.25, 1.0, 0.5]
HAND = {
    "method": "conformal",
    "quorum": None,
    "history": 4,
    "level": 0.75,
    "exit_level": 0.5,
    "exit_rows": 2,
    "quiet_rows": 2,
}


def test_event_semantics_by_hand_one_alarm_then_a_quiet_period():
    stage = AlarmStage([1.0, 2.0, 3.0, 4.0], AlarmConfig(**HAND, semantics="event"))
    result = stage.update(HAND_SERIES)
    np.testing.assert_array_equal(result.levels, HAND_LEVELS)
    # rows at or above 0.75: 1, 2, 4, 7, 10. Row 1 alarms and rows 2-3 are quiet (so row 2
    # does not alarm); row 4 is free again and alarms, 5-6 quiet; row 7 alarms, 8-9 quiet;
    # row 10 alarms, 11 quiet (and the quiet period runs on past the batch).
    assert result.alarms.astype(int).tolist() == [0, 1, 0, 0, 1, 0, 0, 1, 0, 0, 1, 0]
    assert result.quiet.astype(int).tolist() == [0, 0, 1, 1, 0, 1, 1, 0, 1, 1, 0, 1]
    assert stage.states == 0


def test_state_semantics_by_hand_every_row_of_the_state_is_flagged_with_hysteresis():
    stage = AlarmStage([1.0, 2.0, 3.0, 4.0], AlarmConfig(**HAND, semantics="state"))
    result = stage.update(HAND_SERIES)
    np.testing.assert_array_equal(result.levels, HAND_LEVELS)
    # Enter at a level >= 0.75, leave at the 2nd row in a row below 0.5 (the first row out):
    # row 1 enters; 2 stays; 3 is low (run 1); 4 is not low (run 0); 5 low (1); 6 low (2):
    # out. Row 7 enters; 8 low (1); 9 low (2): out. Row 10 enters; 11 (0.5) is not below
    # 0.5, so the stream ends the batch in the state.
    assert result.alarms.astype(int).tolist() == [0, 1, 1, 1, 1, 1, 0, 1, 1, 0, 1, 1]
    assert not result.quiet.any()
    assert stage.states == 1


@pytest.mark.parametrize("semantics", SEMANTICS)
def test_the_hand_worked_series_gives_the_same_decisions_row_by_row(semantics):
    whole = AlarmStage([1.0, 2.0, 3.0, 4.0], AlarmConfig(**HAND, semantics=semantics))
    expected = whole.update(HAND_SERIES)
    stage = AlarmStage([1.0, 2.0, 3.0, 4.0], AlarmConfig(**HAND, semantics=semantics))
    rows = [stage.update([value]) for value in HAND_SERIES]
    for field in ("levels", "alarms", "quiet"):
        joined = np.concatenate([getattr(r, field) for r in rows])
        np.testing.assert_array_equal(joined, getattr(expected, field))


def test_state_semantics_follow_a_state_that_changes_at_every_row():
    # every row enters or leaves the state (a flapping key in a 65,536-row chunk)
    semantics = StateSemantics(level=0.9, exit_level=0.5, exit_rows=1)
    flagged, quiet = semantics.decide(np.tile([1.0, 0.0], 32_768))
    assert flagged.tolist() == [True, False] * 32_768 and not quiet.any()


# -- causality ----------------------------------------------------------------------------


@pytest.mark.parametrize("semantics", SEMANTICS)
@pytest.mark.parametrize("method", METHODS)
def test_a_rows_decision_does_not_change_when_later_rows_are_appended(method, semantics):
    scores = _stream()
    config = AlarmConfig(method=method, semantics=semantics)
    full = AlarmStage(scores[:500], config).update(scores[500:])
    assert full.alarms.any()
    for k in (1, 700, 1305, 1901):
        head = AlarmStage(scores[:500], config).update(scores[500 : 500 + k])
        for field in ("levels", "alarms", "quiet"):
            np.testing.assert_array_equal(getattr(head, field), getattr(full, field)[:k])


@pytest.mark.parametrize("semantics", SEMANTICS)
@pytest.mark.parametrize("method", METHODS)
def test_batches_of_any_size_give_the_same_result(method, semantics):
    scores = _stream(seed=1)
    config = AlarmConfig(method=method, semantics=semantics)
    whole = AlarmStage(scores[:500], config).update(scores[500:])
    for cuts in ([1, 2, 3, 700, 701, 1900], list(range(37, 2500, 37))):
        stage = AlarmStage(scores[:500], config)
        parts = [stage.update(part) for part in np.split(scores[500:], cuts)]
        for field in ("levels", "alarms", "quiet"):
            joined = np.concatenate([getattr(p, field) for p in parts])
            np.testing.assert_array_equal(joined, getattr(whole, field))


# -- DSPOT ------------------------------------------------------------------------------------


def test_dspot_follows_a_slow_drift_that_a_fixed_threshold_fires_on_and_catches_a_spike():
    rng = np.random.default_rng(2)
    scores = rng.normal(size=6000) + np.linspace(0.0, 30.0, 6000)  # drifting normal scores
    scores[4000] += 8.0  # one spike
    reference = scores[:500]
    config = AlarmConfig(method="dspot", quorum=None, quiet_rows=0)
    alarms = np.flatnonzero(AlarmStage(reference, config).update(scores[500:]).alarms) + 500
    assert 4000 in alarms
    assert len(alarms) < 0.005 * 5500  # about 1 - level of the rows, as on noise
    fixed_threshold = np.quantile(reference, config.level)
    assert (scores[500:] > fixed_threshold).mean() > 0.9


def test_dspot_takes_a_lasting_new_level_for_the_normal_after_drift_depth_alarms():
    rng = np.random.default_rng(3)
    scores = rng.normal(size=4000)
    scores[2000:] += 10.0
    config = AlarmConfig(method="dspot", quorum=None, semantics="state", drift_depth=30)
    flagged = AlarmStage(scores[:500], config).update(scores[500:]).alarms
    after = flagged[2000 - 500 :]
    assert after[:30].all()  # the new level is news for drift_depth rows
    assert after[30 + config.exit_rows :].mean() < 0.01  # then it is the normal


def test_dspot_levels_of_normal_noise_alarm_at_about_one_minus_the_level():
    rng = np.random.default_rng(4)
    scores = rng.standard_t(5, size=(60_000, 2))
    config = AlarmConfig(method="dspot", quorum=1, level=0.99, quiet_rows=0)
    result = AlarmStage(scores[:1000], config).update(scores[1000:])
    # the quorum-th (1st) largest of two columns: about twice 1 % of the rows
    assert 0.012 < result.alarms.mean() < 0.03


@pytest.mark.parametrize("value", [0.0, 1.0, 1000.0])
def test_dspot_after_a_constant_reference_ignores_rounding_jitter_and_catches_a_step(value):
    # every reference peak ties: the tail's scale comes from the values' size, not 1e-12
    rng = np.random.default_rng(8)
    stream = value + rng.normal(size=3000) * 1e-7 * max(value, 1.0)
    stream[2000:] += 0.01 * max(value, 1.0)  # a real step
    config = AlarmConfig(method="dspot", quorum=None, quiet_rows=0)
    alarms = AlarmStage(np.full(1000, value), config).update(stream).alarms
    assert not alarms[:2000].any()
    assert alarms[2000]


# -- the keyed container ----------------------------------------------------------------------


def test_two_keys_are_independent_streams():
    scores = _stream(seed=5)
    config = AlarmConfig(method="dspot")
    alone = AlarmStage(scores[:500], config).update(scores[500:1500])
    stage = AlarmStage(scores[:500], config)
    other = np.random.default_rng(6).normal(size=(1000, 4)) * 5.0
    interleaved = np.empty((2000, 4))
    interleaved[0::2], interleaved[1::2] = scores[500:1500], other
    keys = ["a", "b"] * 1000
    both = stage.update(interleaved, keys=keys)
    np.testing.assert_array_equal(both.levels[0::2], alone.levels)
    np.testing.assert_array_equal(both.alarms[0::2], alone.alarms)
    assert len(stage) == 2


def test_revoked_partitions_and_the_key_bound_drop_streams():
    config = AlarmConfig(method="conformal", quorum=None, history=4, level=0.99, quiet_rows=0)
    stage = AlarmStage(np.zeros(4), config, max_keys=2)
    stage.update(np.ones(3), [b"a", b"b", b"c"], [0, 1, 1])
    assert len(stage) == 2  # a, seen least recently, was dropped
    assert stage.forget_partitions([1]) == 2 and len(stage) == 0
    result = stage.update(np.array([0.5]), [b"b"], [1])
    assert result.levels[0] == 1.0  # b starts again from the reference (zeros)


def test_a_models_stage_keeps_at_most_max_streams_however_many_keys_come():
    config = AlarmConfig(method="conformal", quorum=None, history=10, max_streams=3)
    stage = AlarmStage.for_model(_detector(window=4), config)  # as anomaly score makes it
    stage.update(np.full(1000, 5.0), keys=list(range(1000)))
    assert len(stage) == 3
    # 0.95 tops a fresh stream's history (0.1, 0.3, ..., 0.9) but not one that holds 5.0:
    # key 999, seen last, kept its state; key 0 was dropped and starts afresh
    assert stage.update([0.95, 0.95], keys=[999, 0]).levels.tolist() == [5 / 6, 1.0]
    # the service bounds its keys too (serve.max_entities): the smaller bound holds
    assert AlarmStage.for_model(_detector(4), config, max_keys=2).max_streams == 2
    assert AlarmStage.for_model(_detector(4), config, max_keys=10).max_streams == 3


def test_keys_in_the_flagged_state_are_counted_until_they_leave_it():
    config = AlarmConfig(**HAND, semantics="state")
    stage = AlarmStage([1.0, 2.0, 3.0, 4.0], config, max_keys=2)
    stage.update([5.0, 1.0], keys=["up", "calm"], partitions=[0, 1])
    assert stage.states == 1  # "up" entered the state (5 beats its reference)
    stage.update([5.5], keys=["up"], partitions=[0])  # still in it; "calm" is now the oldest
    stage.update([6.0], keys=["other"], partitions=[1])
    assert stage.states == 2 and len(stage) == 2  # "calm" was dropped, not in the state
    stage.forget_partitions([0])
    assert stage.states == 1


def test_a_nan_row_is_refused_before_any_stream_moves():
    config = AlarmConfig(**HAND)
    stage = AlarmStage([1.0, 2.0, 3.0, 4.0], config)
    with pytest.raises(ValueError, match="NaN"):
        stage.update([2.5, np.nan], keys=["a", "b"])
    assert len(stage) == 0
    assert stage.update([2.5], keys=["a"]).levels.tolist() == [0.5]


@pytest.mark.parametrize(
    ("keys", "partitions"),
    [(["a"], None), (["a", "b", "c", "d", "e"], None), (["a", "b", "c"], [0]), (None, [0, 1])],
)
def test_keys_or_partitions_not_one_per_row_are_refused_before_any_stream_moves(keys, partitions):
    stage = AlarmStage([1.0, 2.0, 3.0, 4.0], AlarmConfig(**HAND))
    with pytest.raises(ValueError, match="give one per row"):
        stage.update([2.5, 5.0, 1.0], keys=keys, partitions=partitions)
    assert len(stage) == 0
    assert stage.update([2.5], keys=["a"]).levels.tolist() == [0.5]


@pytest.mark.parametrize("method", METHODS)
def test_a_score_too_large_for_dspots_sums_is_refused_before_any_stream_moves(method):
    reference = np.random.default_rng(7).normal(size=500)
    config = AlarmConfig(method=method, quorum=None)
    untouched = AlarmStage(reference, config).update([0.5, 3.0]).levels
    stage = AlarmStage(reference, config)
    with pytest.raises(ValueError, match=r"beyond \+-1e\+150"):
        stage.update([0.5, 1.7e308], keys=["a", "b"])
    with pytest.raises(ValueError, match=r"beyond \+-1e\+150"):
        AlarmStage(np.append(reference, -1e151), config)
    assert len(stage) == 0
    np.testing.assert_array_equal(stage.update([0.5, 3.0], keys=["a", "a"]).levels, untouched)
    levels = stage.update([1e150, -1e150, 0.5], keys=["a", "a", "a"]).levels  # the bound
    assert np.isfinite(levels).all()


# -- a model's stage ----------------------------------------------------------------------


def _detector(window: int | None, components: bool = True, reference=None) -> SimpleNamespace:
    """A stand-in for a model: its window and held-out normal values (0..1 by default)."""
    reference = np.linspace(0.0, 1.0, 101) if reference is None else np.asarray(reference)
    by_name = reference.reshape(len(reference), -1)
    params = SimpleNamespace(
        reference_scores=by_name[:, 0].tolist(),
        reference_components={
            name: by_name[:, i * by_name.shape[1] // len(COMPONENTS)].tolist()
            for i, name in enumerate(COMPONENTS)
        }
        if components
        else {},
    )
    return SimpleNamespace(
        engine=SimpleNamespace(params=params), schema=SimpleNamespace(window=window)
    )


def test_auto_is_the_threshold_for_independent_rows_and_adaptive_in_time_series_mode():
    assert AlarmStage.for_model(_detector(window=None), AlarmConfig()) is None
    stage = AlarmStage.for_model(_detector(window=8), AlarmConfig())
    assert stage is not None and stage.method == AlarmConfig().resolved_method(time_series=True)
    assert AlarmStage.for_model(_detector(None), AlarmConfig(method="dspot")).method == "dspot"
    assert AlarmStage.for_model(_detector(8), AlarmConfig(method="threshold")) is None


def test_a_models_streams_start_from_half_the_history_of_its_reference_quantiles():
    config = AlarmConfig(method="conformal", history=10, quorum=None, quiet_rows=0, level=0.9)
    stage = AlarmStage.for_model(_detector(window=4), config)
    # five quantiles of 0..1 (0.1, 0.3, ..., 0.9): 0.5 beats two and 0.95 all of them
    result = stage.update(np.array([0.5, 0.95]), keys=["a", "b"])
    assert result.levels.tolist() == [0.4, 1.0]
    assert result.alarms.tolist() == [False, True]


def test_each_key_is_ranked_against_its_own_recent_scores():
    config = AlarmConfig(method="conformal", history=10, quorum=None, level=0.9, quiet_rows=3)
    stage = AlarmStage.for_model(_detector(4, reference=np.arange(100.0)), config)
    # a key starts from 5 quantiles of the model's held-out normal scores (here 0..99):
    # 9.9, 29.7, 49.5, 69.3, 89.1; its history then grows to 10
    result = stage.update(np.array([50.0, 200.0]), [b"a", b"b"], [0, 1])
    assert result.levels.tolist() == [0.6, 1.0] and result.alarms.tolist() == [False, True]
    # key b now sits at 200: ten more records there and 200 is its normal, key a is unmoved
    stage.update(np.full(10, 200.0), [b"b"] * 10, [1] * 10)
    result = stage.update(np.array([200.5, 200.5]), [b"a", b"b"], [0, 1])
    assert result.levels.tolist() == [1.0, 1.0]
    assert result.alarms.tolist() == [True, True]  # b's quiet period (3 rows) ended long ago
    result = stage.update(np.array([201.0]), [b"b"], [1])
    assert not result.alarms[0]  # quiet: the alarm just raised covers the next 3 records of b


def test_with_a_quorum_a_key_alarms_only_when_enough_components_stand_out_together():
    reference = np.stack([np.arange(100.0), np.arange(100.0) * 10], axis=1)
    config = AlarmConfig(method="conformal", history=10, quorum=2, level=0.9, quiet_rows=0)
    stage = AlarmStage.for_model(_detector(4, reference=reference), config)
    # the model's components: two like the first column (0..99), two like the second; each
    # history starts as 5 quantiles: 9.9, 29.7, ... and 99, 297, ...; a stands out in one
    # component only (its others beat 0, 1 and 1 of their 5), b in all four
    rows = np.array([[500.0, 5.0, 200.0, 200.0], [500.0, 500.0, 5000.0, 5000.0]])
    result = stage.update(rows, [b"a", b"b"], [0, 0])
    assert result.alarms.tolist() == [False, True]
    assert result.levels.tolist() == [0.2, 1.0]  # the level two components of a reach


def test_a_bundle_without_component_references_ranks_its_combined_score_with_a_warning():
    old_bundle = _detector(window=4, components=False)
    with pytest.warns(UserWarning, match="ranks the combined score instead; retrain it"):
        stage = AlarmStage.for_model(old_bundle, AlarmConfig())
    assert stage.config.quorum is None
    result = SimpleNamespace(
        scores=np.zeros(2), components={name: np.full(2, i) for i, name in enumerate(COMPONENTS)}
    )
    np.testing.assert_array_equal(stage.columns(result), [0.0, 0.0])
    assert stage.update(result, keys=["a", "b"]).levels.shape == (2,)
    with_components = AlarmStage.for_model(_detector(window=4), AlarmConfig())
    np.testing.assert_array_equal(with_components.columns(result), [[0, 1, 2, 3], [0, 1, 2, 3]])
    old_bundle.engine.params.reference_scores = []
    with pytest.raises(ConfigError, match="no reference of held-out normal scores"):
        AlarmStage.for_model(old_bundle, AlarmConfig(quorum=None))


def test_a_quorum_of_0_in_toml_or_the_environment_ranks_the_combined_score(tmp_path):
    path = tmp_path / "alarms.toml"
    path.write_text("[alarms]\nquorum = 0\n")
    assert AlarmConfig().updated_from_toml(path).quorum is None
    assert AlarmConfig().updated({"quorum": "0"}, from_text=True).quorum is None  # environment
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the combined score was asked for: no warning
        stage = AlarmStage.for_model(_detector(4, components=False), AlarmConfig(quorum=0))
    assert stage.config.quorum is None


def test_the_reference_must_fit_the_quorum_and_the_history():
    with pytest.raises(ConfigError, match="alarms.quorum = 2 needs at least 2 score columns"):
        AlarmStage(np.zeros(10), AlarmConfig(method="conformal"))
    with pytest.raises(ConfigError, match="alarms.quorum is None"):
        AlarmStage(np.zeros((10, 2)), AlarmConfig(method="conformal", quorum=None))
    with pytest.raises(ConfigError, match=r"alarms.history \(8\) is shorter"):
        AlarmStage(np.zeros(10), AlarmConfig(method="conformal", quorum=None, history=8))
    with pytest.raises(ConfigError, match="'threshold' has no adaptive stage"):
        AlarmStage(np.zeros(10), AlarmConfig(method="threshold", quorum=None))


def test_dropping_streams_for_the_bound_warns_once():
    """A file of more entities than alarms.max_streams restarted streams without a word."""
    config = AlarmConfig(method="conformal", quorum=None, history=10, max_streams=2)
    stage = AlarmStage(np.linspace(0.1, 0.9, 5), config)
    stage.update(np.full(2, 0.5), keys=["a", "b"])

    with pytest.warns(StreamsDroppedWarning, match="^more than 2 keys") as caught:
        stage.update(np.full(3, 0.5), keys=["c", "d", "a"])
        stage.update(np.full(2, 0.5), keys=["e", "b"])

    assert len(caught) == 1


def test_a_history_too_long_to_hold_is_refused_before_any_stream_is_made():
    """A history of 1e15 was taken, and the first stream asked for petabytes (a
    MemoryError traceback)."""
    with pytest.raises(ConfigError, match="alarms.history: Input should be less than or equal"):
        AlarmConfig().updated({"history": 10**15})
    assert AlarmConfig().updated({"history": MAX_ALARM_HISTORY}).history == MAX_ALARM_HISTORY


def test_the_readmes_example_of_a_stage_on_any_scores_runs_with_the_default_config():
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    (line,) = [x for x in readme.splitlines() if x.startswith("AlarmStage(normal_scores")]
    names = {
        "AlarmStage": AlarmStage,
        "detector": SimpleNamespace(config=Config()),
        "normal_scores": np.arange(100.0),
    }
    stage = eval(line.split("#")[0], names)  # noqa: S307 (our own README)
    assert stage.update(np.array([50.5, 1000.0])).alarms.tolist() == [False, True]


# -- configuration --------------------------------------------------------------------------


def test_alarm_defaults():
    config = AlarmConfig()
    assert (config.method, config.semantics, config.level) == ("auto", "event", 0.9965)
    assert config.resolved_exit_level == pytest.approx(0.965)
    assert config.resolved_method(time_series=False) == "threshold"


@pytest.mark.parametrize(
    ("alarms", "message"),
    [
        ({"semantics": "state", "exit_level": 0.999}, r"alarms: .*exit_level is 0\.999"),
        ({"semantics": "state", "level": 0.5}, r"exit_level \(its default.*\) is 0\.5;"),
        ({"exit_level": 0.5, "level": 0.4}, "must lie between 0 and level"),
        ({"quorum": 5}, "alarms.quorum"),
        ({"quorum": -1}, "alarms.quorum"),
        ({"level": True}, "alarms.level: .*must be a number, not true or false"),
        ({"level": 1.0}, "alarms.level: .*less than 1"),
        ({"level": 1}, "alarms.level: .*less than 1"),
        ({"semantics": "state", "exit_level": False}, "alarms.exit_level: .*not true or false"),
        ({"method": "spot"}, "alarms.method"),
        ({"semantics": "flag"}, "alarms.semantics"),
        ({"exit_rows": 0}, "alarms.exit_rows"),
        ({"method": "dspot", "history": 60}, r"drift_depth \(30\) must be at most"),
        ({"histroy": 10}, "unknown key 'alarms.histroy'"),
    ],
)
def test_bad_alarm_settings_are_errors_that_name_the_key(alarms, message):
    with pytest.raises(ConfigError, match=message):
        Config.from_dict({"alarms": alarms})


def test_the_old_serve_alarm_keys_say_where_they_moved():
    with pytest.raises(ConfigError, match=r"serve.alarm_history moved to \[alarms\] history"):
        Config.from_dict({"serve": {"alarm_history": 500, "alarm_quorum": None}})


def test_a_bundle_saved_with_the_old_serve_alarm_keys_still_loads_its_configuration():
    saved = Config().for_bundle()
    saved["serve"] = {"alarm_history": None, "alarm_level": 0.9965, "alarm_quorum": 2}
    del saved["alarms"]  # bundles before the section
    assert Config.from_bundle(saved).alarms == AlarmConfig()


def test_streams_dropped_beyond_max_streams_do_not_depend_on_how_rows_are_batched():
    """Three interleaved keys, two streams kept: streams were dropped only at the end of
    each batch, so a file (one chunk) kept all three and the service (batches) did not."""
    config = AlarmConfig(method="conformal", quorum=None, history=400, max_streams=2)
    reference = np.random.default_rng(4).normal(size=200)
    scores = np.random.default_rng(3).normal(size=900)
    scores[[300, 301, 302]] = 8.0
    keys = [f"k{i % 3}" for i in range(900)]

    def run(batch: int) -> tuple[list, list]:
        stage = AlarmStage(reference, config)
        parts = [
            stage.update(scores[i : i + batch], keys[i : i + batch]) for i in range(0, 900, batch)
        ]
        return (
            np.concatenate([p.levels for p in parts]).tolist(),
            np.concatenate([p.alarms for p in parts]).tolist(),
        )

    assert run(900) == run(1) == run(100)


def test_many_keys_past_max_streams_give_the_same_levels_however_rows_are_batched():
    """Runs of rows whose keys all have streams are taken together between the rows that
    make a stream (and drop one); that must drop the same streams as row by row."""
    config = AlarmConfig(method="conformal", quorum=None, history=60, max_streams=8)
    rng = np.random.default_rng(11)
    reference = rng.normal(size=30)
    scores = rng.normal(size=3000)
    keys = [f"k{k % 40}" for k in rng.zipf(1.5, size=3000)]

    def levels(batch: int) -> list[float]:
        stage = AlarmStage(reference, config)
        parts = [
            stage.update(scores[i : i + batch], keys[i : i + batch]) for i in range(0, 3000, batch)
        ]
        assert len(stage) == 8
        return np.concatenate([p.levels for p in parts]).tolist()

    assert levels(3000) == levels(1) == levels(37)
    # keys by position, also as a pandas Series whose index is not 0, 1, 2, ...
    series_keys = pd.Series(keys, index=np.arange(3000) + 10)
    by_series = AlarmStage(reference, config).update(scores, series_keys).levels.tolist()
    assert by_series == levels(3000)


def test_keys_are_remembered_by_their_last_row_however_rows_are_batched():
    """a b a | c | a | b with two streams kept: a batch put its keys back in the order of
    their first rows (b after a), so c dropped a, not b, unlike row by row."""
    config = AlarmConfig(method="conformal", quorum=None, history=400, max_streams=2)
    reference = np.random.default_rng(4).normal(size=200)
    scores = np.array([5.0, 0.0, 5.0, 0.0, 5.0, 0.0])
    keys = ["a", "b", "a", "c", "a", "b"]

    def levels(batches: list[int]) -> list[float]:
        stage, start, out = AlarmStage(reference, config), 0, []
        for size in batches:
            out += stage.update(
                scores[start : start + size], keys[start : start + size]
            ).levels.tolist()
            start += size
        return out

    assert levels([3, 1, 1, 1]) == levels([1] * 6)


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({"semantics": "state"}, "alarms.semantics set, but alarms.method 'auto' is the model's"),
        (
            {"method": "threshold", "semantics": "state", "exit_rows": 50},
            "alarms.semantics, alarms.exit_rows set, but alarms.method is 'threshold'",
        ),
        ({"quiet_rows": 10}, "alarms.quiet_rows set"),
    ],
)
def test_settings_only_the_adaptive_stage_uses_are_named_where_the_threshold_decides(
    settings, named
):
    """A flagged state asked of a model whose threshold decides (method 'threshold', or
    'auto' for independent rows) was ignored without a word: no alarm column, no state."""
    config = AlarmConfig().updated(settings)
    with pytest.warns(UnusedAlarmSettingsWarning, match=re.escape(named)):
        assert AlarmStage.for_params(None, config, time_series=False) is None


def test_a_saved_configuration_of_defaults_warns_of_nothing():
    """A bundle's configuration gives every key: only values other than the defaults warn."""
    saved = Config.from_dict({"alarms": AlarmConfig().model_dump()}).alarms
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert AlarmStage.for_params(None, saved, time_series=False) is None

"""Online conformal alarms (anomaly/conformal.py): what a user of a drifting stream relies on."""

import numpy as np
import pytest

from anomaly.conformal import ConformalAlarm


def normal_stream(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=n)


def test_a_normal_stream_alarms_at_about_one_minus_the_alarm_level():
    alarm = ConformalAlarm(normal_stream(500, seed=1), alarm_level=0.99, quiet_rows=0)
    assert alarm.history == 1000  # grown to twice the reference
    result = alarm.update(normal_stream(200_000, seed=2))
    # p >= 0.99 means beating at least 990 of the last 1000: a top-11 rank among 1001
    assert result.alarms.mean() == pytest.approx(11 / 1001, rel=0.1)
    # exchangeable scores give uniform p-values
    assert np.histogram(result.p_values, bins=10, range=(0, 1))[0].min() > 18_000


def test_p_value_is_the_share_of_the_last_history_scores_strictly_below():
    alarm = ConformalAlarm([1.0, 2.0, 3.0, 4.0], history=4, quiet_rows=0)
    result = alarm.update([2.5, 4.0, 10.0])
    # 2.5 vs [1,2,3,4]: 2 below; 4.0 vs [2,3,4,2.5]: 3 below; 10 vs [3,4,2.5,4]: 4 below
    np.testing.assert_allclose(result.p_values, [0.5, 0.75, 1.0])
    assert result.alarms.tolist() == [False, False, True]


def test_the_history_grows_from_the_reference_to_its_limit_then_slides():
    alarm = ConformalAlarm([1.0, 2.0, 3.0, 4.0], history=6, quiet_rows=0)
    result = alarm.update([2.5, 4.0, 0.5, 3.5, 9.0])
    # 2.5 vs [1,2,3,4]: 2/4; 4.0 vs [1,2,3,4,2.5]: 4/5; 0.5 vs [1,2,3,4,2.5,4]: 0/6;
    # 3.5 vs [2,3,4,2.5,4,0.5]: 4/6; 9.0 vs [3,4,2.5,4,0.5,3.5]: 6/6
    np.testing.assert_allclose(result.p_values, [2 / 4, 4 / 5, 0, 4 / 6, 1])
    assert ConformalAlarm([1.0, 2.0, 3.0]).history == 6  # twice the reference by default


def test_after_a_level_shift_alarms_stop_once_the_history_has_moved_on():
    """A fixed threshold fires on every row after a shift; the conformal alarm fires once."""
    reference = 300
    before = normal_stream(2000, seed=3)
    after = normal_stream(3000, seed=4) + 8.0  # a new, higher normal level
    alarm = ConformalAlarm(before[:reference], alarm_level=0.995, quiet_rows=50)
    result = alarm.update(np.concatenate([before[reference:], after]))
    shift = len(before) - reference
    assert result.alarms[shift : shift + 50].any()  # the shift itself is news
    settled = result.alarms[shift + alarm.history :]
    assert settled.mean() < 0.01  # the new level is normal once it fills the history
    fixed_threshold = np.quantile(before[:reference], 0.995)
    assert (after > fixed_threshold).mean() == 1.0


def test_one_event_lifting_many_rows_raises_one_alarm_then_a_quiet_period():
    scores = normal_stream(1000, seed=5)
    scores[600:640] += 20.0  # a window sliding over one event lifts 40 rows
    alarm = ConformalAlarm(scores[:200], alarm_level=0.99, quiet_rows=100)
    result = alarm.update(scores[200:])
    event = np.flatnonzero(result.alarms) + 200
    assert 600 in event
    assert not np.any((event > 600) & (event < 640))
    assert result.quiet[401 : 401 + 100].all()  # rows 601..700 of the stream
    assert not result.quiet[400]


def test_the_result_does_not_depend_on_how_the_stream_is_batched():
    scores = normal_stream(3000, seed=6)
    scores[[900, 905, 1500, 2600]] += 10.0
    whole = ConformalAlarm(scores[:400], quiet_rows=30).update(scores[400:])
    alarm = ConformalAlarm(scores[:400], quiet_rows=30)
    cuts = [1, 2, 500, 501, 502, 1200, 2599]
    parts = [alarm.update(part) for part in np.split(scores[400:], cuts)]
    for field in ("p_values", "alarms", "quiet"):
        joined = np.concatenate([getattr(p, field) for p in parts])
        np.testing.assert_array_equal(joined, getattr(whole, field))


def test_default_quiet_period_is_a_fifth_of_the_reference():
    assert ConformalAlarm(normal_stream(750)).quiet_rows == 150


@pytest.mark.parametrize(
    ("reference", "kwargs", "message"),
    [
        ([1.0], {}, "at least 2 scores"),
        ([1.0, np.nan], {}, "NaN or infinite"),
        ([1.0, 2.0], {"alarm_level": 0.0}, "alarm_level"),
        ([1.0, 2.0], {"quiet_rows": -1}, "quiet_rows"),
        ([[1.0, 2.0], [2.0, 3.0]], {"quorum": 3}, r"quorum must be in \[1, 2\]"),
        ([1.0, 2.0], {"quorum": 0}, "quorum"),
        ([1.0, 2.0, 3.0], {"history": 2}, "at least the reference's 3 rows"),
        (np.zeros((3, 2, 2)), {}, "1-D .* or 2-D"),
    ],
)
def test_bad_settings_are_refused_with_the_reason(reference, kwargs, message):
    with pytest.raises(ValueError, match=message):
        ConformalAlarm(reference, **kwargs)


def test_a_nan_score_is_refused_and_leaves_the_history_as_it_was():
    alarm = ConformalAlarm([1.0, 2.0, 3.0], quiet_rows=0)
    with pytest.raises(ValueError, match="NaN"):
        alarm.update([1.5, np.nan])
    assert alarm.update([2.5]).p_values.tolist() == [2 / 3]


def test_with_columns_each_is_ranked_against_its_own_history_and_the_quorum_decides():
    reference = [[1.0, 10.0], [2.0, 20.0], [3.0, 30.0], [4.0, 40.0]]
    rows = [[3.5, 5.0], [9.0, 99.0]]
    # row 1, column 0: 3.5 vs [1,2,3,4] -> 3/4; column 1: 5 vs [10,20,30,40] -> 0
    # row 2, column 0: 9 vs [2,3,4,3.5] -> 1; column 1: 99 vs [20,30,40,5] -> 1
    one = ConformalAlarm(reference, quiet_rows=0, quorum=1).update(rows)
    both = ConformalAlarm(reference, quiet_rows=0, quorum=2).update(rows)
    np.testing.assert_allclose(one.p_values, [0.75, 1.0])
    np.testing.assert_allclose(both.p_values, [0.0, 1.0])


def test_a_quorum_of_two_ignores_noise_in_one_column_and_catches_an_event_in_two():
    rng = np.random.default_rng(8)
    scores = rng.normal(size=(6000, 3)) * [1.0, 50.0, 0.01]  # components on unrelated scales
    scores[:, 1] += np.linspace(0.0, 400.0, 6000)  # one component drifts on its own
    lone_spikes = np.arange(1000, 5000, 600)  # further apart than the history
    scores[lone_spikes, 0] += 10.0  # noise in one component at a time
    scores[5500, :2] += [10.0, 1000.0]  # an event lifts two components together
    history = 500
    settings = {"history": history, "alarm_level": 0.999, "quiet_rows": 0}
    quorum = ConformalAlarm(scores[:history], quorum=2, **settings)
    alarms = np.flatnonzero(quorum.update(scores[history:]).alarms) + history
    assert 5500 in alarms
    assert not np.isin(lone_spikes, alarms).any()
    assert len(alarms) < 10  # about 3 columns choose 2 times 0.001^2 per row by chance
    any_column = ConformalAlarm(scores[:history], quorum=1, **settings)
    assert np.isin(
        lone_spikes, np.flatnonzero(any_column.update(scores[history:]).alarms) + history
    ).all()


def test_columns_must_match_the_reference():
    alarm = ConformalAlarm(np.ones((4, 2)))
    with pytest.raises(ValueError, match=r"shape \('n', 2\)"):
        alarm.update(np.ones(3))


def test_columns_give_the_same_result_however_the_stream_is_batched():
    scores = normal_stream(6000, seed=9).reshape(3000, 2)
    scores[[900, 1500, 2600]] += 10.0
    whole = ConformalAlarm(scores[:400], quiet_rows=30, quorum=2).update(scores[400:])
    alarm = ConformalAlarm(scores[:400], quiet_rows=30, quorum=2)
    # one-row parts while the history grows (1) and once it slides (2001)
    parts = [alarm.update(part) for part in np.split(scores[400:], [1, 500, 1201, 2000, 2001])]
    for field in ("p_values", "alarms", "quiet"):
        joined = np.concatenate([getattr(p, field) for p in parts])
        np.testing.assert_array_equal(joined, getattr(whole, field))

"""Tests of the NAB scorer reimplementation (pipelines/bench/nab_scorer.py, with the corpus and
the windowed-Gaussian baseline beside it) on hand-worked cases.

Hand arithmetic uses ``sigma(p) = 2 / (1 + exp(5 p)) - 1 = -tanh(2.5 p)`` (for ``p <= 3``),
so ``sigma(-1) = tanh(2.5) = 0.98661429815``.

Most cases use one series of n = 100 rows: probationary period ``min(floor(0.15 * 100), 750)
= 15`` rows (rows 0..14 ignored) and one window covering rows 40..49 (width w = 10).
Standard profile: A_TP = 1, A_FP = 0.11, A_FN = 1.
"""

import math

import numpy as np
import pytest

from pipelines.bench import nab_baselines, nab_corpus, nab_scorer
from tests._support import unavailable

N = 100
WINDOW = [(40, 49)]
MAX_TP = math.tanh(2.5)  # 0.9866142981514303


def detect(*rows, n=N):
    d = np.zeros(n, dtype=bool)
    d[list(rows)] = True
    return d


# ------------------------------------------------------------------------------------------
# building blocks
# ------------------------------------------------------------------------------------------


def test_probationary_length():
    assert nab_corpus.probationary_length(100) == 15  # floor(15.0)
    assert nab_corpus.probationary_length(4032) == 604  # floor(604.8)
    assert nab_corpus.probationary_length(4999) == 749  # floor(749.85)
    assert nab_corpus.probationary_length(5000) == 750
    assert nab_corpus.probationary_length(22695) == 750  # capped at 0.15 * 5000


def test_scaled_sigmoid_values():
    assert nab_scorer.scaled_sigmoid(-1.0) == pytest.approx(0.98661429815)
    assert nab_scorer.scaled_sigmoid(-0.5) == pytest.approx(0.84828363995)  # tanh(1.25)
    assert nab_scorer.scaled_sigmoid(0.0) == 0.0
    assert nab_scorer.scaled_sigmoid(1.0) == pytest.approx(-0.98661429815)
    assert nab_scorer.scaled_sigmoid(3.0) == pytest.approx(-math.tanh(7.5))  # not yet clamped
    assert nab_scorer.scaled_sigmoid(3.0001) == -1.0  # "FP well behind window"


# ------------------------------------------------------------------------------------------
# one series, binary detections, standard profile
# ------------------------------------------------------------------------------------------


def test_detection_at_window_start_scores_full_tp():
    # row 40: position -(49 - 40 + 1) / 10 = -1 -> sigma(-1) / sigma(-1) * A_TP = 1.0
    s = nab_scorer.score_detections(detect(40), WINDOW, "standard")
    assert s.raw == pytest.approx(1.0, abs=1e-12)
    # counts are rows over the 85 scorable rows: 1 of the 10 window rows detected
    assert (s.tp, s.fp, s.fn, s.tn) == (1, 0, 9, 75)
    assert (s.windows_detected, s.windows_missed) == (1, 0)


def test_detection_early_in_window():
    # row 41: position -(49 - 41 + 1) / 10 = -0.9 -> tanh(2.25) / tanh(2.5) = 0.99129530
    s = nab_scorer.score_detections(detect(41), WINDOW)
    assert s.raw == pytest.approx(math.tanh(2.25) / MAX_TP)
    assert s.raw == pytest.approx(0.9912952980, abs=1e-9)


def test_detection_mid_and_late_in_window():
    # row 45: position -0.5 -> tanh(1.25) / tanh(2.5) = 0.84828364 / 0.98661430 = 0.85979257
    assert nab_scorer.score_detections(detect(45), WINDOW).raw == pytest.approx(
        0.8597925669, abs=1e-9
    )
    # row 49 (last row): position -1/10 -> tanh(0.25) / tanh(2.5) = 0.24491866 / 0.98661430
    #                                    = 0.24824155
    assert nab_scorer.score_detections(detect(49), WINDOW).raw == pytest.approx(
        0.2482415498, abs=1e-9
    )


def test_only_first_detection_in_window_counts():
    # rows 45 and 49 detected: only row 45 counts -> 0.85979257 (not 0.860 + 0.248)
    s = nab_scorer.score_detections(detect(45, 49), WINDOW)
    assert s.raw == pytest.approx(0.8597925669, abs=1e-9)
    assert (s.tp, s.windows_detected) == (2, 1)  # both rows are TP rows, one window hit
    # adding an earlier detection (row 40) raises the window's reward to 1.0
    assert nab_scorer.score_detections(detect(40, 45, 49), WINDOW).raw == pytest.approx(1.0)


def test_false_positive_just_after_window_is_sigmoid_weighted():
    # row 40 hit (+1.0); row 50 is 1 row past the window's last row 49:
    # position |49 - 50| / (w - 1) = 1/9 -> sigma(1/9) = -tanh(2.5/9) = -0.27084712
    # weighted by A_FP = 0.11 -> -0.02979318;  total 1 - 0.02979318 = 0.97020682
    s = nab_scorer.score_detections(detect(40, 50), WINDOW)
    assert s.raw == pytest.approx(1.0 - 0.11 * math.tanh(2.5 / 9))
    assert s.raw == pytest.approx(0.9702068170, abs=1e-9)
    assert (s.tp, s.fp) == (1, 1)
    # row 58: position 9/9 = 1 -> 0.11 * -tanh(2.5) = -0.10852757
    assert nab_scorer.score_detections(detect(40, 58), WINDOW).raw == pytest.approx(
        1.0 - 0.1085275728, abs=1e-9
    )
    # row 76: position 27/9 = 3 (not > 3) -> 0.11 * -tanh(7.5) = -0.10999993
    assert nab_scorer.score_detections(detect(40, 76), WINDOW).raw == pytest.approx(
        1.0 - 0.11 * math.tanh(7.5)
    )
    # row 77: position 28/9 > 3 -> exactly -A_FP
    assert nab_scorer.score_detections(detect(40, 77), WINDOW).raw == pytest.approx(1.0 - 0.11)


def test_false_positive_far_from_any_window():
    # row 20 precedes every window -> full -A_FP = -0.11; the window is missed -> -A_FN = -1
    s = nab_scorer.score_detections(detect(20), WINDOW)
    assert s.raw == pytest.approx(-1.11)
    assert (s.tp, s.fp, s.fn, s.tn) == (0, 1, 10, 74)
    # a series without windows: every flagged row is a full FP: 3 rows -> 3 * -0.11 = -0.33
    s = nab_scorer.score_detections(detect(20, 60, 99), [])
    assert s.raw == pytest.approx(-0.33)
    assert (s.fp, s.tn, s.windows_missed) == (3, 82, 0)


def test_missed_window_costs_a_fn():
    # nothing detected: -A_FN per window; profiles differ only in A_FN here
    assert nab_scorer.score_detections(detect(), WINDOW, "standard").raw == -1.0
    assert nab_scorer.score_detections(detect(), WINDOW, "reward_low_FP_rate").raw == -1.0
    assert nab_scorer.score_detections(detect(), WINDOW, "reward_low_FN_rate").raw == -2.0
    two = [(20, 29), (60, 69)]
    s = nab_scorer.score_detections(detect(20), two)  # first window hit at its start, second missed
    assert s.raw == pytest.approx(1.0 - 1.0)
    assert (s.windows_detected, s.windows_missed) == (1, 1)


def test_profiles_weight_fp_and_fn():
    # row 20 (far FP) + missed window:
    #   standard -0.11 - 1 = -1.11; low-FP -0.22 - 1 = -1.22; low-FN -0.11 - 2 = -2.11
    d = detect(20)
    assert nab_scorer.score_detections(d, WINDOW, "standard").raw == pytest.approx(-1.11)
    assert nab_scorer.score_detections(d, WINDOW, "reward_low_FP_rate").raw == pytest.approx(-1.22)
    assert nab_scorer.score_detections(d, WINDOW, "reward_low_FN_rate").raw == pytest.approx(-2.11)


def test_probationary_period_ignores_detections():
    # rows 0..14 are probationary: flagging all of them changes nothing
    s = nab_scorer.score_detections(detect(*range(15)), WINDOW)
    assert s.raw == -1.0  # only the missed window
    assert (s.tp, s.fp, s.fn, s.tn) == (0, 0, 10, 75)  # probation rows not counted at all
    # row 15 is the first scored row -> full FP (-0.11) on top of the missed window
    assert nab_scorer.score_detections(detect(15), WINDOW).raw == pytest.approx(-1.11)
    # an explicit probation overrides the default
    assert nab_scorer.score_detections(detect(15), WINDOW, probation=16).raw == -1.0


def test_overlapping_windows_rejected():
    with pytest.raises(ValueError, match="overlap"):
        nab_scorer.score_detections(detect(), [(10, 20), (20, 30)])


# ------------------------------------------------------------------------------------------
# corpus: threshold sweep and normalisation
# ------------------------------------------------------------------------------------------


def make_series(name, n, windows, seed=0):
    rng = np.random.default_rng(seed)
    ts = np.arange(n).astype("datetime64[m]").astype("datetime64[ns]")
    return nab_corpus.Series(name, ts, rng.normal(size=n), tuple(windows))


CORPUS = [
    make_series("a.csv", 100, [(40, 49)]),
    make_series("b.csv", 200, [(50, 59), (120, 139)], seed=1),
    make_series("c.csv", 80, [], seed=2),  # no anomaly
]


@pytest.mark.parametrize("profile", nab_scorer.PROFILE_NAMES)
def test_normalisation_null_is_0_and_perfect_is_100(profile):
    null = {s.name: np.full(len(s), 0.5) for s in CORPUS}  # constant, like NAB's null detector
    perfect = {s.name: np.zeros(len(s)) for s in CORPUS}
    for s in CORPUS:
        for start, _ in s.windows:
            perfect[s.name][start] = 1.0  # each window flagged at its first row
    r_null = nab_scorer.score_corpus(null, CORPUS, [profile])[profile]
    r_perf = nab_scorer.score_corpus(perfect, CORPUS, [profile])[profile]
    fn = nab_scorer.PROFILES[profile].fn
    # 3 windows: null = -3 * A_FN, perfect = 3 * A_TP = 3
    assert r_null.raw == r_null.null == -3 * fn
    assert r_null.score == 0.0 and r_null.threshold == math.inf
    assert r_perf.raw == pytest.approx(r_perf.perfect) and r_perf.perfect == 3.0
    assert r_perf.score == pytest.approx(100.0)
    assert r_perf.threshold == 1.0 and r_perf.windows_detected == 3


def test_sweep_picks_best_threshold_by_hand():
    # series a only (window 40..49): row 20 scores 0.95 (FP before the window), row 45 scores
    # 0.9 (in the window), everything else 0.  Candidates (standard):
    #   t = inf : nothing flagged                      -> -1
    #   t = 0.95: row 20 only                          -> -1 - 0.11 = -1.11
    #   t = 0.9 : rows 20 and 45 -> -0.11 + 0.85979257 = 0.74979257   <- best
    #   t = 0   : every row; window hit at row 40 (+1) but 74 far FPs -> ~ -7
    # normalised: 100 * (0.74979257 + 1) / (1 + 1) = 87.4896283
    corpus = CORPUS[:1]
    a = np.zeros(100)
    a[20], a[45] = 0.95, 0.9
    r = nab_scorer.score_corpus({"a.csv": a}, corpus, ["standard"])["standard"]
    assert r.threshold == 0.9
    assert r.raw == pytest.approx(math.tanh(1.25) / MAX_TP - 0.11)
    assert r.score == pytest.approx(87.4896283455, abs=1e-8)
    assert (r.tp, r.fp, r.windows_detected, r.n_windows) == (1, 1, 1, 1)
    thresholds, raws = nab_scorer.sweep_corpus({"a.csv": a}, corpus, "standard")
    assert list(thresholds) == [math.inf, 0.95, 0.9, 0.0]
    assert raws[:3] == pytest.approx([-1.0, -1.11, 0.7497925669])


@pytest.mark.parametrize("profile", nab_scorer.PROFILE_NAMES)
def test_sweep_matches_brute_force(profile):
    # the incremental sweep must equal scoring the detections of every candidate threshold
    rng = np.random.default_rng(7)
    scores = {s.name: np.round(rng.random(len(s)), 2) for s in CORPUS}  # many ties
    thresholds, raws = nab_scorer.sweep_corpus(scores, CORPUS, profile)
    for t, raw in zip(thresholds, raws, strict=True):
        brute = nab_scorer.score_corpus_at_threshold(scores, CORPUS, profile, t)
        assert raw == pytest.approx(brute.raw, abs=1e-9)
    best = nab_scorer.score_corpus(scores, CORPUS, [profile])[profile]
    assert best.raw == pytest.approx(max(raws))
    at_best = nab_scorer.score_corpus_at_threshold(scores, CORPUS, profile, best.threshold)
    assert (best.tp, best.fp, best.fn, best.tn) == (at_best.tp, at_best.fp, at_best.fn, at_best.tn)


def test_missing_or_bad_scores_rejected():
    good = {s.name: np.zeros(len(s)) for s in CORPUS}
    with pytest.raises(KeyError):
        nab_scorer.score_corpus({k: v for k, v in good.items() if k != "b.csv"}, CORPUS)
    bad = dict(good, **{"a.csv": np.zeros(99)})
    with pytest.raises(ValueError):
        nab_scorer.score_corpus(bad, CORPUS)


# ------------------------------------------------------------------------------------------
# windowed Gaussian detector
# ------------------------------------------------------------------------------------------


def reference_windowed_gaussian(values, window_size, step_size):
    """Plain online loop of the upstream algorithm, row by row."""
    window, buffer, mean, std, out = [], [], 0.0, 1.0, []
    for x in values:
        if window:
            xp = 2 * mean - x if x < mean else x
            out.append(1 - 0.5 * math.erfc((xp - mean) / std / math.sqrt(2)))
        else:
            out.append(0.0)
        if len(window) < window_size:
            window.append(x)
            mean, std = np.mean(window), np.std(window) or 1e-6
        else:
            buffer.append(x)
            if len(buffer) == step_size:
                window = window[step_size:] + buffer
                buffer = []
                mean, std = np.mean(window), np.std(window) or 1e-6
    return np.array(out)


@pytest.mark.parametrize("window_size,step_size", [(5, 2), (8, 3), (50, 10), (1000, 100)])
def test_windowed_gaussian_matches_online_loop(window_size, step_size):
    rng = np.random.default_rng(3)
    values = np.r_[np.full(4, 2.0), rng.normal(size=200), 30.0, rng.normal(size=50)]
    got = nab_baselines.windowed_gaussian(values, window_size, step_size)
    np.testing.assert_array_equal(
        got, reference_windowed_gaussian(list(values), window_size, step_size)
    )
    assert got[0] == 0.0 and got[1] == 0.5  # no window yet; value equal to the mean


def _nab_data_available():
    root = nab_corpus._nab_root(None)
    return (root / "labels" / "combined_windows.json").is_file()


@pytest.fixture
def nab_data() -> None:
    if not _nab_data_available():
        unavailable(f"NAB data not found in {nab_corpus._nab_root(None)}")


needs_nab = pytest.mark.usefixtures("nab_data")


@needs_nab
def test_windowed_gaussian_on_real_short_series():
    (series,) = nab_corpus.load_corpus(names=["realTraffic/speed_7578.csv"])  # 1127 rows
    assert len(series) == 1127 and series.probation == 169  # floor(169.05)
    assert all(series.probation <= s <= e < len(series) for s, e in series.windows)
    scores = nab_baselines.windowed_gaussian(series.values)
    assert scores.shape == (len(series),)
    assert np.all(np.isfinite(scores))
    assert np.all((scores >= 0.0) & (scores <= 1.0))
    res = nab_scorer.score_detections(scores >= 0.999, series.windows)
    assert math.isfinite(res.raw)


@needs_nab
def test_corpus_loads():
    corpus = nab_corpus.load_corpus()
    assert len(corpus) == 58
    assert sum(len(s.windows) for s in corpus) == 116
    assert sum(len(s) for s in corpus) == 365558
    for s in corpus:  # every window is scorable (upstream drops those touching probation)
        assert all(s.probation <= a <= b < len(s) for a, b in s.windows)

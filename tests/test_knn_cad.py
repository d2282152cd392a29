"""The KNN-CAD peer of the NAB suite (pipelines/bench/knn_cad.py) on series worked by hand."""

import numpy as np

from pipelines.bench import knn_cad


def periodic(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.sin(np.arange(n) * 2 * np.pi / 50) + 0.05 * rng.normal(size=n)


def test_a_spike_alarms_once_within_its_vectors_then_the_series_is_quiet():
    values = periodic(3000)
    values[2000] += 5.0
    probation = 450
    scores = knn_cad.knn_cad(values, probation)
    assert (scores[: probation - 1] == 0).all()
    alarms = np.flatnonzero(scores >= knn_cad.ALARM_LEVEL)
    assert 2000 in alarms  # the first vector holding the spike
    assert not np.any((alarms > 2000) & (alarms < 2000 + knn_cad.VECTOR_LENGTH))
    assert (scores[2001 : 2001 + probation // 5] == 0.5).all()  # the quiet rows


def test_a_series_no_longer_than_its_probation_scores_nothing():
    assert not knn_cad.knn_cad(periodic(300), 300).any()

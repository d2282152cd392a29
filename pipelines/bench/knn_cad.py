"""KNN-CAD, NAB's k-nearest-neighbour conformal detector, as a peer on the NAB suite.

Burnaev, E. & Ishimtsev, V. (2016). *Conformalized density- and distance-based anomaly
detection in time-series data*. arXiv:1608.04585. Its NAB entry
(``nab/detectors/knncad/knncad_detector.py``, MIT licence, Numenta) scores 58.0 standard,
43.4 reward-low-FP and 64.8 reward-low-FN on NAB's scoreboard. This is an independent
reimplementation of the rules read from that file, with the same settings; the conformal
ranking and the quiet period after an alarm are the library's own
:class:`anomaly.conformal.ConformalAlarm`, the stage the GAN's NAB row uses too.

Per series of ``n`` rows with probationary period ``P``:

* each row ``t >= L - 1`` is the vector of the last ``L = 19`` values;
* the memory is the ``P - L`` vectors ``L - 1 + s .. P - 2 + s`` where ``s = max(0, t - 2P +
  1)``: the probationary vectors at first, then a band that slides one row per row once the
  series is ``2P`` rows long;
* the non-conformity of row ``t`` is the sum of its ``k = 27`` smallest squared distances to
  the memory under the metric ``(X^T X)^-1`` of the memory ``X``, re-estimated at rows ``t``
  where ``(t + 1) mod P`` is 0 or ``floor(P / 2)`` (the identity before, the old metric while
  ``X^T X`` is singular);
* the reference the first scored row is ranked against holds each memory vector's own
  non-conformity (leaving itself out); alarms fire at ``p >= 0.9965`` and are followed by
  ``floor(P / 5)`` quiet rows, which report 0.5.
"""

from __future__ import annotations

import numpy as np

from anomaly.conformal import ConformalAlarm
from anomaly.windows import sliding_windows
from pipelines.bench import nab_scorer

VECTOR_LENGTH = 19
NEIGHBOURS = 27
ALARM_LEVEL = 0.9965


def knn_cad(values: np.ndarray, probation: int) -> np.ndarray:
    """KNN-CAD's anomaly score of every row of one series (0 on the probationary rows)."""
    length, k, p = VECTOR_LENGTH, NEIGHBOURS, probation
    n = len(values)
    out = np.zeros(n)
    memory_size = p - length
    if memory_size <= k + 1 or n <= p:
        return out
    vectors = np.zeros((n, length))
    vectors[length - 1 :] = sliding_windows(np.asarray(values, np.float64)[:, None], length)[..., 0]
    metric = np.eye(length)

    def memory(t: int) -> np.ndarray:
        shift = max(0, t - 2 * p + 1)
        return vectors[length - 1 + shift : p - 1 + shift]

    def squared_distances(rows: np.ndarray, reference: np.ndarray) -> np.ndarray:
        diff = rows[:, None, :] - reference[None, :, :]
        return np.einsum("rmi,ij,rmj->rm", diff, metric, diff)

    non_conformity = np.zeros(n)
    reference = None
    for t in range(p - 1, n):
        if (t + 1) % p in (0, p // 2):
            gram = memory(t).T @ memory(t)
            try:
                metric = np.linalg.inv(gram)
            except np.linalg.LinAlgError:
                pass  # keep the last metric, as upstream does
        if reference is None:  # each memory vector against the others (and itself, at 0)
            within = squared_distances(memory(t), memory(t))
            reference = np.partition(within, k, axis=1)[:, : k + 1].sum(axis=1)
        distances = squared_distances(vectors[t : t + 1], memory(t))[0]
        non_conformity[t] = np.partition(distances, k - 1)[:k].sum()
    # KNN-CAD ranks against a history as long as its reference: it does not grow
    alarm = ConformalAlarm(
        reference, history=len(reference), alarm_level=ALARM_LEVEL, quiet_rows=p // 5
    )
    result = alarm.update(non_conformity[p - 1 :])
    out[p - 1 :] = nab_scorer.alarm_scores(result)
    return out


__all__ = ["knn_cad"]

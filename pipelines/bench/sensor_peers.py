"""Classical peers for the sensor suite, fitted on a run's training part only.

``PCAMonitor``: multivariate statistical process control as it is usually run (Jackson 1991;
MacGregor & Kourti 1995). The training rows are standardised with their own mean and std;
PCA keeps the fewest components that explain ``variance`` (90 %) of their variance (at
least 1, at most d - 1 so a residual space remains). A row is flagged when Hotelling's T²
in the kept components, or the Q statistic (squared prediction error, the residual outside
them), exceeds its control limit at ``confidence`` (99 %):

* T² limit, for a new observation with mean and covariance estimated from n rows
  (Tracy, Young & Mason 1992): ``k (n - 1)(n + 1) / (n (n - k)) F(confidence; k, n - k)``.
* Q limit by Jackson & Mudholkar (1979), from the residual eigenvalues ``lambda_j``:
  ``theta_i = sum lambda_j^i``, ``h0 = 1 - 2 theta1 theta3 / (3 theta2^2)``,
  ``Q = theta1 (c sqrt(2 theta2 h0^2) / theta1 + 1 + theta2 h0 (h0 - 1) / theta1^2)^(1/h0)``
  with ``c`` the standard normal quantile at ``confidence``.

The limits are fixed once fitted. ``score`` gives the continuous ``max(T²/limit, Q/limit)``
(above 1 exactly where the row is flagged) and ``components`` the two ratios as columns, so an
adaptive alarm stage can be put on the peer the same way as on the product.

``IsolationForestPeer``: scikit-learn's IsolationForest on the training rows, flagging with its
own ``contamination="auto"`` decision (``predict == -1``, an offset of -0.5 on
``score_samples``); its continuous score is ``-score_samples``.

Both are causal: a row's flag and score depend on the training part and on that row only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PCAMonitor:
    """PCA with T² and Q control limits; ``fit`` on normal rows, then ``flags``/``score``."""

    mean: np.ndarray
    std: np.ndarray
    loadings: np.ndarray
    """(d, k): the kept principal directions, in standardised units."""
    eigenvalues: np.ndarray
    """(k,): the variance along each kept direction."""
    t2_limit: float
    q_limit: float

    @classmethod
    def fit(cls, rows: np.ndarray, variance: float = 0.90, confidence: float = 0.99):
        from scipy import stats

        rows = np.asarray(rows, np.float64)
        n, d = rows.shape
        if n <= d + 1:
            raise ValueError(f"PCA needs more than {d + 1} training rows, got {n}")
        mean = rows.mean(axis=0)
        std = rows.std(axis=0, ddof=1)
        std = np.where(std > 0, std, 1.0)
        z = (rows - mean) / std
        eigenvalues, vectors = np.linalg.eigh(np.cov(z, rowvar=False))
        order = np.argsort(eigenvalues)[::-1]
        eigenvalues = np.clip(eigenvalues[order], 0.0, None)
        vectors = vectors[:, order]
        explained = np.cumsum(eigenvalues) / eigenvalues.sum()
        k = int(np.searchsorted(explained, variance) + 1)
        k = min(max(k, 1), d - 1)

        f = stats.f.ppf(confidence, k, n - k)
        t2_limit = k * (n - 1) * (n + 1) / (n * (n - k)) * f

        residual = eigenvalues[k:]
        theta1, theta2, theta3 = (float(np.sum(residual**i)) for i in (1, 2, 3))
        h0 = 1.0 - 2.0 * theta1 * theta3 / (3.0 * theta2**2)
        c = stats.norm.ppf(confidence)
        q_limit = theta1 * (
            c * np.sqrt(2.0 * theta2 * h0**2) / theta1 + 1.0 + theta2 * h0 * (h0 - 1.0) / theta1**2
        ) ** (1.0 / h0)
        return cls(mean, std, vectors[:, :k], eigenvalues[:k], float(t2_limit), float(q_limit))

    @property
    def n_components(self) -> int:
        return self.loadings.shape[1]

    def statistics(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Hotelling's T² and Q of each row."""
        z = (np.asarray(rows, np.float64) - self.mean) / self.std
        t = z @ self.loadings
        t2 = np.sum(t**2 / self.eigenvalues, axis=1)
        residual = z - t @ self.loadings.T
        q = np.sum(residual**2, axis=1)
        return t2, q

    def components(self, rows: np.ndarray) -> np.ndarray:
        """(n, 2): T²/limit and Q/limit."""
        t2, q = self.statistics(rows)
        return np.column_stack([t2 / self.t2_limit, q / self.q_limit])

    def score(self, rows: np.ndarray) -> np.ndarray:
        """max(T²/limit, Q/limit): above 1 where a row is flagged."""
        return self.components(rows).max(axis=1)

    def flags(self, rows: np.ndarray) -> np.ndarray:
        return self.score(rows) > 1.0


@dataclass(frozen=True)
class IsolationForestPeer:
    """IsolationForest fitted on normal rows, with its own ``contamination="auto"`` decision."""

    model: object

    @classmethod
    def fit(cls, rows: np.ndarray, seed: int = 0):
        from sklearn.ensemble import IsolationForest

        return cls(IsolationForest(random_state=seed).fit(np.asarray(rows, np.float64)))

    def score(self, rows: np.ndarray) -> np.ndarray:
        return -self.model.score_samples(np.asarray(rows, np.float64))

    def flags(self, rows: np.ndarray) -> np.ndarray:
        return self.model.predict(np.asarray(rows, np.float64)) == -1

"""Prototypes of the normal data's latent codes: the reference of the ``latent`` component.

The ``latent`` component is the mean distance from a record's code E(x) to its nearest few
prototypes, a k-nearest-neighbour density in the encoder's space. Prototypes are k-means
centroids of the training codes rather than a random sample of them: a few hundred
centroids cover every training code, so the scoring engine's (batch x prototypes) distance
matrix stays small enough to keep most of the bare networks' throughput
(``pipelines/bench_scoring.py``), at no loss of detection quality in the benchmark
(``docs/benchmarks.md``).

Plain NumPy (k-means++ seeding, then Lloyd's iterations), seeded, so training stays
reproducible and the product needs no clustering library.
"""

from __future__ import annotations

import numpy as np

#: Codes clustered at most; a random sample of them beyond that bounds training time.
MAX_CODES = 65_536
#: Lloyd's iterations at most; they stop earlier once no code changes prototype.
MAX_ITERATIONS = 30
#: Rows of the distance matrix computed at once, to bound memory.
_CHUNK = 8192


def kmeans_prototypes(codes: np.ndarray, count: int, seed: int) -> np.ndarray:
    """``count`` k-means centroids of ``codes`` (n, d); all codes when there are no more."""
    codes = np.asarray(codes, np.float64)
    if len(codes) <= count:
        return codes.astype(np.float32)
    rng = np.random.default_rng(seed)
    if len(codes) > MAX_CODES:
        codes = codes[rng.choice(len(codes), MAX_CODES, replace=False)]
    centres = _plus_plus_seeds(codes, count, rng)
    assigned = None
    for _ in range(MAX_ITERATIONS):
        nearest = _nearest(codes, centres)
        if assigned is not None and np.array_equal(nearest, assigned):
            break
        assigned = nearest
        members = np.bincount(nearest, minlength=count)
        filled = members > 0  # an emptied centre keeps its place: it is still a data point
        sums = np.stack(
            [
                np.bincount(nearest, weights=codes[:, j], minlength=count)
                for j in range(codes.shape[1])
            ],
            axis=1,
        )
        centres[filled] = sums[filled] / members[filled, None]
    return centres.astype(np.float32)


def _plus_plus_seeds(codes: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++: each new seed is drawn with probability proportional to its squared
    distance from the seeds so far, which spreads them over the data."""
    chosen = [int(rng.integers(len(codes)))]
    closest = np.sum(np.square(codes - codes[chosen[0]]), axis=1)
    for _ in range(count - 1):
        total = closest.sum()
        if total <= 0.0:  # fewer distinct codes than prototypes: repeat one
            index = int(rng.integers(len(codes)))
        else:
            index = int(rng.choice(len(codes), p=closest / total))
        chosen.append(index)
        closest = np.minimum(closest, np.sum(np.square(codes - codes[index]), axis=1))
    return codes[chosen].copy()


def _nearest(codes: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Index of each code's nearest centre."""
    squared_norms = np.sum(np.square(centres), axis=1)
    return np.concatenate(
        [
            np.argmin(squared_norms[None, :] - 2.0 * codes[i : i + _CHUNK] @ centres.T, axis=1)
            for i in range(0, len(codes), _CHUNK)
        ]
    )

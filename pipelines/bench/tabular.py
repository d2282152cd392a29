"""The tabular suite: ODDS/ADBench sets under the semi-supervised protocol of
``shared/datasets/README.md`` (half the normal rows to train; the rest and every anomaly to
test; seeds 0-4). Data: ODDS / ADBench copies, BSD-2-Clause (see the datasets' PROVENANCE.md);
cite ODDS (Rayana, 2016) and ADBench (Han et al., 2022).

Labels are used only to pick the training rows and to score the result; nothing is tuned on
test labels.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.metrics import average_precision_score, f1_score, roc_auc_score

DATASETS = (
    "arrhythmia",
    "breastw",
    "cardio",
    "http",
    "ionosphere",
    "pima",
    "shuttle",
    "smtp",
    "thyroid",
)


def datasets_dir() -> Path:
    """``$ANOMALY_DATASETS``, or ``shared/datasets`` beside the project checkout."""
    configured = os.environ.get("ANOMALY_DATASETS")
    if configured:
        return Path(configured)
    return Path(__file__).resolve().parents[3] / "shared" / "datasets"


def load_dataset(name: str) -> tuple[np.ndarray, np.ndarray]:
    with np.load(datasets_dir() / "tabular" / f"{name}.npz", allow_pickle=False) as data:
        return data["X"], data["y"]


@dataclass(frozen=True)
class Split:
    train: np.ndarray
    test: np.ndarray
    y_test: np.ndarray


def protocol_split(y: np.ndarray, seed: int) -> Split:
    """Row indices of TRAIN and TEST exactly as the protocol defines them."""
    rng = np.random.default_rng(seed)
    normal = np.flatnonzero(y == 0)
    perm = rng.permutation(normal)
    n_train = len(normal) // 2
    test = np.concatenate([perm[n_train:], np.flatnonzero(y == 1)])
    return Split(perm[:n_train], test, y[test])


def metrics(y_test: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """AUROC, AUPRC and F1 at top-k (k = number of anomalies), per the protocol."""
    if not np.isfinite(scores).all():
        raise ValueError("scores must be finite")
    k = int(y_test.sum())
    flags = np.zeros(len(scores), dtype=int)
    flags[np.argsort(-scores, kind="stable")[:k]] = 1
    return {
        "auroc": float(roc_auc_score(y_test, scores)),
        "auprc": float(average_precision_score(y_test, scores)),
        "f1": float(f1_score(y_test, flags)),
    }


#: A method fits on TRAIN rows and returns named score arrays for TEST rows (one training
#: can give several variants, e.g. each score component of the GAN) and facts about the fit:
#: ``train`` and ``score`` seconds, and for the GAN its training ``health`` (mode collapse,
#: diversity ratio, warnings), copied into every row of the fit.
Method = Callable[[np.ndarray, np.ndarray, int], tuple[dict[str, np.ndarray], dict]]

"""Choosing the score's component weights without test labels.

The anomaly score is a weighted sum of the four standardised components, so any weighting
can be evaluated on the components the tabular run keeps for each fit
(``OUT/components/<set>__gan__seed<s>.npz``, written by ``pipelines.bench.methods.gan``):
TEST, the held-out normal rows the detector calibrated on, and synthetic anomalies made
from those held-out rows (``methods.synthetic_anomalies``: features shuffled on their own,
a quarter of the features moved by a standard deviation, uniform in the training range).

The choice uses the held-out rows and the synthetic anomalies only: for every weighting of
a fixed grid, the mean over sets, seeds and kinds of (AUROC + AUPRC) / 2 with each kind's
synthetic rows against the held-out normal rows, as many of one as of the other. TEST's
labels are read afterwards, once, to report what the chosen weighting does (and the
current default beside it), with the calibration's realised false-positive rates at 1 %
and 0.1 % recomputed for each weighting from the held-out rows, as ``anomaly.calibration``
does. One weighting is chosen for all sets.

    python -m pipelines.bench.weights_study --out runs/tabular
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score

from anomaly.config import COMPONENTS, ScoringConfig
from anomaly.tail import Tail
from pipelines.bench.methods import CALIBRATION_TARGETS

#: Values each component's weight takes in the grid (all zero excluded).
GRID = (0.0, 0.25, 0.5, 1.0, 2.0)


def _weightings() -> list[tuple[float, ...]]:
    """Every grid point, up to scale (a weighting and its multiples rank alike)."""
    seen, out = set(), []
    for weights in itertools.product(GRID, repeat=len(COMPONENTS)):
        if not any(weights):
            continue
        key = tuple(np.round(np.array(weights) / max(weights), 6))
        if key not in seen:
            seen.add(key)
            out.append(weights)
    return out


def _quality(labels: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    return float(roc_auc_score(labels, scores)), float(average_precision_score(labels, scores))


def load_fits(out: Path) -> list[dict]:
    fits = []
    for file in sorted((out / "components").glob("*__gan__seed*.npz")):
        dataset, _, seed = file.stem.split("__")
        with np.load(file) as arrays:
            fits.append({"dataset": dataset, "seed": int(seed[4:]), **dict(arrays)})
    return fits


def synthetic_quality(fits: list[dict], weightings: list[tuple[float, ...]]) -> np.ndarray:
    """Per weighting: mean (AUROC + AUPRC) / 2 of synthetic anomalies against held-out rows."""
    totals = np.zeros(len(weightings))
    count = 0
    for fit in fits:
        held, synthetic, kinds = fit["held_out"], fit["synthetic"], fit["synthetic_kind"]
        for kind in np.unique(kinds):
            rows = synthetic[kinds == kind][: len(held)]
            labels = np.r_[np.zeros(len(held)), np.ones(len(rows))]
            both = np.concatenate([held, rows])
            for i, weights in enumerate(weightings):
                totals[i] += np.mean(_quality(labels, both @ np.asarray(weights)))
            count += 1
    return totals / count


def test_report(fits: list[dict], weights: tuple[float, ...]) -> dict:
    """TEST AUROC/AUPRC per set (mean over seeds) and the realised false-positive rates."""
    per_set: dict[str, list] = {}
    for fit in fits:
        scores = fit["test"] @ np.asarray(weights)
        labels = fit["y_test"]
        tail = Tail.fit(fit["held_out"] @ np.asarray(weights))
        normal = scores[labels == 0]
        realised = {str(t): float(np.mean(normal > tail.threshold(t))) for t in CALIBRATION_TARGETS}
        per_set.setdefault(fit["dataset"], []).append((*_quality(labels, scores), realised))
    table = {}
    for dataset, rows in per_set.items():
        table[dataset] = {
            "auroc": float(np.mean([r[0] for r in rows])),
            "auprc": float(np.mean([r[1] for r in rows])),
            "realised_fpr": {
                t: float(np.mean([r[2][t] for r in rows])) for t in map(str, CALIBRATION_TARGETS)
            },
            "seeds": len(rows),
        }
    return {
        "weights": dict(zip(COMPONENTS, weights, strict=True)),
        "mean_auroc": float(np.mean([v["auroc"] for v in table.values()])),
        "mean_auprc": float(np.mean([v["auprc"] for v in table.values()])),
        "per_set": table,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="the tabular run's --out")
    args = parser.parse_args(argv)
    fits = load_fits(args.out)
    if not fits:
        parser.error(f"no components under {args.out / 'components'}")
    weightings = _weightings()
    quality = synthetic_quality(fits, weightings)
    order = np.argsort(-quality)
    chosen = weightings[int(order[0])]
    default = tuple(ScoringConfig().weights[name] for name in COMPONENTS)
    result = {
        "fits": len(fits),
        "sets": sorted({f["dataset"] for f in fits}),
        "chosen_by_synthetic": {
            "weights": dict(zip(COMPONENTS, chosen, strict=True)),
            "synthetic_quality": float(quality[order[0]]),
        },
        "runners_up": [
            {"weights": dict(zip(COMPONENTS, weightings[i], strict=True)), "quality": quality[i]}
            for i in order[1:6]
        ],
        "default_synthetic_quality": float(quality[weightings.index(default)])
        if default in weightings
        else None,
        "test_chosen": test_report(fits, chosen),
        "test_default": test_report(fits, default),
    }
    (args.out / "weights_study.json").write_text(json.dumps(result, indent=1, default=float))
    print(json.dumps({k: v for k, v in result.items() if not k.startswith("test_")}, default=float))
    for name in ("test_chosen", "test_default"):
        r = result[name]
        print(name, r["weights"], f"AUROC {r['mean_auroc']:.3f} AUPRC {r['mean_auprc']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

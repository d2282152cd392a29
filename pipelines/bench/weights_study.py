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
from anomaly.scoring import robust_location_scale
from anomaly.tail import Tail
from pipelines.bench.methods import CALIBRATION_TARGETS

#: Values each component's weight takes in the grid (all zero excluded).
GRID = (0.0, 0.25, 0.5, 1.0, 2.0)
#: The coarser grid of the ceiling (``ceiling``): TEST's metrics for every weighting of the
#: finer grid take about half an hour on http and smtp on 2 cores.
CEILING_GRID = (0.0, 0.5, 2.0)


def _weightings(grid: tuple[float, ...] = GRID) -> list[tuple[float, ...]]:
    """Every grid point, up to scale (a weighting and its multiples rank alike)."""
    seen, out = set(), []
    for weights in itertools.product(grid, repeat=len(COMPONENTS)):
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


def with_exact_latent(fits: list[dict], neighbours: int) -> list[dict]:
    """The fits with the ``latent`` component measured to the ``neighbours`` nearest codes
    of the rows the networks were fitted on, all of them, instead of to the k-means
    prototypes the product keeps (standardised on the held-out rows, as the product does)."""
    from sklearn.neighbors import NearestNeighbors

    latent = COMPONENTS.index("latent")
    changed = []
    for fit in fits:
        index = NearestNeighbors(n_neighbors=min(neighbours, len(fit["latent_fitted"])))
        index.fit(fit["latent_fitted"])
        raw = {
            part: index.kneighbors(fit[f"latent_{part}"])[0].mean(axis=1)
            for part in ("test", "held_out", "synthetic")
        }
        location, scale = robust_location_scale(raw["held_out"])
        fit = dict(fit)
        for part, distance in raw.items():
            fit[part] = fit[part].astype(np.float64)
            fit[part][:, latent] = (distance - location) / scale
        changed.append(fit)
    return changed


def ceiling(fits: list[dict]) -> dict:
    """The best TEST mean AUROC, and the best mean AUPRC, that any weighting of the coarse
    grid reaches: TEST's labels are read for every weighting, so this chooses nothing; it
    bounds what choosing the weights could do with these components."""
    weightings = _weightings(CEILING_GRID)
    means = [_test_means(fits, np.asarray(w)) for w in weightings]
    best_auroc = int(np.argmax([m[0] for m in means]))
    best_auprc = int(np.argmax([m[1] for m in means]))
    return {
        "weightings": len(weightings),
        "best_auroc": {"weights": weightings[best_auroc], "auroc_auprc": means[best_auroc]},
        "best_auprc": {"weights": weightings[best_auprc], "auroc_auprc": means[best_auprc]},
    }


def _test_means(fits: list[dict], weights: np.ndarray) -> tuple[float, float]:
    per_set: dict[str, list] = {}
    for fit in fits:
        per_set.setdefault(fit["dataset"], []).append(
            _quality(fit["y_test"], fit["test"] @ weights)
        )
    sets = [np.mean(rows, axis=0) for rows in per_set.values()]
    return float(np.mean([s[0] for s in sets])), float(np.mean([s[1] for s in sets]))


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
    parser.add_argument(
        "--exact-latent",
        type=int,
        metavar="K",
        help="measure the latent component to the K nearest fitted codes, not to prototypes",
    )
    parser.add_argument(
        "--ceiling",
        action="store_true",
        help="also report the best TEST means any weighting of a coarse grid reaches",
    )
    args = parser.parse_args(argv)
    fits = load_fits(args.out)
    if not fits:
        parser.error(f"no components under {args.out / 'components'}")
    if args.exact_latent is not None:
        if args.exact_latent < 1:
            parser.error(f"--exact-latent must be at least 1, not {args.exact_latent}")
        fits = with_exact_latent(fits, args.exact_latent)
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
        "exact_latent_neighbours": args.exact_latent,
        "ceiling": ceiling(fits) if args.ceiling else None,
    }
    name = f"weights_study{'_exact' + str(args.exact_latent) if args.exact_latent else ''}.json"
    (args.out / name).write_text(json.dumps(result, indent=1, default=float))
    print(
        json.dumps(
            {k: v for k, v in result.items() if k != "ceiling" and not k.startswith("test_")},
            default=float,
        )
    )
    if result["ceiling"]:
        print("ceiling", json.dumps(result["ceiling"]))
    for name in ("test_chosen", "test_default"):
        r = result[name]
        print(name, r["weights"], f"AUROC {r['mean_auroc']:.3f} AUPRC {r['mean_auprc']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

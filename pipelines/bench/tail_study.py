"""The threshold between the order statistic and the tail fit (``anomaly.tail``): where
fewer than ``MIN_ORDER_POINTS`` calibration scores are expected above it, the tail fit
is used unless the calibration scores reject it (``Tail.misfit``). Measured on synthetic
scores and on a benchmark run's real ones.

For each distribution, calibration size ``n`` and rate ``alpha`` with ``m = (n + 1) alpha``
scores expected above the threshold between 1 and 10 (where the estimates compete), it
draws many calibration samples, takes the threshold of each estimate, and reads its exact
false-positive rate off the distribution. It prints the mean rate over samples (what the
benchmark's goal measures, over seeds) and the share of single samples within half and
twice the target (what one user's model gets). No real data and no labels are read.

The small calibration sets of the benchmark (17 to 38 held-out rows, ``SMALL_SETS``) are
studied too: there even 1 % lies past the largest score (``m < 1``) and only the fit
speaks. Beside the product, an ablation: the fit's threshold with the uncertainty of its
shape and scale averaged in (``predictive``), the predictive return level of extreme-value
practice (Coles 2001, section 9.1.2). It aims at the mean rate over calibration samples
that the plug-in fit overshoots on heavy tails.

With ``--components DIR`` (the ``components/`` folder a tabular benchmark run keeps) it
also recomputes, for each fit, each estimate's threshold from the scores the detector
calibrated on (with cross-fitting, the fold models' too), and the rate it realises on TEST's
normal rows (the anomalies' labels are not used). With ``--resamples K`` as well, it splits
each fit's held-out and TEST normal scores at random ``K`` times into calibration sets of
other sizes and new normal scores: real tails at the calibration sizes cross-fitting or a
larger held-out share would give, without refitting.

    python -m pipelines.bench.tail_study [--samples 400] [--components runs/x/components]
        [--resamples 200]
"""

from __future__ import annotations

import argparse
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
from numpy.polynomial.hermite_e import hermegauss
from scipy import optimize, stats

from anomaly.config import COMPONENTS, Config
from anomaly.tail import MIN_ORDER_POINTS, SHAPE_BOUNDS, Tail, pareto_survival

#: Held-out rows of the benchmark's small sets (ionosphere, breastw, pima).
SMALL_SETS = (17, 33, 38)
#: Calibration scores of cross-fitted sets past the largest score at 0.1 %: the small sets
#: (ionosphere, arrhythmia, breastw, pima) and cardio trained at a 0.1 % target.
CROSS_FITTED = (112, 193, 222, 250, 828)


class _RareMode:
    """99.5 % standard normal, 0.5 % a narrow mode at 4: a sub-population of normal data
    that the model scores high, as in a data set with a rare normal class."""

    share, centre, width = 0.005, 4.0, 0.3

    def rvs(self, n, random_state):
        rare = random_state.random(n) < self.share
        values = random_state.standard_normal(n)
        values[rare] = self.centre + self.width * random_state.standard_normal(rare.sum())
        return values

    def sf(self, x):
        return (1 - self.share) * stats.norm.sf(x) + self.share * stats.norm.sf(
            x, self.centre, self.width
        )


class _AbsoluteT:
    """|t| with 3 degrees of freedom: a heavy tail (Pareto shape 1/3)."""

    def rvs(self, n, random_state):
        return np.abs(stats.t.rvs(3, size=n, random_state=random_state))

    def sf(self, x):
        return 2 * stats.t.sf(x, 3)


class RareFarTail:
    """99.6 % |standard normal|, 0.4 % a Pareto tail (shape 1.5) from 5 on: normal records of
    a rare kind that the model scores very high, as the shuttle set's held-out scores run
    from 6 at their 98th percentile to 700 (a few dozen peaks, a shape far above any the
    fit may take)."""

    share, start, shape, scale = 0.004, 5.0, 1.5, 5.0

    def rvs(self, n, random_state):
        values = np.abs(random_state.standard_normal(n))
        rare = random_state.random(n) < self.share
        far = stats.genpareto.rvs(self.shape, scale=self.scale, size=n, random_state=random_state)
        values[rare] = self.start + far[rare]
        return values

    def sf(self, x):
        far = stats.genpareto.sf(np.maximum(x - self.start, 0.0), self.shape, scale=self.scale)
        return (1 - self.share) * 2 * stats.norm.sf(x) + self.share * far


#: Score distributions a model's normal scores take: light, skewed, heavy, one whose tail is
#: a rare second mode, and one whose tail is a rare far one; no single generalised Pareto
#: fits the last two.
DISTRIBUTIONS = {
    "chi2(4)": stats.chi2(4),
    "lognormal(0.6)": stats.lognorm(0.6),
    "|t(3)|": _AbsoluteT(),
    "rare mode 0.5 %": _RareMode(),
    "rare far tail 0.4 %": RareFarTail(),
}


def predictive_threshold(tail: Tail, alpha: float, nodes: int = 12) -> float:
    """The score whose exceedance probability, averaged over the fit's sampling
    distribution, is ``alpha`` (ablation). The maximum-likelihood (shape, scale) of ``k``
    peaks is about normal with covariance ``(1 + shape) [[1 + shape, -scale], [-scale,
    2 scale**2]] / k`` (Smith 1984); the average is a Gauss-Hermite sum over it, the shape
    kept within the product's bounds. The order statistic's floor applies as in
    ``Tail.threshold``."""
    resolved = (1 if tail.misfit else MIN_ORDER_POINTS) / (tail.n + 1)
    if alpha >= resolved:
        return tail.threshold(alpha)
    shape, scale = tail.shape, tail.scale
    covariance = (1 + shape) * np.array([[1 + shape, -scale], [-scale, 2 * scale**2]])
    points, weights = hermegauss(nodes)
    grid = np.stack(np.meshgrid(points, points, indexing="ij")).reshape(2, -1)
    shapes, scales = np.linalg.cholesky(covariance / tail.peaks) @ grid
    shapes = np.clip(shape + shapes, *SHAPE_BOUNDS)
    scales = np.maximum(scale + scales, scale * 1e-3)
    weights = np.outer(weights, weights).ravel() / weights.sum() ** 2

    def excess_rate(excess: float) -> float:
        survival = [pareto_survival(excess, a, b) for a, b in zip(shapes, scales, strict=True)]
        return tail.peaks / tail.n * float(weights @ np.asarray(survival)) - alpha

    high = max(tail._fitted(alpha) - tail.peaks_from, scale)
    while excess_rate(high) > 0:
        high *= 2
    excess = optimize.brentq(excess_rate, 0.0, high, xtol=1e-12 * high)
    floor = tail._order_statistic(resolved) if resolved < 1.0 else -math.inf
    return max(tail.peaks_from + excess, floor)


def estimates(tail: Tail, alpha: float) -> dict[str, float]:
    """The threshold at ``alpha`` of: the order statistic alone (where ``(n + 1) alpha >=
    1``), the fitted tail without the misfit check, the product (``Tail.threshold``), an
    ablation that also takes a fit whose shape reached the upper bound for a misfit (tried
    in the product and withdrawn: ``docs/benchmarks.md``) and the product before such a fit
    was held at the largest score past its rate (a shape just below the bound)."""
    found = {"order statistic": tail._order_statistic(alpha)} if (tail.n + 1) * alpha >= 1 else {}
    return found | {
        "tail fit, unchecked": replace(tail, misfit=False).threshold(alpha),
        "product": tail.threshold(alpha),
        "shape bound a misfit (ablation)": replace(
            tail, misfit=tail.misfit or tail.shape >= SHAPE_BOUNDS[1]
        ).threshold(alpha),
        "not held at the largest (ablation)": replace(
            tail, shape=min(tail.shape, math.nextafter(SHAPE_BOUNDS[1], 0.0))
        ).threshold(alpha),
    }


def study(samples: int) -> None:
    """Each estimate's realised rate over ``samples`` calibration samples per case."""
    rng = np.random.default_rng(0)
    cases = [(n, alpha) for alpha in (0.01, 0.001) for n in (124, 276, 500, 3419, 7134)]
    cases = [(n, a) for n, a in cases if 1 <= (n + 1) * a < MIN_ORDER_POINTS]
    cases += [(n, alpha) for alpha in (0.01, 0.001) for n in SMALL_SETS]
    cases += [(n, 0.001) for n in CROSS_FITTED]
    print("| distribution | n | target | m | estimate | mean rate | within [half, twice] |")
    print("| --- | ---: | ---: | ---: | --- | ---: | ---: |")
    for name, distribution in DISTRIBUTIONS.items():
        for n, alpha in cases:
            rates: dict[str, list[float]] = {}
            misfits = 0
            for _ in range(samples):
                tail = Tail.fit(distribution.rvs(n, random_state=rng), up_to_rate=alpha)
                misfits += tail.misfit
                found = estimates(tail, alpha)
                found["predictive (ablation)"] = predictive_threshold(tail, alpha)
                for estimate, threshold in found.items():
                    rates.setdefault(estimate, []).append(distribution.sf(threshold))
            for estimate, values in rates.items():
                values = np.asarray(values)
                within = np.mean((values >= alpha / 2) & (values <= 2 * alpha))
                rejected = f" (fit rejected in {misfits / samples:.0%})" * (estimate == "product")
                print(
                    f"| {name} | {n} | {alpha:.1%} | {(n + 1) * alpha:.1f} | {estimate}{rejected} "
                    f"| {values.mean():.3%} | {within:.0%} |"
                )


def _saved_fits(components: Path):
    """Each saved fit's set, its deployed model's held-out scores, its calibration scores
    (all of them where the run kept them, with cross-fitting the fold models' too; else the
    held-out ones) and its TEST normal rows' scores, under the default weights."""
    weights = np.array([Config().scoring.weights.get(name, 0.0) for name in COMPONENTS])
    for path in sorted(components.glob("*__gan__seed*.npz")):
        saved = np.load(path)
        held_out = calibration = saved["held_out"].astype(np.float64) @ weights
        if "calibration_largest" in saved and len(saved["calibration_largest"]) == int(
            saved["calibration_n"]
        ):
            calibration = saved["calibration_largest"].astype(np.float64)
        normal = saved["test"][saved["y_test"] == 0].astype(np.float64) @ weights
        yield path.name.split("__")[0], held_out, calibration, normal


def _print_rates(realised: dict[tuple, list[float]], misfits: dict[tuple, list[bool]]) -> None:
    print("\n| set | calibration scores | fit a misfit | target | estimate | mean rate (range) |")
    print("| --- | ---: | ---: | ---: | --- | ---: |")
    for (dataset, n, alpha, estimate), rates in sorted(realised.items()):
        flags = misfits[dataset, n]
        print(
            f"| {dataset} | {n} | {sum(flags) / len(flags):.0%} | {alpha:.1%} | {estimate} | "
            f"{np.mean(rates):.2%} ({min(rates):.2%}-{max(rates):.2%}) |"
        )


def _measure(realised, misfits, dataset, calibration, normal) -> None:
    tail = Tail.fit(calibration, up_to_rate=0.01)
    misfits.setdefault((dataset, len(calibration)), []).append(tail.misfit)
    for alpha in (0.01, 0.001):
        for estimate, threshold in estimates(tail, alpha).items():
            key = (dataset, len(calibration), alpha, estimate)
            realised.setdefault(key, []).append(float(np.mean(normal > threshold)))


def real_fits(components: Path) -> None:
    """The realised rate on TEST's normal rows of each estimate's threshold from the
    scores each fit calibrated on, per set and target (mean and range over seeds)."""
    realised: dict[tuple, list[float]] = {}
    misfits: dict[tuple, list[bool]] = {}
    for dataset, _, calibration, normal in _saved_fits(components):
        _measure(realised, misfits, dataset, calibration, normal)
    _print_rates(realised, misfits)


def resampled_fits(components: Path, samples: int) -> None:
    """The same on real scores at other calibration sizes: each fit's held-out and TEST
    normal scores (one model's, so exchangeable) pooled and split at random, ``samples``
    times, into calibration scores (as many as held out, 100 and 200, where 50 or more are
    left to measure on) and new normal scores. Mean and range over all splits of all seeds."""
    rng = np.random.default_rng(0)
    realised: dict[tuple, list[float]] = {}
    misfits: dict[tuple, list[bool]] = {}
    for dataset, held_out, _, normal in _saved_fits(components):
        pool = np.concatenate([held_out, normal])
        for size in sorted({len(held_out), 100, 200}):
            if len(pool) - size < 50:
                continue
            for _ in range(samples):
                order = rng.permutation(len(pool))
                calibration, new = pool[order[:size]], pool[order[size:]]
                _measure(realised, misfits, dataset, calibration, new)
    _print_rates(realised, misfits)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=400, help="0: skip the simulation")
    parser.add_argument("--components", type=Path, help="a tabular run's components/ folder")
    parser.add_argument(
        "--resamples", type=int, default=0, help="with --components: random splits per fit"
    )
    args = parser.parse_args()
    if args.samples:
        study(args.samples)
    if args.components:
        real_fits(args.components)
        if args.resamples:
            resampled_fits(args.components, args.resamples)


if __name__ == "__main__":
    main()

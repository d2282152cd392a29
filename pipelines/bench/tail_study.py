"""How many calibration scores must lie above a threshold before the order statistic is
trusted over the tail fit (``anomaly.tail.MIN_ORDER_POINTS``), measured on synthetic scores.

For each distribution, calibration size ``n`` and rate ``alpha`` with ``m = (n + 1) alpha``
scores expected above the threshold between 1 and 10 (where the two estimates compete), it
draws many calibration samples, takes the threshold of each estimate, and reads its exact
false-positive rate off the distribution. It prints the mean rate over samples (what the
benchmark's goal measures, over seeds) and the share of single samples within half and
twice the target (what one user's model gets). No real data and no labels are read.

With ``--components DIR`` (the ``components/`` folder a tabular benchmark run keeps) it
also recomputes, for each fit, the threshold each rule gives from the held-out normal
scores the detector calibrated on, and the rate it realises on TEST's normal rows (the
anomalies' labels are not used).

    python -m pipelines.bench.tail_study [--samples 400] [--components runs/x/components]
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
from scipy import stats

from anomaly.config import COMPONENTS, Config
from anomaly.tail import Tail, pareto_excess

#: Where the order statistic takes over from the tail fit, in expected calibration scores
#: above the threshold: the rules compared.
RULES = (1, 3, 10)


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


#: Score distributions a model's normal scores take: light, skewed, heavy, and one whose
#: tail is a rare second mode, which no single generalised Pareto fits.
DISTRIBUTIONS = {
    "chi2(4)": stats.chi2(4),
    "lognormal(0.6)": stats.lognorm(0.6),
    "|t(3)|": _AbsoluteT(),
    "rare mode 0.5 %": _RareMode(),
}


def tail_fit_threshold(tail: Tail, alpha: float) -> float:
    """The fitted tail's threshold alone (``Tail.threshold`` without the order statistic)."""
    return tail.peaks_from + pareto_excess(alpha * tail.n / tail.peaks, tail.shape, tail.scale)


def order_statistic(tail: Tail, alpha: float) -> float:
    """The conformal order statistic (needs ``(n + 1) alpha >= 1``)."""
    return tail._order_statistic(alpha)


def study(samples: int) -> None:
    rng = np.random.default_rng(0)
    cases = [(n, alpha) for alpha in (0.01, 0.001) for n in (124, 276, 500, 3419, 7134)]
    cases = [(n, a) for n, a in cases if 1 <= (n + 1) * a < 10]
    print("| distribution | n | target | m | estimate | mean rate | within [half, twice] |")
    print("| --- | ---: | ---: | ---: | --- | ---: | ---: |")
    for name, distribution in DISTRIBUTIONS.items():
        for n, alpha in cases:
            rates = {"order statistic": [], "tail fit": []}
            for _ in range(samples):
                tail = Tail.fit(distribution.rvs(n, random_state=rng), up_to_rate=alpha)
                rates["order statistic"].append(distribution.sf(order_statistic(tail, alpha)))
                rates["tail fit"].append(distribution.sf(tail_fit_threshold(tail, alpha)))
            for estimate, values in rates.items():
                values = np.asarray(values)
                within = np.mean((values >= alpha / 2) & (values <= 2 * alpha))
                print(
                    f"| {name} | {n} | {alpha:.1%} | {(n + 1) * alpha:.1f} | {estimate} "
                    f"| {values.mean():.3%} | {within:.0%} |"
                )


def threshold_by_rule(tail: Tail, alpha: float, min_order_points: float) -> float:
    """``Tail.threshold`` with the order statistic taking over at ``min_order_points``."""
    resolved = min_order_points / (tail.n + 1)
    if alpha >= resolved:
        return order_statistic(tail, alpha)
    floor = order_statistic(tail, resolved) if resolved < 1.0 else -math.inf
    return max(tail_fit_threshold(tail, alpha), floor)


def real_fits(components: Path) -> None:
    """Each rule's realised rate on TEST's normal rows, per set and target, mean over seeds."""
    weights = np.array([Config().scoring.weights.get(name, 0.0) for name in COMPONENTS])
    realised: dict[tuple, list[float]] = {}
    for path in sorted(components.glob("*__gan__seed*.npz")):
        dataset = path.name.split("__")[0]
        saved = np.load(path)
        held_out = saved["held_out"].astype(np.float64) @ weights
        normal = saved["test"][saved["y_test"] == 0].astype(np.float64) @ weights
        tail = Tail.fit(held_out, up_to_rate=0.01)
        for alpha in (0.01, 0.001):
            for rule in RULES:
                rate = float(np.mean(normal > threshold_by_rule(tail, alpha, rule)))
                realised.setdefault((dataset, len(held_out), alpha, rule), []).append(rate)
    print("\n| set | held-out rows | target | order statistic from m = | seeds | mean rate |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for (dataset, n, alpha, rule), rates in sorted(realised.items()):
        print(f"| {dataset} | {n} | {alpha:.1%} | {rule} | {len(rates)} | {np.mean(rates):.3%} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=400, help="0: skip the simulation")
    parser.add_argument("--components", type=Path, help="a tabular run's components/ folder")
    args = parser.parse_args()
    if args.samples:
        study(args.samples)
    if args.components:
        real_fits(args.components)


if __name__ == "__main__":
    main()

"""Validate the NAB scorer: run NAB's windowed-Gaussian baseline and compare with upstream.

    python -m pipelines.bench.nab_validate [--root DIR] [--jobs N] [--json PATH]

Runs :func:`pipelines.bench.nab_baselines.windowed_gaussian` online over all 58 NAB series,
scores it with :func:`pipelines.bench.nab_scorer.score_corpus` (threshold optimised over the
corpus per profile) and prints the three profile scores next to NAB's published
``windowedGaussian`` numbers (``results/final_results.json`` of https://github.com/numenta/NAB,
MIT licence, Numenta Inc.).

Two rows are printed per profile:

* ``float64`` -- the detector's scores at full double precision;
* ``12 digits`` -- the same scores rounded to 12 significant digits, which is how upstream's
  result files (``results/windowedGaussian/*/*.csv``, written by Python 2's ``str(float)``)
  store them and hence what the published numbers were computed from. The rounding turns
  every score within ~5e-13 of 1 into exactly 1.0, so more rows pass upstream's optimised
  threshold of 1.0; this row should reproduce the published numbers to ~1e-9.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

from pipelines.bench import nab_baselines, nab_corpus, nab_scorer

#: NAB's published windowedGaussian scores (upstream results/final_results.json).
PUBLISHED_WINDOWED_GAUSSIAN = {
    "standard": 39.649523496077585,
    "reward_low_FP_rate": 20.86798582474138,
    "reward_low_FN_rate": 47.4100271583046,
}


def round_significant(scores: np.ndarray, digits: int = 12) -> np.ndarray:
    """Round to ``digits`` significant digits, as ``'%.{digits}g' % x`` then ``float``."""
    fmt = f"%.{digits}g"
    return np.array([float(fmt % v) for v in np.asarray(scores, dtype=np.float64)])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--root",
        default=None,
        help="NAB folder with data/ and labels/ (default $NAB_ROOT or "
        f"{nab_corpus.DEFAULT_NAB_ROOT})",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=min(4, os.cpu_count() or 1),
        help="processes for the detector (default: min(4, CPUs))",
    )
    parser.add_argument("--json", default=None, help="also write the results to this file")
    args = parser.parse_args(argv)

    t0 = time.perf_counter()
    corpus = nab_corpus.load_corpus(args.root)
    t1 = time.perf_counter()
    scores = nab_baselines.run_windowed_gaussian(corpus, jobs=args.jobs)
    t2 = time.perf_counter()
    results = nab_scorer.score_corpus(scores, corpus)
    t3 = time.perf_counter()
    rounded = {name: round_significant(s) for name, s in scores.items()}
    t4 = time.perf_counter()
    results_12 = nab_scorer.score_corpus(rounded, corpus)
    t5 = time.perf_counter()

    n_rows = sum(len(s) for s in corpus)
    n_windows = sum(len(s.windows) for s in corpus)
    print(f"NAB corpus: {len(corpus)} series, {n_rows} rows, {n_windows} windows")
    print("Detector: windowed Gaussian (window 6400, step 100)\n")
    header = (
        f"{'profile':<20}{'scores':<11}{'NAB score':>10}{'published':>11}{'gap':>9}"
        f"{'threshold':>20}{'TP rows':>9}{'FP rows':>9}{'windows hit':>13}"
    )
    print(header)
    print("-" * len(header))
    report: dict[str, dict] = {}
    for profile in nab_scorer.PROFILE_NAMES:
        published = PUBLISHED_WINDOWED_GAUSSIAN[profile]
        report[profile] = {"published": published}
        for label, res in (("float64", results[profile]), ("12 digits", results_12[profile])):
            gap = res.score - published
            gap_s = f"{gap:+.4f}" if abs(gap) >= 5e-5 else f"{gap:+.0e}"
            print(
                f"{profile:<20}{label:<11}{res.score:>10.4f}{published:>11.4f}{gap_s:>9}"
                f"{res.threshold!r:>20}{res.tp:>9}{res.fp:>9}"
                f"{res.windows_detected:>7}/{res.n_windows:<5}"
            )
            report[profile][label] = {
                "score": res.score,
                "gap": gap,
                "raw": res.raw,
                "threshold": res.threshold,
                "tp": res.tp,
                "fp": res.fp,
                "fn": res.fn,
                "tn": res.tn,
                "windows_detected": res.windows_detected,
                "n_windows": res.n_windows,
            }
    timings = {
        "load_s": t1 - t0,
        "detect_s": t2 - t1,
        "score_3_profiles_s": t3 - t2,
        "round_12_digits_s": t4 - t3,
        "score_3_profiles_12_digits_s": t5 - t4,
        "total_s": t5 - t0,
    }
    print(
        "\nRuntime: "
        + ", ".join(f"{k[:-2]} {v:.2f}s" for k, v in timings.items())
        + f" (detector jobs={args.jobs})"
    )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"results": report, "timings": timings, "jobs": args.jobs}, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())

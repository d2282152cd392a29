"""Detection-quality benchmark: the project's GAN (both formulations, with ablations) against
classical and deep peers on real labelled data.

    python -m pipelines.benchmark --suite tabular|nab|all --seeds 5 --out DIR \
        [--datasets a,b] [--methods gan,gan-bigan,iforest,...] [--quick] [--plots-dir DIR]

Tabular suite: the protocol of ``shared/datasets/README.md`` (see :mod:`pipelines.bench.tabular`);
every method gets the same TRAIN/TEST rows; peers get a ``StandardScaler`` fitted on TRAIN, the
GAN standardises itself on TRAIN. This module is the command line; the tabular suite runs in
:mod:`pipelines.bench.tabular_runner`, its tables come from :mod:`pipelines.bench.tabular_report`
and its plots from :mod:`pipelines.bench.plots`. NAB suite: see :mod:`pipelines.bench.timeseries`.

Outputs in ``--out``: ``tabular_results.jsonl`` (one row per dataset, seed and method
variant, appended as each finishes so an interrupted run keeps what it did),
``tabular_results.json`` (all rows), ``tabular.md`` (mean +- population std over seeds),
``scores_seed0/`` (TEST scores of seed 0, for the ROC plots), ``nab_results.json``,
``nab.md``, and plots in ``--plots-dir`` (default ``OUT/plots``). ``--report-only`` rebuilds
tables and plots from the JSONL rows already there.

``--quick`` is the CI smoke mode: breastw, seed 0, the GAN at 150 steps and IsolationForest.

Data licences: ODDS / ADBench copies are BSD-2-Clause (cite ODDS, Rayana 2016, and ADBench,
Han et al. 2022); NAB is MIT, Numenta (cite Lavin & Ahmad 2015; Ahmad et al. 2017).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

from pipelines.bench import tabular
from pipelines.bench.plots import tabular_plots
from pipelines.bench.tabular_report import write_tabular_report
from pipelines.bench.tabular_runner import DEFAULT_METHODS, log, run_tabular

QUICK_DATASET = "breastw"
QUICK_GAN_STEPS = 150


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.benchmark", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--suite", choices=("tabular", "nab", "all"), default="tabular")
    parser.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1 (tabular)")
    parser.add_argument(
        "--seed-list",
        help="explicit comma-separated seeds instead of --seeds "
        "(to split a run over processes; merge the JSONL files afterwards)",
    )
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--datasets", help="comma-separated tabular sets (default: all nine)")
    parser.add_argument("--methods", help=f"comma-separated (default: {','.join(DEFAULT_METHODS)})")
    parser.add_argument(
        "--gan-steps",
        type=int,
        default=None,
        help="training.steps of the GAN (default: the project's default)",
    )
    parser.add_argument("--refine-steps", type=int, default=10)
    parser.add_argument(
        "--gan-config",
        type=Path,
        help="a TOML configuration for the GAN (default: the project's defaults)",
    )
    parser.add_argument("--nab-series", help="comma-separated NAB series (default: all 58)")
    parser.add_argument("--nab-steps", type=int, default=300)
    parser.add_argument("--nab-window", type=int, default=32)
    parser.add_argument("--nab-seed", type=int, default=0, help="training.seed of the NAB GANs")
    parser.add_argument(
        "--nab-formulation",
        choices=("fanogan", "bigan"),
        default="fanogan",
        help="model.formulation of the NAB GANs",
    )
    parser.add_argument("--plots-dir", type=Path)
    parser.add_argument("--quick", action="store_true", help="CI smoke mode")
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="rebuild tables and plots from the rows already in --out",
    )
    args = parser.parse_args(argv)

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    plots_dir = args.plots_dir or out / "plots"
    if args.quick:
        datasets = [QUICK_DATASET] if not args.datasets else args.datasets.split(",")
        seeds = [0]
        method_names = args.methods.split(",") if args.methods else ["gan", "iforest"]
        gan_steps = args.gan_steps or QUICK_GAN_STEPS
        refine_steps = min(args.refine_steps, 2)
    else:
        datasets = args.datasets.split(",") if args.datasets else list(tabular.DATASETS)
        seeds = (
            [int(s) for s in args.seed_list.split(",")]
            if args.seed_list
            else list(range(args.seeds))
        )
        method_names = args.methods.split(",") if args.methods else list(DEFAULT_METHODS)
        gan_steps, refine_steps = args.gan_steps, args.refine_steps
    unknown = [d for d in datasets if d not in tabular.DATASETS]
    if unknown:
        parser.error(f"unknown dataset(s) {unknown}; known: {', '.join(tabular.DATASETS)}")

    meta = {
        "argv": sys.argv if argv is None else ["python", "-m", "pipelines.benchmark", *argv],
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "processor": platform.processor(),
            "python": platform.python_version(),
        },
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    (out / "run_meta.json").write_text(json.dumps(meta, indent=2))

    if args.suite in ("tabular", "all"):
        if not args.report_only:
            log(f"tabular: datasets {datasets}, seeds {seeds}, methods {method_names}")
            run_tabular(
                datasets, seeds, method_names, out, gan_steps, refine_steps, args.gan_config
            )
        write_tabular_report(out)
        tabular_plots(out, plots_dir)
        log(f"tabular report: {out / 'tabular.md'}")
    if args.suite in ("nab", "all"):
        from pipelines.bench import timeseries

        names = args.nab_series.split(",") if args.nab_series else None
        if args.quick and names is None:
            names = list(timeseries.QUICK_SERIES)
        steps = min(args.nab_steps, 20) if args.quick and args.nab_steps == 300 else args.nab_steps
        if not args.report_only:
            timeseries.run_nab(
                out,
                names=names,
                window=args.nab_window,
                steps=steps,
                seed=args.nab_seed,
                formulation=args.nab_formulation,
                refine_steps=refine_steps,
            )
        timeseries.write_nab_report(out, plots_dir)
        log(f"NAB report: {out / 'nab.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Detection-quality benchmark: the project's GAN (both formulations, with ablations) against
classical and deep peers on real labelled data.

    python -m pipelines.benchmark --suite tabular|nab|all --seeds 5 --out DIR \
        [--datasets a,b] [--methods gan,gan-bigan,iforest,...] [--quick] [--plots-dir DIR]

Tabular suite: the protocol of ``shared/datasets/README.md`` (see :mod:`pipelines.bench.tabular`);
every method gets the same TRAIN/TEST rows; peers get a ``StandardScaler`` fitted on TRAIN, the
GAN standardises itself on TRAIN. NAB suite: see :mod:`pipelines.bench.timeseries`.

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
import math
import os
import platform
import sys
import time
import traceback
from pathlib import Path

import numpy as np

from pipelines.bench import tabular

GAN_METHODS = ("gan", "gan-bigan")
DEFAULT_PEERS = ("iforest", "ocsvm", "knn", "ecod", "autoencoder", "alad", "anogan", "mo_gaal")
DEFAULT_METHODS = GAN_METHODS + DEFAULT_PEERS
QUICK_DATASET = "breastw"
QUICK_GAN_STEPS = 150
#: Methods drawn in the ROC and bar plots (the ablation variants stay in the tables).
PLOT_VARIANTS = (
    "gan",
    "gan:refined",
    "gan:only_latent",
    "gan-bigan",
    "iforest",
    "ocsvm",
    "knn",
    "ecod",
    "autoencoder",
    "alad",
    "anogan",
    "mo_gaal",
)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# --------------------------------------------------------------------------------------------
# tabular
# --------------------------------------------------------------------------------------------


def _gan_method(name: str, gan_steps: int | None, refine_steps: int):
    import anomaly
    from pipelines.bench import methods

    formulation = "bigan" if name == "gan-bigan" else "fanogan"
    config = anomaly.Config().updated(
        model={"formulation": formulation}, training={"steps": gan_steps}
    )
    return methods.gan(config, refine_steps=refine_steps)


def run_tabular(
    datasets, seeds, method_names, out: Path, gan_steps=None, refine_steps=10
) -> list[dict]:
    """Run every (seed, dataset, method); seeds outermost so an interrupted run has whole
    seeds over all datasets. Rows go to ``tabular_results.jsonl`` as they are made."""
    from pipelines.bench import methods

    out.mkdir(parents=True, exist_ok=True)
    jsonl = out / "tabular_results.jsonl"
    done = set()
    if jsonl.exists():
        for line in jsonl.read_text().splitlines():
            row = json.loads(line)
            done.add((row["dataset"], row["seed"], row["method"].split(":")[0]))
    prepared, notes = {}, {}
    for name in method_names:
        if name in GAN_METHODS:
            prepared[name] = _gan_method(name, gan_steps, refine_steps)
            notes[name] = {"train_cap": None}
            continue
        try:
            method, cap = methods.make_peer(name)
        except methods.PeerUnavailable as exc:
            notes[name] = {"unavailable": str(exc)}
            log(f"peer {name} skipped: {exc}")
            continue
        prepared[name] = method
        notes[name] = {"train_cap": cap}
    (out / "tabular_methods.json").write_text(json.dumps(notes, indent=2))
    score_dir = out / "scores_seed0"
    for seed in seeds:
        for dataset in datasets:
            for name, method in prepared.items():
                if (dataset, seed, name) in done:
                    continue
                started = time.perf_counter()
                try:
                    rows, variants, y_test = _run_one(name, method, dataset, seed)
                except Exception as exc:  # a failing peer must not stop the benchmark
                    log(f"FAILED {name} on {dataset} seed {seed}: {exc!r}")
                    traceback.print_exc()
                    with open(out / "tabular_failures.jsonl", "a") as fh:
                        fh.write(
                            json.dumps(
                                {
                                    "dataset": dataset,
                                    "seed": seed,
                                    "method": name,
                                    "error": repr(exc)[:500],
                                }
                            )
                            + "\n"
                        )
                    continue
                cap = notes[name].get("train_cap")
                for row in rows:
                    row["train_rows_used"] = int(min(row.pop("_train_rows"), cap or math.inf))
                with open(jsonl, "a") as fh:
                    for row in rows:
                        fh.write(json.dumps(row) + "\n")
                if seed == 0:
                    score_dir.mkdir(exist_ok=True)
                    np.savez_compressed(
                        score_dir / f"{dataset}__{name}.npz",
                        y_test=y_test,
                        **{k or "main": np.asarray(v, np.float32) for k, v in variants.items()},
                    )
                main = rows[0]
                log(
                    f"{dataset:10s} seed {seed} {name:12s} AUROC {main['auroc']:.3f} "
                    f"AUPRC {main['auprc']:.3f} F1 {main['f1']:.3f} "
                    f"train {main['train_seconds']:.1f}s score {main['score_seconds']:.1f}s "
                    f"(wall {time.perf_counter() - started:.1f}s)"
                )
    return load_rows(out)


def _run_one(name, method, dataset, seed):
    """Train and score one method on one split: one result row per score variant, plus the
    variants' scores (for plots) and the TEST labels."""
    X, y = tabular.load_dataset(dataset)
    split = tabular.protocol_split(y, seed)
    started = time.perf_counter()
    variants, timings = method(X[split.train], X[split.test], seed)
    total = time.perf_counter() - started
    rows = []
    for variant, scores in variants.items():
        rows.append(
            {
                "dataset": dataset,
                "seed": seed,
                "method": name if variant == "" else f"{name}:{variant}",
                **tabular.metrics(split.y_test, np.asarray(scores, np.float64)),
                "train_seconds": timings.get("train", total),
                "score_seconds": timings.get("score", 0.0),
                "_train_rows": len(split.train),
                **({"health": timings["health"]} if "health" in timings else {}),
            }
        )
    return rows, variants, split.y_test


def load_rows(out: Path) -> list[dict]:
    jsonl = out / "tabular_results.jsonl"
    if not jsonl.exists():
        return []
    return [json.loads(line) for line in jsonl.read_text().splitlines() if line.strip()]


def _method_order(methods_seen):
    def key(m):
        base, _, variant = m.partition(":")
        order = list(DEFAULT_METHODS)
        variants = [
            "",
            "refined",
            "only_reconstruction",
            "only_feature",
            "only_critic",
            "only_latent",
        ]
        return (
            order.index(base) if base in order else len(order),
            variants.index(variant) if variant in variants else len(variants),
            variant,
        )

    return sorted(methods_seen, key=key)


def summarise(rows: list[dict]) -> dict:
    """{(dataset, method): {metric: (mean, std, n)}} with population std over seeds."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        groups.setdefault((row["dataset"], row["method"]), []).append(row)
    summary = {}
    for key, group in groups.items():
        summary[key] = {
            m: (
                float(np.mean([r[m] for r in group])),
                float(np.std([r[m] for r in group])),
                len(group),
            )
            for m in ("auroc", "auprc", "f1", "train_seconds", "score_seconds")
        }
        summary[key]["train_rows_used"] = group[0].get("train_rows_used")
    return summary


def tabular_markdown(rows: list[dict], notes: dict | None = None) -> str:
    if not rows:
        return "No tabular results.\n"
    summary = summarise(rows)
    datasets = [d for d in tabular.DATASETS if any(k[0] == d for k in summary)]
    method_names = _method_order({k[1] for k in summary})
    lines = []
    seeds = sorted({r["seed"] for r in rows})
    lines.append(
        f"Seeds: {', '.join(map(str, seeds))}. Cells: mean ± population std over the "
        "seeds done (a cell with fewer seeds says so as `[n]`). `mean` is the unweighted "
        "mean over the datasets the method finished.\n"
    )
    for metric, title in (("auroc", "AUROC"), ("auprc", "AUPRC"), ("f1", "F1 at top-k")):
        lines.append(f"### {title}\n")
        lines.append("| method | " + " | ".join(datasets) + " | mean |")
        lines.append("| --- |" + " ---: |" * (len(datasets) + 1))
        best = {
            d: max(
                (summary[(d, m)][metric][0] for m in method_names if (d, m) in summary),
                default=None,
            )
            for d in datasets
        }
        for m in method_names:
            cells, means = [], []
            for d in datasets:
                if (d, m) not in summary:
                    cells.append("—")
                    continue
                mean, std, n = summary[(d, m)][metric]
                means.append(mean)
                cell = f"{mean:.3f} ± {std:.3f}"
                if n != len(seeds):
                    cell += f" [{n}]"
                if best[d] is not None and abs(mean - best[d]) < 1e-12:
                    cell = f"**{cell}**"
                cells.append(cell)
            overall = (
                f"{np.mean(means):.3f}"
                if len(means) == len(datasets)
                else (f"{np.mean(means):.3f} ({len(means)} sets)" if means else "—")
            )
            lines.append(f"| {m} | " + " | ".join(cells) + f" | {overall} |")
        lines.append("")
    lines.append("### Time per fit (seconds, mean over seeds: train / score TEST)\n")
    timed = [m for m in method_names if ":" not in m]
    lines.append("| method | " + " | ".join(datasets) + " |")
    lines.append("| --- |" + " ---: |" * len(datasets))
    for m in timed:
        cells = []
        for d in datasets:
            if (d, m) not in summary:
                cells.append("—")
                continue
            s = summary[(d, m)]
            cell = f"{s['train_seconds'][0]:.1f} / {s['score_seconds'][0]:.1f}"
            full = {"http": 282_643, "smtp": 47_563, "shuttle": 22_793}.get(d)
            if full and s["train_rows_used"] and s["train_rows_used"] < full:
                cell += f" (TRAIN {s['train_rows_used']:,} of {full:,})"
            cells.append(cell)
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.extend(health_lines(rows))
    if notes:
        missing = {k: v["unavailable"] for k, v in notes.items() if "unavailable" in v}
        if missing:
            lines.append("Peers that could not run:\n")
            lines.extend(f"- `{k}`: {v}" for k, v in missing.items())
            lines.append("")
    return "\n".join(lines)


def tabular_plots(out: Path, plots_dir: Path, datasets=None) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_curve

    plots_dir.mkdir(parents=True, exist_ok=True)
    written = []
    score_dir = out / "scores_seed0"
    rows = load_rows(out)
    summary = summarise(rows)
    datasets = [d for d in (datasets or tabular.DATASETS) if any(k[0] == d for k in summary)]
    if score_dir.exists() and datasets:
        cols = 3
        nrows = math.ceil(len(datasets) / cols)
        fig, axes = plt.subplots(nrows, cols, figsize=(3.3 * cols, 3.0 * nrows), squeeze=False)
        for ax, dataset in zip(axes.flat, datasets, strict=False):
            for file in sorted(score_dir.glob(f"{dataset}__*.npz")):
                name = file.stem.split("__", 1)[1]
                with np.load(file) as data:
                    y = data["y_test"]
                    for variant in data.files:
                        if variant == "y_test":
                            continue
                        label = name if variant == "main" else f"{name}:{variant}"
                        if label not in PLOT_VARIANTS:
                            continue
                        fpr, tpr, _ = roc_curve(y, data[variant])
                        style = "-" if label.startswith("gan") else "--"
                        ax.plot(fpr, tpr, style, lw=1.1, label=label)
            ax.plot([0, 1], [0, 1], ":", color="grey", lw=0.8)
            ax.set_title(f"{dataset} (seed 0)", fontsize=9)
            ax.tick_params(labelsize=7)
            ax.set_xlabel("FPR", fontsize=7)
            ax.set_ylabel("TPR", fontsize=7)
        for ax in list(axes.flat)[len(datasets) :]:
            ax.axis("off")
        handles, labels = axes.flat[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="lower center", ncol=min(6, len(labels)), fontsize=7)
        fig.tight_layout(rect=(0, 0.06, 1, 1))
        path = plots_dir / "roc_seed0.png"
        fig.savefig(path, dpi=70)
        plt.close(fig)
        written.append(path)
    methods_seen = [m for m in PLOT_VARIANTS if any(k[1] == m for k in summary)]
    if methods_seen and datasets:
        fig, axes = plt.subplots(2, 1, figsize=(10, 5.6), sharex=True)
        width = 0.8 / len(methods_seen)
        x = np.arange(len(datasets))
        for ax, metric in zip(axes, ("auroc", "auprc"), strict=True):
            for i, m in enumerate(methods_seen):
                means = [summary.get((d, m), {}).get(metric, (np.nan, 0, 0))[0] for d in datasets]
                stds = [summary.get((d, m), {}).get(metric, (0, 0, 0))[1] for d in datasets]
                ax.bar(
                    x + (i - (len(methods_seen) - 1) / 2) * width,
                    means,
                    width,
                    yerr=stds,
                    label=m,
                    capsize=1.5,
                    error_kw={"lw": 0.6},
                )
            ax.set_ylabel(metric.upper(), fontsize=8)
            ax.set_ylim(0, 1.02)
            ax.tick_params(labelsize=7)
            ax.grid(axis="y", lw=0.3)
        axes[1].set_xticks(x, datasets, fontsize=8)
        handles, labels = axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, ncol=min(8, len(methods_seen)), fontsize=7, loc="upper center")
        fig.tight_layout(rect=(0, 0, 1, 0.94))
        path = plots_dir / "auroc_auprc_by_dataset.png"
        fig.savefig(path, dpi=70)
        plt.close(fig)
        written.append(path)
    return written


def health_lines(rows: list[dict]) -> list[str]:
    """Training health of every GAN fit: how many flagged mode collapse, and each warning."""
    fits = {
        (r["dataset"], r["seed"], r["method"]): r["health"]
        for r in rows
        if "health" in r and ":" not in r["method"]  # variants share their fit's report
    }
    if not fits:
        return []
    lines = [
        "### Training health of the GAN fits\n",
        "| method | fits | mode collapse flagged | lowest diversity ratio | fits with warnings |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for method in _method_order({m for _, _, m in fits}):
        mine = [h for (_, _, m), h in fits.items() if m == method]
        collapsed = sum(h["mode_collapse"] for h in mine)
        lowest = min(h["diversity_ratio"] for h in mine)
        warned = sum(bool(h["warnings"]) for h in mine)
        lines.append(f"| {method} | {len(mine)} | {collapsed} | {lowest:.2f} | {warned} |")
    lines.append("")
    warnings = sorted((key, w) for key, h in fits.items() for w in h["warnings"])
    lines.extend(f"- {d} seed {s} {m}: {w}" for (d, s, m), w in warnings)
    return lines + [""] if warnings else lines


def write_tabular_report(out: Path, plots_dir: Path) -> None:
    rows = load_rows(out)
    (out / "tabular_results.json").write_text(json.dumps(rows, indent=1))
    notes_path = out / "tabular_methods.json"
    notes = json.loads(notes_path.read_text()) if notes_path.exists() else None
    (out / "tabular.md").write_text(tabular_markdown(rows, notes))
    tabular_plots(out, plots_dir)


# --------------------------------------------------------------------------------------------
# entry point
# --------------------------------------------------------------------------------------------


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
            run_tabular(datasets, seeds, method_names, out, gan_steps, refine_steps)
        write_tabular_report(out, plots_dir)
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

"""The tabular suite's plots: ROC curves of seed 0 per dataset (``roc_seed0.png``) and AUROC /
AUPRC bars per dataset (``auroc_auprc_by_dataset.png``), from the rows and scores
:mod:`pipelines.bench.tabular_runner` wrote."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from pipelines.bench import tabular
from pipelines.bench.tabular_report import summarise
from pipelines.bench.tabular_runner import load_rows

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

"""The tabular suite's report: ``tabular_results.json`` and the Markdown tables of
``tabular.md`` (mean +- population std over seeds, time per fit, training health of the GAN
fits) from the rows :mod:`pipelines.bench.tabular_runner` wrote."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pipelines.bench import tabular
from pipelines.bench.tabular_runner import DEFAULT_METHODS, load_rows


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
    lines.extend(calibration_lines(rows, datasets))
    lines.extend(health_lines(rows))
    if notes:
        missing = {k: v["unavailable"] for k, v in notes.items() if "unavailable" in v}
        if missing:
            lines.append("Peers that could not run:\n")
            lines.extend(f"- `{k}`: {v}" for k, v in missing.items())
            lines.append("")
    return "\n".join(lines)


def calibration_lines(rows: list[dict], datasets: list[str]) -> list[str]:
    """The GAN's realised false-positive rate on TEST's normal rows at each calibration
    target (mean and range over seeds), beside how many normal rows calibrated it."""
    fits = [r for r in rows if "realised_fpr" in r]
    if not fits:
        return []
    targets = sorted({t for r in fits for t in r["realised_fpr"]}, key=float, reverse=True)
    lines = [
        "### Realised false-positive rate on TEST's normal rows\n",
        "Mean over seeds (lowest-highest seed) of the share of TEST's normal rows above the "
        "detector's threshold at each target, and the goal: within half and twice the target "
        "(on the mean). `calibration rows`: normal rows the threshold was calibrated on (the "
        "held-out ones, or every TRAIN row with cross-fitting); `TEST normal`: rows the rate "
        "is measured on, per seed.\n",
        "| method | set | calibration rows | TEST normal | "
        + " | ".join(f"at {float(t):.1%}" for t in targets)
        + " |",
        "| --- | --- | ---: | ---: |" + " ---: |" * len(targets),
    ]
    for method in _method_order({r["method"] for r in fits}):
        for dataset in datasets:
            mine = [r for r in fits if r["method"] == method and r["dataset"] == dataset]
            if not mine:
                continue
            _, y = tabular.load_dataset(dataset)
            normal = int((y == 0).sum())
            cells = []
            for t in targets:
                values = [r["realised_fpr"][t] for r in mine]
                mean = float(np.mean(values))
                within = float(t) / 2 <= mean <= 2 * float(t)
                cells.append(
                    f"{mean:.2%} ({min(values):.2%}-{max(values):.2%})"
                    + ("" if within else " **miss**")
                )
            lines.append(
                f"| {method} | {dataset} | {mine[0]['calibration_rows']:,} | "
                f"{normal - normal // 2:,} | " + " | ".join(cells) + " |"
            )
    return lines + [""]


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


def write_tabular_report(out: Path) -> None:
    rows = load_rows(out)
    (out / "tabular_results.json").write_text(json.dumps(rows, indent=1))
    notes_path = out / "tabular_methods.json"
    notes = json.loads(notes_path.read_text()) if notes_path.exists() else None
    (out / "tabular.md").write_text(tabular_markdown(rows, notes))

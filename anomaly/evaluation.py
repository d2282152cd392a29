"""Evaluating a detector on labelled data: metrics, plots and a short Markdown report.

The threshold's metrics always; with an adaptive alarm stage (``[alarms]``, by default in
time-series mode) also the alarm's precision, recall, F1 and false-positive rate, its rows
decided per file or per entity exactly as ``anomaly score`` writes them.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
from sklearn.metrics import (
    average_precision_score,
    precision_recall_curve,
    roc_auc_score,
    roc_curve,
)

from anomaly.config import AlarmConfig
from anomaly.detector import Detector
from anomaly.errors import DataError
from anomaly.files import Rejects, iter_scored, rejects_path
from anomaly.io import cannot_write


@dataclass(frozen=True)
class Evaluation:
    """Detection quality on one labelled dataset."""

    records: int
    """Rows with a score, on which the metrics are measured."""
    anomalies: int
    auroc: float
    auprc: float
    best_f1: float
    best_f1_threshold: float
    threshold: float
    precision: float
    recall: float
    f1: float
    false_positive_rate: float
    alarm_precision: float | None = None
    """The adaptive alarm stage's metrics (its ``alarm`` rows as flags); None without one."""
    alarm_recall: float | None = None
    alarm_f1: float | None = None
    alarm_false_positive_rate: float | None = None
    rows_rejected: int | None = None
    """Rows of the file left out as invalid (``on_invalid="skip"``); None for bare scores."""
    rejects: str | None = None
    """The file those rows were written to (``<data>.rejects.csv``, in the report folder
    when there is one); None when there were none."""
    rows_without_score: int | None = None
    """Valid rows of the file with no score, so not in ``records``: in time-series mode the
    first ``window - 1`` rows of each series. None for bare scores."""

    def to_json(self) -> dict:
        """The metrics; the alarm's only when there is an alarm stage."""
        return {name: value for name, value in asdict(self).items() if value is not None}


def _flag_metrics(labels: np.ndarray, flags: np.ndarray) -> dict[str, float]:
    """Precision, recall, F1 and false-positive rate of 0/1 ``flags`` against 0/1 labels."""
    labels, flags = np.asarray(labels).astype(int), np.asarray(flags).astype(bool)
    tp = int((flags & (labels == 1)).sum())
    fp = int((flags & (labels == 0)).sum())
    fn = int((~flags & (labels == 1)).sum())
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    return {
        "precision": p,
        "recall": r,
        "f1": 2 * p * r / (p + r) if p + r else 0.0,
        "false_positive_rate": fp / max(1, int((labels == 0).sum())),
    }


def evaluate_scores(
    labels: np.ndarray, scores: np.ndarray, threshold: float, alarms: np.ndarray | None = None
) -> Evaluation:
    """Metrics of scores against 0/1 labels; both classes must be present. ``alarms``, the
    alarm stage's decisions of the same rows, adds the alarm's metrics."""
    labels = np.asarray(labels).astype(int)
    if labels.min() == labels.max():
        only = "anomalies" if labels[0] else "normal records"
        raise DataError(
            f"evaluation needs both normal and anomalous records; the data holds only {only}"
        )
    precision, recall, cuts = precision_recall_curve(labels, scores)
    f1s = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    best = int(np.argmax(f1s[:-1]))
    # The curve flags scores >= its cut; the product flags scores > its threshold. The same
    # rows are flagged above the midpoint to the next lower score.
    scores = np.asarray(scores, np.float64)
    below = scores[scores < cuts[best]]
    best_threshold = (
        (cuts[best] + below.max()) / 2 if len(below) else np.nextafter(cuts[best], -np.inf)
    )
    alarm = {} if alarms is None else _flag_metrics(labels, alarms)
    return Evaluation(
        records=len(labels),
        anomalies=int(labels.sum()),
        auroc=float(roc_auc_score(labels, scores)),
        auprc=float(average_precision_score(labels, scores)),
        best_f1=float(f1s[best]),
        best_f1_threshold=float(best_threshold),
        threshold=float(threshold),
        **_flag_metrics(labels, scores > threshold),
        **{f"alarm_{name}": value for name, value in alarm.items()},
    )


def evaluate_file(
    detector: Detector,
    data: str | os.PathLike[str],
    label_column: str,
    *,
    report_dir: str | os.PathLike[str] | None = None,
    on_invalid: str | None = None,
    progress: bool | None = False,
    alarms: AlarmConfig | None = None,
) -> Evaluation:
    """Score a labelled file and measure detection quality; with ``report_dir``, also write
    ``metrics.json``, PNG plots and ``report.md`` there. ``alarms`` (default: the model's
    ``[alarms]``) chooses the alarm stage; ``progress`` as for ``anomaly.files.score_file``
    (None: a bar only on a terminal)."""
    on_invalid = on_invalid or detector.config.data.on_invalid
    where = Path(report_dir) / Path(data).name if report_dir else Path(data)
    labels, scores, alarmed = [], [], []
    read = kept = 0
    unscored = {0: 0, 1: 0}  # rows of each label kept but without a score (windows)
    with Rejects(rejects_path(where), detector.feature_names) as rejects:
        for chunk, valid, frame in iter_scored(
            detector,
            data,
            on_invalid=on_invalid,
            rejects=rejects,
            label_column=label_column,
            progress=progress,
            alarms=alarms,
        ):
            if chunk.labels is None:
                raise DataError(f"{data}: no label column {label_column!r}")
            read, kept = read + len(valid), kept + int(valid.sum())
            scored = np.isfinite(frame["score"].to_numpy())
            labels.append(chunk.labels[valid][scored])
            left = chunk.labels[valid][~scored]
            unscored[1] += int(left.sum())
            unscored[0] += len(left) - int(left.sum())
            scores.append(frame["score"].to_numpy()[scored])
            if "alarm" in frame:
                alarmed.append(frame["alarm"].to_numpy()[scored])
        rejects_file = rejects.close()
    if not labels or not sum(len(part) for part in labels):
        raise DataError(_nothing_to_evaluate(data, read, kept, detector, rejects_file))
    labels, scores = np.concatenate(labels), np.concatenate(scores)
    _refuse_a_class_left_unscored(data, labels, unscored, detector)
    result = evaluate_scores(
        labels, scores, detector.threshold, np.concatenate(alarmed) if alarmed else None
    )
    result = replace(
        result,
        rows_rejected=read - kept,
        rejects=None if rejects_file is None else str(rejects_file),
        rows_without_score=kept - len(labels),
    )
    if report_dir is not None:
        try:
            write_report(Path(report_dir), result, labels, scores, detector, str(data))
        except OSError as exc:  # a full disk, a file where the folder should be
            raise cannot_write(report_dir, exc) from None
    return result


def _refuse_a_class_left_unscored(data, labels: np.ndarray, unscored: dict, detector) -> None:
    """A ``DataError`` where the scored rows hold one class only because every row of the
    other has no score (time-series mode: a series' first rows end no window): saying the
    data holds only that class, as before, was wrong."""
    present = int(labels[0])
    missing = 1 - present
    if labels.min() != labels.max() or not unscored[missing] or detector.schema.window is None:
        return
    kinds = ("normal", "anomalous")
    raise DataError(
        f"{data}: every {kinds[missing]} row ({unscored[missing]}) is without a score (a row "
        f"is scored once it ends a window of {detector.schema.window} rows of its series), so "
        f"only {kinds[present]} rows are left to evaluate; evaluate rows that reach past each "
        "series' first window"
    )


def _nothing_to_evaluate(data, read: int, kept: int, detector: Detector, rejects) -> str:
    """Why no row of ``data`` has a score: no rows, every row rejected, or (time-series
    mode) no series long enough for a window."""
    if not read:
        return f"{data}: has no data rows to evaluate"
    if not kept:
        return (
            f"{data}: all {read} rows were rejected (NaN or infinite values; see {rejects}): "
            "nothing to evaluate"
        )
    window = detector.schema.window
    entity = detector.schema.entity_column
    per = f" of the same {entity!r} value" if entity else ""
    return (
        f"{data}: none of its {kept} rows completes a window of {window} consecutive rows{per}, "
        f"so none has a score: give each series at least {window} rows"
    )


def write_report(
    directory: Path, result: Evaluation, labels, scores, detector: Detector, data: str
) -> None:
    """metrics.json, scores.png (distributions), roc.png, pr.png and report.md."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directory.mkdir(parents=True, exist_ok=True)
    (directory / "metrics.json").write_text(json.dumps(result.to_json(), indent=2))

    fig, ax = plt.subplots(figsize=(6, 4))
    bins = np.histogram_bin_edges(scores, bins=60)
    ax.hist(scores[labels == 0], bins=bins, alpha=0.6, density=True, label="normal")
    ax.hist(scores[labels == 1], bins=bins, alpha=0.6, density=True, label="anomalous")
    ax.axvline(result.threshold, color="k", linestyle="--", label="threshold")
    ax.set(xlabel="anomaly score", ylabel="density", title="Score distributions")
    ax.legend()
    fig.savefig(directory / "scores.png", dpi=100, bbox_inches="tight")
    plt.close(fig)

    fpr, tpr, _ = roc_curve(labels, scores)
    precision, recall, _ = precision_recall_curve(labels, scores)
    for name, (xs, ys, xlabel, ylabel, value) in {
        "roc": (fpr, tpr, "false-positive rate", "true-positive rate", f"AUROC {result.auroc:.3f}"),
        "pr": (recall, precision, "recall", "precision", f"AUPRC {result.auprc:.3f}"),
    }.items():
        fig, ax = plt.subplots(figsize=(4.5, 4.5))
        ax.plot(xs, ys, label=value)
        ax.set(xlabel=xlabel, ylabel=ylabel, xlim=(0, 1), ylim=(0, 1.02))
        ax.legend(loc="lower right" if name == "roc" else "lower left")
        fig.savefig(directory / f"{name}.png", dpi=100, bbox_inches="tight")
        plt.close(fig)

    rows = "\n".join(
        f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |"
        for k, v in result.to_json().items()
    )
    (directory / "report.md").write_text(
        f"# Evaluation of model {detector.version}\n\n"
        f"Data: `{data}`; formulation `{detector.engine.params.formulation}`; threshold calibrated "
        f"at a {detector.engine.params.target_fpr:.2%} false-positive rate on held-out normal "
        "data.\n\n"
        f"| metric | value |\n| --- | ---: |\n{rows}\n\n"
        "![score distributions](scores.png)\n\n![ROC curve](roc.png) ![PR curve](pr.png)\n"
    )

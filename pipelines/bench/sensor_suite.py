"""The sensor suite: detectors on multivariate sensor runs whose normal state moves after training.

Protocol, per run of :mod:`pipelines.bench.sensors` (``make_suite(seeds, runs_per_seed)``):

* A detector trains on the run's first ``run.train_rows`` rows only (all normal: "the first
  minutes" of the run) and returns a 0/1 flag for every row of the run, computed causally: a
  row's flag depends on the training part and on rows up to it, never on later rows
  (``check_causal`` verifies it for a detector on a run). Flags on the training rows are
  ignored.
* Row level, pooled over all runs on the rows after the training part: precision, recall,
  F1, false-alarm rate (share of normal rows flagged) and missed-alarm rate (share of
  anomalous rows not flagged).
* Event level, pooled the same way: a segment is detected when at least one of its rows is
  flagged; a flag run (maximal run of consecutive flagged rows) is true when it overlaps a
  segment and false otherwise; false alarms per 1,000 normal rows count the false flag runs;
  event precision = true flag runs / flag runs, event recall = segments detected / segments,
  event F1 their harmonic mean; the delay is the rows from a detected segment's start to its
  first flag (median reported). Per anomaly kind: the share of segments detected and the
  share of their rows flagged.
* Nothing is tuned on the labels. Training and scoring seconds are reported per run.

Detectors (``run_sensor_suite(..., detectors={name: callable})``): a callable takes a
``SensorRun`` and returns its flags (an array, one per row) or a ``Detection`` (several named
flag variants of one training, and its seconds). Provided: ``gan_threshold`` (the product
trained with ``anomaly.train`` and flagged with its own calibrated threshold, what a user gets
from ``anomaly train``/``anomaly score`` today), ``pca_detector`` (PCA T²/Q at fixed 99 %
control limits) and ``iforest_detector`` (IsolationForest, ``contamination="auto"``).

The product's adaptive alarm stage (``anomaly.alarms.AlarmStage``, configured by an
``[alarms]`` section) runs on the GAN's scores as ``anomaly score`` runs it on the run's file,
and on the PCA peer's score: ``gan_detector(config, stages={"+conformal:state": alarms})``
reports the fixed-threshold flags as ``gan`` and the stage's as ``gan+conformal:state``, from
one training (``stage_configs`` names every method and semantics).

Run: ``python -m pipelines.bench.sensor_suite --out results/sensors --seeds 0 1
--runs-per-seed 3`` writes ``sensor_results.jsonl`` (one row per run x detector) and
``sensors.md`` (pooled tables). ``--csv`` also writes each run, and its training part, as CSV
under ``runs/`` for trying ``anomaly train``/``anomaly score`` by hand
(``sensors.write_run_csv``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from anomaly.alarms import AlarmStage
from anomaly.config import AlarmConfig
from pipelines.bench.sensor_peers import IsolationForestPeer, PCAMonitor
from pipelines.bench.sensors import KINDS, SensorRun, make_suite, write_run_csv


@dataclass(frozen=True)
class Detection:
    """A detector's output on one run: flag variants by name suffix (``""`` is the detector
    itself, ``"+conformal"`` is reported as ``<detector>+conformal``), and its seconds."""

    flags: Mapping[str, np.ndarray]
    train_seconds: float = float("nan")
    score_seconds: float = float("nan")
    info: dict = field(default_factory=dict)


Detector = Callable[[SensorRun], "np.ndarray | Detection"]


# --- metrics -----------------------------------------------------------------------------


def flag_runs(flags: np.ndarray) -> list[tuple[int, int]]:
    """Maximal runs of consecutive flagged rows, as (start, stop) with stop exclusive."""
    f = np.concatenate([[0], np.asarray(flags, np.int8) != 0, [0]]).astype(np.int8)
    edges = np.diff(f)
    return list(zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1), strict=True))


def run_counts(run: SensorRun, flags: np.ndarray) -> dict:
    """Counts of one run's rows after the training part; pooled by adding them up."""
    flags = np.asarray(flags).astype(bool)
    if flags.shape != (len(run),):
        raise ValueError(f"{run.name}: {flags.shape} flags for {len(run)} rows")
    start = run.train_rows
    f, y = flags[start:], run.labels[start:].astype(bool)
    counts = {
        "tp": int(np.sum(f & y)),
        "fp": int(np.sum(f & ~y)),
        "fn": int(np.sum(~f & y)),
        "tn": int(np.sum(~f & ~y)),
    }
    runs = flag_runs(f)
    true_runs = sum(bool(y[a:b].any()) for a, b in runs)
    per_kind = {kind: {"segments": 0, "detected": 0, "rows": 0, "flagged": 0} for kind in KINDS}
    delays = []
    for a, b, kind in run.segments:
        hit = np.flatnonzero(flags[a:b])
        k = per_kind[kind]
        k["segments"] += 1
        k["detected"] += int(len(hit) > 0)
        k["rows"] += b - a
        k["flagged"] += len(hit)
        if len(hit):
            delays.append(int(hit[0]))
    counts.update(
        segments=len(run.segments),
        detected=sum(k["detected"] for k in per_kind.values()),
        flag_runs=len(runs),
        true_runs=true_runs,
        false_runs=len(runs) - true_runs,
        per_kind=per_kind,
        delays=delays,
    )
    return counts


def pooled(counts: Sequence[dict]) -> dict:
    """Add up ``run_counts`` of several runs and derive the rates."""
    total = {k: sum(c[k] for c in counts) for k in ("tp", "fp", "fn", "tn")}
    for k in ("segments", "detected", "flag_runs", "true_runs", "false_runs"):
        total[k] = sum(c[k] for c in counts)
    tp, fp, fn, tn = total["tp"], total["fp"], total["fn"], total["tn"]
    precision = _ratio(tp, tp + fp)
    recall = _ratio(tp, tp + fn)
    event_precision = _ratio(total["true_runs"], total["flag_runs"])
    event_recall = _ratio(total["detected"], total["segments"])
    delays = [d for c in counts for d in c["delays"]]
    per_kind = {}
    for kind in KINDS:
        seg = sum(c["per_kind"][kind]["segments"] for c in counts)
        det = sum(c["per_kind"][kind]["detected"] for c in counts)
        rows = sum(c["per_kind"][kind]["rows"] for c in counts)
        flagged = sum(c["per_kind"][kind]["flagged"] for c in counts)
        per_kind[kind] = {
            "segments": seg,
            "detected": det,
            "detected_share": _ratio(det, seg),
            "row_recall": _ratio(flagged, rows),
        }
    return {
        **total,
        "runs": len(counts),
        "rows": tp + fp + fn + tn,
        "precision": precision,
        "recall": recall,
        "f1": _f1(precision, recall),
        "false_alarm_rate": _ratio(fp, fp + tn),
        "missed_alarm_rate": _ratio(fn, fn + tp),
        "false_alarms_per_1k_normal": 1000.0 * _ratio(total["false_runs"], fp + tn),
        "event_precision": event_precision,
        "event_recall": event_recall,
        "event_f1": _f1(event_precision, event_recall),
        "median_delay": float(np.median(delays)) if delays else float("nan"),
        "per_kind": per_kind,
    }


def _ratio(a: float, b: float) -> float:
    return a / b if b else 0.0


def _f1(precision: float, recall: float) -> float:
    return 2 * precision * recall / (precision + recall) if precision + recall else 0.0


# --- detectors ---------------------------------------------------------------------------


def _stage_flags(stages, make_stage, result) -> tuple[dict, dict]:
    """Each product alarm stage's decisions, by variant name, and its seconds."""
    flags, seconds = {}, {}
    for name, alarm_config in (stages or {}).items():
        started = time.perf_counter()
        flags[name] = make_stage(alarm_config).update(result).alarms
        seconds[name] = time.perf_counter() - started
    return flags, seconds


def gan_detector(config=None, stages: Mapping[str, AlarmConfig] | None = None) -> Detector:
    """The product: ``anomaly.train`` on the training part with ``config`` (default
    ``Config()``), then every row of the run scored in order, as ``anomaly score`` does on
    the run's file: flags ``""`` = ``is_anomaly`` (its own calibrated threshold), plus one
    variant per ``[alarms]`` configuration in ``stages``, through the product's stage
    (``AlarmStage.for_model``: one stream for the run, started from the model's held-out
    normal values)."""

    def detect(run: SensorRun) -> Detection:
        import anomaly

        cfg = config or anomaly.Config()
        started = time.perf_counter()
        detector = anomaly.train(run.values[: run.train_rows].astype(np.float32), cfg)
        trained = time.perf_counter()
        result = detector.score(run.values.astype(np.float32))
        scored = time.perf_counter()
        flags, seconds = _stage_flags(
            stages, lambda alarms: AlarmStage.for_model(detector, alarms), result
        )
        health = detector.health
        info = {
            "alarm_seconds": seconds,
            "health": {
                "mode_collapse": bool(health["mode_collapse"]),
                "diversity_ratio": float(health["diversity_ratio"]),
                "warnings": list(health["warnings"]),
            },
        }
        return Detection(
            {"": result.is_anomaly, **flags}, trained - started, scored - trained, info
        )

    return detect


def gan_threshold(config=None) -> Detector:
    """The product with its fixed calibrated threshold: the baseline the adaptive stage fixes."""
    return gan_detector(config)


def pca_detector(
    stages: Mapping[str, AlarmConfig] | None = None,
    variance: float = 0.90,
    confidence: float = 0.99,
) -> Detector:
    """PCA T²/Q at fixed control limits (``sensor_peers.PCAMonitor``); the product's alarm
    stages get its score ``max(T²/limit, Q/limit)`` (one column, ``quorum`` None), each
    stream started from the training part's scores."""

    def detect(run: SensorRun) -> Detection:
        started = time.perf_counter()
        monitor = PCAMonitor.fit(run.values[: run.train_rows], variance, confidence)
        trained = time.perf_counter()
        score = monitor.components(run.values).max(axis=1)
        scored = time.perf_counter()
        reference = score[: run.train_rows]
        flags, seconds = _stage_flags(
            stages,
            lambda alarms: AlarmStage(reference, alarms.updated({"quorum": None})),
            score,
        )
        for variant in flags.values():  # the training rows are the stage's reference
            variant[: run.train_rows] = False
        info = {"components": monitor.n_components, "alarm_seconds": seconds}
        return Detection({"": score > 1.0, **flags}, trained - started, scored - trained, info)

    return detect


def iforest_detector() -> Detector:
    """IsolationForest on the training part, ``contamination="auto"`` decision."""

    def detect(run: SensorRun) -> Detection:
        started = time.perf_counter()
        peer = IsolationForestPeer.fit(run.values[: run.train_rows])
        trained = time.perf_counter()
        flags = peer.flags(run.values)
        scored = time.perf_counter()
        return Detection({"": flags}, trained - started, scored - trained)

    return detect


#: The product's adaptive stages measured on the suite: ``+<method>:<semantics>``.
STAGES = tuple(f"{m}:{s}" for m in ("conformal", "dspot") for s in ("event", "state"))


def stage_configs(names) -> dict[str, AlarmConfig]:
    """``[alarms]`` configurations by variant name (``+conformal:state``, ...): the product's
    defaults with the method and semantics named."""
    out = {}
    for name in names:
        method, semantics = name.split(":")
        out[f"+{name}"] = AlarmConfig().updated({"method": method, "semantics": semantics})
    return out


def check_causal(detector: Detector, run: SensorRun, cut: int) -> None:
    """Raise unless the detector's flags on ``run.head(cut)`` equal the first ``cut`` flags
    on the whole run (every variant): no flag may depend on later rows."""
    whole, head = _as_detection(detector(run)), _as_detection(detector(run.head(cut)))
    for name, flags in whole.flags.items():
        if not np.array_equal(np.asarray(flags, bool)[:cut], np.asarray(head.flags[name], bool)):
            raise AssertionError(f"{name or 'flags'} on {run.name} depend on rows after {cut}")


def _as_detection(out) -> Detection:
    return out if isinstance(out, Detection) else Detection({"": np.asarray(out)})


# --- the suite ---------------------------------------------------------------------------


def run_sensor_suite(
    out: Path,
    seeds: Sequence[int],
    runs_per_seed: int,
    detectors: Mapping[str, Detector],
    *,
    csv: bool = False,
    log=None,
) -> dict[str, dict]:
    """Every detector on every run of ``make_suite(seeds, runs_per_seed)``; writes
    ``out/sensor_results.jsonl`` and ``out/sensors.md`` and returns the pooled metrics by
    detector (variant) name."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    runs = make_suite(seeds, runs_per_seed)
    counts: dict[str, list[dict]] = {}
    seconds: dict[str, list[tuple[float, float]]] = {}
    with (out / "sensor_results.jsonl").open("w") as results:
        for run in runs:
            if csv:
                write_run_csv(run, out / "runs" / f"{run.name}.csv")
                write_run_csv(run, out / "runs" / f"{run.name}-train.csv", run.train_rows)
            for name, detector in detectors.items():
                detection = _as_detection(detector(run))
                for suffix, flags in detection.flags.items():
                    variant = name + suffix
                    c = run_counts(run, flags)
                    counts.setdefault(variant, []).append(c)
                    extra = detection.info.get("alarm_seconds", {}).get(suffix, 0.0)
                    timing = (detection.train_seconds, detection.score_seconds + extra)
                    seconds.setdefault(variant, []).append(timing)
                    row = {
                        "run": run.name,
                        "detector": variant,
                        "train_rows": run.train_rows,
                        "rows": len(run),
                        "train_seconds": round(timing[0], 3),
                        "score_seconds": round(timing[1], 3),
                        **c,
                        "info": {k: v for k, v in detection.info.items() if k != "alarm_seconds"},
                    }
                    results.write(json.dumps(row) + "\n")
                    p = pooled([c])
                    log(
                        f"{run.name} {variant}: F1 {p['f1']:.3f} false-alarm "
                        f"{p['false_alarm_rate']:.3f} missed {p['missed_alarm_rate']:.3f} "
                        f"segments {c['detected']}/{c['segments']} false runs "
                        f"{c['false_runs']} ({timing[0]:.1f} s + {timing[1]:.1f} s)"
                    )
    summary = {}
    for variant, cs in counts.items():
        s = pooled(cs)
        train_s = [t for t, _ in seconds[variant]]
        score_s = [t for _, t in seconds[variant]]
        s["train_seconds"] = float(np.nansum(train_s))
        s["score_seconds"] = float(np.nansum(score_s))
        summary[variant] = s
    (out / "sensors.md").write_text(markdown(summary, seeds, runs_per_seed, runs))
    return summary


def markdown(summary: dict[str, dict], seeds, runs_per_seed: int, runs: list[SensorRun]) -> str:
    rows_after = sum(len(r) - r.train_rows for r in runs)
    anomalous = sum(int(r.labels[r.train_rows :].sum()) for r in runs)
    lines = [
        "# Sensor suite",
        "",
        f"Seeds {', '.join(str(s) for s in seeds)} x {runs_per_seed} runs "
        f"({len(runs)} runs, {rows_after:,} scored rows, {anomalous / rows_after:.1%} "
        f"anomalous, {sum(len(r.segments) for r in runs)} segments, "
        f"{sum(len(r.regime_changes) for r in runs)} setpoint changes); each detector trains "
        "on each run's first rows (500-1,000) and flags every later row causally "
        "(`pipelines/bench/sensor_suite.py`). Row and event figures pooled over runs.",
        "",
        "| detector | F1 | precision | recall | false-alarm rate | missed-alarm rate "
        "| segments detected | false alarms / 1k normal rows | event precision "
        "| event recall | event F1 | median delay (rows) | train s | score s |",
        "| --- |" + " ---: |" * 14,
    ]
    for name, s in summary.items():
        lines.append(
            f"| {name} | {s['f1']:.3f} | {s['precision']:.3f} | {s['recall']:.3f} "
            f"| {s['false_alarm_rate']:.3f} | {s['missed_alarm_rate']:.3f} "
            f"| {s['detected']}/{s['segments']} | {s['false_alarms_per_1k_normal']:.2f} "
            f"| {s['event_precision']:.3f} | {s['event_recall']:.3f} | {s['event_f1']:.3f} "
            f"| {s['median_delay']:.0f} | {s['train_seconds']:.1f} | {s['score_seconds']:.1f} |"
        )
    lines += [
        "",
        "Per anomaly kind: segments detected (share of the kind's rows flagged).",
        "",
        "| detector | " + " | ".join(KINDS) + " |",
        "| --- |" + " ---: |" * len(KINDS),
    ]
    for name, s in summary.items():
        cells = [
            f"{k['detected']}/{k['segments']} ({k['row_recall']:.2f})"
            for k in (s["per_kind"][kind] for kind in KINDS)
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


DETECTORS = ("gan", "pca", "iforest")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--runs-per-seed", type=int, default=3)
    parser.add_argument(
        "--detectors", default=",".join(DETECTORS), help=f"comma-separated, of {DETECTORS}"
    )
    parser.add_argument(
        "--steps", type=int, help="the GAN's training.steps (default: the product's)"
    )
    parser.add_argument(
        "--config",
        type=Path,
        help="a TOML configuration for the GAN, e.g. the README's for sensor streams "
        "(default: the product's defaults; its [alarms] is replaced by each of --stages)",
    )
    parser.add_argument(
        "--stages",
        default=",".join(STAGES),
        help="the product's alarm stages applied to the GAN and PCA, comma-separated "
        f"method:semantics (default: {','.join(STAGES)}; '' for none)",
    )
    parser.add_argument(
        "--csv", action="store_true", help="write each run and its training part as CSV under runs/"
    )
    args = parser.parse_args(argv)

    stages = stage_configs([n for n in args.stages.split(",") if n])
    detectors = {}
    for name in args.detectors.split(","):
        if name == "gan":
            import anomaly

            config = anomaly.Config.from_toml(args.config) if args.config else anomaly.Config()
            if args.steps:
                config = config.updated(training={"steps": args.steps})
            detectors["gan"] = gan_detector(config, stages)
        elif name == "pca":
            detectors["pca"] = pca_detector(stages)
        elif name == "iforest":
            detectors["iforest"] = iforest_detector()
        else:
            parser.error(f"unknown detector {name!r}; known: {', '.join(DETECTORS)}")
    started = time.perf_counter()
    run_sensor_suite(args.out, args.seeds, args.runs_per_seed, detectors, csv=args.csv)
    print((args.out / "sensors.md").read_text())
    print(f"{time.perf_counter() - started:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

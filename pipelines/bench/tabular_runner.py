"""The tabular suite's runner: every (seed, dataset, method) on the protocol's TRAIN/TEST split
of :mod:`pipelines.bench.tabular`, one result row per score variant, appended to
``tabular_results.jsonl`` as each fit finishes (so an interrupted run keeps what it did), and
the TEST scores of seed 0 in ``scores_seed0/`` for the ROC plots. Peers come from
:mod:`pipelines.bench.methods`."""

from __future__ import annotations

import json
import math
import time
import traceback
from pathlib import Path

import numpy as np

from pipelines.bench import tabular

GAN_METHODS = ("gan", "gan-bigan")
DEFAULT_PEERS = ("iforest", "ocsvm", "knn", "ecod", "autoencoder", "alad", "anogan", "mo_gaal")
DEFAULT_METHODS = GAN_METHODS + DEFAULT_PEERS


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def _gan_method(
    name: str, gan_steps: int | None, refine_steps: int, gan_config: Path | None = None
):
    """The GAN method ``name`` on the defaults, or on the TOML configuration ``gan_config``
    (one the README documents for a kind of data)."""
    import anomaly
    from pipelines.bench import methods

    formulation = "bigan" if name == "gan-bigan" else "fanogan"
    base = anomaly.Config.from_toml(gan_config) if gan_config else anomaly.Config()
    config = base.updated(model={"formulation": formulation})
    if gan_steps is not None:  # None: the configuration's
        config = config.updated(training={"steps": gan_steps})
    return methods.gan(config, refine_steps=refine_steps)


def run_tabular(
    datasets, seeds, method_names, out: Path, gan_steps=None, refine_steps=10, gan_config=None
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
            prepared[name] = _gan_method(name, gan_steps, refine_steps, gan_config)
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
                    rows, variants, y_test, components = _run_one(name, method, dataset, seed)
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
                if components is not None:  # for label-free studies of the score's weights
                    component_dir = out / "components"
                    component_dir.mkdir(exist_ok=True)
                    np.savez_compressed(
                        component_dir / f"{dataset}__{name}__seed{seed}.npz",
                        y_test=y_test,
                        **components,
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
    if "thresholds" in timings:  # the calibration's realised rate on TEST's normal rows
        normal_scores = np.asarray(variants[""], np.float64)[split.y_test == 0]
        rows[0]["calibration_rows"] = timings["calibration_rows"]
        rows[0]["realised_fpr"] = {
            target: float(np.mean(normal_scores > threshold))
            for target, threshold in timings["thresholds"].items()
        }
    return rows, variants, split.y_test, timings.get("components")


def load_rows(out: Path) -> list[dict]:
    jsonl = out / "tabular_results.jsonl"
    if not jsonl.exists():
        return []
    return [json.loads(line) for line in jsonl.read_text().splitlines() if line.strip()]

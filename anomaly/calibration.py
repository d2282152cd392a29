"""Calibration on held-out normal data: component statistics, threshold, percentiles.

Nothing here looks at labels: the held-out split is normal data the networks never trained
on, so its score distribution is what "normal" looks like to the trained model. The
threshold is the conformal order statistic of those scores at the target false-positive
rate, or, where too few of them lie above it to resolve that rate, a generalised Pareto fit
of their tail (``anomaly.tail``). With cross-fitting (``training.calibration_folds``), models
trained without each fold of the other records score it too, so that every normal record
calibrates the threshold.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable
from dataclasses import replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import pandas as pd
from keras import ops

from anomaly import tables
from anomaly.config import COMPONENTS
from anomaly.drift import DriftSummary
from anomaly.errors import DataError, SchemaError, TrainingError
from anomaly.health import report_warnings
from anomaly.scoring import (
    REFERENCE_QUANTILES,
    ScoringEngine,
    ScoringParams,
    robust_location_scale,
    standardise,
    weighted_score,
)
from anomaly.tail import Tail
from anomaly.windows import records_of

if TYPE_CHECKING:
    from anomaly.detector import Detector


#: Records from which each engine's own location and scale are fitted: with fewer, they
#: are loose enough to move the threshold by more than its calibration resolves.
MIN_STANDARDISING_RECORDS = 20

#: Calibration records are standardised in this many groups, each by other records'
#: statistics (``_other_records``): one each where there are fewer.
STANDARDISING_GROUPS = 20


class _Standardised(NamedTuple):
    """Records' standardised components and scores under one engine's statistics."""

    components: dict[str, np.ndarray]
    scores: np.ndarray


def refuse_records_that_do_not_vary(records: np.ndarray) -> None:
    """A ``DataError`` when every normal record is the same (a stuck sensor's log, a file of
    one repeated row): a model would learn no normal variation from them, and flag every
    record that differs at all (600 of 600 new normal rows in a user's try)."""
    flat = records.reshape(len(records), -1)
    if len(flat) and not (flat != flat[0]).any():
        raise DataError(
            f"the {len(records)} normal records are all the same record: they do not vary "
            "(constant or repeated rows), so there is no normal variation to learn or "
            "calibrate on and every other record would be flagged; use normal data that varies"
        )


def calibrate(
    engine: ScoringEngine,
    held_out: np.ndarray,
    cross_fitted: Iterable[tuple[ScoringEngine, np.ndarray]] = (),
) -> ScoringParams:
    """Fit each component's location and scale on ``held_out``, then the threshold at the
    target FPR. ``cross_fitted`` pairs more engines with the records each never trained on
    (``training.calibration_folds``): each standardises its records by its own statistics,
    each record by statistics of other records (``_other_records``), and the threshold,
    tail and reference values are fitted on all the scores together. It
    is consumed one pair at a time, so that an engine can be let go once it has scored."""
    like = _statistics_records(len(held_out))
    params, deployed = _standardised(engine, held_out, like)
    parts = [deployed]
    for other, rows in cross_fitted:
        parts.append(_standardised(other, rows, like)[1])
        del other  # before the next engine is trained
    scores = np.concatenate([part.scores for part in parts])
    components = {
        name: np.concatenate([part.components[name] for part in parts]) for name in COMPONENTS
    }
    if np.ptp(scores) == 0:
        raise DataError(
            f"the {len(scores)} normal records to calibrate on all score {scores[0]:.4g}: they "
            "do not vary (constant or repeated rows), so no threshold separates anything; "
            "calibrate on normal data that varies"
        )
    tail = Tail.fit(scores, up_to_rate=params.target_fpr)
    return replace(
        params,
        threshold=tail.threshold(params.target_fpr),
        tail=tail.to_json(),
        reference_scores=reference_quantiles(scores),
        reference_components={name: reference_quantiles(components[name]) for name in COMPONENTS},
    )


def _standardised(
    engine: ScoringEngine, records: np.ndarray, like: int
) -> tuple[ScoringParams, _Standardised]:
    """``engine``'s parameters with each component's location and scale fitted on
    ``records``, and the records' standardised components and scores, each group of
    records standardised by the statistics of ``like`` other records (``_other_records``)."""
    raw = engine.raw_components(records)
    params = _with_statistics(engine.params, raw, np.arange(len(records)))
    # As the backend's tensors, so that standardising is one kind of arithmetic (under
    # PyTorch, NumPy arrays and tensors do not add up).
    parts = [
        standardise(
            {name: ops.convert_to_tensor(raw[name][group]) for name in COMPONENTS},
            _with_statistics(engine.params, raw, others),
        )
        for group, others in _other_records(len(records), like)
    ]
    standard = {
        name: np.concatenate([ops.convert_to_numpy(part[name]) for part in parts])
        for name in COMPONENTS
    }
    scores = np.asarray(weighted_score(standard, params), np.float64)
    if not np.isfinite(scores).all():
        raise TrainingError(
            "a trained model (the deployed one, or one of cross-fitting's fold models) scores "
            "normal records it did not train on as NaN or infinite: training diverged (see the "
            "health report's losses); lower training.learning_rate"
        )
    return params, _Standardised(standard, scores)


def _with_statistics(params: ScoringParams, raw: dict, rows: np.ndarray) -> ScoringParams:
    """``params`` with each component's location and scale fitted on ``raw``'s ``rows``."""
    stats = {name: robust_location_scale(raw[name][rows]) for name in COMPONENTS}
    return replace(
        params,
        location={name: loc for name, (loc, _) in stats.items()},
        scale={name: scale for name, (_, scale) in stats.items()},
    )


def _statistics_records(n_held_out: int) -> int:
    """How many other records standardise each calibration record: about as many as the
    deployed model's statistics come from (``n_held_out``), less one group's; at least 2,
    since one record's statistics have no scale."""
    return max(2, n_held_out - math.ceil(n_held_out / min(n_held_out, STANDARDISING_GROUPS)))


def _other_records(n: int, like: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """``n`` records in up to ``STANDARDISING_GROUPS`` consecutive groups, each paired with
    the (up to) ``like`` records that follow it, wrapping round, that are not in it; fewer
    than 3 records are one group, paired with itself (one other record has no scale).

    Why not the records' own statistics: a new record is standardised by the deployed
    model's location and scale, fitted on the held-out records, which it is not one of.
    Standardised by statistics fitted on themselves, the calibration records would vary
    less than new records do, by as much as those statistics are loose, and the threshold
    would fire more often than its target where they come from few records (33 held-out
    records and four folds of 47: 1.35 % at a 1 % target, 0.99 % like this; the test
    ``test_few_held_out_records_keep_the_rate_on_average_over_trainings``)."""
    if n < 3:
        return [(np.arange(n), np.arange(n))]
    order = np.arange(n)
    return [
        (group, np.roll(order, -(group[-1] + 1))[: n - len(group)][:like])
        for group in np.array_split(order, min(n, STANDARDISING_GROUPS))
    ]


def recalibrate(detector: Detector, rows: np.ndarray, entities=None) -> Detector:
    """The same networks calibrated on fresh normal ``rows`` (in time order in time-series
    mode; ``entities`` keeps series apart): component statistics, threshold, tail and
    reference values recomputed on all of them, since the networks never trained on them.
    The fresh rows are the new normal: drift is measured against them from then on
    (``anomaly.drift``). The result is a new model whose metadata names its parent and the
    data's fingerprint."""
    from anomaly.detector import Detector
    from anomaly.training import MIN_RECORDS

    records, rows = fresh_records(detector, rows, entities)
    if len(records) < MIN_RECORDS:
        raise DataError(
            f"{len(records)} normal records to calibrate on; at least {MIN_RECORDS} are needed"
        )
    not_normal = flagged_by_parent(detector, records, "recalibrated")
    refuse_records_that_do_not_vary(records)
    params = calibrate(detector.engine, records)
    health = {**detector.health, "warnings": list(detector.health.get("warnings", []))}
    too_few = resolution_warning(len(records), params.target_fpr, "calibrate on more normal rows")
    report_warnings(health["warnings"], not_normal, too_few)
    metadata = {k: v for k, v in detector.metadata.items() if k != "model_version"}
    metadata.update(calibration_records=int(len(records)), calibration_folds=1)
    metadata["lineage"] = [
        *metadata.get("lineage", []),
        {
            "parent_version": detector.version,
            "recalibrated_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "calibration_records": int(len(records)),
            "calibration_data_sha256": hashlib.sha256(rows.tobytes()).hexdigest(),
        },
    ]
    engine = detector.engine.with_params(params)
    drift_summary = DriftSummary.fit(detector.feature_names, params.reference_scores, rows)
    return Detector(engine, detector.schema, detector.config, metadata, health, drift_summary)


def fresh_records(detector: Detector, rows, entities=None) -> tuple[np.ndarray, np.ndarray]:
    """Fresh normal ``rows`` (an array, or a table as ``train`` takes one: its rows labelled
    normal where it has the model's label column, each entity's series apart) as the records
    ``detector`` scores, and the rows as a float32 array; a ``SchemaError`` or ``DataError``
    naming what does not fit."""
    from anomaly.training import table_records

    window = detector.schema.window
    frame = tables.as_frame(rows)
    index = None
    if frame is not None:
        rows, _, entities, index = table_records(
            frame, detector.config, detector.feature_names, entities
        )
    rows = tables.float32_records(rows, "the rows of normal data")
    if rows.ndim != 2 or rows.shape[1] != len(detector.feature_names):
        raise SchemaError(
            f"calibration rows must be (records x {len(detector.feature_names)} features), "
            f"got shape {rows.shape}"
        )
    if frame is not None and window is None:  # a bad row of a table named by its label
        records = detector.check_records(
            pd.DataFrame(rows, index=index, columns=detector.feature_names)
        )
    else:
        records = detector.check_records(records_of(rows, window, entities))
    return records, rows


#: The share of fresh normal records the model being recalibrated or retrained may flag
#: before it says they may not be normal.
MAX_FLAGGED_BY_PARENT = 0.25


def flagged_by_parent(parent: Detector, records: np.ndarray, becoming: str) -> str | None:
    """A warning when ``parent`` flags more than ``MAX_FLAGGED_BY_PARENT`` of the fresh
    normal ``records``: a model fitted to them no longer flags their kind. Normal operation
    that moved (drift) is what recalibrating and retraining are for, so it warns, and
    ``becoming`` ("recalibrated", "retrained") says what the parent is being."""
    flagged = float(np.mean(parent.score(records).is_anomaly)) if len(records) else 0.0
    if flagged <= MAX_FLAGGED_BY_PARENT:
        return None
    return (
        f"the model {becoming} here flags {flagged:.0%} of these rows as anomalies (its target "
        f"is {parent.engine.params.target_fpr:.2%}): if they are normal operation that moved, "
        "this is what the new model is for; if they hold anomalies, it will not flag their "
        "kind. Check them (anomaly drift, anomaly score) before serving it"
    )


def resolves(records: int, target_fpr: float) -> bool:
    """Whether ``records`` calibration scores expect at least one above the threshold at
    ``target_fpr``, so that the threshold is not a guess from the tail alone."""
    return records * target_fpr >= 1.0


def resolution_warning(records: int, target_fpr: float, remedy: str) -> str | None:
    """A warning when fewer normal records than ``1 / target_fpr`` calibrate the
    threshold: not one of them is expected above it, so its realised rate can be several
    times the target or a fraction of it. (With fewer than ``anomaly.tail.MIN_ORDER_POINTS``
    expected above, it is extrapolated from the tail fit too, which the benchmark measured
    within the goal; below one it is a guess.) ``remedy`` says what the user can do."""
    if resolves(records, target_fpr):
        return None
    return (
        f"the threshold was calibrated on {records} normal records, too few to resolve a "
        f"false-positive rate of {target_fpr:g} (that needs {math.ceil(1 / target_fpr)}): it is "
        "extrapolated from a tail fit, and the rate it realises on new normal data may be "
        f"several times the target; {remedy}"
    )


def reference_quantiles(values: np.ndarray) -> list[float]:
    """``REFERENCE_QUANTILES`` evenly spaced quantiles: a fixed-size picture of normal."""
    quantiles = np.quantile(np.asarray(values, np.float64), np.linspace(0, 1, REFERENCE_QUANTILES))
    return [float(v) for v in quantiles]

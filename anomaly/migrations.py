"""Bundles of earlier formats, brought to the current one as they load.

A change of the bundle format bumps ``anomaly.bundle.BUNDLE_VERSION`` and adds an entry
here: ``MIGRATIONS[n]`` takes the JSON parts of a bundle of version ``n`` to those of version
``n + 1``. Migrations run in memory, on the parts as read, after every file's checksum was
verified as written; the bundle on disk is never rewritten (its checksums, and so its model
version, stay those it was published with). A bundle of version ``n`` goes through every
step from ``n`` to the current version, then is validated as a bundle of that version.

A migration adds what can be derived honestly and marks the rest absent; it never invents
what a model did not record.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from anomaly.drift import DriftSummary

Parts = dict[str, dict]


@dataclass(frozen=True)
class Migration:
    """One step of the format, from a version to the next."""

    adds: tuple[str, ...]
    """The JSON parts the next version added (a bundle of this version has no such file)."""
    reads: tuple[str, ...]
    """The JSON parts ``apply`` reads (named when it fails on a damaged bundle)."""
    apply: Callable[[Parts], Parts]
    """The parts of a bundle of this version -> those of the next."""


def _add_drift_summary(parts: Parts) -> Parts:
    """Version 3 added ``drift.json``. A version-2 bundle kept no training distribution of its
    features, so its summary has none; the score reference comes from the held-out score
    quantiles its ``scoring.json`` kept (``reference_scores``), as a version-3 bundle's does."""
    summary = DriftSummary.fit(
        parts["schema"]["feature_names"], parts["scoring"]["reference_scores"]
    )
    return {**parts, "drift": summary.to_json()}


def _record_saturated_extremes(parts: Parts) -> Parts:
    """Version 4 records what standardising does beyond the clip (``extremes``); every
    model saved before saturated there, and keeps doing so, in its scores and in the
    configuration that retraining it starts from."""
    model = {**parts["config"].get("model", {}), "extremes": "clip"}
    return {
        **parts,
        "preprocessing": {**parts["preprocessing"], "extremes": "clip"},
        "config": {**parts["config"], "model": model},
    }


def _folds_may_be_auto(parts: Parts) -> Parts:
    """Version 5 lets ``training.calibration_folds`` in ``config.json`` be ``"auto"`` (an
    older release would refuse it as damaged, not as later). A version-4 bundle holds the
    number it was trained with, which its retraining keeps."""
    return parts


MIGRATIONS: dict[int, Migration] = {
    2: Migration(adds=("drift",), reads=("scoring", "schema"), apply=_add_drift_summary),
    3: Migration(adds=(), reads=("preprocessing", "config"), apply=_record_saturated_extremes),
    4: Migration(adds=(), reads=(), apply=_folds_may_be_auto),
}

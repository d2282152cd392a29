"""Following a model store (``anomaly.stream.reload``): which version is taken, which refused.

These drive ``StoreWatcher.check`` directly (what its thread does every ``model_poll_s``);
the swap inside the running service, on the real broker, is in ``test_stream_reload``.
"""

from __future__ import annotations

import gc
import json
import shutil
import weakref
from pathlib import Path

import numpy as np
import pytest

import anomaly
from anomaly.errors import BundleError, ConfigError
from anomaly.store import publish
from anomaly.stream import ScoringService, reload
from anomaly.stream.reload import StoreWatcher, load_served_model


@pytest.fixture(scope="module")
def retrained_bundle(tiny_bundle, tiny_bundle_mixing, tmp_path_factory) -> Path:
    """``tiny_bundle`` retrained for a few steps on fresh normal rows: same features."""
    rows = np.random.default_rng(5).normal(size=(1500, 3)) @ tiny_bundle_mixing
    child = anomaly.retrain(anomaly.load(tiny_bundle), rows, steps=20)
    return child.save(tmp_path_factory.mktemp("retrained") / "model")


def _watching(store: Path, **settings) -> tuple[StoreWatcher, list[tuple[int, str]]]:
    refusals: list[tuple[int, str]] = []
    served = load_served_model(store, settings.pop("serving", None))
    watcher = StoreWatcher(
        store,
        served,
        poll_s=60,
        on_refused=lambda version, reason: refusals.append((version, reason)),
        **{"settle_s": 0.0, **settings},
    )
    return watcher, refusals


def _tampered_copy(bundle: Path, store: Path, number: int) -> Path:
    """``bundle`` placed in ``store`` as version ``number`` with one file changed after its
    manifest was written (as a broken copy or an attacker would leave it)."""
    target = store / str(number)
    shutil.copytree(bundle, target)
    scoring = json.loads((target / "scoring.json").read_text())
    scoring["threshold"] = scoring["threshold"] * 0.5
    (target / "scoring.json").write_text(json.dumps(scoring))
    return target


def test_a_published_version_is_loaded_warmed_and_taken_once(
    tiny_bundle, retrained_bundle, tmp_path
):
    store = tmp_path / "store"
    publish(tiny_bundle, store)
    watcher, refusals = _watching(store)
    watcher.check()
    assert watcher.take() is None  # nothing newer than what serves

    publish(retrained_bundle, store)
    watcher.check()
    ready = watcher.take()
    assert ready is not None and ready.version == "2" and ready.store_version == 2
    assert ready.detector.version == anomaly.load(retrained_bundle).version
    watcher.check()
    assert watcher.take() is None and refusals == []


def test_a_copy_that_pauses_between_files_is_not_refused_until_its_files_are_left_alone(
    tiny_bundle, retrained_bundle, tmp_path
):
    """A tester copied a version in one file every 1.6 s under a 1 s poll: each pause was
    two looks at the same files, a refusal each, counted and alerted on (seven for one
    copy), though the finished copy then served."""
    store = tmp_path / "store"
    publish(tiny_bundle, store)
    now = [0.0]
    watcher, refusals = _watching(store, settle_s=3.0, clock=lambda: now[0])
    copy = store / "2"
    copy.mkdir()
    for name in sorted(p.name for p in retrained_bundle.iterdir())[:3]:
        shutil.copy2(retrained_bundle / name, copy / name)  # keeps the originals' mtimes
        watcher.check()
        watcher.check()  # the same files twice: a pause in the copy
    assert refusals == []
    now[0] += 3.0  # the files left alone for settle_s
    watcher.check()
    assert len(refusals) == 1 and refusals[0][0] == 2  # left alone, still incomplete
    for source in retrained_bundle.iterdir():
        shutil.copy2(source, copy / source.name)
    watcher.check()
    assert watcher.take().version == "2"


def test_a_tampered_version_is_refused_once_and_retried_when_its_files_change(
    tiny_bundle, retrained_bundle, tmp_path
):
    store = tmp_path / "store"
    publish(tiny_bundle, store)
    watcher, refusals = _watching(store)
    broken = _tampered_copy(retrained_bundle, store, 2)
    watcher.check()
    assert refusals == []  # maybe a copy under way: judged when its files stay the same
    watcher.check()
    watcher.check()
    assert watcher.take() is None
    assert len(refusals) == 1 and refusals[0][0] == 2
    assert "checksum mismatch" in refusals[0][1] and "scoring.json" in refusals[0][1]

    shutil.copy2(retrained_bundle / "scoring.json", broken / "scoring.json")  # repaired
    watcher.check()
    ready = watcher.take()
    assert ready is not None and ready.version == "2" and len(refusals) == 1


def test_a_version_of_an_unknown_bundle_format_is_refused_naming_what_this_release_reads(
    tiny_bundle, retrained_bundle, tmp_path
):
    store = tmp_path / "store"
    publish(tiny_bundle, store)
    watcher, refusals = _watching(store)
    future = store / "2"
    shutil.copytree(retrained_bundle, future)
    manifest = json.loads((future / "manifest.json").read_text())
    (future / "manifest.json").write_text(json.dumps({**manifest, "bundle_version": 99}))
    watcher.check()
    watcher.check()
    assert watcher.take() is None
    assert "bundle version 99 was written by a later release" in refusals[0][1]


@pytest.mark.filterwarnings("ignore::anomaly.health.TrainingWarning")  # a throwaway 10-step model
def test_a_version_for_other_features_is_refused_and_the_next_good_one_taken(
    tiny_bundle, retrained_bundle, tmp_path
):
    rows = np.random.default_rng(1).normal(size=(600, 5))
    config = anomaly.Config().updated(training={"steps": 10, "calibration_folds": 1})
    other = anomaly.train(rows, config, feature_names=[f"g{i}" for i in range(5)])
    store = tmp_path / "store"
    publish(tiny_bundle, store)
    watcher, refusals = _watching(store)
    # Put there by hand: publish refuses it (tests/test_store.py).
    other.save(tmp_path / "other")
    shutil.copytree(tmp_path / "other", store / "2")
    watcher.check()
    watcher.check()
    assert watcher.take() is None
    assert refusals and "features (5) are not the stream's (8" in refusals[0][1]
    served = load_served_model(store)  # a new replica serves the store's stream, not version 2
    assert served.version == "1"
    assert [number for number, _ in served.refused] == [2]
    assert "store's stream: its features (5) are not the stream's (8" in served.refused[0][1]
    with pytest.raises(BundleError, match=r"version 1\)\. A store serves one stream"):
        publish(tmp_path / "other", store)  # nor does version 2 make a second stream

    publish(retrained_bundle, store)
    watcher.check()
    assert watcher.take().version == "3"


def test_a_pin_rolls_back_and_removing_the_latest_falls_back_to_the_one_before(
    tiny_bundle, retrained_bundle, tmp_path
):
    store = tmp_path / "store"
    publish(tiny_bundle, store)
    publish(retrained_bundle, store)
    pinned, _ = _watching(store, pinned=1, serving=2)
    pinned.check()
    assert pinned.take().version == "1"

    latest, _ = _watching(store)
    assert latest.take() is None
    shutil.rmtree(store / "2")
    latest.check()
    assert latest.take().version == "1"


def test_serving_a_pinned_version_that_the_store_lacks_fails_naming_what_it_holds(
    tiny_bundle, tmp_path
):
    store = tmp_path / "store"
    publish(tiny_bundle, store)
    with pytest.raises(BundleError, match="has no version 4; it holds 1"):
        load_served_model(store, 4)
    with pytest.raises(BundleError, match="is a bundle, not a model store"):
        load_served_model(tiny_bundle, 1)
    assert load_served_model(tiny_bundle).version == anomaly.load(tiny_bundle).version


def test_a_version_still_being_copied_in_is_taken_once_complete_and_never_refused(
    tiny_bundle, retrained_bundle, tmp_path
):
    store = tmp_path / "store"
    publish(tiny_bundle, store)
    watcher, refusals = _watching(store)
    partial = store / "2"
    partial.mkdir()
    for name in sorted(p.name for p in retrained_bundle.iterdir())[:3]:  # a cp -r under way
        shutil.copy(retrained_bundle / name, partial / name)
    watcher.check()
    assert watcher.take() is None
    shutil.rmtree(partial)
    shutil.copytree(retrained_bundle, partial)
    watcher.check()
    assert watcher.take().version == "2" and refusals == []


def test_a_number_published_again_after_its_version_was_removed_is_loaded_afresh(
    tiny_bundle, retrained_bundle, tmp_path
):
    store = tmp_path / "store"
    publish(tiny_bundle, store)
    publish(tiny_bundle, store)
    watcher, _ = _watching(store)  # serving version 2: the first model
    shutil.rmtree(store / "2")
    # The fix, under the same number, by hand: publish never gives a number again.
    shutil.copytree(retrained_bundle, store / "2")
    watcher.check()
    ready = watcher.take()
    assert ready.version == "2"
    assert ready.detector.version == anomaly.load(retrained_bundle).version


def test_a_new_replica_serves_the_latest_version_that_loads(
    tiny_bundle, retrained_bundle, tmp_path
):
    store = tmp_path / "store"
    publish(tiny_bundle, store)
    _tampered_copy(retrained_bundle, store, 2)
    served = load_served_model(store)
    assert served.version == "1"
    assert [number for number, _ in served.refused] == [2]
    assert "checksum mismatch" in served.refused[0][1]
    watcher, refusals = _watching(store)
    watcher.check()
    watcher.check()
    assert watcher.take() is None and refusals == []  # refused at start, not again


def _service(store: Path, alarms=None) -> ScoringService:
    """A ScoringService following ``store`` (not started: no broker needed to swap)."""
    config = anomaly.Config().updated(serve={"model": str(store), "model_poll_s": 60}).serve
    return ScoringService(load_served_model(store), config, alarms=alarms)


def test_a_version_whose_alarm_settings_conflict_is_refused_and_the_service_keeps_its_own(
    tiny_bundle, retrained_bundle, tmp_path, monkeypatch
):
    store = tmp_path / "store"
    publish(tiny_bundle, store)
    first = anomaly.load(tiny_bundle).version

    def alarms_for(detector):
        if detector.version != first:  # e.g. its [alarms] conflict with the --config file's
            raise ConfigError("alarms.exit_level 0.97 must be below alarms.level 0.95")
        return detector.config.alarms

    monkeypatch.setattr(reload, "SETTLE_S", 0.0)  # judged at the second look
    service = _service(store, alarms_for)
    publish(retrained_bundle, store)
    service._watcher.check()
    service._watcher.check()
    service._advance(None)  # between batches, none in flight
    assert service.served.version == "1"
    assert service.metrics.model_load_failures._value.get() == 1


def test_a_swap_frees_the_previous_model(tiny_bundle, retrained_bundle, tmp_path):
    store = tmp_path / "store"
    publish(tiny_bundle, store)
    service = _service(store)
    previous = weakref.ref(service.detector)
    publish(retrained_bundle, store)
    service._watcher.check()
    gc.freeze()  # as the running service does after start
    try:
        service._advance(None)  # between batches, none in flight
        assert service.served.version == "2"
        assert previous() is None
    finally:
        gc.unfreeze()


@pytest.fixture(scope="module")
def nan_bundle(tiny_bundle, tmp_path_factory) -> Path:
    """``tiny_bundle`` with one weight of its generator NaN, saved the usual way (as a
    training run that diverged leaves it): it verifies, and would score every record NaN."""
    detector = anomaly.load(tiny_bundle)
    generator = detector.engine.networks["generator"]
    weights = generator.get_weights()
    weights[-1][0] = np.nan
    generator.set_weights(weights)
    return detector.save(tmp_path_factory.mktemp("nan") / "model")


def test_a_version_that_scores_nan_is_refused_at_a_swap_and_at_start(
    tiny_bundle, nan_bundle, tmp_path
):
    """It was swapped in: every result then had a null score and is_anomaly false, with no
    refusal, no metric and no log line to say detection had stopped. publish refuses it
    (the load does); one put in the store by hand is refused by the service."""
    store = tmp_path / "store"
    publish(tiny_bundle, store)
    watcher, refusals = _watching(store)
    with pytest.raises(BundleError, match="holds weights that are not finite"):
        publish(nan_bundle, store)
    shutil.copytree(nan_bundle, store / "2")
    watcher.check()
    watcher.check()
    assert watcher.take() is None
    assert [number for number, _ in refusals] == [2] and "not finite" in refusals[0][1]

    served = load_served_model(store)  # a new replica
    assert served.version == "1" and [number for number, _ in served.refused] == [2]
    with pytest.raises(BundleError, match="not finite"):
        load_served_model(nan_bundle)

"""Hot reload: the service follows a model store and swaps new versions in between batches.

Serving a store (``anomaly.store``: ``STORE/1/``, ``STORE/2/``, ...), a ``StoreWatcher``
thread looks at the store every ``serve.model_poll_s`` seconds. The version to serve is the
pinned one (``serve.model_version``) or else the highest the store holds, so deleting a bad
latest version also rolls back. When that differs from what is being served (another
number, or the same number holding other content: a version deleted and its number
published again), the watcher loads it (checksums, bundle version), checks that it can
score this stream (the same feature names in the same order, the same window length, a
calibrated threshold), has the service prepare its per-model state (``prepare``: the alarm
stage its ``[alarms]`` settings make, the drift window) and warms it (its scoring graph
compiled for every batch shape), all off the scoring path; the loop then takes it between
two batches (``take``). A batch is scored by one model from start to end, so a swap neither
loses a record nor scores one twice, and each result names the version that scored it.

A version that fails any of those steps is refused: one log line, one count
(``anomaly_model_load_failures_total``), and the current version keeps serving. A version
whose files are still changing (a copy under way) is not refused but looked at again at the
next poll: a failure counts only once the version's files are the same as at the look
before and have looked the same for ``SETTLE_S``. A refusal holds until the version's files
change, so a broken version is not loaded again on every poll.

At start (``load_served_model``) the latest version that loads and scores the store's stream
(that of its oldest readable version, as ``publish`` requires) is served: a newer one that
does not is refused as above, so a new replica joins the ones already serving.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from anomaly import bundle, store
from anomaly.errors import AnomalyError, BundleError
from anomaly.stream.errors import describe_error

if TYPE_CHECKING:
    from anomaly.detector import Detector

log = logging.getLogger("anomaly.stream")

#: Longest reason a refusal's log line quotes (a damaged file can make a long one).
MAX_REASON_CHARS = 500
#: How long a version's files must have looked the same (names, sizes, modification times)
#: before a failure to load it counts: a copy that pauses between files (one file a second
#: and a half, a tester's) was refused at each pause, each refusal counted and alerted on.
#: Measured on this process's clock, not the file system's.
SETTLE_S = 10.0


@dataclass(frozen=True)
class ServedModel:
    """A model ready to score the stream, and the version results name it by: its number in
    a store, or the bundle's content id when a single bundle is served. ``prepared`` is the
    per-model state the service made for it (``StoreWatcher``'s ``prepare``); ``refused``
    the newer versions of its store that could not be served at start."""

    detector: Detector
    version: str
    store_version: int | None = None
    prepared: Any = None
    refused: tuple[tuple[int, str], ...] = ()


def load_served_model(path: str | Path, pinned: int | None = None) -> ServedModel:
    """The model ``serve.model`` names: a bundle, a store's ``pinned`` version, or the latest
    version of a store that loads (newer ones that do not are logged and listed in
    ``refused``); a ``BundleError`` when none can be served."""

    if not store.is_store(path) or pinned is not None:
        detector = _load_servable(store.resolve(path, pinned))  # a pin on a bundle: an error
        if pinned is None:
            return ServedModel(detector, detector.version)
        return ServedModel(detector, str(pinned), pinned)
    numbers = store.versions(path)
    if not numbers:
        store.version_path(path)  # raises: a store with no version yet
    refused: list[tuple[int, str]] = []
    for number in reversed(numbers):
        try:
            detector = _load_servable(store.version_path(path, number))
        except BundleError as exc:
            refused.append((number, _logged_refusal(Path(path), number, "none", str(exc))))
            continue
        difference = store.stream_difference(path, detector.schema, before=number)
        if difference is not None:  # put there by hand: publish refuses it
            reason = f"it cannot score the records of the store's stream: {difference}"
            refused.append((number, _logged_refusal(Path(path), number, "none", reason)))
            continue
        return ServedModel(detector, str(number), number, refused=tuple(refused))
    reasons = "; ".join(f"version {n}: {reason}" for n, reason in refused)
    raise BundleError(f"{path}: no version of this model store can be served ({reasons})")


def _load_servable(bundle_path: Path) -> Detector:
    """The bundle's detector, or a ``BundleError`` when it does not load or cannot score."""
    import anomaly

    detector = anomaly.load(bundle_path)
    problem = scoring_problem(detector)
    if problem is not None:
        raise BundleError(f"{bundle_path}: {problem}")
    return detector


def warm_up(detector: Detector, max_batch: int = 1) -> None:
    """Compile the scoring graph now, for every batch shape up to ``max_batch`` records
    (backends that compile per shape pad batches to powers of two), rather than on the
    scoring path."""
    sizes, size = {max_batch}, 1
    while size < max_batch:
        sizes.add(size)
        size *= 2
    for size in sorted(sizes):
        detector.score(np.zeros((size, *detector.schema.record_shape), np.float32))


def scoring_problem(detector: Detector) -> str | None:
    """Why ``detector`` cannot score, or None: a record at its training data's mean must get
    a finite score. Weights that are not finite are refused at load; finite ones can still
    overflow to NaN, and every result would then have a null score, never flagged."""
    shape = (1, *detector.schema.record_shape)
    typical = np.broadcast_to(detector.engine.standardizer.mean, shape).astype(np.float32)
    if np.isfinite(detector.score(typical).scores).all():
        return None
    return (
        "it scores a record at its training data's mean as NaN: its networks are damaged "
        "(weights that are not finite?)"
    )


def incompatibility(serving: Detector, candidate: Detector) -> str | None:
    """Why ``candidate`` cannot take over ``serving``'s stream, or None when it can."""
    difference = candidate.schema.stream_difference(serving.schema)
    if difference:
        return difference
    if not np.isfinite(candidate.threshold):
        return "it has no calibrated threshold"
    return None


class StoreWatcher:
    """Looks for the version to serve in ``store`` every ``poll_s`` seconds, in a thread of
    its own, and has it loaded, checked, prepared and warmed for ``take``.

    ``prepare(detector)`` makes the service's per-model state (an ``AnomalyError`` refuses
    the version); ``warm_batch`` is the largest batch to compile for;
    ``on_refused(version, reason)`` is called once per refusal (from the watcher's thread).
    """

    def __init__(
        self,
        store_path: str | Path,
        serving: ServedModel,
        *,
        poll_s: float,
        pinned: int | None = None,
        prepare: Callable[[Detector], Any] = lambda detector: None,
        warm_batch: int = 1,
        on_refused: Callable[[int, str], None] = lambda version, reason: None,
        settle_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.store = Path(store_path)
        self.poll_s = poll_s
        self.pinned = pinned
        self._serving = serving
        self._prepare = prepare
        self._warm_batch = warm_batch
        self._on_refused = on_refused
        self._settle_s = SETTLE_S if settle_s is None else settle_s
        self._clock = clock  # how long a version's files were left alone
        self._ready: ServedModel | None = None
        # version -> fingerprint of its files when refused, and when last looked at
        self._refused = {number: self._fingerprint(number) for number, _ in serving.refused}
        self._looked: dict[int, tuple[tuple, float]] = {}  # version -> (fingerprint, since)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="model-store-watcher")
        self._thread.daemon = True

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def take(self) -> ServedModel | None:
        """The version to swap in now, if one is ready (it then counts as served)."""
        with self._lock:
            ready, self._ready = self._ready, None
            if ready is not None:
                self._serving = ready
            return ready

    def check(self) -> None:
        """One look at the store (what the thread does every ``poll_s``)."""
        target = self._target()
        with self._lock:
            current, pending = self._serving, self._ready
        if target is None or self._holds(current, target):
            with self._lock:
                if self._ready is pending:
                    self._ready = None  # a version readied, then removed or unpinned
            return
        if pending is not None and self._holds(pending, target):
            return
        candidate = self._load(target, current)
        if candidate is not None:
            with self._lock:
                self._ready = candidate

    def _watch(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self.check()
            except Exception:  # noqa: BLE001 (the watcher must outlive any one look)
                log.exception("event=model_watch_failed store=%s", self.store)

    def _target(self) -> int | None:
        """The version to serve: the pin, else the highest not refused (as it is now)."""
        try:
            numbers = store.versions(self.store)
        except OSError as exc:
            log.warning("event=model_store_unreadable store=%s error=%s", self.store, exc)
            return None
        if self.pinned is not None:
            return self.pinned if self.pinned in numbers else None
        for number in reversed(numbers):
            if self._refused.get(number) != self._fingerprint(number):
                return number
        return None

    def _holds(self, model: ServedModel, number: int) -> bool:
        """Whether ``model`` is what the store's version ``number`` holds now."""
        if model.store_version != number:
            return False
        try:
            return bundle.bundle_version_id(self.store / str(number)) == model.detector.version
        except OSError:
            return True  # being replaced: look again at the next poll

    def _load(self, number: int, current: ServedModel) -> ServedModel | None:
        import anomaly

        fingerprint = self._fingerprint(number)
        if self._refused.get(number) == fingerprint:
            return None
        started = time.monotonic()
        prepared = None
        try:
            detector = anomaly.load(store.version_path(self.store, number))
            reason = incompatibility(current.detector, detector) or scoring_problem(detector)
            if reason is None:
                prepared = self._prepare(detector)
                warm_up(detector, self._warm_batch)
        except AnomalyError as exc:
            reason = str(exc)
        except Exception as exc:  # noqa: BLE001 (a hostile bundle may fail anywhere)
            reason = f"cannot be loaded: {describe_error(exc)}"
        if reason is not None:
            now = self._clock()
            if self._looked.get(number, (None,))[0] != fingerprint:
                self._looked[number] = (fingerprint, now)  # first seen, or changed
            since = self._looked[number][1]
            settled = (  # seen the same at an earlier look, and long enough
                fingerprint == self._fingerprint(number)
                and since < now
                and now - since >= self._settle_s
            )
            if not settled:  # maybe a copy under way: judge it once its files are left alone
                log.info("event=model_not_settled store=%s version=%d", self.store, number)
                return None
            self._refused[number] = fingerprint
            self._on_refused(number, _logged_refusal(self.store, number, current.version, reason))
            return None
        log.info(
            "event=model_loaded store=%s version=%d load_s=%.2f",
            self.store,
            number,
            time.monotonic() - started,
        )
        return ServedModel(detector, str(number), number, prepared)

    def _fingerprint(self, number: int) -> tuple:
        """Names, sizes and modification times of a version's files: a change means try
        again."""
        folder = self.store / str(number)
        try:
            return tuple(
                sorted(
                    (f.name, f.stat().st_size, f.stat().st_mtime_ns)
                    for f in folder.iterdir()
                    if f.is_file()
                )
            )
        except OSError:
            return ()


def _logged_refusal(store_path: Path, number: int, serving: str, reason: str) -> str:
    """Log a refused version (one line, the reason cut to ``MAX_REASON_CHARS``); return the
    reason as logged."""
    if len(reason) > MAX_REASON_CHARS:
        reason = reason[: MAX_REASON_CHARS - 3] + "..."
    log.error(
        "event=model_refused store=%s version=%d serving=%s reason=%s",
        store_path,
        number,
        serving,
        reason,
    )
    return reason

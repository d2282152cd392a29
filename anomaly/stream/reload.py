"""Hot reload: the service follows a model store and swaps new versions in between batches.

Serving a store (``anomaly.store``: ``STORE/1/``, ``STORE/2/``, ...), a ``StoreWatcher``
thread looks at the store every ``serve.model_poll_s`` seconds. The version to serve is the
pinned one (``serve.model_version``) or else the highest the store holds, so deleting a bad
latest version also rolls back. When that differs from the version being served, the
watcher loads it (checksums, bundle version), checks that it can score this stream (the
same feature names in the same order, the same window length, a calibrated threshold) and
warms it (its scoring graph compiled), all off the scoring path; the loop then takes it
between two batches (``take``). A batch is scored by one model from start to end, so a swap
neither loses a record nor scores one twice, and each result names the version that scored
it.

A version that fails any of those steps is refused: one log line, one count
(``anomaly_model_load_failures_total``), and the current version keeps serving. A refusal
holds until the version's files change (a copy still under way finishes, a bad file is
replaced), so a broken version is not loaded again on every poll.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from anomaly import store
from anomaly.errors import AnomalyError
from anomaly.stream.errors import describe_error

if TYPE_CHECKING:
    from anomaly.detector import Detector

log = logging.getLogger("anomaly.stream")


@dataclass(frozen=True)
class ServedModel:
    """A model ready to score the stream, and the version results name it by: its number in
    a store, or the bundle's content id when a single bundle is served."""

    detector: Detector
    version: str
    store_version: int | None = None


def load_served_model(path: str | Path, pinned: int | None = None) -> ServedModel:
    """The model ``serve.model`` names: a bundle, or a store's ``pinned`` version (default:
    its latest); a ``BundleError`` when it cannot be served."""
    import anomaly

    if not store.is_store(path):
        detector = anomaly.load(store.resolve(path, pinned))  # a pin on a bundle is an error
        return ServedModel(detector, detector.version)
    bundle_path = store.version_path(path, pinned)
    number = int(bundle_path.name)
    return ServedModel(anomaly.load(bundle_path), str(number), number)


def warm_up(detector: Detector) -> None:
    """Compile the scoring graph now rather than on the first batch."""
    detector.score(np.zeros((1, *detector.schema.record_shape), np.float32))


def incompatibility(serving: Detector, candidate: Detector) -> str | None:
    """Why ``candidate`` cannot take over ``serving``'s stream, or None when it can."""
    if candidate.feature_names != serving.feature_names:
        return (
            f"its features ({len(candidate.feature_names)}) are not the stream's "
            f"({len(serving.feature_names)}, in the same order)"
        )
    if candidate.schema.window != serving.schema.window:
        return f"its window is {candidate.schema.window}, the stream's {serving.schema.window}"
    if not np.isfinite(candidate.threshold):
        return "it has no calibrated threshold"
    return None


class StoreWatcher:
    """Looks for the version to serve in ``store`` every ``poll_s`` seconds, in a thread of
    its own, and has it loaded, checked and warmed for ``take``.

    ``on_refused(version, reason)`` is called once per refusal (from the watcher's thread).
    """

    def __init__(
        self,
        store_path: str | Path,
        serving: ServedModel,
        *,
        poll_s: float,
        pinned: int | None = None,
        on_refused: Callable[[int, str], None] = lambda version, reason: None,
    ):
        self.store = Path(store_path)
        self.poll_s = poll_s
        self.pinned = pinned
        self._serving = serving
        self._on_refused = on_refused
        self._ready: ServedModel | None = None
        self._refused: dict[int, tuple] = {}  # version -> fingerprint of its files then
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
            current = self._serving
            pending = self._ready
        if target is None or target == current.store_version:
            with self._lock:
                if self._ready is pending:
                    self._ready = None  # a version readied, then removed or unpinned
            return
        if pending is not None and pending.store_version == target:
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

    def _load(self, number: int, current: ServedModel) -> ServedModel | None:
        import anomaly

        fingerprint = self._fingerprint(number)
        if self._refused.get(number) == fingerprint:
            return None
        started = time.monotonic()
        try:
            detector = anomaly.load(store.version_path(self.store, number))
            reason = incompatibility(current.detector, detector)
            if reason is None:
                warm_up(detector)
        except AnomalyError as exc:
            reason = str(exc)
        except Exception as exc:  # noqa: BLE001 (a hostile bundle may fail anywhere)
            reason = f"cannot be loaded: {describe_error(exc)}"
        if reason is not None:
            self._refused[number] = fingerprint
            log.error(
                "event=model_refused store=%s version=%d serving=%s reason=%s",
                self.store,
                number,
                current.version,
                reason,
            )
            self._on_refused(number, reason)
            return None
        log.info(
            "event=model_loaded store=%s version=%d load_s=%.2f",
            self.store,
            number,
            time.monotonic() - started,
        )
        return ServedModel(detector, str(number), number)

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

"""Multivariate sensor runs with labelled collective anomalies, for the sensor suite.

A run is a machine's sensor log: 8 channels, one row per sample, driven by 3 latent process
factors through a mixing matrix, with sensor noise, slow drift, a work cycle, and setpoint
changes during normal operation. The first ``train_rows`` rows are normal operation only (the
"first minutes" a user trains on); later rows hold five collective anomalies, one of each kind
in ``KINDS``, and at least one setpoint change that is normal but never seen in training.
Everything is drawn from ``numpy.random.SeedSequence([seed, run])`` (one child stream each for
the events, the process, the setpoints and the anomalies): the same (seed, run) gives the same
arrays on every machine.

The process (units: a factor's values are of order 1; a channel's factor-driven part has a
standard deviation of about 1 before its physical offset and scale)

* ``load``: the setpoint, plus a work cycle (a sinusoid of amplitude 1 and period 150-400
  rows, so that the training part sees 1.25 to 6 cycles), plus an AR(1) wander
  (phi 0.98, a time constant of 50 rows, stationary std 0.4): the training part holds 10-20
  independent stretches of it, so its range is learnable from the first rows.
* ``temperature``: the load seen through a first-order lag of 30 rows (heat takes time),
  plus the ambient temperature: a slow AR(1) (phi 0.995, std 0.3) and a swing of amplitude
  0.5 with a period of three runs (the day outside, mostly a slow trend within one run). The
  ambient is part of the drift (``drift=False`` leaves it out).
* ``flow``: its own setpoint plus an AR(1) (phi 0.9, std 1), independent of the load.
* The 8 channels (power, current, motor temperature, bearing temperature, coolant
  temperature, flow, pressure, vibration) mix the factors through ``MIXING`` (rows normalised
  so each channel's factor-driven std is about 1), perturbed by +-10 % per run so that runs
  differ; each channel then gets a physical offset and scale (so a detector must standardise).
* Sensor noise: white, std ``sigma_c`` drawn in [0.15, 0.3] per channel (3 to 7 times below
  the factor-driven spread, as for decent industrial sensors): the channels are strongly
  correlated, and a deviation of a few ``sigma_c`` is invisible in one channel's range but
  plain in the residual of the others.
* Drift: each channel's offset moves linearly by up to +-1.5 ``sigma_c`` over the run and its
  gain by up to +-3 % (sensor ageing): small enough to be normal, large enough that a detector
  frozen at the training part sees it by the run's end.
* Setpoint changes (``regime_changes``, 1 or 2 per run after the training part): the load's
  setpoint (or the flow's, one in three) ramps over 20-60 rows to a new level 1 to 2 units
  away (1.2 to 2.5 times the load's normal std) and stays there, never further than 2.5 from
  the training level. Labelled normal. This is the issue's failure: a model fitted on the
  first rows sees every later row of the new operating point as new.

The anomalies (``KINDS``; one segment of each kind per run, in random order; lengths
log-uniform in 20-250 rows: "tens to a few hundred"; at least ``GAP`` rows between any two
events, anomalies and setpoint ramps alike, and ``GAP`` rows after the training part). Their
sizes are in units of the affected channel's sensor noise ``sigma_c`` and were fixed from the
noise level before any detector was run: a PCA residual (the Q statistic over 5 residual
dimensions of noise std ~0.2 in standardised units) sees a 2-sigma change on one channel on a
few rows only, and a 5-sigma change on most rows; so each kind spans findable and hard
segments, and neither a trivial detector finds all of them nor none is findable.

* ``level_shift``: 1 or 2 channels offset by 2-5 ``sigma_c`` (random sign) for the segment.
* ``stuck``: 1 channel holds its last value before the segment (no noise, no movement): it
  shows only as far as the process moves during the segment, so short stuck segments are hard.
* ``broken_correlation``: 1 channel stops following its factors and follows its own AR(1)
  walk (phi 0.98) from its last value, with the channel's normal mean and std (as measured on
  the training part): its marginal range stays normal, its relation to the others breaks.
* ``oscillation``: 1 or 2 channels gain a sinusoid of period 6-20 rows (far from the work
  cycle's 150-400 and the factors' time constants) and amplitude 2-5 ``sigma_c``.
* ``noise_burst``: 1 to 3 channels' noise std multiplied by 3-6.

Labels are 1 exactly on the rows of the anomaly segments (``segments`` holds
``(start, stop, kind)``, stop exclusive); setpoint ramps are in ``regime_changes`` and are
normal. Sizes: ``train_rows`` 500-1000, then 3,500-4,500 more rows, of which about 11 % are
anomalous on average (5 segments of 91 rows on average; 6-16 % in the first runs drawn).

Seeds. ``make_suite(seeds, runs_per_seed)`` draws ``runs_per_seed`` runs per seed. A setting
of the product tuned on this suite must be tuned on several seeds (0-4, say) and confirmed on
seeds it was never run on (100-104, say), never on one seed: one seed's 3-5 runs hold only
15-25 anomaly segments.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

KINDS = ("level_shift", "stuck", "broken_correlation", "oscillation", "noise_burst")
CHANNELS = (
    "power",
    "current",
    "motor_temp",
    "bearing_temp",
    "coolant_temp",
    "flow",
    "pressure",
    "vibration",
)
#: Channel loadings on (load, temperature, flow); each row is normalised to unit length.
MIXING = np.array(
    [
        [1.0, 0.1, 0.2],  # power
        [0.9, -0.2, 0.1],  # current (resistance rises with temperature)
        [0.5, 0.8, 0.0],  # motor temperature
        [0.3, 0.9, 0.2],  # bearing temperature
        [0.2, 0.7, -0.6],  # coolant temperature (more flow, cooler)
        [0.2, 0.0, 1.0],  # flow
        [0.4, 0.1, 0.8],  # pressure
        [0.7, 0.2, 0.5],  # vibration
    ]
)
#: Rows between any two events (anomaly segments and setpoint ramps), and after training.
GAP = 100
_SEGMENT_LENGTH = (20, 250)
_TRAIN_ROWS = (500, 1000)
_TEST_ROWS = (3500, 4500)
_NOISE = (0.15, 0.3)


@dataclass(frozen=True)
class SensorRun:
    """One sensor log: ``values`` (rows x channels), ``labels`` (1 on anomalous rows),
    ``segments`` ((start, stop, kind), stop exclusive), ``train_rows`` (the first rows, all
    normal, a detector may train on), ``regime_changes`` ((start, stop) of each setpoint ramp,
    normal rows), and the run's ``name``."""

    values: np.ndarray
    labels: np.ndarray
    segments: list[tuple[int, int, str]]
    train_rows: int
    name: str
    regime_changes: list[tuple[int, int]] = field(default_factory=list)
    channels: tuple[str, ...] = CHANNELS

    def __len__(self) -> int:
        return len(self.values)

    def head(self, rows: int) -> SensorRun:
        """The run's first ``rows`` rows (segments clipped): what a causal detector has seen."""
        if rows < self.train_rows:
            raise ValueError(f"head({rows}) would cut the {self.train_rows} training rows")
        return SensorRun(
            self.values[:rows],
            self.labels[:rows],
            [(a, min(b, rows), k) for a, b, k in self.segments if a < rows],
            self.train_rows,
            f"{self.name}[:{rows}]",
            [(a, min(b, rows)) for a, b in self.regime_changes if a < rows],
            self.channels,
        )


def make_run(
    seed: int,
    run: int = 0,
    *,
    train_rows: int | None = None,
    test_rows: int | None = None,
    kinds: tuple[str, ...] = KINDS,
    regime_changes: int | None = None,
    drift: bool = True,
) -> SensorRun:
    """One run drawn from ``SeedSequence([seed, run])``; ``None`` draws the parameter as the
    module docstring says. ``kinds=()``, ``regime_changes=0`` and ``drift=False`` (no sensor
    drift, no ambient temperature) give a stationary normal run, for checking a detector's
    false-alarm rate."""
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown:
        raise ValueError(f"unknown anomaly kind(s) {unknown}; known: {list(KINDS)}")
    # one stream per part, so that a run with other options (no setpoint change, no drift)
    # keeps the same process and noise: only what the option changes differs
    events_rng, process_rng, setpoint_rng, anomaly_rng = (
        np.random.default_rng(child) for child in np.random.SeedSequence([seed, run]).spawn(4)
    )
    rng = events_rng
    n_train = int(rng.integers(*_TRAIN_ROWS, endpoint=True)) if train_rows is None else train_rows
    n_test = int(rng.integers(*_TEST_ROWS, endpoint=True)) if test_rows is None else test_rows
    n = n_train + n_test
    n_regimes = int(rng.integers(1, 2, endpoint=True)) if regime_changes is None else regime_changes
    order = [str(k) for k in rng.permutation(list(kinds))]
    events = _place_events(rng, n_train, n, order, n_regimes)
    segments = [(a, b, k) for a, b, k in events if k != "regime"]
    ramps = [(a, b) for a, b, k in events if k == "regime"]

    load_set, flow_set = _setpoints(setpoint_rng, n, ramps)
    rng = process_rng
    t = np.arange(n, dtype=np.float64)
    period = rng.uniform(150, 400)
    cycle = np.sin(2 * np.pi * t / period + rng.uniform(0, 2 * np.pi))
    load = load_set + cycle + _ar1(rng, n, 0.98, 0.4)
    ambient = _ar1(rng, n, 0.995, 0.3) + 0.5 * np.sin(
        2 * np.pi * t / (3 * n) + rng.uniform(0, 2 * np.pi)
    )
    temperature = _lag(load, 30.0) + (ambient if drift else 0.0)
    flow = flow_set + _ar1(rng, n, 0.9, 1.0)
    factors = np.column_stack([load, temperature, flow])

    mixing = MIXING * rng.uniform(0.9, 1.1, MIXING.shape)
    mixing /= np.linalg.norm(mixing, axis=1, keepdims=True)
    clean = factors @ mixing.T  # rows x channels, factor-driven part
    # the factors' spread differs (the load's cycle, the temperature's lag): rescale so each
    # channel's factor-driven part has std ~1 on the training part, where it is measured
    clean_train = clean[:n_train]
    clean = (clean - clean_train.mean(axis=0)) / clean_train.std(axis=0)

    d = len(CHANNELS)
    sigma = rng.uniform(*_NOISE, d)
    noise = rng.standard_normal((n, d)) * sigma
    offset_end = rng.uniform(-1.5, 1.5, d) * sigma * drift
    gain_end = rng.uniform(-0.03, 0.03, d) * drift
    ramp = (t / (n - 1))[:, None]
    signal = clean * (1.0 + gain_end * ramp) + offset_end * ramp + noise
    normal_mean = signal[:n_train].mean(axis=0)
    normal_std = signal[:n_train].std(axis=0)

    for start, stop, kind in segments:
        _inject(anomaly_rng, signal, noise, start, stop, kind, sigma, normal_mean, normal_std)

    physical_offset = rng.uniform(-50, 200, d).round()
    physical_scale = 10.0 ** rng.uniform(-1, 1.5, d)
    values = physical_offset + physical_scale * signal
    labels = np.zeros(n, np.int8)
    for start, stop, _ in segments:
        labels[start:stop] = 1
    return SensorRun(values, labels, segments, n_train, f"s{seed}-r{run}", ramps)


def make_suite(seeds, runs_per_seed: int) -> list[SensorRun]:
    """``runs_per_seed`` runs for each seed, in order: runs ``(seed, 0..runs_per_seed-1)``."""
    return [make_run(int(seed), run) for seed in seeds for run in range(runs_per_seed)]


def write_run_csv(run: SensorRun, path: str | Path, rows: int | None = None) -> Path:
    """The run (its first ``rows`` rows, e.g. ``run.train_rows``) as CSV: ``t``, ``ch0`` ...
    ``ch7``, ``label``. By hand: ``anomaly train --data train.csv --id-column t
    --label-column label --out model`` on the training part, then ``anomaly score --model
    model --data run.csv --out scores.csv`` on the whole run."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    stop = len(run) if rows is None else rows
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["t", *[f"ch{i}" for i in range(run.values.shape[1])], "label"])
        for i in range(stop):
            writer.writerow([i, *(f"{v:.6g}" for v in run.values[i]), int(run.labels[i])])
    return path


def _ar1(rng, n: int, phi: float, std: float) -> np.ndarray:
    """An AR(1) series with stationary std ``std``, started in its stationary distribution."""
    shocks = rng.standard_normal(n) * std * np.sqrt(1 - phi**2)
    out = np.empty(n)
    out[0] = rng.standard_normal() * std
    for i in range(1, n):
        out[i] = phi * out[i - 1] + shocks[i]
    return out


def _lag(x: np.ndarray, tau: float) -> np.ndarray:
    """First-order lag (exponential smoothing with time constant ``tau`` rows)."""
    a = 1.0 / tau
    out = np.empty_like(x)
    out[0] = x[0]
    for i in range(1, len(x)):
        out[i] = out[i - 1] + a * (x[i] - out[i - 1])
    return out


def _place_events(rng, n_train: int, n: int, kinds: list[str], n_regimes: int):
    """Non-overlapping (start, stop, kind) events after the training part, ``GAP`` rows
    apart; anomalies first (so they always fit), then the setpoint ramps."""
    lo, hi = np.log(_SEGMENT_LENGTH[0]), np.log(_SEGMENT_LENGTH[1])
    placed: list[tuple[int, int, str]] = []
    for kind in [*kinds, *["regime"] * n_regimes]:
        if kind == "regime":
            length = int(rng.integers(20, 60, endpoint=True))
        else:
            length = int(np.exp(rng.uniform(lo, hi)))
        for _ in range(10_000):
            start = int(rng.integers(n_train + GAP, n - GAP - length))
            stop = start + length
            if all(stop + GAP <= a or b + GAP <= start for a, b, _ in placed):
                placed.append((start, stop, kind))
                break
        else:  # the default sizes leave room many times over; a short test_rows may not
            raise ValueError(f"no room for a {kind} event of {length} rows: test_rows too small")
    return sorted(placed)


def _setpoints(rng, n: int, ramps: list[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
    """Load and flow setpoints: 0 in training, then each ramp moves one of them 1-2 units
    (never beyond +-2.5) and it stays there."""
    load, flow = np.zeros(n), np.zeros(n)
    for start, stop in ramps:
        series = flow if rng.random() < 1 / 3 else load
        old = series[start]
        step = rng.uniform(1.0, 2.0) * rng.choice([-1.0, 1.0])
        if abs(old + step) > 2.5:
            step = -step
        new = old + step
        series[start:stop] = np.linspace(old, new, stop - start, endpoint=False)
        series[stop:] = new
    return load, flow


def _inject(rng, signal, noise, start, stop, kind, sigma, normal_mean, normal_std) -> None:
    """Write one anomaly into ``signal`` (rows x channels, before the physical scaling)."""
    d = signal.shape[1]
    rows = stop - start
    if kind == "level_shift":
        for c in rng.choice(d, int(rng.integers(1, 2, endpoint=True)), replace=False):
            signal[start:stop, c] += rng.uniform(2, 5) * sigma[c] * rng.choice([-1.0, 1.0])
    elif kind == "stuck":
        c = int(rng.integers(d))
        signal[start:stop, c] = signal[start - 1, c]
    elif kind == "broken_correlation":
        c = int(rng.integers(d))
        phi = 0.98
        walk = np.empty(rows)
        level = signal[start - 1, c] - normal_mean[c]
        shocks = rng.standard_normal(rows) * normal_std[c] * np.sqrt(1 - phi**2)
        for i in range(rows):
            level = phi * level + shocks[i]
            walk[i] = level
        signal[start:stop, c] = normal_mean[c] + walk
    elif kind == "oscillation":
        period = rng.uniform(6, 20)
        phase = rng.uniform(0, 2 * np.pi)
        wave = np.sin(2 * np.pi * np.arange(rows) / period + phase)
        for c in rng.choice(d, int(rng.integers(1, 2, endpoint=True)), replace=False):
            signal[start:stop, c] += rng.uniform(2, 5) * sigma[c] * wave
    elif kind == "noise_burst":
        for c in rng.choice(d, int(rng.integers(1, 3, endpoint=True)), replace=False):
            factor = rng.uniform(3, 6)
            # the row's own noise scaled by the factor: std factor * sigma on those rows
            signal[start:stop, c] += (factor - 1.0) * noise[start:stop, c]
    else:  # pragma: no cover - make_run checks the kinds
        raise ValueError(kind)

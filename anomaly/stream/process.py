"""The service as a process: settings, logging, signals and a bounded exit.

``run_service`` is what ``anomaly serve`` calls: it resolves the settings (command line >
``ANOMALY_SERVE_*`` environment > TOML ``[serve]`` > defaults), loads the model (a bundle,
or a store's latest or pinned version, ``reload``), resolves the alarm stage's settings
(``ANOMALY_ALARMS_*`` > TOML ``[alarms]`` > the model's, for each version served) and runs
``serve``. ``serve`` runs a ``ScoringService`` in the foreground until SIGTERM or SIGINT:
the batch in hand is finished, results flushed, offsets committed and the clients closed;
if that takes longer than ``shutdown_timeout_s`` the process exits anyway (status 1), and a
second signal exits at once.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from anomaly.config import AlarmConfig, ServeConfig
from anomaly.errors import ConfigError
from anomaly.stream.reload import ServedModel, load_served_model
from anomaly.stream.service import ScoringService
from anomaly.stream.settings import resolve_alarm_config, resolve_serve_config

if TYPE_CHECKING:
    from anomaly.detector import Detector

log = logging.getLogger("anomaly.stream")

#: Extra seconds the exit watchdog grants beyond ``shutdown_timeout_s``.
WATCHDOG_GRACE_S = 1.0


def run_service(config_path: str | None = None, **overrides: Any) -> None:
    """Resolve the settings, load the model and serve it until SIGTERM/SIGINT."""
    config = resolve_serve_config(config_path, overrides)
    if not config.model:
        raise ConfigError(
            "no model to serve: pass --model DIR, set ANOMALY_SERVE_MODEL or `model` in the "
            "[serve] section of the configuration file"
        )
    configure_logging()
    model = load_served_model(config.model, config.model_version)
    serve(model, config, lambda detector: resolve_alarm_config(detector.config.alarms, config_path))


def serve(
    model: Detector | ServedModel,
    config: ServeConfig,
    alarms: AlarmConfig | Callable[[Detector], AlarmConfig] | None = None,
) -> None:
    """Run the scoring service in the foreground until SIGTERM or SIGINT (main thread only
    installs the signal handlers; elsewhere call ``ScoringService.stop``). ``alarms``
    defaults to the model's ``[alarms]``."""
    service = ScoringService(model, config, alarms=alarms)
    service.start()
    if threading.current_thread() is not threading.main_thread():
        service.run()
        return
    signals = {signal.SIGTERM: "SIGTERM", signal.SIGINT: "SIGINT"}
    received: list[int] = []

    def on_signal(number, _frame):
        if received:
            os._exit(128 + number)  # second signal: the user insists
        received.append(number)
        service.stop(reason=signals.get(number, str(number)))
        timer = threading.Timer(
            config.shutdown_timeout_s + WATCHDOG_GRACE_S, _exit_overdue, [config]
        )
        timer.daemon = True
        timer.start()

    previous = {number: signal.signal(number, on_signal) for number in signals}
    try:
        service.run()
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def _exit_overdue(config: ServeConfig) -> None:
    log.error(
        "event=shutdown_overdue timeout_s=%.1f (exiting without a clean close)",
        config.shutdown_timeout_s,
    )
    logging.shutdown()
    os._exit(1)


def configure_logging(level: int = logging.INFO) -> None:
    """One line per event on stderr, ``key=value`` fields; kafka-python's and librdkafka's
    chatter above INFO."""
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(
            logging.Formatter("%(asctime)s level=%(levelname)s logger=%(name)s %(message)s")
        )
        root.addHandler(handler)
    root.setLevel(level)
    logging.getLogger("kafka").setLevel(logging.WARNING)
    logging.getLogger("librdkafka").setLevel(logging.WARNING)

"""The Kafka scoring service: consume records, score them in micro-batches, produce results.

    from anomaly.stream import serve
    serve(anomaly.load("model/"), anomaly.Config().serve)   # until SIGTERM / SIGINT

or from the command line, ``anomaly serve --model model/ --bootstrap-servers HOST:PORT ...``.
At-least-once delivery, a dead-letter topic for bad records, Prometheus metrics on
``/metrics`` with ``/healthz`` and ``/readyz`` (see ``service``, ``messages`` and
``metrics``), on kafka-python or on librdkafka (``[serve] client``; ``transport``). This is
the only part of the package that imports ``kafka``, ``confluent_kafka`` (only with
``client = "confluent"``) and ``prometheus_client``.
"""

from anomaly.stream.errors import StreamError
from anomaly.stream.messages import REASONS
from anomaly.stream.process import run_service, serve
from anomaly.stream.service import ScoringService
from anomaly.stream.settings import resolve_serve_config

__all__ = [
    "REASONS",
    "ScoringService",
    "StreamError",
    "resolve_serve_config",
    "run_service",
    "serve",
]

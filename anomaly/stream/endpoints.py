"""The service's HTTP endpoint: ``/metrics`` (Prometheus), ``/healthz`` and ``/readyz``.

``/healthz`` answers 200 while the scoring loop is alive (running and not stuck in one
iteration for long), 503 otherwise: a liveness probe restarts a dead or hung service.
``/readyz`` answers 200 once the model is loaded and input partitions are assigned, 503
before that, between rebalances and while shutting down: a readiness probe.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from anomaly.stream.errors import StreamError


class MetricsServer:
    """Serves the three endpoints from a daemon thread until ``close``."""

    def __init__(
        self,
        registry: CollectorRegistry,
        host: str,
        port: int,
        alive: Callable[[], bool],
        ready: Callable[[], bool],
    ):
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's naming)
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._reply(200, generate_latest(registry), CONTENT_TYPE_LATEST)
                elif path == "/healthz":
                    ok = alive()
                    self._reply(200 if ok else 503, b"ok\n" if ok else b"scoring loop not alive\n")
                elif path == "/readyz":
                    ok = ready()
                    self._reply(200 if ok else 503, b"ready\n" if ok else b"not ready\n")
                else:
                    self._reply(404, b"not found; try /metrics, /healthz or /readyz\n")

            def _reply(
                self, status: int, body: bytes, content_type: str = "text/plain; charset=utf-8"
            ):
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format, *args):  # noqa: A002 (scrapes are not events)
                pass

        try:
            self._server = ThreadingHTTPServer((host, port), Handler)
        except OSError as exc:
            raise StreamError(
                f"cannot listen on {host}:{port} for /metrics: {exc}; choose another metrics_port "
                "(0 picks a free one)"
            ) from None
        self._server.daemon_threads = True
        self.host = host
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="anomaly-metrics", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

"""The service's HTTP endpoint: ``/metrics`` (Prometheus), ``/healthz`` and ``/readyz``.

``/healthz`` answers 200 while the scoring loop is alive (running and not stuck in one
iteration for long), 503 otherwise: a liveness probe restarts a dead or hung service.
``/readyz`` answers 200 once the model is loaded, the broker is reachable and input
partitions are assigned; 503 before that, between rebalances, while the broker is lost and
while shutting down: a readiness probe.

The endpoint is safe to expose beyond the pod:

- **Bounded connections.** At most ``max_connections`` are served at once; one more is
  answered ``503`` (plain HTTP) or closed (TLS) at once, never queued.
- **Bounded time.** A connection is closed ``idle_timeout_s`` after it was accepted, whether
  it is idle, sends its request a byte at a time (slowloris), or reads its answer slowly; a
  scrape takes milliseconds. So clients holding every connection stop blocking scrapes
  after ``idle_timeout_s`` at most.
- **Optional TLS** (``certfile`` / ``keyfile``), with the handshake done in the connection's
  own thread under the same deadline (``prometheus_client.start_http_server`` does it in the
  accept loop, where one silent client stops every scrape).
- **Optional HTTP basic authentication** of ``/metrics`` (``basic_auth_username`` and a
  password read once, at start, from ``basic_auth_password_file``), compared in constant
  time. ``/healthz`` and ``/readyz`` stay open, so Kubernetes probes need no credential; they
  say no more than "ok" or "not ready".

``/metrics`` itself is ``prometheus_client.make_wsgi_app``: OpenMetrics when asked for,
gzip, ``name[]`` filters.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from wsgiref.simple_server import WSGIRequestHandler

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

from anomaly.config import ServeConfig
from anomaly.stream.errors import StreamError

_TEXT = "text/plain; charset=utf-8"
_REALM = 'Basic realm="anomaly metrics", charset="UTF-8"'
#: What a connection beyond the bound gets (plain HTTP only: TLS has no handshake yet).
_BUSY = (
    b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n"
    b"Content-Length: 21\r\nConnection: close\r\n\r\ntoo many connections\n"
)


def _default(key: str):
    return ServeConfig.model_fields[key].default


class MetricsServer:
    """Serves the three endpoints from a daemon thread until ``close``.

    ``certfile`` (PEM certificate chain; ``keyfile`` its private key, unless the key is in
    ``certfile``) turns on TLS. ``basic_auth_username`` with ``basic_auth_password_file``
    (the password is the file's content without a trailing newline) turns on basic auth of
    ``/metrics``. Bad files, or one of a pair without the other, raise ``StreamError``.
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        host: str,
        port: int,
        alive: Callable[[], bool],
        ready: Callable[[], bool],
        *,
        certfile: str | None = None,
        keyfile: str | None = None,
        basic_auth_username: str | None = None,
        basic_auth_password_file: str | None = None,
        idle_timeout_s: float = _default("metrics_idle_timeout_s"),
        max_connections: int = _default("metrics_max_connections"),
    ):
        if idle_timeout_s <= 0 or max_connections < 1:
            raise StreamError("metrics_idle_timeout_s must be > 0 and metrics_max_connections >= 1")
        context = _tls_context(certfile, keyfile)
        credentials = _credentials(basic_auth_username, basic_auth_password_file)
        app = _app(registry, alive, ready, credentials)
        try:
            family = socket.getaddrinfo(
                host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
            )[0][0]
            self._server = _BoundedServer(
                (host, port),
                family=family,
                ssl_context=context,
                timeout_s=idle_timeout_s,
                max_connections=max_connections,
            )
        except OSError as exc:
            raise StreamError(
                f"cannot listen on {host}:{port} for /metrics: {exc}; choose another metrics_port "
                "(0 picks a free one)"
            ) from None
        self._server.set_app(app)
        self.host = host
        self.port = self._server.server_address[1]
        self.scheme = "https" if context else "http"
        poll = min(0.5, max(0.05, idle_timeout_s / 5))
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": poll},
            name="anomaly-metrics",
            daemon=True,
        )
        self._thread.start()

    @property
    def refused_connections(self) -> int:
        """Connections closed at once because ``max_connections`` were open."""
        return self._server.refused

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def _tls_context(certfile: str | None, keyfile: str | None) -> ssl.SSLContext | None:
    if certfile is None:
        if keyfile is not None:
            raise StreamError("metrics_keyfile is set without metrics_certfile; set both for TLS")
        return None
    # Server-side defaults of the ssl module: TLS 1.2 or later, its vetted cipher list.
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(certfile, keyfile)
    except (OSError, ssl.SSLError) as exc:
        raise StreamError(
            f"cannot load the metrics TLS certificate {certfile}"
            + (f" with key {keyfile}" if keyfile else "")
            + f": {exc}; metrics_certfile must be a PEM certificate (chain) and "
            "metrics_keyfile its private key"
        ) from None
    return context


def _credentials(username: str | None, password_file: str | None) -> tuple[bytes, bytes] | None:
    """SHA-256 digests of the expected user and password (equal lengths for compare_digest)."""
    if username is None and password_file is None:
        return None
    if username is None or password_file is None:
        raise StreamError(
            "metrics basic auth needs both metrics_basic_auth_username and "
            "metrics_basic_auth_password_file"
        )
    if not username or ":" in username:
        raise StreamError("metrics_basic_auth_username must be non-empty and hold no ':'")
    try:
        password = Path(password_file).read_text(encoding="utf-8").rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as exc:
        # The message names the file, never its content.
        raise StreamError(
            f"cannot read metrics_basic_auth_password_file {password_file}: "
            f"{type(exc).__name__}: {getattr(exc, 'strerror', None) or 'not UTF-8 text'}"
        ) from None
    if not password:
        raise StreamError(f"metrics_basic_auth_password_file {password_file} is empty")
    return _digest(username.encode()), _digest(password.encode())


def _digest(value: bytes) -> bytes:
    return hashlib.sha256(value).digest()


def _authorised(header: str | None, credentials: tuple[bytes, bytes]) -> bool:
    scheme, _, token = (header or "").partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        decoded = base64.b64decode(token.strip(), validate=True)
    except (binascii.Error, ValueError):
        return False
    user, colon, password = decoded.partition(b":")
    # Both comparisons always run, on digests of equal length: no timing difference tells
    # a wrong user from a wrong password, or how much of either was right.
    user_ok = hmac.compare_digest(_digest(user), credentials[0])
    password_ok = hmac.compare_digest(_digest(password), credentials[1])
    return bool(colon) & user_ok & password_ok


def _app(
    registry: CollectorRegistry,
    alive: Callable[[], bool],
    ready: Callable[[], bool],
    credentials: tuple[bytes, bytes] | None,
) -> Callable:
    metrics = make_wsgi_app(registry)
    #: path -> (probe, body when it answers yes, body when no)
    probes = {
        "/healthz": (alive, b"ok\n", b"scoring loop not alive\n"),
        "/readyz": (ready, b"ready\n", b"not ready\n"),
    }

    def reply(start_response, status: str, body: bytes, headers=()) -> Iterable[bytes]:
        start_response(
            status,
            [("Content-Type", _TEXT), ("Content-Length", str(len(body))), *headers],
        )
        return [body]

    def app(environ, start_response):
        """HEAD (uptime checkers) answers as GET does, without the body."""
        if environ.get("REQUEST_METHOD") != "HEAD":
            return answer(environ, start_response)
        body = answer({**environ, "REQUEST_METHOD": "GET"}, start_response)
        if hasattr(body, "close"):
            body.close()
        return []

    def answer(environ, start_response):
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            if credentials is not None and not _authorised(
                environ.get("HTTP_AUTHORIZATION"), credentials
            ):
                return reply(
                    start_response,
                    "401 Unauthorized",
                    b"unauthorized\n",
                    [("WWW-Authenticate", _REALM)],
                )
            return metrics(environ, start_response)
        if environ.get("REQUEST_METHOD") != "GET":
            return reply(start_response, "405 Method Not Allowed", b"use GET\n", [("Allow", "GET")])
        if path in probes:
            probe, yes, no = probes[path]
            ok = probe()
            return reply(
                start_response, "200 OK" if ok else "503 Service Unavailable", yes if ok else no
            )
        return reply(
            start_response, "404 Not Found", b"not found; try /metrics, /healthz or /readyz\n"
        )

    return app


class _Discard:
    """wsgiref's error stream: a client that hangs up or times out is not an event."""

    def write(self, text: str) -> None:
        pass

    def flush(self) -> None:
        pass


class _Handler(WSGIRequestHandler):
    """One request per connection (HTTP/1.0), nothing logged."""

    def log_message(self, format, *args):  # noqa: A002 (scrapes are not events)
        pass

    def get_stderr(self):
        return _Discard()


class _BoundedServer(ThreadingWSGIServer):
    """prometheus_client's thread-per-connection WSGI server, with a bound on open
    connections, a deadline per connection and TLS wrapped in the connection's thread."""

    def __init__(
        self,
        address: tuple[str, int],
        *,
        family: int,
        ssl_context: ssl.SSLContext | None,
        timeout_s: float,
        max_connections: int,
    ):
        self.address_family = family
        self.ssl_context = ssl_context
        self.timeout_s = timeout_s
        self.max_connections = max_connections
        self.refused = 0
        #: Accepted socket -> [socket in use (the TLS one once wrapped), deadline].
        self._open: dict[socket.socket, list] = {}
        self._lock = threading.Lock()
        super().__init__(address, _Handler)

    def process_request(self, request, client_address):
        with self._lock:
            full = len(self._open) >= self.max_connections
            if not full:
                self._open[request] = [request, time.monotonic() + self.timeout_s]
        if full:
            self.refused += 1
            self._refuse(request)
        else:
            super().process_request(request, client_address)  # a new thread

    def _refuse(self, request: socket.socket) -> None:
        if self.ssl_context is None:
            try:
                request.setblocking(False)
                request.send(_BUSY)  # fits any fresh socket's send buffer
            except OSError:
                pass
        super().shutdown_request(request)

    def finish_request(self, request, client_address):
        """Runs in the connection's thread: set the deadline's timeout, do TLS, serve."""
        request.settimeout(self.timeout_s)
        if self.ssl_context is None:
            self.RequestHandlerClass(request, client_address, self)
            return
        conn = self.ssl_context.wrap_socket(
            request, server_side=True, do_handshake_on_connect=False
        )
        try:
            with self._lock:
                entry = self._open.get(request)
                if entry is None:  # the deadline passed already
                    return
                entry[0] = conn  # so the deadline reaches the TLS socket's handshake
            conn.do_handshake()
            self.RequestHandlerClass(conn, client_address, self)
        finally:
            self._forget(request)
            try:
                conn.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            conn.close()

    def shutdown_request(self, request):
        self._forget(request)  # before the client can see the close, so it can reconnect
        super().shutdown_request(request)

    def _forget(self, request) -> None:
        with self._lock:
            self._open.pop(request, None)

    def service_actions(self):
        """Between accepts (every poll interval): end connections past their deadline."""
        now = time.monotonic()
        with self._lock:
            for request in [r for r, (_, deadline) in self._open.items() if deadline <= now]:
                sock, _ = self._open.pop(request)
                try:  # wakes the connection's thread; it then closes the socket
                    socket.socket.shutdown(sock, socket.SHUT_RDWR)
                except OSError:
                    pass

    def handle_error(self, request, client_address):
        pass  # timeouts, resets and failed handshakes are the client's; nothing to report

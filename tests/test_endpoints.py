"""The metrics endpoint is safe to expose: idle and slow connections are closed after the
timeout, connections beyond the bound are turned away at once and stop blocking scrapes as
soon as they go, TLS and basic auth work with a real client. Real sockets throughout."""

from __future__ import annotations

import base64
import shutil
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter

from anomaly.stream.endpoints import MetricsServer
from anomaly.stream.errors import StreamError
from tests._support import unavailable

HOST = "127.0.0.1"


def _registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    Counter("anomaly_probe_total", "A counter the tests look for.", registry=registry).inc()
    return registry


@pytest.fixture
def serve():
    servers = []

    def start(**options) -> MetricsServer:
        server = MetricsServer(_registry(), HOST, 0, lambda: True, lambda: True, **options)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


def _get(url: str, *, context=None, headers=None, timeout=5.0):
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def _scrape(server: MetricsServer, **kwargs):
    return _get(f"{server.scheme}://{HOST}:{server.port}/metrics", **kwargs)


def _wait_closed(sock: socket.socket, limit: float) -> float:
    """Seconds until the server closes ``sock`` (EOF or reset); fails after ``limit``."""
    started = time.monotonic()
    sock.settimeout(limit)
    try:
        while sock.recv(4096):
            pass
    except ConnectionResetError:
        pass
    except TimeoutError:
        pytest.fail(f"the server kept the connection open for over {limit} s")
    return time.monotonic() - started


def test_scrape_and_probes_answer_over_plain_http(serve):
    server = serve()
    status, headers, body = _scrape(server)
    assert status == 200
    assert b"anomaly_probe_total 1.0" in body
    assert headers["Content-Type"].startswith("text/plain")
    assert _get(f"http://{HOST}:{server.port}/healthz")[:3:2] == (200, b"ok\n")
    assert _get(f"http://{HOST}:{server.port}/readyz")[:3:2] == (200, b"ready\n")
    assert _get(f"http://{HOST}:{server.port}/nothing")[0] == 404


def test_head_answers_as_get_without_a_body_and_other_methods_are_refused(serve):
    """Uptime checkers ask with HEAD; /metrics answered it 405."""
    server = serve()
    for path, status in (("/metrics", 200), ("/healthz", 200), ("/nothing", 404)):
        with socket.create_connection((HOST, server.port), timeout=5) as sock:
            sock.sendall(f"HEAD {path} HTTP/1.0\r\nHost: {HOST}\r\n\r\n".encode())
            reply = b""
            while chunk := sock.recv(4096):
                reply += chunk
        head, _, body = reply.partition(b"\r\n\r\n")
        assert head.split(b"\r\n")[0].split(b" ")[1] == str(status).encode(), path
        assert body == b"", path
    request = urllib.request.Request(f"http://{HOST}:{server.port}/healthz", method="POST")
    with pytest.raises(urllib.error.HTTPError, match="405"):
        urllib.request.urlopen(request, timeout=5)


def test_idle_connection_is_closed_after_the_idle_timeout(serve):
    server = serve(idle_timeout_s=0.5)
    with socket.create_connection((HOST, server.port)) as idle:
        waited = _wait_closed(idle, limit=5.0)
    assert 0.4 <= waited < 2.0


def test_slowloris_request_is_closed_at_the_timeout_though_it_keeps_sending(serve):
    server = serve(idle_timeout_s=0.6)
    with socket.create_connection((HOST, server.port)) as slow:
        started = time.monotonic()
        slow.sendall(b"GET /metrics HTTP/1.1\r\n")
        slow.settimeout(0.1)
        closed = False
        while time.monotonic() - started < 5.0:  # one header byte every 0.1 s, never done
            try:
                slow.sendall(b"X")
                if slow.recv(4096) == b"":
                    closed = True
                    break
            except TimeoutError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
        elapsed = time.monotonic() - started
    assert closed, "a client trickling its headers kept its connection"
    assert 0.5 <= elapsed < 2.5


def test_connections_beyond_the_bound_are_refused_and_scrapes_work_once_they_go(serve):
    server = serve(idle_timeout_s=1.0, max_connections=3)
    holders = [socket.create_connection((HOST, server.port)) for _ in range(3)]
    try:
        # Each holder is being served (its thread waits for a request) before the next one.
        extra = socket.create_connection((HOST, server.port))
        extra.settimeout(2.0)
        started = time.monotonic()
        answer = b""
        try:
            while chunk := extra.recv(4096):
                answer += chunk
        except ConnectionResetError:
            pass
        extra.close()
        assert time.monotonic() - started < 1.0, "an extra connection was queued, not refused"
        assert answer == b"" or answer.startswith(b"HTTP/1.0 503")
        assert server.refused_connections >= 1

        for holder in holders:  # the slowloris clients time out ...
            _wait_closed(holder, limit=5.0)
        status, _, body = _scrape(server)  # ... and the next scrape is answered
        assert status == 200 and b"anomaly_probe_total" in body
    finally:
        for holder in holders:
            holder.close()


@pytest.fixture(scope="module")
def certificate(tmp_path_factory) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        unavailable("openssl is needed to make a test certificate")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
            "-nodes", "-days", "1", "-subj", "/CN=localhost",
            "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


def test_scrape_over_tls_with_a_self_signed_certificate(serve, certificate):
    cert, key = certificate
    server = serve(certfile=str(cert), keyfile=str(key))
    trusting = ssl.create_default_context(cafile=str(cert))

    status, _, body = _scrape(server, context=trusting)
    assert server.scheme == "https"
    assert status == 200 and b"anomaly_probe_total 1.0" in body
    with pytest.raises(urllib.error.URLError):  # a client that does not trust it refuses
        _scrape(server, context=ssl.create_default_context())


def test_tls_client_that_never_shakes_hands_does_not_block_scrapes(serve, certificate):
    cert, key = certificate
    server = serve(certfile=str(cert), keyfile=str(key), idle_timeout_s=1.0)
    with socket.create_connection((HOST, server.port)) as silent:
        status, _, _ = _scrape(server, context=ssl.create_default_context(cafile=str(cert)))
        assert status == 200
        _wait_closed(silent, limit=5.0)


def test_bad_certificate_files_fail_at_start_naming_the_file(tmp_path):
    missing = tmp_path / "missing.pem"
    with pytest.raises(StreamError, match="missing.pem"):
        MetricsServer(_registry(), HOST, 0, lambda: True, lambda: True, certfile=str(missing))


@pytest.fixture
def password_file(tmp_path) -> Path:
    file = tmp_path / "password"
    file.write_text("s3cret:with colon\n")  # mounted secrets often end in a newline
    return file


def _basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def test_basic_auth_refuses_missing_or_wrong_credentials_and_accepts_right_ones(
    serve, password_file
):
    server = serve(basic_auth_username="prometheus", basic_auth_password_file=str(password_file))

    for headers in (
        None,
        _basic("prometheus", "wrong"),
        _basic("someone", "s3cret:with colon"),
        _basic("prometheus", "s3cret:with colon\n"),
        {"Authorization": "Bearer s3cret"},
        {"Authorization": "Basic not-base64!"},
    ):
        status, response_headers, body = _scrape(server, headers=headers)
        assert status == 401, headers
        assert response_headers["WWW-Authenticate"].startswith('Basic realm="anomaly metrics"')
        assert b"anomaly_probe_total" not in body

    status, _, body = _scrape(server, headers=_basic("prometheus", "s3cret:with colon"))
    assert status == 200 and b"anomaly_probe_total 1.0" in body
    # Probes need no credential.
    assert _get(f"http://{HOST}:{server.port}/readyz")[0] == 200


def test_basic_auth_over_tls(serve, certificate, password_file):
    cert, key = certificate
    server = serve(
        certfile=str(cert),
        keyfile=str(key),
        basic_auth_username="prometheus",
        basic_auth_password_file=str(password_file),
    )
    context = ssl.create_default_context(cafile=str(cert))
    assert _scrape(server, context=context)[0] == 401
    right = _basic("prometheus", "s3cret:with colon")
    assert _scrape(server, context=context, headers=right)[0] == 200


def test_basic_auth_needs_a_readable_nonempty_password_file_and_never_shows_it(tmp_path):
    def start(**options):
        return MetricsServer(_registry(), HOST, 0, lambda: True, lambda: True, **options)

    with pytest.raises(StreamError, match="both"):
        start(basic_auth_username="prometheus")
    with pytest.raises(StreamError, match="nope"):
        start(basic_auth_username="prometheus", basic_auth_password_file=str(tmp_path / "nope"))
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(StreamError, match="is empty"):
        start(basic_auth_username="prometheus", basic_auth_password_file=str(empty))
    binary = tmp_path / "binary"
    binary.write_bytes(b"\xff\xfehunter2")
    with pytest.raises(StreamError) as caught:
        start(basic_auth_username="prometheus", basic_auth_password_file=str(binary))
    assert "hunter2" not in str(caught.value)

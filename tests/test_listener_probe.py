"""``listener_probe`` against peers that are not Kafka listeners, on real sockets: whatever
they send, the probe says "no Kafka listener here" (None), within its time, and never
raises (the secured broker's listeners are asked in ``tests/test_stream_startup.py``)."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from anomaly.stream import listener_probe

TIMEOUT_S = 1.0


@contextlib.contextmanager
def _peer(answer: Callable[[socket.socket], None]) -> Iterator[str]:
    """A TCP server on a free port that reads what it is sent and then runs ``answer`` on
    each connection; yields its ``host:port``."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    done = threading.Event()

    def serve() -> None:
        while not done.is_set():
            try:
                connection, _ = server.accept()
            except TimeoutError:
                continue
            with connection:
                with contextlib.suppress(OSError):
                    connection.settimeout(1.0)
                    connection.recv(4096)
                    answer(connection)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.getsockname()[1]}"
    finally:
        done.set()
        thread.join(5)
        server.close()


def _trickle(connection: socket.socket) -> None:
    """A frame header announcing 256 bytes, then one byte every 0.3 s."""
    connection.sendall(b"\x00\x00\x01\x00")
    for _ in range(30):
        connection.sendall(b"\x00")
        time.sleep(0.3)


PEERS = {
    "an empty frame": lambda c: c.sendall(b"\x00\x00\x00\x00"),
    "a short frame": lambda c: c.sendall(b"\x00\x00\x00\x02\x00"),
    "a frame of garbage": lambda c: c.sendall(b"\x00\x00\x00\x08" + b"\xff" * 8),
    "an HTTP answer": lambda c: c.sendall(b"HTTP/1.0 400 Bad Request\r\n\r\n"),
    "a negative length": lambda c: c.sendall(b"\xff\xff\xff\xff"),
    "a closed connection": lambda c: None,
    "bytes trickling in": _trickle,
}


@pytest.mark.parametrize("answer", PEERS.values(), ids=PEERS.keys())
def test_a_peer_that_is_not_a_kafka_listener_is_none_within_the_probes_time(answer):
    """A zero-length frame stopped the service's start with a struct.error traceback, and
    a peer trickling bytes held the probe for as long as it went on."""
    with _peer(answer) as server:
        began = time.monotonic()
        found = listener_probe.probe(server, TIMEOUT_S)
        took = time.monotonic() - began

    assert found is None
    assert took < 2 * TIMEOUT_S + 1.0  # plain text, then TLS; each within its time


def test_a_mismatch_asks_nothing_of_no_servers_and_none_of_a_closed_port():
    assert listener_probe.mismatch("", "SSL", None, TIMEOUT_S) is None
    assert listener_probe.mismatch("127.0.0.1:1", "SSL", None, TIMEOUT_S) is None

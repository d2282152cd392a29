"""What a Kafka listener speaks, asked when start-up cannot reach the cluster.

A client set up for another kind of listener than the one it reaches sees no broker at
all: TLS sent to a SASL_SSL listener completes its handshake and is disconnected at its
first request; plain text sent to a TLS listener is answered by a TLS alert; librdkafka's
metadata request over a SASL mechanism the listener does not offer fails as a transport
error. Both clients then said "cannot reach Kafka", and start-up waited for a broker that
was up (for ever, with the default ``broker_wait_s``).

So the listener itself is asked, with the one request every Kafka listener answers before
any authentication: SaslHandshake (KIP-43), naming the mechanism set (PLAIN where none is).
A listener without SASL answers ILLEGAL_SASL_STATE; one with SASL lists its mechanisms. It
is asked the way the settings say first (TLS or plain text), then the other way
(certificates not checked: only what the listener speaks matters here). Every bootstrap
server is asked at once. A mismatch is certain when every server answered and every one
disagrees with the settings; where some did not answer (brokers restarting beside a
leftover server of another kind) it is only likely; and one listener that agrees means the
clients failed for another reason, which is waited for as before. The request is encoded
and the answer decoded by kafka-python's protocol classes.
"""

from __future__ import annotations

import socket
import ssl
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from kafka.protocol.parser import KafkaProtocol
from kafka.protocol.sasl import SaslHandshakeRequest

from anomaly.stream.broker_watch import address_of, server_list
from anomaly.stream.tls_probe import server_name

#: SaslHandshake's answers (Kafka's error codes).
_NO_SASL_HERE = 34  # ILLEGAL_SASL_STATE: the listener does not use SASL
_SASL_ANSWERS = (0, 33)  # the mechanism is offered, or UNSUPPORTED_SASL_MECHANISM


@dataclass(frozen=True)
class Mismatch:
    """Why the settings cannot talk to the bootstrap servers' listeners (the remedy), and
    whether that is certain: every server answered, and every one disagrees."""

    reason: str
    certain: bool


@dataclass(frozen=True)
class Listener:
    """What a listener speaks: TLS or not, and its SASL mechanisms (None: no SASL).
    ``sasl_known`` is false where a TLS listener wants a client certificate first, so the
    handshake went no further."""

    tls: bool
    sasl: tuple[str, ...] | None
    sasl_known: bool = True

    @property
    def protocol(self) -> str:
        if self.sasl is None:
            return "SSL" if self.tls else "PLAINTEXT"
        return "SASL_SSL" if self.tls else "SASL_PLAINTEXT"


def probe(
    server: str, timeout_s: float, tls_first: bool = False, mechanism: str | None = None
) -> Listener | None:
    """What the Kafka listener at ``server`` (``host:port``) speaks; None when nothing
    there answers as a Kafka listener (not listening, not reachable, not Kafka). Asked over
    TLS first with ``tls_first``, naming ``mechanism`` (PLAIN where None)."""
    for tls in (tls_first, not tls_first):
        try:
            with _channel(server, tls, timeout_s) as channel:
                answer = _sasl_handshake(channel, mechanism or "PLAIN", timeout_s)
        except ssl.SSLError as exc:
            if _wants_client_certificate(exc):
                return Listener(tls=True, sasl=None, sasl_known=False)
            continue
        except Exception:  # noqa: BLE001 (refused, reset, or a peer that is not Kafka: its
            continue  # bytes may fail anywhere in the decoder, a struct.error of a short frame)
        if answer is None:
            continue
        if answer.error_code == _NO_SASL_HERE:
            return Listener(tls=tls, sasl=None)
        if answer.error_code in _SASL_ANSWERS:
            return Listener(tls=tls, sasl=tuple(answer.mechanisms))
    return None


def mismatch(
    servers: str, protocol: str, mechanism: str | None, timeout_s: float
) -> Mismatch | None:
    """Why ``security_protocol`` ``protocol`` (with SASL ``mechanism``; None: not set)
    cannot talk to the listeners of ``servers`` when every one that answers disagrees with
    them; None when one agrees or none answers. All are asked at once, so this takes at
    most twice ``timeout_s``."""
    names = server_list(servers)
    if not names:
        return None
    with ThreadPoolExecutor(max_workers=min(len(names), 16)) as pool:
        listeners = list(
            pool.map(
                lambda name: probe(name, timeout_s, protocol.endswith("SSL"), mechanism), names
            )
        )
    reasons = [
        _disagreement(name, listener, protocol, mechanism)
        for name, listener in zip(names, listeners, strict=True)
        if listener is not None
    ]
    if not reasons or not all(reasons):
        return None
    return Mismatch(str(reasons[0]), certain=len(reasons) == len(names))


def _disagreement(
    server: str, listener: Listener, protocol: str, mechanism: str | None
) -> str | None:
    wants_sasl = protocol.startswith("SASL_")
    if listener.tls != protocol.endswith("SSL") or (
        listener.sasl_known and (listener.sasl is not None) != wants_sasl
    ):
        remedy = f'set security_protocol = "{listener.protocol}"'
        if listener.sasl is not None and not wants_sasl:
            remedy += ", sasl_mechanism and the SASL credentials"
        if not listener.sasl_known:
            remedy = "set security_protocol to one with TLS (SSL or SASL_SSL)"
        return (
            f"the listener at {server} speaks {_described(listener)}, but security_protocol "
            f"is {protocol}: {remedy} in [serve.kafka]"
        )
    if listener.sasl is not None and mechanism not in listener.sasl:
        given = "sasl_mechanism is not set" if mechanism is None else f"not {mechanism}"
        return (
            f"{server} offers the SASL mechanisms {', '.join(listener.sasl)}, {given}: set "
            "sasl_mechanism in [serve.kafka] to one of them"
        )
    return None


def _described(listener: Listener) -> str:
    if not listener.sasl_known:
        return "TLS and wants a client certificate"
    if listener.sasl is None:
        return listener.protocol
    return f"{listener.protocol} (SASL mechanisms {', '.join(listener.sasl)})"


def _channel(server: str, tls: bool, timeout_s: float) -> socket.socket:
    host, port = address_of(server)
    connection = socket.create_connection((host, port), timeout=timeout_s)
    if not tls:
        return connection
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:  # the name too (SNI), which a listener behind a proxy may be routed by
        return context.wrap_socket(connection, server_hostname=server_name(host))
    except BaseException:
        connection.close()
        raise


def _sasl_handshake(channel: socket.socket, mechanism: str, timeout_s: float):
    """The listener's SaslHandshakeResponse, or None when it closed the connection or did
    not answer whole within ``timeout_s`` (a peer that sends a byte now and then)."""
    protocol = KafkaProtocol(client_id="anomaly-listener-probe")
    protocol.send_request(SaslHandshakeRequest(mechanism=mechanism, version=1))
    deadline = time.monotonic() + timeout_s
    channel.settimeout(timeout_s)
    channel.sendall(protocol.send_bytes())
    while (left := deadline - time.monotonic()) > 0:
        channel.settimeout(left)
        data = channel.recv(65536)
        if not data:
            return None
        if responses := protocol.receive_bytes(data):
            return responses[0][1]
    return None


def _wants_client_certificate(exc: ssl.SSLError) -> bool:
    """A TLS listener that refused the handshake for want of a client certificate
    (TLS 1.2 says bad certificate, TLS 1.3 certificate required)."""
    reason = (exc.reason or "").upper()
    return "CERTIFICATE_REQUIRED" in reason or "BAD_CERTIFICATE" in reason

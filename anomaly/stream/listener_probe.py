"""What a Kafka listener speaks, asked when start-up cannot reach the cluster.

A client set up for another kind of listener than the one it reaches sees no broker at
all: TLS sent to a SASL_SSL listener completes its handshake and is disconnected at its
first request; plain text sent to a TLS listener is answered by a TLS alert; librdkafka's
metadata request over a SASL mechanism the listener does not offer fails as a transport
error. Both clients then said "cannot reach Kafka", and start-up waited for a broker that
was up (for ever, with the default ``broker_wait_s``).

So the listener itself is asked, with the one request every Kafka listener answers before
any authentication: SaslHandshake (KIP-43). A listener without SASL answers
ILLEGAL_SASL_STATE; one with SASL lists its mechanisms. It is asked over plain text, then
over TLS (certificates not checked: only what the listener speaks matters here). The
request is encoded and the answer decoded by kafka-python's protocol classes.
"""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass

from kafka.errors import KafkaError
from kafka.protocol.parser import KafkaProtocol
from kafka.protocol.sasl import SaslHandshakeRequest

from anomaly.stream.broker_watch import address_of

#: SaslHandshake's answers (Kafka's error codes).
_NO_SASL_HERE = 34  # ILLEGAL_SASL_STATE: the listener does not use SASL
_SASL_ANSWERS = (0, 33)  # the mechanism is offered, or UNSUPPORTED_SASL_MECHANISM


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


def probe(server: str, timeout_s: float) -> Listener | None:
    """What the Kafka listener at ``server`` (``host:port``) speaks; None when nothing
    there answers as a Kafka listener (not listening, not reachable, not Kafka)."""
    for tls in (False, True):
        try:
            with _channel(server, tls, timeout_s) as channel:
                answer = _sasl_handshake(channel, timeout_s)
        except ssl.SSLError as exc:
            if _wants_client_certificate(exc):
                return Listener(tls=True, sasl=None, sasl_known=False)
            continue
        except (OSError, ValueError, KafkaError):  # refused, reset, or not Kafka's framing
            continue
        if answer is None:
            continue
        if answer.error_code == _NO_SASL_HERE:
            return Listener(tls=tls, sasl=None)
        if answer.error_code in _SASL_ANSWERS:
            return Listener(tls=tls, sasl=tuple(answer.mechanisms))
    return None


def mismatch(servers: str, protocol: str, mechanism: str | None, timeout_s: float) -> str | None:
    """Why ``security_protocol`` ``protocol`` (with SASL ``mechanism``) cannot talk to the
    first of ``servers`` that answers as a Kafka listener, as the remedy; None when they
    match or none answers."""
    for server in filter(None, (s.strip() for s in servers.split(","))):
        listener = probe(server, timeout_s)
        if listener is None:
            continue
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
            return (
                f"{server} offers the SASL mechanisms {', '.join(listener.sasl)}, not "
                f"{mechanism}: set sasl_mechanism in [serve.kafka] to one of them"
            )
        return None
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
    try:
        return context.wrap_socket(connection)
    except BaseException:
        connection.close()
        raise


def _sasl_handshake(channel: socket.socket, timeout_s: float):
    """The listener's SaslHandshakeResponse, or None when it closed the connection."""
    protocol = KafkaProtocol(client_id="anomaly-listener-probe")
    protocol.send_request(SaslHandshakeRequest(mechanism="PLAIN", version=1))
    channel.settimeout(timeout_s)
    channel.sendall(protocol.send_bytes())
    while data := channel.recv(65536):
        if responses := protocol.receive_bytes(data):
            return responses[0][1]
    return None


def _wants_client_certificate(exc: ssl.SSLError) -> bool:
    """A TLS listener that refused the handshake for want of a client certificate
    (TLS 1.2 says bad certificate, TLS 1.3 certificate required)."""
    reason = (exc.reason or "").upper()
    return "CERTIFICATE_REQUIRED" in reason or "BAD_CERTIFICATE" in reason

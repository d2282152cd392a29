"""Whether the service can reach its Kafka cluster, as one event when that changes.

The clients reconnect by themselves and log every failed attempt; an operator wants one
line when the cluster is lost and one when it is back, and a readiness probe that says so
meanwhile. ``BrokerWatch`` turns a connection probe, checked about once a second, into
exactly that: the cluster counts as lost once the probe has failed for ``LOST_AFTER_S``
(a connection that closes when idle is back within milliseconds), and as back at the first
success after that.
"""

from __future__ import annotations

import logging
import socket
import ssl
import time
from collections.abc import Callable

log = logging.getLogger("anomaly.stream")

#: Seconds without a connection after which the cluster counts as lost.
LOST_AFTER_S = 3.0
#: Kafka's default port, for a bootstrap server given without one.
DEFAULT_PORT = 9092


def certificate_problem(
    servers: str, cafile: str | None, capath: str | None, check_hostname: bool, timeout_s: float
) -> str | None:
    """Why the first bootstrap server that answers presents a certificate that does not
    verify against ``cafile`` or ``capath`` (neither: the system's CAs), in OpenSSL's
    words as Python's ``ssl`` gives them ("certificate has expired", "Hostname mismatch,
    ...", "unable to get local issuer certificate"); None when it verifies or no server
    answers. librdkafka says "certificate verify failed" and points at its CA setting
    whatever the cause."""
    context = ssl.create_default_context(cafile=cafile, capath=capath)
    context.check_hostname = check_hostname
    # Python 3.13 verifies more strictly than OpenSSL's defaults, which librdkafka keeps:
    # it could blame a missing extension where librdkafka failed on something else.
    for strict in ("VERIFY_X509_STRICT", "VERIFY_X509_PARTIAL_CHAIN"):
        context.verify_flags &= ~getattr(ssl, strict, 0)
    for host, port in map(address_of, server_list(servers)):
        try:
            with (
                socket.create_connection((host, port), timeout=timeout_s) as connection,
                context.wrap_socket(connection, server_hostname=host),
            ):
                return None
        except ssl.SSLCertVerificationError as exc:
            return exc.verify_message
        except (OSError, UnicodeError, ValueError):  # not answering, failing later (a client
            continue  # certificate asked for), or a name that is not one
    return None


def server_list(servers: str) -> list[str]:
    """The entries of a comma-separated ``bootstrap_servers``, blanks left out."""
    return [server for server in (s.strip() for s in servers.split(",")) if server]


def address_of(server: str) -> tuple[str, int]:
    """(host, port) of a bootstrap server: ``host:port``, ``[v6]:port``, a ``PROTOCOL://``
    prefix allowed, Kafka's port when none is given."""
    address = server.rpartition("://")[2]
    host, colon, port = address.rpartition(":")
    if not colon or not (port.isascii() and port.isdigit()) or host.endswith(":"):
        # no port, or a bare IPv6 address
        host, port = address, str(DEFAULT_PORT)
    return host.strip("[]"), int(port)


class BrokerWatch:
    """``check()`` probes ``connected`` and logs ``event=broker_lost`` / ``event=broker_back``
    (with ``servers`` and how long it was lost); ``lost`` is true in between."""

    def __init__(
        self,
        connected: Callable[[], bool],
        servers: str,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._connected = connected
        self._servers = servers
        self._clock = clock
        self._unseen_since: float | None = None
        self._lost_since: float | None = None

    @property
    def lost(self) -> bool:
        return self._lost_since is not None

    def check(self) -> bool | None:
        """Probe once. Returns False when the cluster was just lost, True when it just came
        back, None when nothing changed."""
        now = self._clock()
        if self._connected():
            self._unseen_since = None
            if self._lost_since is None:
                return None
            log.info(
                "event=broker_back bootstrap_servers=%s unreachable_s=%.1f",
                self._servers,
                now - self._lost_since,
            )
            self._lost_since = None
            return True
        if self._unseen_since is None:
            self._unseen_since = now
        if self._lost_since is None and now - self._unseen_since >= LOST_AFTER_S:
            self._lost_since = self._unseen_since
            log.warning(
                "event=broker_lost bootstrap_servers=%s unreachable_s=%.1f "
                "action=reconnecting_not_ready",
                self._servers,
                now - self._unseen_since,
            )
            return False
        return None

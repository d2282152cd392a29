"""Which bootstrap servers answer a TLS handshake at all.

kafka-python 3.0.12 puts no deadline on a TLS handshake: a bootstrap server that accepts the
connection and never answers (a port of something else, a broker frozen mid-start) held the
service's start for ever, with no log line, ``bootstrap_timeout_ms`` notwithstanding, and a
list that named such a server beside good ones hung as often as kafka-python picked it. So
before its clients bootstrap over SSL or SASL_SSL, each server is sent the start of a
handshake. Certificates are not checked here: only whether the listener answers matters, and
what it answers the client's own handshake judges, naming the cause.
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
from concurrent.futures import ThreadPoolExecutor

from anomaly.stream.broker_watch import address_of


def silent_servers(servers: list[str], timeout_s: float) -> list[str]:
    """The entries of ``servers`` (``host:port``) that accept a TCP connection but do not
    answer a TLS handshake within ``timeout_s``; all are tried at once. One that refuses
    the connection, or cannot be resolved, is not silent: the client says so itself."""
    if not servers:
        return []
    with ThreadPoolExecutor(max_workers=min(len(servers), 16)) as pool:
        silent = pool.map(lambda server: _is_silent(server, timeout_s), servers)
        return [server for server, quiet in zip(servers, list(silent), strict=True) if quiet]


def _is_silent(server: str, timeout_s: float) -> bool:
    host, port = address_of(server)
    try:
        connection = socket.create_connection((host, port), timeout=timeout_s)
    except (OSError, ValueError):  # a name that is not one (UnicodeError): the client says so
        return False
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with context.wrap_socket(
            connection, do_handshake_on_connect=False, server_hostname=server_name(host)
        ) as tls:
            tls.settimeout(timeout_s)
            tls.do_handshake()
    except TimeoutError:
        return True
    except (OSError, ValueError):  # an answer, if not one the client will like
        return False
    finally:
        connection.close()
    return False


def server_name(host: str) -> str | None:
    """``host`` as the TLS server name (SNI, which a listener may route by), unless it is an
    IP address, which is never sent as one."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return host
    return None

"""The service's own error type, and how an error is named in a log line or dead letter."""

import re

from anomaly.errors import AnomalyError

#: A Python bytes literal in an error's text: the bytes of a record (a header name that is
#: not UTF-8 shows up as ``UnicodeDecodeError('utf-8', b'...', ...)`` in kafka-python's).
_BYTES_LITERAL = re.compile(r"\bb'(?:[^'\\]|\\.)*'" + r'|\bb"(?:[^"\\]|\\.)*"')


class StreamError(AnomalyError):
    """The scoring service cannot start (broker unreachable, topic missing, port taken) or
    had to stop (a codec library missing). The message says what to do."""


class BrokerUnreachable(StreamError):
    """No Kafka broker answered at start-up, as opposed to one that refused the credentials
    or the TLS handshake: start-up tries again (``ServeConfig.broker_wait_s``)."""


def describe_error(error: BaseException) -> str:
    """``<type>: <first line of the message>`` (at most 300 characters of it), for a log
    line or a dead letter's explanation; kafka-python's, the codecs' and the encoder's
    messages name partitions, offsets and types; the bytes they may quote from a record
    are left out."""
    text = _BYTES_LITERAL.sub("b'...'", str(error).splitlines()[0]) if str(error) else ""
    text = text[:300]
    return f"{type(error).__name__}: {text}" if text else type(error).__name__

"""The service's own error type, and how an error is named in a log line or dead letter."""

from anomaly.errors import AnomalyError


class StreamError(AnomalyError):
    """The scoring service cannot start (broker unreachable, topic missing, port taken) or
    had to stop (a codec library missing). The message says what to do."""


def describe_error(error: BaseException) -> str:
    """``<type>: <first line of the message>`` (at most 300 characters of it), for a log
    line or a dead letter's explanation; kafka-python's, the codecs' and the encoder's
    messages name partitions, offsets and types, never a record's content."""
    text = str(error).splitlines()[0][:300] if str(error) else ""
    return f"{type(error).__name__}: {text}" if text else type(error).__name__

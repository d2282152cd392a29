"""The service's own error type: start-up problems and failures that stop the service."""

from anomaly.errors import AnomalyError


class StreamError(AnomalyError):
    """The scoring service cannot start (broker unreachable, topic missing, port taken) or
    had to stop (results could not be delivered). The message says what to do."""


class DeliveryError(StreamError):
    """Kafka did not acknowledge some results; their offsets were not committed, so a
    restarted service scores those records again."""

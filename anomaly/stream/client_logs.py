"""The Kafka client libraries' own log lines: each thing they say, at most once a while.

While a broker is down, both clients log every failed connection, metadata refresh and
coordinator lookup of each of their connections: during a 30 s outage in the test of
``tests/test_stream_faults.py``, kafka-python logged 650 lines and librdkafka one every few
tens of milliseconds. The service says what matters once (``event=broker_lost`` and
``event=broker_back``, the metrics); the clients' lines stay for the detail, one per thing
said per ``REPEAT_S``, the next one telling how many like it were held back.
"""

from __future__ import annotations

import logging
import re
import time

#: Seconds between two log lines that say the same thing, here and in the service's own
#: retried errors (a fetch, a commit, a client error).
REPEAT_S = 30.0
#: The loggers of kafka-python (``kafka`` and the loggers under it) and of librdkafka (the
#: confluent transport's ``logger``).
CLIENT_LOGGERS = ("kafka", "librdkafka")
#: What differs between two lines that say the same thing: timings and counts.
VARYING = re.compile(r"\d+(?:\.\d+)?ms\b|\d+ identical|\d+ (?:events?|errors?|requests?)\b")


class Throttle:
    """Lets each thing be said at most once per ``every_s`` seconds, counting the times it
    was held back in between."""

    def __init__(self, every_s: float = REPEAT_S, max_kinds: int = 1000):
        self.every_s = every_s
        self.max_kinds = max_kinds
        self._seen: dict = {}  # what was said -> [when let through, held back since]

    def admit(self, kind) -> tuple[int, float] | None:
        """None when ``kind`` was let through less than ``every_s`` ago (it is held back and
        counted); otherwise it is let through now, and this says how many times it was
        held back since the last time and how many seconds ago that was (0, 0 the first
        time)."""
        now = time.monotonic()
        seen = self._seen.get(kind)
        if seen is not None and now - seen[0] < self.every_s:
            seen[1] += 1
            return None
        if seen is None and len(self._seen) >= self.max_kinds:
            self._seen.clear()  # bounded: many different lines are not a flood of one
        self._seen[kind] = [now, 0]
        return (0, 0.0) if seen is None else (seen[1], now - seen[0])


class Repeats(logging.Filter):
    """Lets a log line through unless the same logger said the same thing (timings and
    counts aside) less than ``every_s`` seconds ago; adds the count of the lines it held
    back to the next line it lets through."""

    def __init__(self, every_s: float = REPEAT_S):
        super().__init__()
        self._throttle = Throttle(every_s)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        admitted = self._throttle.admit((record.name, record.levelno, VARYING.sub("#", message)))
        if admitted is None:
            return False
        held, seconds = admitted
        if held:
            record.msg = f"{message} ({held} like it held back in {seconds:.0f} s)"
            record.args = ()
        return True


_REPEATS = Repeats()


def hold_back_repeats() -> None:
    """Attach the filter to every client logger that exists now (a logger's filters only
    see what is logged to it, not what its children pass up; kafka-python makes its loggers
    when imported). Safe to call again."""
    names = [
        name
        for name in logging.root.manager.loggerDict
        if any(name == root or name.startswith(f"{root}.") for root in CLIENT_LOGGERS)
    ]
    for name in [*CLIENT_LOGGERS, *names]:
        logger = logging.getLogger(name)
        if _REPEATS not in logger.filters:
            logger.addFilter(_REPEATS)

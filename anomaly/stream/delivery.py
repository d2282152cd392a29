"""Delivery bookkeeping: which input offsets may be committed, and what to do when Kafka
refuses something the service produced.

Every micro-batch hands the producer one message per input record (a result or a dead
letter, plus alerts) and becomes a pending ``Batch``. A batch is *settled* once every one of
its messages is acknowledged; batches settle in the order they were polled, and only
settled batches' offsets are committed, so a record's offset is never committed before its
result is in Kafka (at least once).

A message Kafka refuses is never dropped and never stops the service:

- refused for what it is (too large for the topic, an invalid record): ``reroute`` turns it
  into a dead letter of its input record (reason ``send_failed``), which is sent instead;
- refused for where it goes or when (broker or topic unavailable, not authorised, timed
  out): it is sent again every ``RETRY_INTERVAL_S``, its batch stays unsettled, and
  ``blocked`` tells the loop to pause its input until it goes through.

``Delivery`` knows nothing of Kafka clients: it hands each message to ``send`` (a
``transport.Transport``'s), which reports the attempt's outcome once, later, to the message
itself (``Outgoing.acknowledged``, ``refused`` or ``report``: from kafka-python's sender
thread, or from librdkafka's delivery reports served on the loop's thread), and it asks
``is_record_error`` which refusals belong to the message. Its rules are unit-tested with
fakes; it also says when the input should be paused (``pause_reason``, back-pressure).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("anomaly.stream")

#: Seconds between attempts to send again a message Kafka could not take.
RETRY_INTERVAL_S = 1.0


@dataclass(eq=False, slots=True)
class Outgoing:
    """One message for the producer, the input record it answers, and the outcome of the
    last attempt to send it, as the transport reports it (once per attempt, from any
    thread)."""

    topic: str
    key: bytes | None
    value: bytes
    origin: Any
    """The input record (topic, partition, offset, key, value, timestamp)."""
    partition: int | None = None
    dead_letter: bool = False
    reroutes: int = 0
    """Times this message was replaced by a (smaller) dead letter."""
    acked: bool = False
    """The broker acknowledged the last attempt."""
    error: Any = None
    """Why the last attempt failed (the client's exception or error); ``None`` otherwise."""
    _refused: deque | None = field(default=None, repr=False)
    """Where a refused attempt is reported: its ``Delivery``'s queue (set per attempt)."""

    def acknowledged(self, _metadata: Any = None) -> None:
        """The broker has the message (its write is atomic: safe from another thread)."""
        self.acked = True

    def refused(self, error: Any) -> None:
        """The attempt failed with ``error`` (deque.append is atomic too)."""
        self.error = error
        self._refused.append(self)

    def report(self, error: Any, _message: Any = None) -> None:
        """librdkafka's delivery report: ``error`` None when acknowledged."""
        if error is None:
            self.acked = True
        else:
            self.refused(error)


#: What ``reroute`` returns for a message that has nowhere else to go.
GIVEN_UP = Outgoing("", None, b"", None)


@dataclass
class Batch:
    """The messages of one micro-batch, and the input offsets they release."""

    messages: list[Outgoing]
    offsets: dict[Any, int]
    """Next offset per input partition: what to commit once every message is acknowledged."""
    kafka_timestamps_ms: list[int] = field(default_factory=list)


class Delivery:
    """Pending batches, settled offsets and retries (see the module docstring).

    ``send(message)`` hands a message to the producer, which reports its outcome to the
    message later (it may also raise: the attempt failed at once); ``reroute(message,
    error)`` returns the dead letter to send instead of a message refused for what it is
    (``is_record_error(error)``; ``message.reroutes`` says how many times it was replaced
    already, so each replacement can be smaller), ``None`` when it has none: then the
    message is retried like any other failure, or ``GIVEN_UP`` when there is nowhere to
    send it (no dead-letter topic): its batch then settles without it. ``describe(error)``
    names an error in a log line.
    """

    def __init__(
        self,
        send: Callable[[Outgoing], Any],
        reroute: Callable[[Outgoing, Any], Outgoing | None],
        clock: Callable[[], float] = time.monotonic,
        *,
        is_record_error: Callable[[Any], bool],
        describe: Callable[[Any], str] = lambda error: type(error).__name__,
    ):
        self._send = send
        self._reroute = reroute
        self._clock = clock
        self._is_record_error = is_record_error
        self._describe = describe
        self.pending: deque[Batch] = deque()
        self.pending_messages = 0
        self.settled: dict[Any, int] = {}
        """Acknowledged, not yet committed: next offset per input partition."""
        self._failing: dict[int, Outgoing] = {}  # id(message) -> message to send again
        #: Messages sent again, not yet acknowledged: input stays paused until they are.
        self._retried: dict[int, Outgoing] = {}
        #: Attempts that failed, as the transport reports them: settling looks at these
        #: only, not at every pending message.
        self._refused: deque[Outgoing] = deque()
        self._next_retry = 0.0
        self._unavailable_since: float | None = None
        self.rerouted = 0
        """Messages replaced by a dead letter so far."""

    # -- handing over --------------------------------------------------------------------

    def add(self, messages: list[Outgoing], offsets: dict, kafka_timestamps_ms: list[int]) -> None:
        """Send a batch's messages and keep the batch until they are all acknowledged."""
        attempt = self._attempt
        for message in messages:
            attempt(message)
        self.pending.append(Batch(messages, offsets, kafka_timestamps_ms))
        self.pending_messages += len(messages)

    def _attempt(self, message: Outgoing) -> None:
        # Reset before sending: the outcome may be reported before send returns.
        message.acked, message.error, message._refused = False, None, self._refused
        try:
            self._send(message)
        except Exception as exc:  # noqa: BLE001 (a failed send is that message's failure)
            message.error = exc
            self._refused.append(message)

    @property
    def blocked(self) -> bool:
        """Some message could not be delivered and is not yet through: pause input."""
        return bool(self._failing or self._retried)

    def pause_reason(self, limit: int, paused: bool) -> str | None:
        """Why the input should be paused now, or None to let it run (back-pressure).

        Paused while a message waits to be sent again (``output_unavailable``), or once
        more than ``limit`` messages are unacknowledged (``pending_results``) until half of
        them are: the gap keeps the input from flapping.
        """
        if self.blocked:
            return "output_unavailable"
        if self.pending_messages > (limit // 2 if paused else limit):
            return "pending_results"
        return None

    # -- settling ------------------------------------------------------------------------

    def settle(self) -> list[int]:
        """Move acknowledged batches, in order, to ``settled``; deal with refused messages.
        Returns the Kafka timestamps of the input records whose batches settled."""
        stamps: list[int] = []
        if self._failing and self._clock() >= self._next_retry:
            self._retry()
        while self._refused:
            self._check(self._refused.popleft())
        if self._retried:
            for key in [key for key, message in self._retried.items() if message.acked]:
                del self._retried[key]
        while self.pending:
            batch = self.pending[0]
            messages = batch.messages
            if messages and not (messages[-1].acked and all(m.acked for m in messages)):
                break
            self.pending.popleft()
            self.pending_messages -= len(batch.messages)
            self.settled.update(batch.offsets)
            stamps.extend(batch.kafka_timestamps_ms)
        self._note_availability()
        return stamps

    def _check(self, message: Outgoing) -> None:
        """Look at a failed attempt: reroute a message refused for what it is, or queue a
        retry."""
        error = message.error
        if error is None or message.acked or id(message) in self._failing:
            return
        if self._is_record_error(error):
            replacement = self._reroute(message, error)
            if replacement is GIVEN_UP:
                message.acked = True  # done with: its batch settles without it
                return
            if replacement is not None:
                self.rerouted += 1
                _replace(message, replacement)
                self._attempt(message)
                return
        self._failing[id(message)] = message
        if self._unavailable_since is None:
            self._unavailable_since = self._clock()
            self._next_retry = self._unavailable_since + RETRY_INTERVAL_S
            log.warning(
                "event=output_unavailable topic=%s error=%s action=pause_input_and_retry",
                message.topic,
                self._describe(error),
            )

    def _retry(self) -> None:
        failing, self._failing = self._failing, {}
        self._retried.update(failing)
        for message in failing.values():
            # The producer places it by its key again: the topic may have been recreated
            # with other partitions meanwhile.
            message.partition = None
            self._attempt(message)
        self._next_retry = self._clock() + RETRY_INTERVAL_S

    def _note_availability(self) -> None:
        if self._unavailable_since is not None and not self.blocked:
            log.info(
                "event=output_available unavailable_s=%.1f",
                self._clock() - self._unavailable_since,
            )
            self._unavailable_since = None

    # -- committing ----------------------------------------------------------------------

    def take_settled(self, partitions) -> dict[Any, int]:
        """Remove and return the settled offsets of ``partitions`` (to commit them)."""
        taken = {tp: o for tp, o in self.settled.items() if tp in partitions}
        for tp in taken:
            del self.settled[tp]
        return taken

    def skipped_to(self, partition, offset: int) -> bool:
        """The consumer moved ``partition`` up to ``offset`` past records it never returns
        (transaction markers, records of aborted transactions): settle that offset unless a
        batch of the partition is still pending. True when settled."""
        if any(partition in batch.offsets for batch in self.pending):
            return False
        if self.settled.get(partition, -1) < offset:
            self.settled[partition] = offset
        return True

    def restore(self, offsets: dict[Any, int], partitions) -> None:
        """Offsets whose commit failed: commit them again with the next ones (unless a
        later offset of the same partition is already waiting, or it is no longer ours)."""
        for tp, offset in offsets.items():
            if tp in partitions and self.settled.get(tp, -1) < offset:
                self.settled[tp] = offset

    def forget(self, partitions) -> None:
        """Partitions gone in a rebalance: their offsets, settled or still pending, are not
        ours to commit (a pending batch's results are still delivered)."""
        for tp in partitions:
            self.settled.pop(tp, None)
            for batch in self.pending:
                batch.offsets.pop(tp, None)


def _replace(message: Outgoing, replacement: Outgoing) -> None:
    message.topic = replacement.topic
    message.key = replacement.key
    message.value = replacement.value
    message.partition = replacement.partition
    message.dead_letter = True
    message.reroutes += 1

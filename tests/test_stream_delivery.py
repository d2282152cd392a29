"""The delivery and rebalance rules of the service, each on its own, with fake clients.

``anomaly.stream.delivery`` decides which input offsets may be committed and what happens
when Kafka refuses a message; ``anomaly.stream.rebalance`` decides what a rebalance does to
the records in hand. The real-broker tests in ``test_stream_service.py`` run them together.
"""

from __future__ import annotations

import base64
import hashlib
import logging
from types import SimpleNamespace

import orjson
import pytest
from kafka import TopicPartition
from kafka.errors import KafkaTimeoutError, MessageSizeTooLargeError, TopicAuthorizationFailedError

from anomaly.stream.delivery import RETRY_INTERVAL_S, Delivery, Outgoing
from anomaly.stream.kafka_python_transport import is_record_error
from anomaly.stream.messages import encode_rejection, fit_result
from anomaly.stream.rebalance import Assignment
from tests._support import required_module

TOPIC = "in"


def tp(partition: int) -> TopicPartition:
    return TopicPartition(TOPIC, partition)


class FakeFuture:
    """kafka-python's producer future as its transport uses it: state and callbacks."""

    def __init__(self):
        self.is_done = False
        self.exception = None
        self._callbacks, self._errbacks = [], []

    def add_callback(self, f, *args):
        self._callbacks.append((f, args))

    def add_errback(self, f, *args):
        self._errbacks.append((f, args))

    def succeed(self):
        self.is_done = True
        for f, args in self._callbacks:
            f(*args, "metadata")

    def fail(self, error):
        self.is_done, self.exception = True, error
        for f, args in self._errbacks:
            f(*args, error)


class FakeProducer:
    """Records every send and reports its outcome to the message as the kafka-python
    transport does; ``refuse`` makes the next sends to a topic raise at once."""

    def __init__(self):
        self.sent: list[tuple[str, bytes, FakeFuture]] = []
        self.refuse: dict[str, BaseException] = {}
        self._futures: dict[int, FakeFuture] = {}

    def send(self, message: Outgoing) -> None:
        if message.topic in self.refuse:
            raise self.refuse[message.topic]
        future = FakeFuture()
        future.add_callback(message.acknowledged)
        future.add_errback(message.refused)
        self.sent.append((message.topic, message.value, future))
        self._futures[id(message)] = future

    def last(self, topic: str) -> FakeFuture:
        return [f for t, _, f in self.sent if t == topic][-1]

    def future(self, message: Outgoing) -> FakeFuture:
        """The future of the last attempt to send ``message``."""
        return self._futures[id(message)]


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def origin(partition: int, offset: int):
    return SimpleNamespace(
        topic=TOPIC, partition=partition, offset=offset, key=b"k", value=b"v", timestamp=0
    )


def make_delivery():
    producer, clock = FakeProducer(), Clock()
    rerouted = []

    def reroute(message, error):
        rerouted.append((message.origin.offset, type(error).__name__))
        if message.reroutes >= 1:
            return None
        return Outgoing("dlq", None, b"letter", message.origin, dead_letter=True)

    delivery = Delivery(producer.send, reroute, clock, is_record_error=is_record_error)
    return delivery, producer, clock, rerouted


def batch(delivery, partition, first, count, topic="out"):
    messages = [
        Outgoing(topic, None, b"r", origin(partition, o)) for o in range(first, first + count)
    ]
    delivery.add(messages, {tp(partition): first + count}, [0] * count)
    return messages


def test_a_batch_settles_only_when_every_message_is_acknowledged_and_in_order():
    delivery, producer, _, _ = make_delivery()
    first = batch(delivery, 0, 0, 2)
    second = batch(delivery, 0, 2, 1)
    producer.future(second[0]).succeed()
    producer.future(first[0]).succeed()
    delivery.settle()
    assert delivery.settled == {}  # the first batch still waits for its second message
    producer.future(first[1]).succeed()
    delivery.settle()
    assert delivery.settled == {tp(0): 3} and delivery.pending_messages == 0


def test_a_message_refused_for_its_size_becomes_a_dead_letter_and_the_batch_settles():
    delivery, producer, _, rerouted = make_delivery()
    (message,) = batch(delivery, 0, 7, 1)
    producer.future(message).fail(MessageSizeTooLargeError())
    delivery.settle()
    assert rerouted == [(7, "MessageSizeTooLargeError")]
    assert message.topic == "dlq" and message.dead_letter and not delivery.blocked
    producer.last("dlq").succeed()
    delivery.settle()
    assert delivery.settled == {tp(0): 8} and delivery.rerouted == 1


def test_a_send_that_raises_at_once_is_handled_like_a_refusal():
    delivery, producer, _, rerouted = make_delivery()
    producer.refuse["out"] = MessageSizeTooLargeError()
    (message,) = batch(delivery, 1, 0, 1)
    delivery.settle()
    assert rerouted == [(0, "MessageSizeTooLargeError")] and message.topic == "dlq"


def test_an_unavailable_topic_pauses_input_retries_and_loses_nothing(caplog):
    delivery, producer, clock, rerouted = make_delivery()
    (message,) = batch(delivery, 0, 0, 1)
    caplog.set_level(logging.INFO, "anomaly.stream")
    producer.future(message).fail(TopicAuthorizationFailedError())
    delivery.settle()
    assert delivery.blocked and rerouted == [] and delivery.settled == {}
    sends = len(producer.sent)
    clock.now += RETRY_INTERVAL_S / 2
    delivery.settle()
    assert len(producer.sent) == sends  # not before the retry interval
    clock.now += RETRY_INTERVAL_S
    delivery.settle()
    assert len(producer.sent) == sends + 1
    assert delivery.blocked  # sent again, not yet through: the input stays paused
    producer.last("out").succeed()
    delivery.settle()
    assert delivery.settled == {tp(0): 1} and not delivery.blocked
    events = [r.getMessage().split()[0] for r in caplog.records]
    assert events == ["event=output_unavailable", "event=output_available"]


def test_a_timed_out_send_is_sent_again_not_dead_lettered():
    delivery, producer, clock, rerouted = make_delivery()
    producer.refuse["out"] = KafkaTimeoutError()
    batch(delivery, 0, 0, 1)
    delivery.settle()
    assert delivery.blocked and rerouted == []
    del producer.refuse["out"]
    clock.now += RETRY_INTERVAL_S
    delivery.settle()
    producer.last("out").succeed()
    delivery.settle()
    assert delivery.settled == {tp(0): 1} and not delivery.blocked


def test_a_dead_letter_that_cannot_be_cut_further_is_retried_not_dropped():
    delivery, producer, clock, rerouted = make_delivery()
    (message,) = batch(delivery, 0, 0, 1)
    producer.future(message).fail(MessageSizeTooLargeError())
    delivery.settle()
    producer.last("dlq").fail(MessageSizeTooLargeError())
    delivery.settle()
    assert delivery.blocked and len(rerouted) == 2 and delivery.settled == {}


def test_failed_commits_are_restored_unless_a_later_offset_waits():
    delivery, _, _, _ = make_delivery()
    delivery.settled = {tp(0): 5, tp(1): 9}
    taken = delivery.take_settled({tp(0), tp(1)})
    assert taken == {tp(0): 5, tp(1): 9} and delivery.settled == {}
    delivery.settled[tp(1)] = 12
    delivery.restore(taken, {tp(0), tp(1)})
    assert delivery.settled == {tp(0): 5, tp(1): 12}
    delivery.restore({tp(2): 3}, {tp(0)})  # no longer ours: not committed by us
    assert tp(2) not in delivery.settled


# -- sizes ------------------------------------------------------------------------------------


def test_a_result_with_a_huge_id_is_cut_to_fit_and_marked_with_the_ids_hash():
    huge = "é\n" * 400_000
    record = {"id": huge, "score": 1.5, "timestamp": "t"}
    payload = fit_result(record, 100_000)
    result = orjson.loads(payload)
    assert len(payload) <= 100_000
    assert result["id_truncated"] is True and huge.startswith(result["id"]) and result["id"]
    assert result["id_sha256"] == hashlib.sha256(huge.encode()).hexdigest()
    assert result["score"] == 1.5 and result["timestamp"] == "t"
    assert "timestamp_truncated" not in result  # only what was cut is marked


def test_a_result_that_fits_is_left_alone():
    record = {"id": "x" * 100, "score": 1.5}
    assert fit_result(record, 1000) == orjson.dumps(record)


def test_a_dead_letter_of_a_huge_key_and_value_fits_and_says_what_was_cut():
    key, value = b"K" * 600_000, b"V" * 900_000
    record = SimpleNamespace(topic=TOPIC, partition=2, offset=40, key=key, value=value, timestamp=1)
    kafka_key, payload = encode_rejection(record, "not_json", "not valid JSON", "v1", 1_000_000)
    assert kafka_key is None  # a key this long is carried in the payload only
    assert len(payload) <= 1_000_000
    letter = orjson.loads(payload)
    assert letter["key_truncated"] and letter["value_truncated"]
    assert key.startswith(base64.b64decode(letter["key_base64"]))
    assert value.startswith(base64.b64decode(letter["value_base64"]))
    assert letter["key_sha256"] == hashlib.sha256(key).hexdigest()
    assert letter["value_bytes"] == 900_000 and (letter["partition"], letter["offset"]) == (2, 40)


def test_a_small_dead_letter_keeps_its_key_and_whole_value():
    record = SimpleNamespace(topic=TOPIC, partition=0, offset=1, key=b"e1", value=b"{", timestamp=1)
    kafka_key, payload = encode_rejection(record, "not_json", "x", "v1", 1_000_000)
    letter = orjson.loads(payload)
    assert kafka_key == b"e1" and not letter["key_truncated"] and not letter["value_truncated"]
    assert base64.b64decode(letter["value_base64"]) == b"{"


# -- rebalances -------------------------------------------------------------------------------


def rec(partition, offset):
    return SimpleNamespace(partition=partition, offset=offset)


def test_records_of_revoked_partitions_are_dropped_from_the_batch_in_hand():
    assignment = Assignment(TOPIC)
    assignment.grant({tp(0), tp(1)})
    assignment.release({tp(1)}, keep_key_state=False)
    kept, seeks = assignment.drop_revoked([rec(0, 5), rec(1, 8), rec(1, 9)], [rec(0, 6)])
    assert [(r.partition, r.offset) for r in kept] == [(0, 5), (0, 6)] and seeks == {}


def test_a_dropped_partition_given_back_is_rewound_to_its_first_dropped_record():
    assignment = Assignment(TOPIC)
    assignment.grant({tp(0), tp(1)})
    assignment.release({tp(1)}, keep_key_state=True)
    kept, seeks = assignment.drop_revoked([rec(1, 8), rec(1, 9)], [])
    assert kept == [] and seeks == {}  # the new assignment is still to come
    seeks, gone = assignment.grant({tp(1)})
    assert seeks == {tp(1): 8} and gone == set()


def test_a_partition_already_back_is_rewound_at_once_and_its_fresh_records_dropped():
    assignment = Assignment(TOPIC)
    assignment.grant({tp(0)})
    assignment.release({tp(0)}, keep_key_state=True)
    assignment.grant({tp(0)})
    kept, seeks = assignment.drop_revoked([rec(0, 3)], [rec(0, 10)])
    assert kept == [] and seeks == {tp(0): 3}


def test_key_state_of_revoked_partitions_is_forgotten_unless_they_come_straight_back():
    assignment = Assignment(TOPIC)
    assignment.grant({tp(0), tp(1)})
    assert assignment.release({tp(0), tp(1)}, keep_key_state=True) == set()
    _, gone = assignment.grant({tp(1)})
    assert gone == {0}
    assert assignment.release({tp(1)}, keep_key_state=False) == {1}


def test_time_without_an_assignment_counts_from_subscribing_until_a_grant():
    clock = Clock()
    assignment = Assignment(TOPIC, clock)
    assignment.subscribed()
    clock.now = 12.0
    assert assignment.unassigned_for() == pytest.approx(12.0)
    assignment.grant({tp(0)})
    assert assignment.unassigned_for() == 0.0


def test_input_pauses_above_the_limit_and_resumes_only_at_half_of_it():
    delivery, producer, _, _ = make_delivery()
    batch(delivery, 0, 0, 11)
    assert delivery.pause_reason(limit=10, paused=False) == "pending_results"
    for m in delivery.pending[0].messages[:5]:
        producer.future(m).succeed()  # not settled: the batch still waits for its other messages
    assert delivery.pause_reason(limit=10, paused=True) == "pending_results"
    batch(delivery, 1, 0, 4)
    for b in list(delivery.pending):
        for m in b.messages:
            producer.future(m).succeed()
    delivery.settle()
    assert delivery.pause_reason(limit=10, paused=True) is None


def test_input_stays_paused_while_a_message_waits_to_be_sent_again():
    delivery, producer, _, _ = make_delivery()
    (message,) = batch(delivery, 0, 0, 1)
    producer.future(message).fail(KafkaTimeoutError())
    delivery.settle()
    assert delivery.pause_reason(limit=1000, paused=False) == "output_unavailable"


# -- the broker watch -------------------------------------------------------------------------


def test_the_broker_is_lost_after_three_seconds_without_a_connection_and_back_at_once(caplog):
    from anomaly.stream.broker_watch import LOST_AFTER_S, BrokerWatch

    clock, up = Clock(), [True]
    watch = BrokerWatch(lambda: up[0], "b:9092", clock)
    caplog.set_level(logging.INFO, "anomaly.stream")
    assert watch.check() is None and not watch.lost
    up[0] = False
    assert watch.check() is None  # a reconnect takes milliseconds: not lost yet
    clock.now += LOST_AFTER_S / 2
    assert watch.check() is None and not watch.lost
    clock.now += LOST_AFTER_S / 2
    assert watch.check() is False and watch.lost
    clock.now += 10
    assert watch.check() is None  # one event for the whole outage
    up[0] = True
    assert watch.check() is True and not watch.lost
    lines = [r.getMessage() for r in caplog.records]
    assert [line.split()[0] for line in lines] == ["event=broker_lost", "event=broker_back"]
    assert "unreachable_s=13.0" in lines[1]


def test_a_retried_message_then_refused_for_its_size_is_dead_lettered_and_input_resumes():
    delivery, producer, clock, rerouted = make_delivery()
    (message,) = batch(delivery, 0, 0, 1)
    producer.future(message).fail(KafkaTimeoutError())
    delivery.settle()
    clock.now += RETRY_INTERVAL_S
    delivery.settle()  # sent again
    producer.last("out").fail(MessageSizeTooLargeError())
    delivery.settle()
    assert rerouted == [(0, "MessageSizeTooLargeError")] and message.topic == "dlq"
    producer.last("dlq").succeed()
    delivery.settle()
    assert delivery.settled == {tp(0): 1} and not delivery.blocked


def test_offsets_of_a_revoked_partition_are_not_committed_when_its_batch_settles_later():
    delivery, producer, _, _ = make_delivery()
    messages = batch(delivery, 0, 0, 2)
    delivery.forget({tp(0)})
    for m in messages:
        producer.future(m).succeed()
    delivery.settle()
    assert delivery.settled == {} and not delivery.pending


def test_librdkafka_statistics_and_all_brokers_down_say_whether_the_cluster_is_reachable():
    """The confluent transport's probe for the broker watch: a learned or configured broker
    UP in librdkafka's statistics, and down at once on its _ALL_BROKERS_DOWN error."""
    confluent_kafka = required_module("confluent_kafka", "confluent")
    from anomaly.config import ServeConfig
    from anomaly.stream.confluent_transport import ConfluentTransport

    def stats(*states):
        brokers = {
            "127.0.0.1:9092/bootstrap": {"source": "configured", "state": states[0]},
            "127.0.0.1:9092/1": {"source": "learned", "state": states[1]},
            "GroupCoordinator": {"source": "logical", "state": "UP"},
        }
        return orjson.dumps({"brokers": brokers}).decode()

    transport = ConfluentTransport(ServeConfig(client="confluent"), "c", listener=None)
    transport._consumer = object()  # opened
    transport._on_stats(stats("INIT", "UP"))
    assert transport.connected()
    transport._on_error(confluent_kafka.KafkaError(confluent_kafka.KafkaError._ALL_BROKERS_DOWN))
    assert not transport.connected()
    transport._on_stats(stats("DOWN", "TRY_CONNECT"))  # a logical broker does not count
    assert not transport.connected()
    transport._on_stats(stats("DOWN", "UP"))
    assert transport.connected()


class _OwingProducer:
    """What the stall watchdog asks of librdkafka's producer: what it owes (the messages'
    report callbacks) and, once purged, a purge report for each at the next flush."""

    made: list[_OwingProducer] = []

    def __init__(self, _settings=None):
        self.owed: list = []
        self.purged = False
        _OwingProducer.made.append(self)

    def produce(self, topic, value, key, partition, callback):
        self.owed.append(callback)

    def poll(self, _timeout):
        return 0

    def __len__(self):
        return len(self.owed)

    def purge(self):
        self.purged = True

    def flush(self, _timeout):
        import confluent_kafka

        owed, self.owed = self.owed, []
        for callback in owed:
            callback(confluent_kafka.KafkaError(confluent_kafka.KafkaError._PURGE_QUEUE), None)
        return 0


def test_librdkafka_producer_is_replaced_only_after_owing_for_the_stall_limit(monkeypatch):
    """The watchdog counts from when something became owed, not from an idle spell; a
    timeout's report is no sign of life; the purged messages are reported as not sent; a
    producer that stalls again gets twice as long; nothing is replaced while the cluster is
    unreachable."""
    confluent_kafka = required_module("confluent_kafka", "confluent")
    from collections import deque

    from anomaly.config import ServeConfig
    from anomaly.stream import confluent_transport

    now = [0.0]
    monkeypatch.setattr(confluent_transport, "time", SimpleNamespace(monotonic=lambda: now[0]))
    monkeypatch.setattr(confluent_transport, "Producer", _OwingProducer)
    _OwingProducer.made.clear()
    transport = confluent_transport.ConfluentTransport(
        ServeConfig(client="confluent", linger_ms=0), "c", listener=None
    )
    transport._producer = _OwingProducer()
    limit = confluent_transport.PRODUCER_STALL_S

    def owe(at: float) -> Outgoing:
        now[0] = at
        message = Outgoing("out", b"k", b"v", origin=None)
        message._refused = deque()
        transport.send(message)
        return message

    def serve(at: float) -> None:
        now[0] = at
        transport.serve()

    serve(0.0)
    first = owe(100.0)  # after an idle spell: the clock starts now
    serve(101.0)
    assert len(_OwingProducer.made) == 1
    timed_out = confluent_kafka.KafkaError(confluent_kafka.KafkaError._MSG_TIMED_OUT)
    now[0] = 100.0 + limit - 1
    transport._producer.owed.pop()(timed_out, None)  # reported as timed out ...
    first.error = None
    transport._producer.owed.append(lambda *_: None)  # ... and sent again, still owed
    serve(100.0 + limit - 0.5)
    assert len(_OwingProducer.made) == 1
    serve(100.0 + limit + 0.5)  # the timeout's report did not count as progress
    assert len(_OwingProducer.made) == 2 and _OwingProducer.made[0].purged
    second = owe(200.0)
    transport._up = False  # the cluster unreachable: nothing is replaced
    serve(200.0 + 10 * limit)
    assert len(_OwingProducer.made) == 2
    transport._up = True
    serve(200.0 + 10 * limit + 2 * limit - 1)  # the next replacement waits twice as long
    assert len(_OwingProducer.made) == 2
    serve(200.0 + 10 * limit + 2 * limit + 1)
    assert len(_OwingProducer.made) == 3
    assert second.error.code() == confluent_kafka.KafkaError._PURGE_QUEUE
    assert list(second._refused) == [second]  # reported as not sent: ``delivery`` sends it again


class _RangeConsumer:
    """What ``_reset`` asks of librdkafka's consumer: a partition's range from the broker
    (or its failure to answer) and the two partitions' positions; it keeps the offsets
    they are assigned at again."""

    def __init__(self, topic_partition, watermarks, positions):
        self.topic_partition = topic_partition
        self.watermarks = watermarks
        self.positions = positions
        self.assigned: dict[int, int] = {}

    def get_watermark_offsets(self, tp, timeout, cached):
        if isinstance(self.watermarks, Exception):
            raise self.watermarks
        return self.watermarks

    def assignment(self):
        return [self.topic_partition("in", p) for p in self.positions]

    def position(self, partitions):
        return [
            self.topic_partition("in", tp.partition, self.positions[tp.partition])
            for tp in partitions
        ]

    def assign(self, partitions):
        self.assigned = {tp.partition: tp.offset for tp in partitions}


@pytest.mark.parametrize(
    ("reset", "sought", "answer", "start"),
    [
        ("earliest", 12, (10, 30), 12),  # inside: where the loop was
        ("earliest", 40, (10, 30), 30),  # past the end (a truncated log): the end
        ("earliest", 5, (10, 30), 10),  # deleted: auto_offset_reset, as an offset
        ("latest", 5, (10, 30), 30),
        ("earliest", None, (10, 30), 10),  # no offset of the loop's
        ("earliest", 12, "down", 12),  # the broker cannot say: where the loop was
        ("earliest", None, "down", -2),  # ... or librdkafka's beginning
    ],
)
def test_librdkafka_reset_restarts_where_the_broker_can_serve_and_keeps_every_start(
    reset, sought, answer, start
):
    """librdkafka reported partition 0 out of range: it restarts where the broker's range
    allows, and both partitions' starts are kept as where they were sought to, so a batch
    partition 1 cannot read next is dead-lettered at its own position (7), not at the
    batch's first record as librdkafka reports it after the reassignment, nor behind the
    consumer's position once that moved past a transaction marker."""
    confluent_kafka = required_module("confluent_kafka", "confluent")
    from anomaly.config import ServeConfig
    from anomaly.stream.confluent_transport import ConfluentTransport

    error = confluent_kafka.KafkaError
    down = confluent_kafka.KafkaException(error(error._TIMED_OUT))
    config = ServeConfig(client="confluent", input_topic="in", auto_offset_reset=reset)
    transport = ConfluentTransport(config, "c", listener=None)
    consumer = _RangeConsumer(
        confluent_kafka.TopicPartition, down if answer == "down" else answer, {0: -1001, 1: 7}
    )
    transport._consumer = consumer
    transport._assigned = {0, 1}
    if sought is not None:
        transport._seeked[0] = sought
    transport._reset(0, error(error._AUTO_OFFSET_RESET))
    assert consumer.assigned == {0: start, 1: 7}
    assert transport._seeked == ({0: start} if start >= 0 else {}) | {1: 7}
    assert transport._position_of(1, 3, error(error._BAD_MSG), []) == 7
    consumer.positions[1] = 9  # past a transaction's marker, which no record returned marks
    assert transport._position_of(1, 3, error(error._BAD_MSG), []) == 9


def test_a_librdkafka_partition_that_fetched_nothing_yet_is_at_its_committed_offset():
    """librdkafka has no position before a partition's first record: its lag had no series,
    so a partition that fetched nothing after a rebalance raised no alert."""
    confluent_kafka = required_module("confluent_kafka", "confluent")
    from anomaly.config import ServeConfig
    from anomaly.stream.confluent_transport import ConfluentTransport
    from anomaly.stream.transport import TopicPartition

    transport = ConfluentTransport(ServeConfig(client="confluent"), "c", listener=None)
    transport._consumer = _RangeConsumer(confluent_kafka.TopicPartition, (0, 50), {0: -1001, 1: 7})
    transport._committed_starts = {0: 20}

    assert transport.position(TopicPartition("in", 0)) == 20
    assert transport.position(TopicPartition("in", 1)) == 7


class _OffsetsAdmin:
    """Stands in for the admin client whose queries ``end_offsets`` sends: its answers are
    futures the test settles."""

    def __init__(self, _settings):
        self.queries: list[dict] = []
        self.polled = 0

    def list_offsets(self, specs, **options):
        from concurrent.futures import Future

        self.queries.append(options)
        return {tp: Future() for tp in specs}

    def poll(self, _timeout):
        self.polled += 1


def test_librdkafka_end_offsets_are_asked_without_waiting_and_forget_what_is_not_known(
    monkeypatch,
):
    """The loop never waits for the query: a call answers what the last query said and sends
    the next once that one is settled. A partition whose query failed, or that is no
    longer asked (revoked; its topic may be made anew), has no end offset, so the lag is not
    overstated from an old answer."""
    required_module("confluent_kafka", "confluent")
    from anomaly.config import ServeConfig
    from anomaly.stream import confluent_transport
    from anomaly.stream.transport import TopicPartition as Partition

    monkeypatch.setattr(confluent_transport, "AdminClient", _OffsetsAdmin)
    transport = confluent_transport.ConfluentTransport(
        ServeConfig(client="confluent"), "c", listener=None
    )
    p0, p1 = Partition("in", 0), Partition("in", 1)

    def settle(answers: dict) -> None:
        for asked, future in transport._asked.items():
            answer = answers[asked.partition]
            if isinstance(answer, Exception):
                future.set_exception(answer)
            else:
                future.set_result(SimpleNamespace(offset=answer))

    assert transport.end_offsets([p0, p1], 0.25) == {}  # asked; nothing known yet
    admin = transport._offsets_admin
    assert admin.queries[0]["isolation_level"].name == "READ_COMMITTED"
    assert transport.end_offsets([p0, p1], 0.25) == {} and len(admin.queries) == 1  # in flight
    settle({0: 10, 1: RuntimeError("no leader")})
    assert transport.end_offsets([p0, p1], 0.25) == {p0: 10} and len(admin.queries) == 2
    settle({0: 12, 1: 7})
    assert transport.end_offsets([p0, p1], 0.25) == {p0: 12, p1: 7}
    settle({0: RuntimeError("unknown topic"), 1: 8})
    assert transport.end_offsets([p0, p1], 0.25) == {p1: 8}  # p0's 12 may be a deleted topic's
    settle({0: 3, 1: 9})
    assert transport.end_offsets([p1], 0.25) == {p1: 9}  # p0 revoked
    settle({1: 10})

    def refused(specs, **options):
        raise RuntimeError("cannot send")

    admin.list_offsets = refused
    assert transport.end_offsets([p1], 0.25) == {}  # p1's 10 can no longer be renewed
    transport.close(deadline=0)
    assert transport._offsets_admin is None

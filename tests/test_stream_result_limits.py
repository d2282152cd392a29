"""Results whose Kafka key alone is over the producer's limit: the record is dead-lettered
with an explanation that says so (not a negative number of bytes allowed)."""

from __future__ import annotations

import numpy as np

from anomaly.stream.messages import ResultEncoder


class _Result:
    scores = np.array([2.0, 0.5], np.float32)
    is_anomaly = np.array([True, False])
    percentiles = np.array([99.5, 10.0], np.float32)
    components = {"reconstruction": np.array([1.1, -0.2], np.float32)}
    top_features = [["b"], ["a"]]

    def __len__(self):
        return 2


def test_a_key_over_the_producers_limit_is_named_as_the_reason_its_result_cannot_go():
    encoder = ResultEncoder("v1", 1.0, time_series=False, max_bytes=1000)
    out, flags, failures = encoder.encode(
        [b"K" * 2000, b"k"], [0, 0], [5, 6], [1, 2], [None, None], _Result(), None, 1.0
    )
    assert out[0] is None and out[1] is not None
    assert flags == [False, False]
    assert failures == [
        (
            0,
            "the result could not be encoded: ValueError: the record's Kafka key of 2000 "
            "bytes is over the producer's limit of 1000 bytes for a result",
        )
    ]

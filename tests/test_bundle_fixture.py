"""A bundle written by release 0.1.0 loads and scores the same in every later release.

``fixtures/bundle-0.1.0`` was written once, by this release, and is never regenerated: a
change that makes it fail to load or score differently breaks every user's saved models. A
change of format must bump ``bundle_version`` and migrate this bundle as it loads it.
``bundle-0.1.0.expected.json`` holds probe rows and what the bundle gave for them when
written (6 normal rows, 4 far off the training data's plane).
"""

import json
from pathlib import Path

import numpy as np

import anomaly

FIXTURES = Path(__file__).parent / "fixtures"


def test_the_0_1_0_bundle_loads_and_scores_as_when_it_was_written():
    expected = json.loads((FIXTURES / "bundle-0.1.0.expected.json").read_text())
    detector = anomaly.load(FIXTURES / "bundle-0.1.0")
    result = detector.score(np.asarray(expected["rows"], np.float32))
    np.testing.assert_allclose(result.scores, expected["scores"], rtol=1e-5, atol=1e-5)
    assert result.is_anomaly.tolist() == expected["is_anomaly"]
    assert detector.threshold == expected["threshold"]
    assert detector.threshold_at(0.001) == expected["threshold_at_0.001"]
    for name, values in expected["components"].items():
        np.testing.assert_allclose(result.components[name], values, rtol=1e-5, atol=1e-5)

"""The walk of a network archive's configuration counts exactly the weights Keras builds, for
every network the project makes, so that no bundle it saves is refused for its size."""

from __future__ import annotations

import json

import numpy as np
import pytest

from anomaly.declared_weights import UnknownNetwork, declared_weights

keras = pytest.importorskip("keras")


@pytest.mark.parametrize("formulation", ["fanogan", "bigan"])
@pytest.mark.parametrize(
    ("record_shape", "conv_filters"),
    [((6,), [8]), ((274,), [8]), ((16, 3), [8, 16]), ((33, 1), [4])],
)
def test_every_network_the_project_builds_declares_the_weights_keras_gives_it(
    formulation, record_shape, conv_filters
):
    from anomaly.networks import build_networks

    for network in build_networks(record_shape, 8, [32, 64], conv_filters, formulation):
        saved = json.loads(json.dumps(keras.saving.serialize_keras_object(network)))
        built = sum(int(np.prod(weight.shape)) for weight in network.weights)

        assert declared_weights(saved) == built, network.name


def test_a_layer_listed_before_its_input_is_refused():
    from anomaly.networks import build_networks

    encoder = build_networks((6,), 4, [8], [8], "fanogan")[0]
    saved = json.loads(json.dumps(keras.saving.serialize_keras_object(encoder)))
    layers = saved["config"]["layers"]
    layers[1], layers[2] = layers[2], layers[1]

    with pytest.raises(UnknownNetwork, match="is listed before its input"):
        declared_weights(saved)

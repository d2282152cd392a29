"""How many weights a network archive's own configuration makes Keras allocate.

Keras builds a saved network from the layer configuration in its archive, allocating every
layer's weights, and only then reads the weights file. A hostile archive can declare layers of
billions of weights beside a small weights file, and the process is killed while building
them. So the configuration is walked here first, without Keras: each tensor's shape is
carried from the network's inputs through its layers, as Keras will carry it, and each layer
adds the weights it will create. Only the layers the project's networks are built of
(``anomaly.networks``) are known; any other layer, a layer used twice, or a layer listed
before its inputs makes the archive refused, as no bundle the project saves has one.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

Shape = tuple[int, ...]

#: Layers that hold no weights and keep their input's shape.
_SHAPE_KEEPING = {"LeakyReLU", "Identity", "Activation", "Dropout"}


class UnknownNetwork(ValueError):
    """The configuration is not one the project's networks have: says what and where."""


def declared_weights(network: dict) -> int:
    """The number of weight values the functional network ``network`` (the ``config.json``
    of a ``.keras`` archive) creates when Keras builds it."""
    shapes: dict[str, Shape] = {}
    total = 0
    for layer in _layers(network):
        name, kind, config = layer.get("name"), layer.get("class_name"), layer.get("config", {})
        if not isinstance(name, str) or not isinstance(config, dict) or name in shapes:
            raise UnknownNetwork(f"a layer without a name of its own ({name!r})")
        if kind == "InputLayer":
            shapes[name] = _dims(config.get("batch_shape", [])[1:], name)
            continue
        inputs = [_input_shape(node, shapes, name) for node in _inbound(layer, name)]
        weights, shapes[name] = _layer(kind, config, inputs, name)
        total += weights
    return total


def _layers(network: dict) -> list[dict]:
    if not isinstance(network, dict) or network.get("class_name") != "Functional":
        raise UnknownNetwork("not a functional network")
    layers = network.get("config", {}).get("layers")
    if not isinstance(layers, list) or not all(isinstance(layer, dict) for layer in layers):
        raise UnknownNetwork("no list of layers")
    return layers


def _inbound(layer: dict, name: str) -> Iterator[dict]:
    """The tensors the layer is called on: one call, whose positional arguments are a tensor
    or a list of tensors."""
    nodes = layer.get("inbound_nodes")
    if not isinstance(nodes, list) or len(nodes) != 1 or not isinstance(nodes[0], dict):
        raise UnknownNetwork(f"layer {name!r} is not called exactly once")
    args = nodes[0].get("args")
    tensors = args[0] if isinstance(args, list) and len(args) == 1 else None
    for tensor in tensors if isinstance(tensors, list) else [tensors]:
        if not isinstance(tensor, dict) or tensor.get("class_name") != "__keras_tensor__":
            raise UnknownNetwork(f"layer {name!r} is called on something other than tensors")
        yield tensor


def _input_shape(tensor: dict, shapes: dict[str, Shape], name: str) -> Shape:
    history = tensor.get("config", {}).get("keras_history")
    source = history[0] if isinstance(history, list) and history else None
    if not isinstance(source, str) or source not in shapes:
        raise UnknownNetwork(f"layer {name!r} is listed before its input {source!r}")
    return shapes[source]


def _layer(kind: str, config: dict, inputs: list[Shape], name: str) -> tuple[int, Shape]:
    """(weights, output shape) of one layer called on tensors of shapes ``inputs``."""
    if kind == "Concatenate":
        if config.get("axis") != -1 or len({shape[:-1] for shape in inputs}) != 1:
            raise UnknownNetwork(f"layer {name!r} concatenates other than on the last axis")
        return 0, (*inputs[0][:-1], sum(shape[-1] for shape in inputs))
    if len(inputs) != 1:
        raise UnknownNetwork(f"layer {name!r} ({kind}) takes {len(inputs)} inputs")
    (shape,) = inputs
    if kind in _SHAPE_KEEPING:
        return 0, shape
    if kind == "Flatten":
        return 0, (math.prod(shape),)
    if kind == "Reshape":
        target = _dims(config.get("target_shape", []), name)
        if math.prod(target) != math.prod(shape):
            raise UnknownNetwork(f"layer {name!r} reshapes {shape} to {target}")
        return 0, target
    if kind == "SpectralNormalization":
        inner = config.get("layer", {})
        weights, output = _layer(inner.get("class_name"), inner.get("config", {}), inputs, name)
        return weights + output[-1], output  # its power iteration's vector
    if kind == "Dense":
        units = _dims([config.get("units")], name)[0]
        return (shape[-1] + _bias(config)) * units, (*shape[:-1], units)
    if kind == "Conv1D":
        return _conv1d(config, shape, name)
    raise UnknownNetwork(f"layer {name!r} is a layer of a kind no network of a bundle has ({kind})")


def _conv1d(config: dict, shape: Shape, name: str) -> tuple[int, Shape]:
    filters = _dims([config.get("filters")], name)[0]
    (kernel,) = _dims(config.get("kernel_size", []), name)
    (stride,) = _dims(config.get("strides", []), name)
    if len(shape) != 2 or config.get("groups", 1) != 1 or config.get("dilation_rate") != [1]:
        raise UnknownNetwork(f"layer {name!r} is a convolution no network of a bundle has")
    length, channels = shape
    if config.get("padding") == "same":
        steps = math.ceil(length / stride)
    elif config.get("padding") == "valid" and length >= kernel:
        steps = (length - kernel) // stride + 1
    else:
        raise UnknownNetwork(f"layer {name!r} pads as {config.get('padding')!r}")
    return (kernel * channels + _bias(config)) * filters, (steps, filters)


def _bias(config: dict) -> int:
    return 0 if config.get("use_bias") is False else 1


def _dims(values: object, name: str) -> Shape:
    """Positive integer sizes (JSON booleans are not sizes)."""
    if not isinstance(values, list) or not all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in values
    ):
        raise UnknownNetwork(f"layer {name!r} has sizes {values!r}, not positive integers")
    return tuple(values)

"""How many weights a network archive's own configuration makes Keras allocate.

Keras builds a saved network from the layer configuration in its archive, allocating every
layer's weights, and only then reads the weights file. A hostile archive can declare layers of
billions of weights beside a small weights file, and the process is killed while building
them. So the configuration is walked here first, without Keras: each tensor's shape is
carried from the network's inputs through its layers, as Keras will carry it, and each layer
adds the float32 weights it will create.

Only what the project's networks are built of (``anomaly.networks``) is known, and anything
else is refused (``UnknownNetwork``): another kind of layer, a layer used twice or listed
before its input, and every setting by which Keras would build a layer larger than its
shapes say (a layer's own ``build_config`` that differs from the shape it is called on, a
low-rank adaptation, quantisation, another dtype, channels first, an input shape given
under another key).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

Shape = tuple[int, ...]

#: Layers of the project's networks that hold no weights and keep their input's shape.
_SHAPE_KEEPING = {"LeakyReLU", "Identity"}
_INPUT_KEYS = {"batch_shape", "dtype", "name", "optional", "ragged", "sparse"}


class UnknownNetwork(ValueError):
    """The configuration is not one the project's networks have: says what and where."""


def declared_weights(network: object) -> int:
    """The number of float32 weight values the functional network ``network`` (the
    ``config.json`` of a ``.keras`` archive) creates when Keras builds it."""
    try:
        return _walk(network)
    except UnknownNetwork:
        raise
    except (TypeError, AttributeError, IndexError, KeyError, ValueError, RecursionError) as exc:
        raise UnknownNetwork(f"its configuration is malformed ({type(exc).__name__})") from None


def _walk(network: object) -> int:
    if not isinstance(network, dict) or network.get("class_name") != "Functional":
        raise UnknownNetwork("not a functional network")
    build_config = network.get("build_config") or {}
    if set(build_config) - {"input_shape"} or build_config.get("input_shape") is not None:
        raise UnknownNetwork("the network declares a shape to be built for of its own")
    layers = network["config"]["layers"]
    if not isinstance(layers, list):
        raise UnknownNetwork("no list of layers")
    shapes: dict[str, Shape] = {}
    total = 0
    for layer in layers:
        name, kind, config = layer["name"], layer["class_name"], layer["config"]
        if not isinstance(name, str) or name in shapes:
            raise UnknownNetwork(f"a layer without a name of its own ({name!r})")
        _keras_own(layer, name)
        if kind == "InputLayer":
            shapes[name] = _input(config, name)
            continue
        inputs = [_input_shape(tensor, shapes, name) for tensor in _inbound(layer, name)]
        _built_as_called(layer, inputs, name)
        weights, shapes[name] = _layer(kind, config, inputs, name)
        total += weights
    return total


def _keras_own(layer: dict, name: str) -> None:
    """One of Keras' own layers, in float32, without what would add weights its shapes do
    not show."""
    config = layer["config"]
    if layer.get("module") != "keras.layers" or layer.get("registered_name") is not None:
        raise UnknownNetwork(f"layer {name!r} is not one of Keras' own layers")
    if not _float32(config.get("dtype", "float32")):
        raise UnknownNetwork(f"layer {name!r} is not float32")
    for key in ("lora_rank", "quantization_config"):
        if config.get(key) is not None:
            raise UnknownNetwork(f"layer {name!r} sets {key}")
    if config.get("data_format", "channels_last") != "channels_last":
        raise UnknownNetwork(f"layer {name!r} puts channels first")


def _float32(dtype: object) -> bool:
    """``"float32"``, or Keras' plain dtype policy of that name."""
    return dtype == "float32" or (
        isinstance(dtype, dict)
        and dtype.get("module", "keras") == "keras"
        and dtype.get("class_name") == "DTypePolicy"
        and dtype.get("config") == {"name": "float32"}
        and dtype.get("registered_name") is None
    )


def _input(config: dict, name: str) -> Shape:
    batch_shape = config.get("batch_shape")
    if (
        set(config) - _INPUT_KEYS
        or config.get("sparse")
        or config.get("ragged")
        or not isinstance(batch_shape, list)
        or len(batch_shape) < 2
        or batch_shape[0] is not None
    ):
        raise UnknownNetwork(f"input {name!r} is not a batch of dense records of a fixed shape")
    return _dims(batch_shape[1:], name)


def _built_as_called(layer: dict, inputs: list[Shape], name: str) -> None:
    """Keras builds a layer from its own ``build_config`` before calling it: it must be the
    shape the layer is called on (or absent)."""
    for entry in (layer, layer["config"].get("layer") or {}):
        build_config = entry.get("build_config") or {}
        if set(build_config) - {"input_shape"}:  # Keras builds from ``shapes_dict`` too
            raise UnknownNetwork(f"layer {name!r} is built from {sorted(build_config)}")
        declared = build_config.get("input_shape")
        called = [[None, *shape] for shape in inputs]
        if declared is not None and declared != (called[0] if len(called) == 1 else called):
            raise UnknownNetwork(
                f"layer {name!r} is built for {declared}, not what it is called on"
            )


def _inbound(layer: dict, name: str) -> Iterator[dict]:
    """The tensors the layer is called on: one call, whose positional arguments are a tensor
    or a list of tensors."""
    nodes = layer.get("inbound_nodes")
    if not isinstance(nodes, list) or len(nodes) != 1:
        raise UnknownNetwork(f"layer {name!r} is not called exactly once")
    args = nodes[0]["args"]
    tensors = args[0] if isinstance(args, list) and len(args) == 1 else None
    for tensor in tensors if isinstance(tensors, list) else [tensors]:
        if not isinstance(tensor, dict) or tensor.get("class_name") != "__keras_tensor__":
            raise UnknownNetwork(f"layer {name!r} is called on something other than tensors")
        yield tensor


def _input_shape(tensor: dict, shapes: dict[str, Shape], name: str) -> Shape:
    source = tensor["config"]["keras_history"][0]
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
        target = _dims(config["target_shape"], name)
        if math.prod(target) != math.prod(shape):
            raise UnknownNetwork(f"layer {name!r} reshapes {shape} to {target}")
        return 0, target
    if kind == "SpectralNormalization":
        inner = config["layer"]
        _keras_own(inner, name)
        weights, output = _layer(inner["class_name"], inner["config"], inputs, name)
        return weights + output[-1], output  # its power iteration's vector
    if kind == "Dense":
        (units,) = _dims([config["units"]], name)
        return (shape[-1] + _bias(config)) * units, (*shape[:-1], units)
    if kind == "Conv1D":
        return _conv1d(config, shape, name)
    raise UnknownNetwork(f"layer {name!r} is a layer of a kind no network of a bundle has ({kind})")


def _conv1d(config: dict, shape: Shape, name: str) -> tuple[int, Shape]:
    (filters,) = _dims([config["filters"]], name)
    kernel_size, strides = _dims(config["kernel_size"], name), _dims(config["strides"], name)
    if (
        len(shape) != 2
        or len(kernel_size) != 1
        or len(strides) != 1
        or config.get("groups", 1) != 1
        or config.get("dilation_rate") != [1]
        or config.get("padding") != "same"
    ):
        raise UnknownNetwork(f"layer {name!r} is a convolution no network of a bundle has")
    (length, channels), (kernel,), (stride,) = shape, kernel_size, strides
    return (kernel * channels + _bias(config)) * filters, (-(-length // stride), filters)


def _bias(config: dict) -> int:
    return 0 if config.get("use_bias") is False else 1


def _dims(values: object, name: str) -> Shape:
    """Positive integer sizes (JSON booleans are not sizes)."""
    if not isinstance(values, list) or not all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in values
    ):
        raise UnknownNetwork(f"layer {name!r} has sizes {values!r}, not positive integers")
    return tuple(values)

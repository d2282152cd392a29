"""Which Keras backend this process runs on, and whether it is installed.

Keras imports its backend (TensorFlow, JAX or PyTorch) the moment it is itself imported,
and a missing one fails there with a traceback. ``require_backend`` checks first, without
importing Keras, so that a user hears in one line what to install (``anomaly.train`` and
friends, and every command of the CLI, check before they import Keras).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
import sys
import tempfile
from pathlib import Path

from anomaly.errors import ConfigError

#: The backends this package trains and scores under: the module Keras imports, its name,
#: and how to install it.
BACKENDS = {
    "tensorflow": ("tensorflow", "TensorFlow", "pip install tensorflow-cpu"),
    "jax": ("jax", "JAX", "pip install 'anomaly-gan[jax]'"),
    "torch": ("torch", "PyTorch", "pip install 'anomaly-gan[torch]'"),
}
#: TensorFlow's start-up lines that ``import_keras_quietly`` holds back.
_IMPORT_NOISE = re.compile(
    rb"WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    rb"|I\d{4} [^\]]*\] oneDNN custom operations are on"
)
#: TensorFlow's warning that a function was traced again: cross-fitting's fold models are
#: new networks of the same shapes, which trip it by design (``import_keras_quietly``).
_RETRACING_NOTICE = "triggered tf.function retracing"
#: Keras's other backends (inference only), left for Keras to judge.
_OTHER_KERAS_BACKENDS = ("numpy", "openvino")


def requested_backend() -> str:
    """The backend Keras will use (or uses, once imported): ``KERAS_BACKEND``, else the
    ``backend`` of Keras's configuration file (``$KERAS_HOME/keras.json``, by default
    ``~/.keras/keras.json``), else TensorFlow, as Keras itself decides."""
    if "keras" in sys.modules:
        return sys.modules["keras"].backend.backend()
    name = os.environ.get("KERAS_BACKEND")
    if name:
        return name
    home = os.environ.get("KERAS_HOME")
    if home is None:
        base = Path.home()
        home = str((base if os.access(base, os.W_OK) else Path("/tmp")) / ".keras")
    try:
        config = json.loads((Path(home).expanduser() / "keras.json").read_text())
        name = config.get("backend") if isinstance(config, dict) else None
    except (OSError, ValueError):
        name = None
    return name or "tensorflow"


def require_backend() -> str:
    """The backend's name, or a ``ConfigError`` saying how to install it when it is not."""
    name = requested_backend()
    if name in _OTHER_KERAS_BACKENDS:
        return name
    if name not in BACKENDS:
        raise ConfigError(
            f"KERAS_BACKEND={name} is not a Keras backend this package runs on: use "
            + ", ".join(BACKENDS)
        )
    module, title, install = BACKENDS[name]
    if "keras" not in sys.modules and not _installed(module):
        raise ConfigError(f"KERAS_BACKEND={name}, but {title} is not installed: {install}")
    return name


def import_keras_quietly() -> None:
    """Import Keras (and so its backend) with TensorFlow's start-up noise held back.

    TensorFlow writes C++ start-up lines to file descriptor 2 as it loads (absl's "before
    InitializeLog" warning, oneDNN's notice), whatever ``TF_CPP_MIN_LOG_LEVEL`` says; they
    would break the command line's promise of one line per error. Standard error is
    captured during the import; then everything but those two lines is written back (a
    warning that GPU libraries failed to load stays visible), and everything when the
    import fails. TensorFlow's retracing notice is held back from then on. For the command
    line and the Spark Python workers that run our scoring, never in a library's host
    process, whose standard error is not ours to take over."""
    if "keras" in sys.modules:
        return
    logging.getLogger("tensorflow").addFilter(
        lambda record: _RETRACING_NOTICE not in record.getMessage()
    )
    if sys.stderr is not None:
        sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no standard error to protect
        import keras  # noqa: F401

        return
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        failed = True
        try:
            import keras  # noqa: F401

            failed = False
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            lines = captured.read().splitlines(keepends=True)
            kept = lines if failed else [ln for ln in lines if not _IMPORT_NOISE.match(ln)]
            if kept:
                os.write(2, b"".join(kept))


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False

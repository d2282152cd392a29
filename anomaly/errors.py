"""The package's own exception types.

Every error a user can cause (bad data, a bad bundle, a bad configuration) is an
``AnomalyError`` whose message says what was wrong, where, and what to do. The CLI turns
these into one line on stderr and exit code 2; anything else is a bug and keeps its
traceback.
"""


class AnomalyError(Exception):
    """Base class of every user-facing error raised by the package."""


class ConfigError(AnomalyError):
    """The configuration (TOML file, keyword or option) is unknown, ill-typed or invalid."""


class DataError(AnomalyError):
    """Input data cannot be used: missing file, unreadable format, bad values, wrong schema."""


class SchemaError(DataError):
    """The data's features do not match what the model was trained on."""


class BundleError(AnomalyError):
    """A model bundle is missing, corrupt, tampered with or of an unknown version."""


class TrainingError(AnomalyError):
    """Training could not produce a usable model (too little data, diverged losses)."""

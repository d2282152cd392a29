"""One typed, validated configuration object, with every default written once, here.

``Config`` is frozen and forbids unknown keys at every level, so a typo in a TOML file is
an error that names the key instead of a silently ignored setting. The configuration a
model was trained with is saved in its bundle, so a model can say how it was made.
"""

from __future__ import annotations

import difflib
import itertools
import math
import os
import re
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import core_schema

from anomaly.conformal import DEFAULT_ALARM_LEVEL
from anomaly.errors import ConfigError
from anomaly.preprocessing import Extremes

#: The score components the engine computes; weights are keyed by these names.
COMPONENTS = ("reconstruction", "feature", "critic", "latent")

#: The widest layer a network may have, and the most weights between two consecutive
#: layers (1 GiB in float32, such as 16,384 x 16,384, or a million features beside the
#: default's 256 units: far beyond any network this needs, and short of exhausting a machine).
MAX_LAYER_WIDTH = 2**16
MAX_LAYER_WEIGHTS = 2**28
#: The length of the time-series networks' convolution kernels.
CONV_KERNEL_SIZE = 5

#: The validation context's key saying that numbers may come as text.
FROM_TEXT = "from_text"

#: What Kafka accepts as a topic name.
_TOPIC_NAME = re.compile(r"[A-Za-z0-9._-]{1,249}")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    @field_validator("*", mode="before")
    @classmethod
    def _a_number_for_a_number(cls, value: Any, info: ValidationInfo) -> Any:
        """Refuse true/false for a number (or a number in a list or table): pydantic would
        read them as 1 and 0, so ``steps = true`` would train one step,
        ``learning_rate = true`` at 1.0 and ``hidden_units = [true, 256]`` a layer of 1.
        Refuse text too (``steps = "30"``), except where the values come as text
        (``FROM_TEXT`` in the context: the environment's variables), which pydantic reads."""
        types = _leaf_types(cls.model_fields[info.field_name].annotation)
        if not types & {int, float}:
            return value
        if isinstance(value, dict):
            values = list(value.values())
        else:
            values = value if isinstance(value, list) else [value]
        if any(isinstance(v, bool) for v in values) and bool not in types:
            raise ValueError("must be a number, not true or false")
        from_text = (info.context or {}).get(FROM_TEXT, False)
        takes_text = any(t is str or isinstance(t, str) for t in types)  # "auto" and the like
        if not from_text and not takes_text and any(isinstance(v, str) for v in values):
            # the text is not shown: a misplaced secret must not reach a log
            raise ValueError("must be a number, not text (in quotes)")
        return value


def _leaf_types(annotation: Any) -> set[Any]:
    """The types a setting's values are made of (``list[int] | None``: list, int, None;
    ``dict[str, float]``: dict, float, as its keys are names)."""
    args = get_args(annotation)
    if get_origin(annotation) is dict:
        args = args[1:]
    return {annotation}.union(*(_leaf_types(arg) for arg in args))


class DataConfig(_Section):
    """How records are read from files and which columns are features."""

    features: list[str] | None = None
    """Feature columns by name, in model order; ``None`` takes every numeric column
    except the label, id and entity columns."""
    label_column: str | None = None
    """Optional 0/1 (or false/true) label; ``train`` keeps only rows labelled normal."""
    id_column: str | None = None
    """Optional record id, copied to score outputs."""
    entity_column: str | None = None
    """Time-series mode: rows are windowed separately per value of this column."""
    chunk_rows: int = Field(65_536, ge=1)
    """Rows read per chunk, so files larger than memory can be scored."""
    on_invalid: Literal["error", "skip"] = "error"
    """NaN/infinite rows: stop with an error naming the rows, or write them to a rejects
    file next to the output and go on."""

    @field_validator("features")
    @classmethod
    def _named_once(cls, features: list[str] | None) -> list[str] | None:
        """A feature named twice would be a model input twice (``--features a,a``)."""
        twice = next((name for i, name in enumerate(features or []) if name in features[:i]), None)
        if twice is not None:
            raise ValueError(f"{twice!r} is listed twice; name each feature once")
        return features


class ModelConfig(_Section):
    """The GAN's shape."""

    formulation: Literal["fanogan", "bigan"] = "fanogan"
    """``fanogan``: WGAN-GP generator and critic with an encoder trained to invert the
    generator (image and critic-feature residual). ``bigan``: a BiGAN whose spectrally
    normalised discriminator sees (x, z) pairs, with the encoder trained jointly."""
    latent_dim: int | None = Field(None, ge=1, le=MAX_LAYER_WIDTH)
    """Size of z; ``None`` means ``min(32, max(2, values per record))``, a record's values being
    its features (times ``window`` in time-series mode): a z narrower than the record loses
    what the latent distance needs (docs/benchmarks.md)."""
    hidden_units: list[int] = Field(default_factory=lambda: [256, 256])
    """Widths of the hidden layers of each dense network."""
    window: int | None = Field(None, ge=2, le=MAX_LAYER_WIDTH)
    """Time-series mode: length of the sliding window; ``None`` for independent rows."""
    conv_filters: list[int] = Field(default_factory=lambda: [32, 64])
    """Filters of the 1-D convolutional layers used in time-series mode."""
    clip_value: float = Field(10.0, gt=0)
    """Standardised inputs beyond +-clip_value are compressed (or clipped, see
    ``extremes``) so one extreme value cannot dominate training or overflow scoring."""
    extremes: Literal["auto", "log", "clip"] = "auto"
    """Standardised values beyond +-clip_value: ``log`` adds the logarithm of the excess
    (clip_value + log(1 + excess)), so a value a thousand standard deviations off still
    scores above one just past the clip; ``clip`` saturates them, and their scores tie.
    ``auto`` (the default): ``log`` for independent rows, ``clip`` in time-series mode,
    each as it measured better (docs/benchmarks.md: the shared tabular sets, where every
    http attack lies beyond the clip, and NAB)."""

    @property
    def extremes_in_use(self) -> Extremes:
        """``extremes``, with ``auto`` resolved for this mode."""
        if self.extremes != "auto":
            return self.extremes
        return "clip" if self.window is not None else "log"

    @model_validator(mode="after")
    def _positive_widths(self) -> ModelConfig:
        for name in ("hidden_units", "conv_filters"):
            if not getattr(self, name) or any(
                not 1 <= u <= MAX_LAYER_WIDTH for u in getattr(self, name)
            ):
                raise ValueError(
                    f"{name} must be a non-empty list of positive integers, each at most "
                    f"{MAX_LAYER_WIDTH:,}"
                )
        return self

    @model_validator(mode="after")
    def _layers_that_fit_in_memory(self) -> ModelConfig:
        """A width mistyped by a few digits would make training allocate tens of gigabytes
        and be killed without a word; said here instead, before any data is read (and what
        depends on the records' width, by ``too_large_for``)."""
        if problem := self.too_large_for(None):
            raise ValueError(problem)
        return self

    def too_large_for(self, record_shape: tuple[int, ...] | None) -> str | None:
        """What makes a layer of the networks for records of ``record_shape`` (``None``:
        whatever their shape) hold more than ``MAX_LAYER_WEIGHTS`` weights, or None."""
        pairs = [  # (setting, layer before, layer after, weights per pair of units)
            *(("hidden_units", a, b, 1) for a, b in itertools.pairwise(self.hidden_units)),
            *(
                ("conv_filters", a, b, CONV_KERNEL_SIZE)
                for a, b in itertools.pairwise(self.conv_filters)
            ),
        ]
        # z meets the last hidden layer: the encoder ends on it, the generator starts from it
        # (its layers run in reverse) and the BiGAN critic embeds z at its width.
        last = self.hidden_units[-1]
        beside_z = last if self.formulation == "bigan" else 0  # the BiGAN critic's concatenation
        if self.latent_dim:
            pairs.append(("latent_dim", self.latent_dim, last, 1))
        if self.window:
            steps = -(-self.window // 2 ** len(self.conv_filters))  # what the strides leave
            flattened = steps * self.conv_filters[-1]
            pairs.append(("window", flattened + beside_z, last, 1))
        if record_shape is not None:
            values = math.prod(record_shape)
            pairs.append(("hidden_units", values, max(self.hidden_units[0], last), 1))
            if not self.window:
                pairs.append(("hidden_units", values + beside_z, self.hidden_units[0], 1))
            else:
                pairs.append(
                    ("conv_filters", record_shape[-1], self.conv_filters[0], CONV_KERNEL_SIZE)
                )
        for name, before, after, per_pair in pairs:
            weights = before * after * per_pair
            if weights > MAX_LAYER_WEIGHTS:
                return (
                    f"{name}: a layer of {after:,} beside one of {before:,} needs {weights:,} "
                    f"weights ({weights * 4 / 2**30:,.1f} GiB, about four times that while "
                    f"training); at most {MAX_LAYER_WEIGHTS:,} between two layers"
                )
        return None


class TrainingConfig(_Section):
    """How the GAN is fitted on normal data."""

    steps: int = Field(2000, ge=1)
    """Generator updates in all: small datasets train as well as large ones, and the
    largest in minutes."""
    steps_per_epoch: int | None = Field(None, ge=1)
    """Steps between validations; ``None`` means one pass over the data, at least 50."""
    batch_size: int = Field(128, ge=2)
    learning_rate: float = Field(2e-4, gt=0, allow_inf_nan=False)
    critic_steps: int = Field(3, ge=1)
    """Critic updates per generator update (WGAN-GP)."""
    gradient_penalty: float = Field(10.0, ge=0, allow_inf_nan=False)
    feature_weight: float = Field(1.0, ge=0, allow_inf_nan=False)
    """Weight of the critic-feature residual in the encoder's loss (f-AnoGAN izi_f)."""
    validation_fraction: float = Field(0.15, gt=0, lt=0.9, allow_inf_nan=False)
    """Share of the normal training rows held out to standardise score components and
    calibrate the threshold."""
    calibration_folds: int | Literal["auto"] = Field("auto")
    """1: the threshold is calibrated on the held-out share alone. K >= 2 (cross-fitting):
    the other records are split into K - 1 folds, and for each a model of the same settings,
    trained on every record but that fold, scores it; the threshold and its tail are then
    fitted on every normal record's score from a model that never saw it. It costs K - 1
    more fits. At least 3 with the default held-out share, so that no fold holds more than
    half the records; at most 20. Not in time-series mode. ``"auto"``: up to 5 folds where
    the held-out records are too few to resolve ``scoring.target_fpr`` (fewer than
    ``1 / target_fpr``: small training sets, where the benchmark measured one hold-out's
    threshold missing its rate) and the records allow folds of at least 20; else 1, and 1
    in time-series mode. Each model records the number it used (``calibration_folds`` in
    its metadata)."""
    early_stopping_patience: int = Field(10, ge=1)
    """Epochs without improvement of the held-out reconstruction error before stopping."""
    seed: int = Field(0, ge=0, le=2**32 - 1)
    """Seeds NumPy, Python and the backend (keras.utils.set_random_seed takes 0 to 2^32 - 1)."""
    verbose: int = Field(0, ge=0, le=2)
    """Keras progress output during ``fit``: 0 silent, 1 progress bar, 2 one line per epoch."""

    @field_validator("calibration_folds", mode="before")
    @classmethod
    def _folds_or_auto(cls, value: Any, info: ValidationInfo) -> Any:
        """One message for a value that is neither a number of folds nor "auto" (pydantic
        would give one per member of the union). A number in quotes is text, as for every
        other number (``_a_number_for_a_number``), unless the values come as text."""
        if value == "auto":
            return value
        if isinstance(value, str) and not (info.context or {}).get(FROM_TEXT, False):
            raise ValueError('text (in quotes): give a number of folds (1 to 20) or "auto"')
        if isinstance(value, str) and (digits := value.strip()).isdecimal() and digits.isascii():
            value = int(digits)
        if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 20:
            return value
        raise ValueError(f'{value!r}: give a number of folds (1 to 20) or "auto"')

    @property
    def fewest_calibration_folds(self) -> int:
        """The fewest folds (above 1) that put no more than half the records in a fold."""
        return 2 if self.validation_fraction >= 0.5 else 3

    @model_validator(mode="after")
    def _fold_models_train_on_most_records(self) -> TrainingConfig:
        """A fold model trains on every record outside its fold: with a fold of more than
        half of them it would be a much weaker model than the deployed one, and its scores
        would not stand for the deployed model's (with 2 folds and the default held-out
        share, it would train on the held-out 15 % alone)."""
        folds, held = self.calibration_folds, self.validation_fraction
        if folds != "auto" and 1 < folds < self.fewest_calibration_folds:
            raise ValueError(
                f"calibration_folds = {folds} with validation_fraction = {held:g} puts more "
                f"than half the records ({1 - held:.1%}) in the fold, so its model would train "
                f"on the held-out {held:.1%} alone; use at least 3 folds, or a "
                "validation_fraction of 0.5 or more"
            )
        return self


class ScoringConfig(_Section):
    """How components become one score, and the score a flag."""

    weights: dict[str, float] = Field(
        default_factory=lambda: {
            "reconstruction": 0.25,
            "feature": 0.0,
            "critic": 0.5,
            "latent": 2.0,
        }
    )
    """Weight of each standardised component in the anomaly score. Fixed once for all data
    from the tabular benchmark (docs/benchmarks.md): the distance to training latents
    carried most of the signal; the two-sided critic deviation and the reconstruction error
    added to it; the critic-feature residual did not."""
    target_fpr: float = Field(0.01, gt=0, lt=1, allow_inf_nan=False)
    """False-positive rate on held-out normal data that the threshold is calibrated to."""
    top_features: int = Field(3, ge=0)
    """How many features with the largest residuals explain each record."""
    latent_prototypes: int = Field(256, ge=16)
    """k-means prototypes of the training latents kept in the bundle (``anomaly.prototypes``);
    the scoring engine's distance matrix is (batch x prototypes), its costliest part after
    the networks (see pipelines/bench_scoring.py)."""
    latent_neighbours: int = Field(3, ge=1)
    """The ``latent`` component is the mean distance to this many nearest prototypes."""
    refine_steps: int = Field(0, ge=0, le=1000)
    """AnoGAN-style refinement: gradient steps on z from E(x) before measuring residuals
    (offline use; 0 turns it off; each step costs about one more forward pass)."""
    refine_learning_rate: float = Field(0.05, gt=0, allow_inf_nan=False)
    batch_size: int = Field(4096, ge=1)
    """Rows per compiled forward pass when scoring arrays and files."""

    @model_validator(mode="after")
    def _known_weights(self) -> ScoringConfig:
        unknown = sorted(set(self.weights) - set(COMPONENTS))
        if unknown:
            raise ValueError(f"unknown component(s) {unknown}; known: {list(COMPONENTS)}")
        if not all(0 <= w < math.inf for w in self.weights.values()):  # NaN too
            raise ValueError("component weights must be finite and >= 0")
        if not any(self.weights.get(c, 0.0) > 0 for c in COMPONENTS):
            raise ValueError("at least one component weight must be > 0")
        return self


#: Kafka client options the service sets itself, and where to set them instead. A
#: ``[serve]`` key of the same name (``group_id``, ``linger_ms``, ...) is refused the same way.
RESERVED_KAFKA_OPTIONS = {
    "client_id": "the service names its clients after [serve] group_id and the model version",
    "enable_auto_commit": "the service commits offsets itself once results are acknowledged; "
    "see [serve] commit_interval_ms",
    "max_poll_records": "use [serve] max_batch_size",
    "heartbeat_interval_ms": "the service derives it from [serve] session_timeout_ms",
    "key_deserializer": "the service reads keys and values as bytes",
    "value_deserializer": "the service reads keys and values as bytes",
    "key_serializer": "the service writes keys and values as bytes",
    "value_serializer": "the service writes keys and values as bytes",
    "transactional_id": "the service delivers at least once, without transactions",
    "acks": "the service's results count as delivered only when every in-sync replica has "
    "them (acks=all)",
    "enable_idempotence": "kafka-python's idempotent producer fails every later message "
    "after one the broker refuses; the service sends without it",
    "isolation_level": "the service scores committed records only (read_committed)",
}

#: librdkafka's names (``[serve] client = "confluent"``) of what the service sets itself.
RESERVED_LIBRDKAFKA_OPTIONS = {
    "bootstrap.servers": "use [serve] bootstrap_servers",
    "metadata.broker.list": "use [serve] bootstrap_servers",
    "group.id": "use [serve] group_id",
    "client.id": RESERVED_KAFKA_OPTIONS["client_id"],
    "enable.auto.commit": RESERVED_KAFKA_OPTIONS["enable_auto_commit"],
    "enable.auto.offset.store": RESERVED_KAFKA_OPTIONS["enable_auto_commit"],
    "auto.offset.reset": "use [serve] auto_offset_reset",
    "isolation.level": RESERVED_KAFKA_OPTIONS["isolation_level"],
    "session.timeout.ms": "use [serve] session_timeout_ms",
    "heartbeat.interval.ms": RESERVED_KAFKA_OPTIONS["heartbeat_interval_ms"],
    "fetch.wait.max.ms": "use [serve] fetch_max_wait_ms",
    "linger.ms": "use [serve] linger_ms",
    "queue.buffering.max.ms": "use [serve] linger_ms",
    "acks": RESERVED_KAFKA_OPTIONS["acks"],
    "request.required.acks": RESERVED_KAFKA_OPTIONS["acks"],
    "enable.idempotence": "the service sends without idempotence, as with kafka-python, so "
    "that one result the broker refuses is dead-lettered and the rest delivered",
    "max.in.flight.requests.per.connection": "one request in flight keeps a key's results in "
    "order across retries",
    "max.in.flight": "one request in flight keeps a key's results in order across retries",
    "transactional.id": RESERVED_KAFKA_OPTIONS["transactional_id"],
    "partition.assignment.strategy": "the service uses eager assignment (range, roundrobin), "
    "as kafka-python does, so instances of either client can share a group",
    "group.protocol": "the service uses the classic group protocol with eager assignment",
    "partitioner": "results go to the partition of their key as the Java client places it "
    "(murmur2)",
    "enable.partition.eof": "the service reads a partition's end as no records",
    "statistics.interval.ms": "the service reads the broker connections from statistics "
    "every second",
}

#: A Kafka option whose name ends in this is read from the file it names (one trailing
#: newline stripped) and given as the option without the suffix, the way container
#: orchestrators mount secrets: ``sasl_plain_password_file`` -> ``sasl_plain_password``.
FILE_SUFFIX = "_file"


def is_secret_option(name: str) -> bool:
    """Whether the value of Kafka option ``name`` (kafka-python's or librdkafka's name) is a
    secret that is never shown."""
    name = name.lower()
    return (
        any(word in name for word in ("password", "secret", "token", "credential"))
        or name.startswith(("sasl_oauth", "sasl.oauthbearer"))
        or name == "ssl.key.pem"  # librdkafka's private key given inline
    )


def is_librdkafka_name(name: str) -> bool:
    """Whether ``name`` is written the way librdkafka writes its options: lower-case words
    joined by dots (``ssl.endpoint.identification.algorithm``), possibly with ``_file``."""
    parts = name.removesuffix(FILE_SUFFIX).split(".")
    return len(parts) > 1 and all(
        p and p.replace("_", "a").isalnum() and p == p.lower() for p in parts
    )


class KafkaOptions(Mapping[str, str | int | float | bool]):
    """Kafka client options (``[serve.kafka]``), kafka-python's names, read-only.

    Its ``repr`` and ``str`` mask secret values (``is_secret_option``), so a logged
    configuration shows ``sasl_plain_password='***'``; ``_file`` options hold paths, and the
    file's content is only read when a client is made (``anomaly.stream.kafka_options``).
    """

    __slots__ = ("_options",)

    def __init__(self, options: Mapping[str, str | int | float | bool] | None = None):
        self._options = dict(options or {})

    def __getitem__(self, name: str) -> str | int | float | bool:
        return self._options[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._options)

    def __len__(self) -> int:
        return len(self._options)

    def __hash__(self) -> int:
        return hash(tuple(sorted(self._options.items())))

    def masked(self) -> dict[str, str | int | float | bool]:
        """The options with every secret value replaced by ``'***'``."""
        return {k: "***" if is_secret_option(k) else v for k, v in self._options.items()}

    def __repr__(self) -> str:
        return f"KafkaOptions({self.masked()!r})"

    __str__ = __repr__

    @classmethod
    def __get_pydantic_core_schema__(
        cls, _source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return core_schema.no_info_after_validator_function(
            cls._validated,
            core_schema.dict_schema(core_schema.str_schema(), core_schema.any_schema()),
            serialization=core_schema.plain_serializer_function_ser_schema(dict),
        )

    @classmethod
    def _validated(cls, options: dict[str, Any]) -> KafkaOptions:
        # Messages name the option, never its value: the value may be a secret.
        for name, value in options.items():
            dotted = is_librdkafka_name(name)
            if not (name.isidentifier() or dotted) or name != name.lower():
                raise ValueError(
                    f"Kafka option {name!r}: names are kafka-python's (or, with client = "
                    "'confluent', librdkafka's dotted names), lower case"
                )
            if not isinstance(value, str | int | float | bool):
                raise ValueError(f"Kafka option {name!r} must be a string, number or boolean")
            base = name.removesuffix(FILE_SUFFIX)
            if base != name and not isinstance(value, str):
                raise ValueError(f"Kafka option {name!r} must be the path of a file")
            if base in RESERVED_LIBRDKAFKA_OPTIONS:
                raise ValueError(
                    f"Kafka option {name!r} is set by the service: "
                    f"{RESERVED_LIBRDKAFKA_OPTIONS[base]}"
                )
            if base in RESERVED_KAFKA_OPTIONS:
                raise ValueError(
                    f"Kafka option {name!r} is set by the service: {RESERVED_KAFKA_OPTIONS[base]}"
                )
            if base in ServeConfig.model_fields:
                raise ValueError(f"Kafka option {name!r} is set by the service: use [serve] {base}")
            if base != name and base in options:
                raise ValueError(f"Kafka options {base!r} and {name!r}: give one of them")
        return cls(options)


#: ``[serve]`` keys that became ``[alarms]`` keys, by their new name.
MOVED_TO_ALARMS = {
    "alarm_history": "history",
    "alarm_level": "level",
    "alarm_quiet_rows": "quiet_rows",
    "alarm_quorum": "quorum",
}


class ServeConfig(_Section):
    """The Kafka scoring service; every key can also come from ``ANOMALY_SERVE_<KEY>``, and
    every Kafka client option from ``ANOMALY_SERVE_KAFKA_<OPTION>``."""

    # Validation errors never echo input values: [serve.kafka] may hold secrets.
    model_config = ConfigDict(hide_input_in_errors=True)

    model: str | None = None
    """Model bundle directory to serve (``anomaly serve --model``), or a model store
    (``anomaly.store``: numbered versions, followed while serving, see ``model_poll_s``)."""
    model_poll_s: float = Field(30.0, ge=0, allow_inf_nan=False)
    """Serving a store: seconds between looks for a new version to load and swap in between
    batches (``anomaly.stream.reload``); 0 serves the version found at start until exit."""
    model_version: int | None = Field(None, ge=1)
    """Serving a store: the version to serve (a pin, for a rollback) instead of the latest."""
    drift_window: int = Field(10_000, ge=1)
    """Latest records the drift metrics cover (``anomaly.drift``: each feature's and the
    score's population stability index against the model's normal data, and the share
    flagged); the window keeps bin counts, not records."""
    client: Literal["kafka-python", "confluent"] = "kafka-python"
    """The Kafka client library: ``kafka-python`` (pure Python) or ``confluent``
    (confluent-kafka on librdkafka, the ``confluent`` extra: about twice the throughput).
    Same guarantees, metrics and ``[serve.kafka]`` options (kafka-python's names, mapped to
    librdkafka's; ``anomaly.stream.kafka_options``)."""
    bootstrap_servers: str = Field("127.0.0.1:9092", min_length=1)
    input_topic: str = "records"
    output_topic: str = "scores"
    dlq_topic: str | None = "records-dlq"
    """Dead-letter topic; ``""`` or none turns it off (rejected records are then only
    counted and logged)."""
    alerts_topic: str | None = None
    create_topics: bool = False
    """Create the output, dead-letter and alerts topics at start-up when missing (broker
    defaults for partitions and replication); the input topic must exist."""
    group_id: str = Field("anomaly-scorer", min_length=1)
    metrics_port: int = Field(9108, ge=0, le=65535)
    """Port of the /metrics, /healthz and /readyz endpoint; 0 picks a free one."""
    metrics_host: str = "0.0.0.0"
    """Address the metrics endpoint listens on: all interfaces, because Prometheus scrapes
    from another host or pod; ``127.0.0.1`` when it scrapes from the same host."""
    metrics_certfile: str | None = None
    """PEM certificate (chain) file: the metrics endpoint speaks HTTPS only; ``None``: HTTP."""
    metrics_keyfile: str | None = None
    """PEM private key of ``metrics_certfile``; ``None`` when the key is in the certfile."""
    metrics_basic_auth_username: str | None = None
    """User that ``/metrics`` requires (HTTP basic auth, with the password below);
    ``/healthz`` and ``/readyz`` stay open for probes. ``None``: no authentication."""
    metrics_basic_auth_password_file: str | None = None
    """File holding the basic-auth password (a trailing newline is ignored), read once at
    start, as orchestrators mount secrets."""
    metrics_idle_timeout_s: float = Field(10.0, gt=0)
    """Longest a metrics connection stays open: idle, sending its request slowly or reading
    the answer slowly, it is closed after this long (a scrape takes milliseconds)."""
    metrics_max_connections: int = Field(16, ge=1)
    """Metrics connections served at once; more are answered 503 (closed, with TLS) at once,
    so clients holding connections block scrapes for ``metrics_idle_timeout_s`` at most."""
    max_batch_size: int = Field(512, ge=1)
    max_wait_ms: int = Field(20, ge=0)
    """Longest a record waits for its micro-batch to fill."""
    max_message_bytes: int = Field(1_048_576, ge=1)
    max_pending_results: int = Field(20_000, ge=1)
    """Unacknowledged results at which input partitions are paused (back-pressure)."""
    fetch_max_wait_ms: int = Field(20, ge=0)
    shutdown_timeout_s: float = Field(10.0, gt=0)
    broker_wait_s: float = Field(float("inf"), ge=0)
    """How long start-up waits for a Kafka broker to answer, trying again every few seconds:
    a service started before its cluster (pods scheduled together, a broker restarting)
    waits with ``/healthz`` alive, ``/readyz`` not ready and ``anomaly_broker_reachable``
    at 0, rather than exiting into a crash loop. ``inf`` (TOML's infinity): as long as it
    takes; 0: one bootstrap (10 s), then exit. Credentials or a TLS handshake refused, and
    a missing input topic, stop the start at once whatever this says."""
    auto_offset_reset: Literal["earliest", "latest"] = "earliest"
    commit_interval_ms: int = Field(100, ge=0)
    """Shortest time between offset commits (always after the results are acknowledged);
    0 commits after every batch. Longer means fewer commits, more re-scored after a crash."""
    linger_ms: int = Field(5, ge=0)
    """How long the producer waits to fill a request with results."""
    max_entities: int = Field(100_000, ge=1)
    """Entities (Kafka keys) whose partial window (time-series mode) and alarm stream
    (``[alarms]``, also bounded by ``alarms.max_streams``: about 50 KB each) are kept; the
    one seen least recently is dropped beyond it and starts afresh."""
    restore_records: int = Field(1_000, ge=0, le=100_000)
    """Records per partition read again, from just before where a newly assigned partition
    (a start, a restart, a rebalance) is read from, to rebuild its keys' windows and alarm
    streams before its first record is scored, and before where the service is at a model
    swap, to rebuild the alarm streams with the new version (``anomaly.stream.restore``;
    nothing is sent for them). A key whose last ``window - 1`` records (and the rows its
    alarm stream needs) are among them continues as if the service had not stopped; 0
    starts such keys afresh. Only in time-series mode or with an adaptive ``[alarms]``
    stage."""
    session_timeout_ms: int = Field(10_000, ge=1_000)
    """Consumer-group session: a crashed instance's partitions move to the others after
    this long (the broker allows 6 s to 30 min by default). Shorter than the Java client's
    45 s so a replacement takes over a crashed instance's partitions soon; heartbeats come
    from a background thread every third of it. With ``[serve.kafka] group_instance_id``
    (static membership) a restarted instance of the same id takes its partitions back at
    once, without a rebalance."""
    kafka: KafkaOptions = Field(default_factory=KafkaOptions)
    """Options of the Kafka clients (``[serve.kafka]``), by kafka-python's names: TLS and SASL
    (``security_protocol``, ``ssl_cafile``, ``sasl_mechanism``, ...), the producer's
    ``compression_type`` (default none; ``gzip``, ``snappy``, ``lz4`` or ``zstd``), and so on.
    Each client gets the options it accepts; ``NAME_file`` reads option ``NAME`` from a file.
    With ``client = "confluent"`` they are mapped to librdkafka's names, and librdkafka's own
    dotted names are taken too. Never saved in model bundles (``Config.for_bundle``)."""

    @field_validator("dlq_topic", "alerts_topic")
    @classmethod
    def _empty_topic_is_none(cls, topic: str | None) -> str | None:
        return topic or None

    @field_validator("input_topic", "output_topic", "dlq_topic", "alerts_topic")
    @classmethod
    def _legal_topic_name(cls, topic: str | None) -> str | None:
        """Kafka's own rule, checked at start: an empty or illegal name would otherwise
        fail on the first record (or, on librdkafka, be retried forever)."""
        if topic is not None and (not _TOPIC_NAME.fullmatch(topic) or topic in (".", "..")):
            shown = topic if len(topic) <= 60 else topic[:60] + "..."
            raise ValueError(
                f"{shown!r} is not a Kafka topic name (1-249 of ASCII letters, digits, "
                "'.', '_' and '-'; not '.' or '..')"
            )
        return topic

    @model_validator(mode="after")
    def _librdkafka_names_need_confluent(self) -> ServeConfig:
        # Only where the client is given: a file's [serve.kafka] may hold librdkafka's names
        # for the client ANOMALY_SERVE_CLIENT or the command line chooses (the resolved
        # settings, which always name it, are checked here again).
        if "client" in self.model_fields_set and self.client != "confluent":
            dotted = [name for name in self.kafka if is_librdkafka_name(name)]
            if dotted:
                raise ValueError(
                    f"Kafka option {dotted[0]!r} is librdkafka's: set client = 'confluent' "
                    "or give kafka-python's name"
                )
        return self

    @model_validator(mode="before")
    @classmethod
    def _moved_keys(cls, values: Any) -> Any:
        moved = (
            [key for key in values if key in MOVED_TO_ALARMS] if isinstance(values, dict) else []
        )
        if moved:
            raise ValueError(
                "; ".join(f"serve.{key} moved to [alarms] {MOVED_TO_ALARMS[key]}" for key in moved)
            )
        return values


#: The adaptive method ``[alarms] method = "auto"`` picks in time-series mode: the one that
#: measures better on the Numenta benchmark (``docs/benchmarks.md``).
TIME_SERIES_METHOD: Literal["conformal", "dspot"] = "conformal"
#: The default exit level's false-alarm share, as a multiple of the entering level's, and
#: the lowest default exit level (the median: below it, half of the normal rows).
EXIT_SHARE_FACTOR, MIN_DEFAULT_EXIT_LEVEL = 10, 0.5
#: The longest alarm history a stream may keep: 32 MB a stream with 4 columns, 667 times the
#: default (a history of 1e15 was taken, and asked for petabytes on the first row).
MAX_ALARM_HISTORY = 1_000_000


class AlarmConfig(_Section):
    """The adaptive alarm stage (``anomaly.alarms``): thresholds that follow each stream.

    A stream is a Kafka key in the service, a file or one entity's rows of it in
    ``anomaly score`` and ``evaluate``. Each row gets a *level* in [0, 1] per score column
    from the stream's own past, the highest level ``quorum`` columns reach together, and a
    decision under ``semantics``. The service reads this section from its configuration
    file and ``ANOMALY_ALARMS_<KEY>``; files are scored with the model's (its training
    configuration's), which ``--config`` replaces key by key."""

    method: Literal["auto", "threshold", "conformal", "dspot"] = "auto"
    """``threshold``: the model's calibrated threshold (``is_anomaly``), no state across rows.
    ``conformal``: each row ranked against the stream's last ``history`` rows
    (``anomaly.conformal``). ``dspot``: drift-aware peaks over threshold, each row's residual
    from the mean of the last ``drift_depth`` rows against a generalised Pareto tail
    (``anomaly.spot``). ``auto``: ``threshold`` for independent rows, and in time-series mode
    (``model.window`` set) the adaptive method that measures better on the Numenta benchmark
    (``TIME_SERIES_METHOD``)."""
    semantics: Literal["event", "state"] = "event"
    """``event``: one alarm per event, then ``quiet_rows`` rows that cannot alarm (what the
    Numenta benchmark scores). ``state``: a flagged state with hysteresis, entered at a row
    reaching ``level``, every row in it flagged, left after ``exit_rows`` rows in a row below
    ``exit_level`` (an operator watching sensors: a stuck valve is flagged until it is not)."""
    level: float = Field(DEFAULT_ALARM_LEVEL, gt=0, lt=1, allow_inf_nan=False)
    """Level at which a row alarms (enters the state): KNN-CAD's published 0.9965, reached by
    about 1 normal row in 286. Below 1: at 1 DSPOT's alarm threshold is infinite (nothing
    alarms). A conformal row above its whole history has level 1, so with fewer than
    ``1 / (1 - level) - 1`` values in ``history`` (285 at the default level) a normal row
    alarms more often than the level says: 1 in ``history + 1``. Like
    ``exit_level``, a number (an integer too, and the text of ``ANOMALY_ALARMS_LEVEL``), never
    ``true`` or ``false``, which pydantic would take for 1 and 0."""
    exit_level: float | None = Field(None, gt=0, lt=1, allow_inf_nan=False)
    """State semantics: rows below it count towards leaving the state. ``None``: the level
    whose false-alarm share is ten times the entering one's, ``1 - 10 (1 - level)`` (0.965 at
    the default level), at least 0.5: an event's rows must fall well back into the normal
    range, not just under the alarm level, so one event does not flicker in and out of the
    state."""
    exit_rows: int = Field(3, ge=1)
    """State semantics: consecutive rows below ``exit_level`` that end the state, the last of
    them the first row out (1: plain hysteresis). Three: one or two rows of an event can dip
    (noise, a window sliding over it), while three normal rows in a row fall below the
    default exit level with probability 0.965 ** 3 = 0.9, so an alert ends about three rows
    after its anomaly."""
    quiet_rows: int | None = Field(None, ge=0)
    """Event semantics: rows of a stream that cannot alarm after its alarm. ``None``: a fifth
    of the rows a stream starts from (KNN-CAD's), ``history / 10`` for a model's streams."""
    history: int = Field(1500, ge=4, le=MAX_ALARM_HISTORY)
    """Conformal: the scores each row is ranked against (per column). A stream of a model
    (a Kafka key, a file, an entity) starts from half as many evenly spaced quantiles of the
    model's held-out normal values, for both methods, and grows with its rows. 1500 is twice
    the longest reference of the Numenta benchmark (750 rows), where a history twice the
    reference raised the GAN's score from 55.4 to 59.3 (docs/benchmarks.md). Memory: 8 bytes
    per value and column, 48 KB per stream with 4 columns; at most ``MAX_ALARM_HISTORY``."""
    quorum: int | None = Field(2, ge=0, le=len(COMPONENTS))
    """How many of the model's score components must reach the level together (each has its
    own history: noise lifts one at a time, an anomaly several; 2 of 4 on the Numenta
    benchmark). ``None``: one column, the combined score; ``0`` is read as ``None``, since
    TOML has no null (``ANOMALY_ALARMS_QUORUM=0``, or empty, does the same). A model bundle
    saved without per-component references ranks its combined score, with a warning."""
    drift_depth: int = Field(30, ge=1)
    """DSPOT: rows in the moving mean a row's residual is taken from (the paper's ``d``).
    Thirty adds 1/30 (3 %) to the noise's variance and lags a linear drift by 15 rows, and
    is about one window of the Numenta suite (32 rows), over which the GAN's window scores
    are correlated; it is also how many alarming rows in a row make a lasting new level the
    normal."""
    max_peaks: int = Field(250, ge=2)
    """DSPOT: peaks (residuals over the tail's threshold) kept per column for the tail's
    refit: with about 2-4 % of rows peaks, the tail follows the last 6,000-12,000 rows, and
    250 peaks pin the mean excess down to about 6 %. 2 KB per column."""
    max_streams: int = Field(100_000, ge=1)
    """Streams (Kafka keys, a file's entities) whose state is kept; beyond it the one seen
    least recently is dropped, and starts afresh from the model's reference if it comes
    back. A stream of 4 columns with the defaults holds, once its state has filled,
    49-51 KB with ``conformal`` (its history: 8 bytes per value and column) and 8-13 KB
    with ``dspot`` (measured with ``tracemalloc`` over 60 to 300 streams): 100,000 streams
    are up to 5 GB. The service keeps at most ``serve.max_entities`` of them if that is
    smaller."""

    @field_validator("quorum")
    @classmethod
    def _zero_quorum_is_none(cls, quorum: int | None) -> int | None:
        return quorum or None

    def updated(self, keys: Mapping[str, Any], from_text: bool = False) -> AlarmConfig:
        """A copy with ``keys`` replaced, validated together with the others (``from_text``:
        as ``Config.from_dict``)."""
        return Config.from_dict({"alarms": {**self.model_dump(), **keys}}, from_text).alarms

    def updated_from_toml(self, path: str | os.PathLike[str]) -> AlarmConfig:
        """A copy with the keys that the ``[alarms]`` section of TOML file ``path`` sets."""
        given = Config.from_toml(path).alarms
        try:
            return self.updated(given.model_dump(include=given.model_fields_set))
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None

    def resolved_method(self, time_series: bool) -> Literal["threshold", "conformal", "dspot"]:
        """The method ``auto`` stands for: ``threshold`` for independent rows,
        ``TIME_SERIES_METHOD`` in time-series mode."""
        if self.method != "auto":
            return self.method
        return TIME_SERIES_METHOD if time_series else "threshold"

    @property
    def resolved_exit_level(self) -> float:
        """``exit_level``, or its default from ``level``."""
        if self.exit_level is not None:
            return self.exit_level
        return max(1.0 - EXIT_SHARE_FACTOR * (1.0 - self.level), MIN_DEFAULT_EXIT_LEVEL)

    @model_validator(mode="after")
    def _consistent(self) -> AlarmConfig:
        if self.semantics == "state" or self.exit_level is not None:
            exit_level = self.resolved_exit_level
            if not 0.0 < exit_level < self.level:
                given = "" if self.exit_level is not None else " (its default from level)"
                raise ValueError(
                    f"exit_level{given} is {exit_level:.6g}; it must lie between 0 and level "
                    f"({self.level:.6g}): set alarms.exit_level"
                )
        dspot = self.method == "dspot" or (self.method == "auto" and TIME_SERIES_METHOD == "dspot")
        if dspot and self.drift_depth + 2 > self.history // 2:
            raise ValueError(
                f"drift_depth ({self.drift_depth}) must be at most history // 2 - 2 "
                f"({self.history // 2 - 2}): a model's stream starts from history // 2 values, "
                "the first drift_depth of which start DSPOT's moving mean"
            )
        return self


class Config(_Section):
    """Everything the package can be told, with defaults."""

    model_config = ConfigDict(hide_input_in_errors=True)  # [serve.kafka] may hold secrets

    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    scoring: ScoringConfig = Field(default_factory=ScoringConfig)
    serve: ServeConfig = Field(default_factory=ServeConfig)
    alarms: AlarmConfig = Field(default_factory=AlarmConfig)

    @model_validator(mode="after")
    def _cross_fitting_without_window(self) -> Config:
        if self.training.calibration_folds not in (1, "auto") and self.model.window is not None:
            raise ValueError(
                "training.calibration_folds > 1 needs tabular mode: time-series mode "
                "calibrates on the latest windows, and a fold model would have trained on "
                "their future; leave model.window unset, or training.calibration_folds at 1 "
                'or "auto"'
            )
        return self

    @classmethod
    def from_dict(cls, values: dict[str, Any], from_text: bool = False) -> Config:
        """Validate a nested mapping; errors name the offending key, e.g. ``training.steps``.
        ``from_text``: its numbers may come as text (the environment's variables)."""
        try:
            return cls.model_validate(values, context={FROM_TEXT: from_text})
        except ValidationError as exc:
            raise ConfigError(_describe(exc)) from None

    @classmethod
    def from_toml(cls, path: str | os.PathLike[str]) -> Config:
        """Load a TOML file; a missing or unreadable file, bad TOML or a bad key is a
        ``ConfigError``. A byte-order mark (Windows editors write one) is skipped."""
        path = Path(path)
        try:
            values = tomllib.loads(path.read_bytes().decode("utf-8-sig"))
        except FileNotFoundError:
            raise ConfigError(f"configuration file not found: {path}") from None
        except OSError as exc:
            raise ConfigError(f"cannot read configuration file {path}: {exc.strerror}") from None
        except UnicodeDecodeError as exc:
            raise ConfigError(
                f"{path}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at byte offset "
                f"{exc.start}); save it as UTF-8, as TOML requires"
            ) from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
        except RecursionError:  # tomllib parses nested arrays and inline tables recursively
            raise ConfigError(
                f"{path}: arrays or tables nested deeper than can be read; no setting nests "
                "them (is it the configuration file you meant?)"
            ) from None
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            raise ConfigError(f"{path}: {_describe(exc)}") from None

    @classmethod
    def from_bundle(cls, values: dict[str, Any]) -> Config:
        """The configuration a model bundle holds (``for_bundle``). A bundle's ``[serve]``
        settings are dropped: bundles saved before this release hold the serve settings of
        the machine that trained them (``serve.alarm_*`` keys among them), which the service
        never read from a bundle; it reads its own file and environment."""
        return cls.from_dict({key: value for key, value in values.items() if key != "serve"})

    def for_bundle(self) -> dict[str, Any]:
        """The configuration as saved in a model bundle: what the model is (data, model,
        training, scoring, alarms), nothing of where it is served (``[serve]``, the Kafka
        client options and their credentials among them)."""
        return self.model_dump(exclude={"serve"})

    def updated(self, **sections: dict[str, Any]) -> Config:
        """A copy with some keys of some sections replaced, validated like a file.

        ``config.updated(training={"steps": 500})`` keeps every other setting; a value of
        None sets the key to None (``model={"window": None}``: tabular mode again), where
        the key takes it. Sections not named are kept as they are, not judged again: a
        file's ``[serve.kafka]`` holding librdkafka's names, with the client left to the
        environment, stays open to it.
        """
        values: dict[str, Any] = {name: getattr(self, name) for name in type(self).model_fields}
        for section, overrides in sections.items():
            if section not in values:
                raise ConfigError(f"unknown configuration section {section!r}")
            values[section] = {**values[section].model_dump(), **overrides}
        return Config.from_dict(values)


def _describe(exc: ValidationError) -> str:
    problems = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error["loc"])
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            problems.append(f"unknown key {where!r}{_nearest_key(error['loc'])}")
        else:
            problems.append(f"{where}: {message}" if where else message)
    return "invalid configuration: " + "; ".join(problems)


def _nearest_key(loc: tuple[int | str, ...]) -> str:
    """ " (did you mean 'semantics'?)" for the unknown key at ``loc`` when a key of its
    section is spelt like it; "" when none is, or ``loc`` is not within sections."""
    section: type[BaseModel] = Config
    for part in loc[:-1]:
        field = section.model_fields.get(str(part))
        if field is None or not (
            isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)
        ):
            return ""
        section = field.annotation
    close = difflib.get_close_matches(str(loc[-1]), list(section.model_fields), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""

"""``[serve]`` settings resolved from layers: a file's ``[serve.kafka]`` is judged for the
client the layers resolve to, not for the file's default."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from anomaly.config import Config
from anomaly.errors import ConfigError
from anomaly.stream.settings import resolve_serve_config
from pipelines.cli import cli

LIBRDKAFKA_TABLE = '[serve.kafka]\n"topic.metadata.refresh.interval.ms" = 15000\n'


def test_librdkafka_names_in_the_file_serve_the_client_the_environment_chooses(tmp_path):
    path = tmp_path / "serve.toml"
    path.write_text(LIBRDKAFKA_TABLE)
    serve = resolve_serve_config(path, environ={"ANOMALY_SERVE_CLIENT": "confluent"})
    assert serve.client == "confluent"
    assert serve.kafka == {"topic.metadata.refresh.interval.ms": 15000}
    serve = resolve_serve_config(path, {"client": "confluent"}, environ={})
    assert serve.client == "confluent"
    # the same file read by the other commands (train, score, the alarm settings) loads
    assert Config.from_toml(path).serve.kafka == serve.kafka


def test_librdkafka_names_are_still_refused_when_the_resolved_client_is_kafka_python(tmp_path):
    path = tmp_path / "serve.toml"
    path.write_text(LIBRDKAFKA_TABLE)
    with pytest.raises(ConfigError, match="is librdkafka's: set client = 'confluent'"):
        resolve_serve_config(path, environ={})
    with pytest.raises(ConfigError, match="is librdkafka's: set client = 'confluent'"):
        resolve_serve_config(path, environ={"ANOMALY_SERVE_CLIENT": "kafka-python"})
    with pytest.raises(ConfigError, match="is librdkafka's"):
        Config().updated(serve={"kafka": {"socket.nagle.disable": True}})


def test_the_file_with_librdkafka_names_trains_a_model_from_the_command_line(tmp_path):
    """``anomaly train --config`` sets its options over the file's (``Config.updated``),
    which judged ``[serve]`` again, with the client filled in as kafka-python."""
    path = tmp_path / "serve.toml"
    path.write_text(LIBRDKAFKA_TABLE)
    data = tmp_path / "normal.csv"
    rows = np.random.default_rng(0).normal(size=(700, 2))  # enough to calibrate on a hold-out
    pd.DataFrame(rows, columns=["a", "b"]).to_csv(data, index=False)

    result = CliRunner().invoke(
        cli,
        ["train", "--data", str(data), "--out", str(tmp_path / "model"), "--config", str(path)]
        + ["--steps", "5"],
    )

    assert result.exit_code == 0, result.output

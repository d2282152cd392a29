"""TOML configuration files as editors save them, and values TOML types differently from the
setting: each is read, or refused in one line naming the file or the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from anomaly import Config, ConfigError


def test_a_byte_order_mark_is_skipped(tmp_path: Path):
    path = tmp_path / "anomaly.toml"
    path.write_bytes("\ufeff[training]\r\nsteps = 5\r\n".encode())

    assert Config.from_toml(path).training.steps == 5


def test_a_file_that_is_not_utf8_is_refused_naming_the_byte(tmp_path: Path):
    path = tmp_path / "anomaly.toml"
    path.write_bytes("[data]\nid_column = 'Größe'\n".encode("latin-1"))

    with pytest.raises(ConfigError, match=r"anomaly.toml: not UTF-8 text \(byte 0xf6 at byte"):
        Config.from_toml(path)


def test_a_folder_is_refused_in_one_line(tmp_path: Path):
    with pytest.raises(ConfigError, match="cannot read configuration file .*: Is a directory"):
        Config.from_toml(tmp_path)


@pytest.mark.parametrize(
    "nested", ["[" * 100_000 + "]" * 100_000, "{a=" * 100_000 + "1" + "}" * 100_000]
)
def test_values_nested_deeper_than_tomllib_reads_are_refused_in_one_line(
    tmp_path: Path, nested: str
):
    """tomllib recurses into nested arrays and inline tables: its RecursionError was a
    traceback."""
    path = tmp_path / "anomaly.toml"
    path.write_text(f"[alarms]\nx = {nested}\n")

    with pytest.raises(ConfigError, match="anomaly.toml: arrays or tables nested deeper than"):
        Config.from_toml(path)


@pytest.mark.parametrize(
    ("line", "key"),
    [
        ("[training]\nsteps = true", "training.steps"),
        ("[training]\nlearning_rate = true", "training.learning_rate"),
        ("[alarms]\nmax_streams = true", "alarms.max_streams"),
        ("[serve]\nmetrics_port = false", "serve.metrics_port"),
        ("[model]\nhidden_units = [true, 256]", "model.hidden_units"),
        ("[scoring.weights]\nlatent = true", "scoring.weights"),
    ],
)
def test_true_or_false_is_not_a_number(tmp_path: Path, line: str, key: str):
    path = tmp_path / "anomaly.toml"
    path.write_text(line + "\n")

    with pytest.raises(ConfigError, match=rf"{key}: .*must be a number, not true or false"):
        Config.from_toml(path)


@pytest.mark.parametrize(
    ("line", "key"),
    [
        ('[training]\nsteps = "30"', "training.steps"),
        ('[scoring]\ntarget_fpr = "0.05"', "scoring.target_fpr"),
        ('[model]\nwindow = "32"', "model.window"),
        ('[alarms]\nlevel = "0.99"', "alarms.level"),
        ('[serve]\nmax_batch_size = "s3cr3t"', "serve.max_batch_size"),
        ('[scoring.weights]\nlatent = "2"', "scoring.weights"),
    ],
)
def test_text_is_not_a_number_in_a_file(tmp_path: Path, line: str, key: str):
    """A tester's quoted numbers were read as numbers, where the README says an ill-typed key
    is an error; the text is not shown (a misplaced secret must not reach a log)."""
    path = tmp_path / "anomaly.toml"
    path.write_text(line + "\n")

    with pytest.raises(ConfigError, match=rf"{key}: must be a number, not text") as caught:
        Config.from_toml(path)
    assert "s3cr3t" not in str(caught.value)


def test_numbers_from_the_environment_are_text_and_read_as_numbers():
    from anomaly.stream.settings import resolve_alarm_config, resolve_serve_config

    environ = {"ANOMALY_SERVE_MAX_BATCH_SIZE": "64", "ANOMALY_ALARMS_LEVEL": "0.999"}

    assert resolve_serve_config(environ=environ).max_batch_size == 64
    assert resolve_alarm_config(Config().alarms, environ=environ).level == 0.999


def test_true_or_false_still_sets_a_boolean_setting(tmp_path: Path):
    path = tmp_path / "anomaly.toml"
    path.write_text("[serve]\ncreate_topics = true\n")

    assert Config.from_toml(path).serve.create_topics is True


def test_a_feature_listed_twice_is_refused(tmp_path: Path):
    path = tmp_path / "anomaly.toml"
    path.write_text('[data]\nfeatures = ["a", "b", "a"]\n')

    with pytest.raises(ConfigError, match="data.features: .*'a' is listed twice; name each"):
        Config.from_toml(path)

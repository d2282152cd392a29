"""Configuration: defaults written once, TOML files, errors that name the bad key, and the
configuration saved in a model bundle."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydantic
import pytest

import anomaly
from anomaly import Config, ConfigError
from anomaly.config import COMPONENTS


def write_toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "anomaly.toml"
    path.write_text(text)
    return path


def config_error(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as caught:
        Config.from_toml(write_toml(tmp_path, text))
    return str(caught.value)


def test_defaults_are_safe_offline_settings():
    config = Config()

    assert config.data.features is None
    assert config.data.on_invalid == "error"
    assert config.model.formulation == "fanogan"
    assert config.model.window is None
    assert config.training.seed == 0
    assert config.scoring.target_fpr == 0.01
    assert config.scoring.refine_steps == 0
    assert set(config.scoring.weights) == set(COMPONENTS)
    assert max(config.scoring.weights.values()) > 0


def test_defaults_are_the_same_from_code_mapping_and_empty_file(tmp_path):
    assert Config() == Config.from_dict({}) == Config.from_toml(write_toml(tmp_path, ""))


def test_toml_file_sets_its_keys_and_keeps_every_other_default(tmp_path):
    path = write_toml(
        tmp_path,
        """
        [data]
        features = ["a", "b"]
        label_column = "label"

        [model]
        formulation = "bigan"
        window = 16

        [training]
        steps = 300
        seed = 7

        [scoring.weights]
        reconstruction = 2.0
        latent = 0.5
        """,
    )

    config = Config.from_toml(path)

    assert config.data.features == ["a", "b"]
    assert config.data.label_column == "label"
    assert config.model.formulation == "bigan"
    assert config.model.window == 16
    assert config.training.steps == 300
    assert config.training.seed == 7
    assert config.scoring.weights == {"reconstruction": 2.0, "latent": 0.5}
    assert config.training.batch_size == Config().training.batch_size
    assert config.scoring.target_fpr == Config().scoring.target_fpr


def test_unknown_top_level_key_is_an_error_naming_it(tmp_path):
    message = config_error(tmp_path, "epocs = 3\n")

    assert "unknown key 'epocs'" in message
    assert str(tmp_path / "anomaly.toml") in message


def test_unknown_nested_key_is_an_error_naming_it_with_its_section(tmp_path):
    message = config_error(tmp_path, "[training]\nepocs = 3\n")

    assert "unknown key 'training.epocs'" in message


def test_unknown_section_is_an_error_naming_it(tmp_path):
    assert "unknown key 'trainng'" in config_error(tmp_path, "[trainng]\nsteps = 3\n")


@pytest.mark.parametrize(
    ("toml", "said"),
    [
        (
            '[alarms]\nsemantic = "state"\n',
            "unknown key 'alarms.semantic' (did you mean 'semantics'?)",
        ),
        ("[trainng]\nsteps = 3\n", "unknown key 'trainng' (did you mean 'training'?)"),
        (
            "[serve]\nmax_batch = 3\n",
            "unknown key 'serve.max_batch' (did you mean 'max_batch_size'?)",
        ),
    ],
)
def test_an_unknown_key_spelt_like_one_of_its_section_is_named_as_the_likely_one(
    tmp_path, toml, said
):
    assert said in config_error(tmp_path, toml)


def test_an_unknown_key_like_none_of_its_section_gets_no_suggestion(tmp_path):
    message = config_error(tmp_path, "[training]\nzzz = 3\n")

    assert "unknown key 'training.zzz'" in message and "did you mean" not in message


@pytest.mark.parametrize(
    ("model", "said"),
    [
        ("hidden_units = [256, 40000, 40000]", "a layer of 40,000 beside one of 40,000"),
        ("hidden_units = [100000000]", "each at most 65,536"),
        ("latent_dim = 60000\nhidden_units = [60000]", "a layer of 60,000 beside one of 60,000"),
        ("conv_filters = [32, 20000, 20000]", "a layer of 20,000 beside one of 20,000"),
        ("conv_filters = [8192, 8192]", "needs 335,544,320 weights"),  # kernels of 5
        # z meets the last hidden layer (a reviewer's 16 GiB generator layer passed)
        ("latent_dim = 65536\nhidden_units = [1, 65536]", "latent_dim: a layer of 65,536"),
        ("window = 60000\nconv_filters = [65536]", "window: a layer of 256 beside one of"),
    ],
)
def test_a_network_too_large_to_train_is_refused_by_its_configuration(tmp_path, model, said):
    """A width mistyped by a few digits is said in the configuration, not found by the kernel
    killing the training process."""
    message = config_error(tmp_path, f"[model]\n{model}\n")

    assert said in message
    assert Config().updated(model={"hidden_units": [8192, 8192]}).model.hidden_units[0] == 8192


def test_a_network_too_large_for_the_records_width_is_refused_before_training():
    rows = np.zeros((300, 2_000_000), np.float32)  # calloc: the 2.4 GB is never touched
    with pytest.raises(anomaly.TrainingError, match=r"model.hidden_units: a layer of 256 beside"):
        anomaly.train(rows)


def test_ill_typed_value_is_an_error_naming_the_key(tmp_path):
    message = config_error(tmp_path, '[training]\nsteps = "many"\n')

    assert message.startswith(f"{tmp_path / 'anomaly.toml'}: invalid configuration: ")
    assert "training.steps:" in message


def test_out_of_range_value_is_an_error_naming_the_key(tmp_path):
    message = config_error(tmp_path, "[scoring]\ntarget_fpr = 1.5\n")

    assert "scoring.target_fpr:" in message


def test_unknown_score_component_weight_is_an_error_naming_it(tmp_path):
    message = config_error(tmp_path, "[scoring.weights]\nspeed = 1.0\n")

    assert "scoring" in message
    assert "unknown component(s) ['speed']" in message


def test_all_zero_component_weights_are_an_error(tmp_path):
    message = config_error(
        tmp_path,
        "[scoring.weights]\nreconstruction = 0.0\nfeature = 0.0\ncritic = 0.0\nlatent = 0.0\n",
    )

    assert "at least one component weight must be > 0" in message


@pytest.mark.parametrize("weight", ["nan", "inf"])
def test_a_non_finite_component_weight_is_an_error(tmp_path, weight):
    message = config_error(tmp_path, f"[scoring.weights]\nlatent = {weight}\n")

    assert "component weights must be finite and >= 0" in message


@pytest.mark.parametrize(
    ("key", "value", "problem"),
    [
        ("output_topic", "", "'' is not a Kafka topic name"),
        ("input_topic", "in put", "'in put' is not a Kafka topic name"),
        ("alerts_topic", "a" * 250, "'aaaaa"),
        ("output_topic", "..", "'..' is not a Kafka topic name"),
        ("group_id", "", "serve.group_id: String should have at least 1 character"),
        ("bootstrap_servers", "", "serve.bootstrap_servers: String should have at least 1"),
    ],
)
def test_an_empty_or_illegal_topic_or_group_is_an_error_at_start(key, value, problem):
    """An empty output topic (an unset variable in a deployment, say) used to start and
    then fail on the first record, or on librdkafka retry it forever; an empty group id
    left the service joining in a loop; no bootstrap servers left it waiting for a broker."""
    with pytest.raises(ConfigError) as caught:
        anomaly.Config().updated(serve={key: value})
    assert f"serve.{key}" in str(caught.value) and problem in str(caught.value)


def test_an_empty_dead_letter_topic_still_turns_dead_letters_off():
    assert anomaly.Config().updated(serve={"dlq_topic": ""}).serve.dlq_topic is None


def test_a_setting_can_be_set_back_to_none():
    """None overrides were dropped without a word: window 8 stayed 8."""
    config = anomaly.Config().updated(model={"window": 8}, alarms={"exit_level": 0.9})

    back = config.updated(model={"window": None}, alarms={"quorum": None, "exit_level": None})

    assert back.model.window is None and back.alarms.quorum is None
    assert back.alarms.exit_level is None
    with pytest.raises(ConfigError, match="training.steps"):
        config.updated(training={"steps": None})  # a key that takes no None says so


@pytest.mark.parametrize("seed", [-1, 2**32])
def test_a_seed_the_backend_cannot_take_is_refused_naming_it(tmp_path, seed):
    """It passed validation, then stopped training with a traceback from NumPy."""
    message = config_error(tmp_path, f"[training]\nseed = {seed}\n")

    assert "training.seed: Input should be" in message


def test_cross_fitting_is_refused_in_time_series_mode(tmp_path):
    message = config_error(tmp_path, "[model]\nwindow = 16\n[training]\ncalibration_folds = 5\n")

    assert message.endswith(
        "invalid configuration: training.calibration_folds > 1 needs tabular mode: time-series "
        "mode calibrates on the latest windows, and a fold model would have trained on their "
        'future; leave model.window unset, or training.calibration_folds at 1 or "auto"'
    )


@pytest.mark.parametrize("value", ["0", "21", '"five"', '"5"', "2.5", "true", "[5]"])
def test_calibration_folds_are_a_number_from_1_to_20_or_auto(tmp_path, value):
    message = config_error(tmp_path, f"[training]\ncalibration_folds = {value}\n")

    assert "invalid configuration: training.calibration_folds: " in message
    assert message.endswith('give a number of folds (1 to 20) or "auto"')
    assert "\n" not in message
    folds = Config.from_dict({"training": {"calibration_folds": "auto"}}).training
    assert folds.calibration_folds == "auto"


def test_cross_fitting_refuses_folds_larger_than_half_the_records(tmp_path):
    message = config_error(tmp_path, "[training]\ncalibration_folds = 2\n")

    assert message.endswith(
        "invalid configuration: training: calibration_folds = 2 with validation_fraction = "
        "0.15 puts more than half the records (85.0%) in the fold, so its model would train on "
        "the held-out 15.0% alone; use at least 3 folds, or a validation_fraction of 0.5 or "
        "more"
    )
    assert Config().updated(training={"calibration_folds": 3}).training.calibration_folds == 3
    wide = {"calibration_folds": 2, "validation_fraction": 0.5}
    assert Config().updated(training=wide).training.calibration_folds == 2


def test_missing_toml_file_is_a_config_error_naming_it(tmp_path):
    with pytest.raises(ConfigError, match="configuration file not found: .*nowhere.toml"):
        Config.from_toml(tmp_path / "nowhere.toml")


def test_malformed_toml_is_a_config_error_naming_the_file(tmp_path):
    message = config_error(tmp_path, "[training\nsteps = 3\n")

    assert message.startswith(f"{tmp_path / 'anomaly.toml'}: not valid TOML: ")


def test_updated_replaces_some_keys_and_validates_them():
    config = Config().updated(training={"steps": 123}, model={"window": 8})

    assert config.training.steps == 123
    assert config.model.window == 8
    assert config.training.batch_size == Config().training.batch_size
    with pytest.raises(ConfigError, match="unknown key 'training.epocs'"):
        Config().updated(training={"epocs": 3})
    with pytest.raises(ConfigError, match="training.steps"):
        Config().updated(training={"steps": "many"})
    with pytest.raises(ConfigError, match="unknown configuration section 'trainng'"):
        Config().updated(trainng={"steps": 3})


def test_config_is_frozen():
    config = Config()

    with pytest.raises(pydantic.ValidationError):
        config.training.steps = 5


@pytest.mark.slow
def test_config_saved_in_the_bundle_round_trips(tabular_detector, tabular_bundle):
    saved = json.loads((tabular_bundle / "config.json").read_text())

    assert Config.from_dict(saved) == tabular_detector.config
    assert anomaly.load(tabular_bundle).config == tabular_detector.config
    assert anomaly.load(tabular_bundle).config.training.steps == 200


@pytest.mark.parametrize(
    ("section", "key"),
    [
        ("scoring", "target_fpr"),
        ("scoring", "refine_learning_rate"),
        ("alarms", "level"),
        ("alarms", "exit_level"),
        ("training", "learning_rate"),
        ("training", "gradient_penalty"),
        ("training", "feature_weight"),
        ("training", "validation_fraction"),
    ],
)
@pytest.mark.parametrize("value", ["nan", "inf"])
def test_a_rate_level_or_weight_that_is_not_a_finite_number_says_so(tmp_path, section, key, value):
    """NaN in a TOML file said "Input should be less than 1" (every comparison with NaN
    fails), and an infinite learning rate or weight was taken, to train to NaN."""
    message = config_error(tmp_path, f"[{section}]\n{key} = {value}\n")

    assert f"{section}.{key}: Input should be a finite number" in message


def test_a_model_poll_interval_must_be_a_finite_number_of_seconds():
    with pytest.raises(ConfigError, match="model_poll_s: Input should be a finite number"):
        anomaly.Config().updated(serve={"model_poll_s": float("inf")})
    assert anomaly.Config().updated(serve={"model_poll_s": 0}).serve.model_poll_s == 0

"""The model store: numbered versions, published atomically (``anomaly.store``)."""

import json
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner

import anomaly
from anomaly import BundleError
from anomaly.store import publish, resolve, versions
from pipelines.cli import cli


def test_publishing_numbers_versions_and_load_takes_the_latest(tiny_bundle, tmp_path):
    store = tmp_path / "store"
    assert publish(tiny_bundle, store) == 1
    assert publish(tiny_bundle, store) == 2
    assert versions(store) == [1, 2]
    assert resolve(store) == store / "2" and resolve(store, 1) == store / "1"
    assert anomaly.load(store).version == anomaly.load(tiny_bundle).version
    assert sorted(p.name for p in store.iterdir()) == ["1", "2"]  # no staging left


def test_a_bundle_that_does_not_load_never_reaches_the_store(tiny_bundle, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    for file in tiny_bundle.iterdir():
        (broken / file.name).write_bytes(file.read_bytes())
    scoring = json.loads((broken / "scoring.json").read_text())
    (broken / "scoring.json").write_text(json.dumps({**scoring, "threshold": 0.0}))
    store = tmp_path / "store"
    publish(tiny_bundle, store)
    with pytest.raises(BundleError, match="scoring.json"):
        publish(broken, store)
    assert sorted(p.name for p in store.iterdir()) == ["1"]


def test_concurrent_publishers_get_distinct_versions(tiny_bundle, tmp_path):
    store = tmp_path / "store"
    numbers: list[int] = []
    threads = [
        threading.Thread(target=lambda: numbers.append(publish(tiny_bundle, store)))
        for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(numbers) == [1, 2, 3, 4] == versions(store)


def test_an_empty_store_and_a_missing_version_are_named(tiny_bundle, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(BundleError, match="no version yet"):
        anomaly.load(tmp_path / "empty")
    publish(tiny_bundle, tmp_path / "store")
    with pytest.raises(BundleError, match="has no version 7; it holds 1"):
        resolve(tmp_path / "store", 7)
    with pytest.raises(BundleError, match="is a bundle, not a model store"):
        publish(tiny_bundle, tiny_bundle)


def test_the_cli_publishes_and_prints_the_number(tiny_bundle, tmp_path):
    store = tmp_path / "store"
    for expected in ("1", "2"):
        result = CliRunner().invoke(
            cli, ["publish", "--model", str(tiny_bundle), "--store", str(store)]
        )
        assert result.exit_code == 0, result.output
        assert result.output.strip() == expected
    info = CliRunner().invoke(cli, ["info", str(store)])
    assert info.exit_code == 0 and json.loads(info.output)["model_version"]
    assert Path(store / "2" / "manifest.json").exists()

"""The model store: numbered versions, published atomically (``anomaly.store``)."""

import json
import os
import shutil
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

import anomaly
from anomaly import BundleError
from anomaly.store import ABANDONED_STAGING_S, publish, resolve, versions
from pipelines.cli import cli


def test_publishing_numbers_versions_and_load_takes_the_latest(tiny_bundle, tmp_path):
    store = tmp_path / "store"
    assert publish(tiny_bundle, store) == 1
    assert publish(tiny_bundle, store) == 2
    assert versions(store) == [1, 2]
    assert resolve(store) == store / "2" and resolve(store, 1) == store / "1"
    assert anomaly.load(store).version == anomaly.load(tiny_bundle).version
    assert sorted(p.name for p in store.iterdir()) == [".last-version", ".publish.lock", "1", "2"]


def test_publishers_take_their_numbers_one_at_a_time(tiny_bundle, tmp_path):
    """Two publishers that read .last-version together gave one number twice once a
    version was removed; a publisher waits while another holds the store's lock."""
    from anomaly import store as store_module

    store = tmp_path / "store"
    publish(tiny_bundle, store)
    done = threading.Event()
    numbers = []

    def publisher():
        numbers.append(publish(tiny_bundle, store))
        done.set()

    with store_module._numbering(store):
        thread = threading.Thread(target=publisher)
        thread.start()
        assert not done.wait(3)  # copied and verified, it waits for the lock
        assert versions(store) == [1]
    assert done.wait(60)
    thread.join()
    assert numbers == [2]


def test_a_file_system_without_locks_still_publishes(tiny_bundle, tmp_path, monkeypatch):
    # Some network file systems answer flock with ENOLCK: every publish failed.
    import errno
    import fcntl

    def no_locks(*_):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)

    assert publish(tiny_bundle, tmp_path / "store") == 1


def test_a_damaged_high_water_mark_is_an_error_not_a_fresh_start(tiny_bundle, tmp_path):
    store = tmp_path / "store"
    publish(tiny_bundle, store)
    (store / ".last-version").write_text("garbage\n")

    with pytest.raises(BundleError, match=r"\.last-version: is damaged .*highest version number"):
        publish(tiny_bundle, store)
    assert versions(store) == [1]


def test_a_version_removed_in_a_rollback_never_has_its_number_given_again(tiny_bundle, tmp_path):
    """Results name the version that scored them: after `rm -r store/2`, the next publish
    was 2 again, so two models answered to one number."""
    store = tmp_path / "store"
    publish(tiny_bundle, store), publish(tiny_bundle, store)
    shutil.rmtree(store / "2")

    assert publish(tiny_bundle, store) == 3
    assert versions(store) == [1, 3]


def test_a_bundle_that_reads_other_records_than_the_store_serves_is_not_published(
    tiny_bundle, tmp_path
):
    """A 5-feature version in a 4-feature store: running instances refused it, but one
    started later served it, and its records went to the dead-letter topic."""
    store = tmp_path / "store"
    publish(tiny_bundle, store)
    other = Path(__file__).parent / "fixtures" / "bundle-v3"  # 4 features, not 8

    refused = r"the versions in .*: its features \(4\) are not the stream's \(8, in the same order"
    with pytest.raises(BundleError, match=refused):
        publish(other, store)
    assert versions(store) == [1]
    assert publish(other, tmp_path / "another-store") == 1


def test_staging_a_killed_publisher_left_a_day_ago_is_removed_by_the_next_publish(
    tiny_bundle, tmp_path
):
    store = tmp_path / "models"
    abandoned, in_progress = store / ".publishing-killed", store / ".publishing-running"
    for staging in (abandoned, in_progress):
        shutil.copytree(tiny_bundle, staging / "bundle")
    day_and_a_bit = os.stat(abandoned).st_mtime - ABANDONED_STAGING_S - 60
    os.utime(abandoned, (day_and_a_bit, day_and_a_bit))

    assert publish(tiny_bundle, store) == 1
    assert not abandoned.exists()
    assert (in_progress / "bundle" / "manifest.json").exists()  # another publisher's, now
    assert versions(store) == [1]


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
    assert versions(store) == [1]


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


def test_scoring_with_a_store_says_which_version_scored(tiny_bundle, tmp_path):
    """A result names no version: after a rollback, the line is what tells which one."""
    store = tmp_path / "store"
    publish(tiny_bundle, store), publish(tiny_bundle, store)
    data = tmp_path / "rows.csv"
    pd.DataFrame(np.zeros((5, 8)), columns=[f"f{i}" for i in range(8)]).to_csv(data, index=False)

    result = CliRunner().invoke(
        cli, ["score", "--model", str(store), "--data", str(data), "--out", str(tmp_path / "o.csv")]
    )

    assert result.exit_code == 0, result.output
    assert f"model: version 2 of the store {store} ({store / '2'})" in result.stdout


def manifest_files(bundle: Path) -> set[str]:
    return set(json.loads((bundle / "manifest.json").read_text())["files"])


def test_entries_that_are_not_plain_ascii_numbers_are_not_versions(tiny_bundle, tmp_path):
    store = tmp_path / "store"
    publish(tiny_bundle, store)
    for name in ("\u00b2", "\u0663", "01", "0", "1.0", " 2"):  # "²" is str.isdigit, not int()
        (store / name).mkdir()
    (store / "7").write_text("a file, not a version")
    assert versions(store) == [1]
    assert resolve(store) == store / "1"
    assert anomaly.load(store).version == anomaly.load(tiny_bundle).version
    assert publish(tiny_bundle, store) == 2


def test_publishing_copies_only_the_files_the_manifest_lists(tiny_bundle, tmp_path):
    model = Path(shutil.copytree(tiny_bundle, tmp_path / "model"))
    (tmp_path / "outside.bin").write_bytes(b"not part of the bundle")
    (model / "extra.bin").symlink_to(tmp_path / "outside.bin")
    os.mkfifo(model / "pipe")  # copying the whole directory stopped here with a traceback
    (model / "notes").mkdir()
    (model / "notes" / "todo.txt").write_text("unlisted")
    store = tmp_path / "store"
    assert publish(model, store) == 1
    copied = {p.name for p in (store / "1").iterdir()}
    assert copied == manifest_files(model) | {"manifest.json"}
    assert all((store / "1" / name).is_file() for name in copied)
    assert anomaly.load(store).version == anomaly.load(model).version


@pytest.mark.parametrize("kind", ["named pipe", "link to /dev/zero"])
def test_a_listed_file_that_is_not_a_regular_file_of_the_bundle_is_refused_in_one_line(
    tiny_bundle, tmp_path, kind
):
    model = Path(shutil.copytree(tiny_bundle, tmp_path / "model"))
    if kind == "named pipe":
        os.mkfifo(model / "extra")
        problem = f"{model / 'extra'}: is not a regular file (a named pipe, a device or a dir"
    else:
        (model / "extra").symlink_to("/dev/zero")
        problem = f"{model / 'extra'}: is a symbolic link to /dev/zero, outside the bundle"
    manifest = json.loads((model / "manifest.json").read_text())
    manifest["files"]["extra"] = "0" * 64
    (model / "manifest.json").write_text(json.dumps(manifest))
    store = tmp_path / "store"
    result = CliRunner().invoke(cli, ["publish", "--model", str(model), "--store", str(store)])
    assert result.exit_code == 2
    assert result.stderr.startswith(f"error: {problem}") and len(result.stderr.splitlines()) == 1
    assert not store.exists() or versions(store) == []


def test_a_store_given_as_the_model_is_refused_naming_a_version_to_publish(tiny_bundle, tmp_path):
    store = tmp_path / "store"
    publish(tiny_bundle, store)
    publish(tiny_bundle, store)
    other = tmp_path / "other"
    for target in (other, store):
        result = CliRunner().invoke(cli, ["publish", "--model", str(store), "--store", str(target)])
        assert result.exit_code == 2
        assert result.stderr == (
            f"error: {store}: is a model store, not a bundle: publish one of its versions, "
            f"e.g. {store / '2'}\n"
        )
    assert not other.exists() and versions(store) == [1, 2]


def test_a_store_inside_the_bundle_it_publishes_is_refused(tiny_bundle, tmp_path):
    model = Path(shutil.copytree(tiny_bundle, tmp_path / "model"))
    with pytest.raises(
        BundleError, match="is inside the bundle .*; a model store must lie outside"
    ):
        publish(model, model / "store")
    assert not (model / "store").exists()


def test_saving_over_a_store_or_one_of_its_versions_is_refused_and_changes_nothing(
    tiny_bundle, tmp_path
):
    store = tmp_path / "store"
    publish(tiny_bundle, store)
    detector = anomaly.load(store)
    with pytest.raises(BundleError) as refused:
        detector.save(store)
    assert str(refused.value).startswith(
        f"{store}: is a model store (versions 1); saving a model there would delete every version"
    )
    for version in ("1", "2"):  # an existing version, and a new number outside publish
        with pytest.raises(BundleError) as refused:
            detector.save(store / version)
        assert str(refused.value).startswith(
            f"{store / version}: is a version of model store {store}: published versions are "
            "never changed"
        )
        assert str(refused.value).endswith("save elsewhere and `anomaly publish` it")
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "data.csv").write_text("a\n1\n")
    with pytest.raises(BundleError, match="holds no model bundle; saving a model there would"):
        detector.save(tmp_path / "work")
    assert versions(store) == [1]
    assert anomaly.load(store).version == detector.version
    assert (tmp_path / "work" / "data.csv").exists()


def test_calibrate_with_out_a_store_exits_2_and_keeps_every_version(
    tiny_bundle, tiny_bundle_mixing, tmp_path
):
    store = tmp_path / "store"
    publish(tiny_bundle, store)
    publish(tiny_bundle, store)
    data = tmp_path / "normal.csv"
    rows = np.random.default_rng(1).normal(size=(600, 3)) @ tiny_bundle_mixing
    pd.DataFrame(rows, columns=[f"f{i}" for i in range(8)]).to_csv(data, index=False)
    for out in (store, store / "2"):
        result = CliRunner().invoke(
            cli, ["calibrate", "--model", str(store), "--data", str(data), "--out", str(out)]
        )
        assert result.exit_code == 2 and len(result.stderr.splitlines()) == 1, result.output
        assert "`anomaly publish`" in result.stderr
    assert versions(store) == [1, 2]
    assert manifest_files(store / "1") == manifest_files(tiny_bundle)
    assert anomaly.load(store).version == anomaly.load(tiny_bundle).version

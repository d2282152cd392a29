"""TOML configuration files as editors save them: each is read, or refused in one line naming
the file."""

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

"""The command line imports Keras with TensorFlow's start-up noise held back
(``anomaly.backend.import_keras_quietly``), and nothing else of standard error lost."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

#: A stand-in for Keras that writes, at import, TensorFlow's two noise lines and one line a
#: user must see, then fails when FAIL is set.
FAKE_KERAS = """
import os
for line in (
    b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    b"I0000 00:00:1796312536.982573    6360 port.cc:153] oneDNN custom operations are on. x",
    b"W0000 00:00:1.0 cuda.cc:1] Could not load dynamic library libcudart.so.12",
):
    try:
        os.write(2, line + b"\\n")
    except OSError:  # closed, as native code would find it
        pass
if os.environ.get("FAIL"):
    raise ImportError("broken backend")
"""
IMPORT = "from anomaly.backend import import_keras_quietly; import_keras_quietly(); print('ok')"


def run(tmp_path: Path, fail: bool = False, **options) -> subprocess.CompletedProcess:
    (tmp_path / "keras").mkdir(exist_ok=True)
    (tmp_path / "keras" / "__init__.py").write_text(FAKE_KERAS)
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}", "FAIL": "1" if fail else ""}
    return subprocess.run(
        [sys.executable, "-c", IMPORT], env=env, capture_output=True, timeout=60, **options
    )


def test_only_tensorflows_start_up_noise_is_held_back(tmp_path):
    proc = run(tmp_path)
    assert proc.returncode == 0 and proc.stdout == b"ok\n"
    assert proc.stderr.decode().splitlines() == [
        "W0000 00:00:1.0 cuda.cc:1] Could not load dynamic library libcudart.so.12"
    ]


def test_a_failed_import_shows_everything_it_wrote(tmp_path):
    proc = run(tmp_path, fail=True)
    assert proc.returncode == 1
    err = proc.stderr.decode()
    assert "absl::InitializeLog" in err and "libcudart" in err and "broken backend" in err


@pytest.mark.skipif(sys.platform == "win32", reason="closing fd 2 is POSIX")
def test_a_closed_standard_error_is_not_an_error(tmp_path):
    """`anomaly info MODEL 2>&-` in a cron job: Python sets sys.stderr to None."""
    run(tmp_path)  # writes the stand-in
    proc = subprocess.run(
        ["sh", "-c", f'"{sys.executable}" -c "{IMPORT}" 2>&-'],
        env={**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}", "FAIL": ""},
        capture_output=True,
        timeout=60,
    )
    assert proc.returncode == 0 and proc.stdout == b"ok\n"

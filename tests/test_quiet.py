"""bloodlib.core.quiet: TensorFlow's load-time Abseil lines are filtered like TF_CPP_MIN_LOG_LEVEL."""

from __future__ import annotations

import os

import pytest

from bloodlib.core import quiet

pytestmark = pytest.mark.unit

NOTICE = "WARNING: " + quiet.ABSL_PREINIT_NOTICE + "\n"
INFO = "I0000 00:00:1795672738.314590    9804 port.cc:153] oneDNN custom operations are on.\n"
GUARD = (
    "I0000 00:00:1795672738.314590    9804 cpu_feature_guard.cc:227] This TensorFlow binary is "
    "optimized.\n",
    "To enable the following instructions: AVX2 FMA, in other operations, rebuild.\n",
)
WARN = "W0000 00:00:1795672738.314590    9804 loader.cc:12] something to know\n"
ERROR = "E0000 00:00:1795672738.314590    9804 loader.cc:12] something broke\n"
PY_WARNING = "/x/y.py:4: UserWarning: keep me\n"


def test_level_2_keeps_errors_and_drops_info_warnings_and_the_notice():
    lines = [NOTICE, INFO, *GUARD, WARN, ERROR, "plain text\n"]
    assert quiet.filter_lines(lines, 2) == [ERROR, "plain text\n"]


def test_level_1_keeps_warnings():
    assert quiet.filter_lines([NOTICE, INFO, WARN], 1) == [WARN]


def test_level_0_keeps_everything():
    lines = [NOTICE, INFO, *GUARD]
    assert quiet.filter_lines(lines, 0) == lines


def test_continuation_stops_at_a_python_warning_or_a_blank_line():
    assert quiet.filter_lines([*GUARD, PY_WARNING], 2) == [PY_WARNING]
    assert quiet.filter_lines([*GUARD, "\n", "after\n"], 2) == ["after\n"]


def test_filtered_stderr_works_on_file_descriptor_2(capfd):
    with quiet.filtered_stderr(level=2):
        os.write(2, (NOTICE + INFO + ERROR).encode())
    assert capfd.readouterr().err == ERROR


def test_filtered_stderr_writes_back_when_the_block_raises(capfd):
    with pytest.raises(RuntimeError), quiet.filtered_stderr(level=2):
        os.write(2, (INFO + "Traceback (most recent call last):\n").encode())
        raise RuntimeError("import failed")
    assert capfd.readouterr().err == "Traceback (most recent call last):\n"


def test_min_log_level_reads_the_environment(monkeypatch):
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "3")
    assert quiet.min_log_level() == 3
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "loud")
    assert quiet.min_log_level() == 0


@pytest.mark.slow
def test_importing_tensorflow_after_bloodlib_prints_no_absl_lines():
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    done = subprocess.run(
        [sys.executable, "-c", "import bloodlib, tensorflow; print('imported')"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=True,
    )
    assert done.stdout.strip() == "imported"
    assert "absl::InitializeLog" not in done.stderr
    assert "oneDNN" not in done.stderr


def test_tensorflow_lite_lines_follow_the_level():
    xnnpack = "INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\n"
    warning = "WARNING: TFLite something to know\n"
    error = "ERROR: TFLite something broke\n"
    assert quiet.filter_lines([xnnpack, warning, error], 2) == [error]
    assert quiet.filter_lines([xnnpack, warning], 1) == [warning]
    assert quiet.filter_lines([xnnpack], 0) == [xnnpack]

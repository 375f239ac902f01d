"""The nbval sanitizers: parsed as nbval parses them, and they neutralise volatile text."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

CFG = Path(__file__).with_name("nbval_sanitize.cfg")


def _patterns() -> list[tuple[str, str]]:
    nbval = pytest.importorskip("nbval.plugin")
    return list(nbval.get_sanitize_patterns(CFG.read_text()))


def sanitize(text: str) -> str:
    for regex, replace in _patterns():  # what nbval does, in order
        text = re.sub(regex, replace, text)
    return text


def test_every_section_parses():
    sections = [line for line in CFG.read_text().splitlines() if line.startswith("[")]
    assert len(_patterns()) == len(sections)
    for regex, _ in _patterns():
        re.compile(regex)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("took 1.2 s", "took 34 ms"),
        ("Wall time: 3min 2s", "Wall time: 12min 59s"),
        ("5/5 ━━━━ 2s 310ms/step", "5/5 ━━━━ 3s 290ms/step"),
        ("100%|██| 8/8 [00:01<00:00,  5.21it/s]", "100%|██| 8/8 [00:03<00:00,  2.00it/s]"),
        ("<Model at 0x7f3a2c1d9e50>", "<Model at 0x7f11aa00bc10>"),
        ("saved /tmp/pytest-3/run/models/a.keras", "saved /tmp/pytest-9/run/models/a.keras"),
        ("run_dir = '/home/ci/clone/runs/sample'", "run_dir = '/work/main/runs/sample'"),
        ("finished 2026-11-26T01:02:03+00:00", "finished 2027-01-01T23:59:59+00:00"),
        ("elapsed 0:01:02.5", "elapsed 1:59:00"),
        ("ETA: 12s", "ETA: 1:02"),
    ],
)
def test_volatile_text_compares_equal(a, b):
    assert sanitize(a) == sanitize(b)


def test_tensorflow_log_lines_are_dropped():
    logs = (
        "2026-11-26 01:02:03.456789: I tensorflow/core/util/port.cc:153] oneDNN custom ops.\n"
        "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
        "I0000 00:00:1732551234.123456   12345 cpu_feature_guard.cc:227] This TensorFlow binary\n"
        "To enable the following instructions: AVX2 FMA, in other operations, rebuild TensorFlow"
        " with the appropriate compiler flags.\n"
        "8 classes\n"
    )
    assert sanitize(logs) == "8 classes\n"


@pytest.mark.parametrize(
    "stable",
    [
        "accuracy 0.9123, 8 classes, 17092 images",
        "see https://data.mendeley.com/datasets/snkd93bnjr/1",
        "figures/confusion.png in ../runs/notebook",
        "epochs_head: 2, batch 32",
    ],
)
def test_stable_text_is_untouched(stable):
    assert sanitize(stable) == stable

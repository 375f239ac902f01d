"""Provenance records: keys, data.json, hardware probing, and no TensorFlow import."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bloodlib.study import provenance

pytestmark = pytest.mark.unit

PARAMS = {
    "01_data_exploration": {"run_dir": "/r", "data": "sample", "seed": 42},
    "03_fine_tuning": {"run_dir": "/r", "data": "sample", "seed": 42, "epochs_head": 2},
}


def test_collect_has_the_documented_keys(tmp_path):
    (tmp_path / "data.json").write_text(
        json.dumps({"manifest_hash": "abc123", "source": {"kind": "sample"}, "counts": {"ig": 3}})
    )
    record = provenance.collect(PARAMS, tmp_path, kernel="python3", profile="sample")
    for key in (
        "timestamp",
        "bloodlib_version",
        "code",
        "git",
        "python",
        "platform",
        "packages",
        "hardware",
        "kernel",
        "seeds",
        "parameters",
        "data",
    ):
        assert key in record, key
    assert record["timestamp"].endswith("+00:00")
    assert set(record["git"]) == {"commit", "dirty"}
    assert record["packages"]["numpy"]
    assert "tensorflow" in record["packages"] and "scikit-learn" in record["packages"]
    hw = record["hardware"]
    assert hw["logical_cores"] >= 1
    assert set(hw["cpu_flags"]) <= set(provenance.CPU_FLAGS)
    assert isinstance(hw["gpus"], list)
    assert record["kernel"]["name"] == "python3"
    assert record["kernel"]["executable"]  # the interpreter the kernel runs
    assert record["seeds"] == {"01_data_exploration": 42, "03_fine_tuning": 42}
    assert record["parameters"] == PARAMS
    assert record["data"]["spec"] == "sample"
    assert record["data"]["manifest_hash"] == "abc123"
    assert record["data"]["source"] == {"kind": "sample"}
    json.dumps(record)  # serialisable as is


def test_collect_records_the_code_digest(tmp_path):
    record = provenance.collect(PARAMS, tmp_path)
    assert record["code"] == provenance.code_digest()
    assert record["code"]["version"] == record["bloodlib_version"]
    assert len(record["code"]["sha256"]) == 64
    given = {"version": "0", "sha256": "x"}
    assert provenance.collect(PARAMS, tmp_path, code=given)["code"] == given


def test_code_digest_covers_modules_and_profiles(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.py").write_text("x = 1\n")
    (tmp_path / "sub" / "b.py").write_text("y = 2\n")
    (tmp_path / "profiles.yml").write_text("sample: {}\n")
    (tmp_path / "notes.txt").write_text("not code\n")
    first = provenance.code_digest(tmp_path)["sha256"]
    (tmp_path / "notes.txt").write_text("still not code\n")
    assert provenance.code_digest(tmp_path)["sha256"] == first
    for path in (tmp_path / "sub" / "b.py", tmp_path / "profiles.yml"):
        before = provenance.code_digest(tmp_path)["sha256"]
        path.write_text(path.read_text() + "# edited\n")
        assert provenance.code_digest(tmp_path)["sha256"] != before, path.name


def test_collect_without_data_json_or_git(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no git, no nvidia-smi
    record = provenance.collect({}, tmp_path)
    assert record["git"] == {"commit": None, "dirty": None}
    assert record["hardware"]["gpus"] == []
    assert record["data"]["manifest_hash"] is None


def test_gpus_parsed_from_nvidia_smi(tmp_path, monkeypatch):
    fake = tmp_path / "nvidia-smi"
    fake.write_text("#!/bin/sh\necho 'NVIDIA H100 80GB HBM3, 81559 MiB, 550.54.15'\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    assert provenance.gpus() == [
        {
            "name": "NVIDIA H100 80GB HBM3",
            "memory_total": "81559 MiB",
            "driver_version": "550.54.15",
        }
    ]


def test_write_is_atomic_json(tmp_path):
    path = provenance.write(PARAMS, tmp_path)
    assert path == tmp_path / "provenance.json"
    assert json.loads(path.read_text())["parameters"] == PARAMS
    assert [p.name for p in tmp_path.iterdir()] == ["provenance.json"]


def test_does_not_import_tensorflow(tmp_path):
    code = (
        "import sys; from pathlib import Path; from bloodlib.study import provenance; "
        f"provenance.collect({{}}, Path({str(tmp_path)!r})); "
        "print(sorted(m for m in ('tensorflow', 'keras', 'papermill') if m in sys.modules))"
    )
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": str(root)}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    assert out.stdout.strip() == "[]"

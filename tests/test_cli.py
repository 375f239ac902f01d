"""The command line: help, clean errors, dry runs, and the lazily imported commands."""

from __future__ import annotations

import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
import yaml
from dummy_notebooks import write_study

from bloodlib.cli import main

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parent.parent


def test_help_is_instant_and_lists_commands():
    code = (
        "import sys; from bloodlib.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "print('HEAVY', sorted(m for m in ('papermill', 'tensorflow', 'pandas', 'numpy') "
        "if m in sys.modules))"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    ).stdout
    for command in ("run", "kernel", "classify", "ensemble", "scan", "sample-info"):
        assert command in out
    assert "HEAVY []" in out


def test_module_entry_point_help():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-m", "bloodlib", "run", "--help"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    ).stdout
    assert "--profile {sample,full,robust,accurate,backbones,paper}" in out


def test_run_with_bad_data_prints_a_clean_error(tmp_path, capsys):
    runs = tmp_path / "runs"
    argv = [
        "run",
        "--profile",
        "full",
        "--data",
        str(tmp_path / "nowhere"),
        "--runs-root",
        str(runs),
    ]
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2
    assert "error: data not found" in err
    assert "Traceback" not in err
    assert not runs.exists()  # checked before anything is created


def test_run_full_without_data(capsys):
    assert main(["run", "--profile", "full"]) == 2
    assert "--data" in capsys.readouterr().err


def test_debug_shows_the_exception(tmp_path):
    from bloodlib.study.profiles import DataSpecError

    with pytest.raises(DataSpecError):
        main(["run", "--profile", "full", "--data", str(tmp_path / "nowhere"), "--debug"])


def test_bad_param_syntax(tmp_path, capsys):
    notebooks = write_study(tmp_path / "nb")
    assert main(["run", "--notebooks-dir", str(notebooks), "-p", "epochs_head"]) == 1
    assert "KEY=VALUE" in capsys.readouterr().err


def test_dry_run_prints_parameters(tmp_path, capsys):
    notebooks = write_study(tmp_path / "nb")
    argv = ["run", "--dry-run", "--notebooks-dir", str(notebooks), "--runs-root", str(tmp_path)]
    assert main([*argv, "-p", "epochs_head=1", "-p", "03_fine_tuning.backbones=[vgg16]"]) == 0
    plans = yaml.safe_load(capsys.readouterr().out)
    assert plans["03_fine_tuning"]["epochs_head"] == 1
    assert plans["03_fine_tuning"]["backbones"] == ["vgg16"]
    assert plans["01_data_exploration"]["run_dir"] == str((tmp_path / "sample").resolve())
    assert not (tmp_path / "sample").exists()  # a dry run creates nothing


def test_scan_uses_source_and_manifest(monkeypatch, capsys):
    import pandas as pd

    calls = []
    result = types.SimpleNamespace(
        summary=lambda: pd.DataFrame({"class": ["ig"], "images": [3]}),
        quality=pd.DataFrame({"check": ["duplicates"], "count": [0]}),
    )
    source = types.ModuleType("bloodlib.data.source")
    source.resolve = lambda spec: calls.append(spec) or Path("/data")
    manifest = types.ModuleType("bloodlib.data.manifest")
    manifest.scan = lambda root: calls.append(root) or result
    monkeypatch.setitem(sys.modules, "bloodlib.data.source", source)
    monkeypatch.setitem(sys.modules, "bloodlib.data.manifest", manifest)
    assert main(["scan", "--data", "somewhere.zip"]) == 0
    out = capsys.readouterr().out
    assert calls == ["somewhere.zip", Path("/data")]
    assert "images" in out and "duplicates" in out


def test_scan_data_error_is_clean(monkeypatch, capsys):
    def resolve(spec):
        raise FileNotFoundError(f"no dataset at {spec}")

    source = types.ModuleType("bloodlib.data.source")
    source.resolve = resolve
    manifest = types.ModuleType("bloodlib.data.manifest")
    manifest.scan = lambda root: None
    monkeypatch.setitem(sys.modules, "bloodlib.data.source", source)
    monkeypatch.setitem(sys.modules, "bloodlib.data.manifest", manifest)
    assert main(["scan", "--data", "x"]) == 2
    err = capsys.readouterr().err
    assert "error: no dataset at x" in err and "Traceback" not in err


def test_classify_prints_report(monkeypatch, capsys):
    seen = {}

    def classify_folder(
        model_path, folder, out_csv, batch_size=32, workers=None, engine="auto", tta=False,
        trust_pickle=False,
    ):  # fmt: skip
        seen.update(
            model=model_path,
            folder=folder,
            out=out_csv,
            batch_size=batch_size,
            workers=workers,
            engine=engine,
            tta=tta,
            trust_pickle=trust_pickle,
        )
        return types.SimpleNamespace(report=lambda: "3 images classified")

    module = types.ModuleType("bloodlib.predict.classify")
    module.classify_folder = classify_folder
    monkeypatch.setitem(sys.modules, "bloodlib.predict.classify", module)
    argv = ["classify", "m.keras", "imgs", "--out", "p.csv", "--batch-size", "8"]
    assert main(argv) == 0
    assert seen == {
        "model": "m.keras",
        "folder": "imgs",
        "out": "p.csv",
        "batch_size": 8,
        "workers": None,
        "engine": "auto",
        "tta": False,
        "trust_pickle": False,
    }
    assert main([*argv, "--engine", "keras", "--tta", "--workers", "2", "--trust-pickle"]) == 0
    assert seen["engine"] == "keras" and seen["tta"] is True
    assert seen["workers"] == 2 and seen["trust_pickle"] is True
    assert "3 images classified" in capsys.readouterr().out


def test_kernel_registers_current_interpreter(monkeypatch, capsys):
    import ipykernel.kernelspec

    seen = {}

    def install(**kwargs):
        seen.update(kwargs)
        return "/somewhere/kernels/bloodlib"

    monkeypatch.setattr(ipykernel.kernelspec, "install", install)
    assert main(["kernel", "--sys-prefix", "--display-name", "Blood"]) == 0
    assert seen["kernel_name"] == "bloodlib" and seen["display_name"] == "Blood"
    assert seen["prefix"] == sys.prefix and seen["user"] is False
    assert "--kernel bloodlib" in capsys.readouterr().out


def test_sample_info(tmp_path, monkeypatch, capsys):
    import bloodlib.core.config

    for cls, n in (("ig", 2), ("platelet", 1)):
        (tmp_path / cls).mkdir()
        for i in range(n):
            (tmp_path / cls / f"{i}.jpg").write_bytes(b"x" * 10)
    monkeypatch.setattr(bloodlib.core.config, "SAMPLE_DIR", tmp_path)
    assert main(["sample-info"]) == 0
    out = capsys.readouterr().out
    assert "platelet" in out and "3 images" in out


def test_classify_normalisations_are_stains():
    """--normalize's choices are written out in the parser (--help imports no numpy)."""
    from bloodlib.cli import build_parser
    from bloodlib.data import stain

    parser = build_parser()
    sub = next(a for a in parser._actions if a.choices and "classify" in a.choices)
    normalize = next(a for a in sub.choices["classify"]._actions if a.dest == "normalize")
    assert tuple(normalize.choices) == stain.NORMALIZE_METHODS
